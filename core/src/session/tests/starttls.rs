//! STARTTLS over the in-memory pipe with a real rustls client: the upgrade,
//! the state reset of RFC 3207 §4.2, the cleartext injection of
//! CVE-2011-0411, and the handshake timeout.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Harness, Setup};
use crate::delivery::OutboundTlsConfig;
use crate::tls::ReloadableTls;

async fn starttls_session(setup: Setup) -> Harness {
    tls_session("starttls", setup).await.greeted().await
}

/// A session on a listener with `tls` mode and a self-signed certificate.
async fn tls_session(mode: &str, setup: Setup) -> Harness {
    let setup = Setup {
        listener: format!("tls = \"{mode}\"\n{}", setup.listener),
        ..setup
    };
    Harness::build(setup, |config, dir| {
        let files = crate::tls::self_signed(dir, &config.server.hostname).expect("a certificate");
        Some(Arc::new(
            ReloadableTls::load(files).expect("the certificate loads"),
        ))
    })
    .await
}

/// Runs the client side of the handshake; the harness keeps the session
/// task and the spool, its cleartext pipe is gone.
async fn upgrade(
    mut h: Harness,
) -> (
    tokio_rustls::client::TlsStream<tokio::io::DuplexStream>,
    Harness,
) {
    assert!(h.buf.is_empty(), "no cleartext left unread");
    let (unused, _) = tokio::io::duplex(1);
    let client = std::mem::replace(&mut h.client, unused);
    let tls = OutboundTlsConfig::new(None).expect("client TLS");
    let connector = tokio_rustls::TlsConnector::from(tls.unverified.clone());
    let name = rustls_pki_types::ServerName::try_from("mx.test").expect("a name");
    let stream = connector
        .connect(name, client)
        .await
        .expect("the handshake succeeds");
    (stream, h)
}

async fn tls_cmd(
    stream: &mut tokio_rustls::client::TlsStream<tokio::io::DuplexStream>,
    line: &str,
) -> String {
    stream
        .write_all(format!("{line}\r\n").as_bytes())
        .await
        .expect("writes");
    stream.flush().await.expect("flushes");
    let mut reply = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.expect("reads");
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&reply);
        let last = text
            .trim_end_matches("\r\n")
            .rsplit("\r\n")
            .next()
            .unwrap_or("");
        if reply.ends_with(b"\r\n") && last.as_bytes().get(3) != Some(&b'-') {
            break;
        }
    }
    String::from_utf8(reply).expect("UTF-8")
}

#[tokio::test]
async fn starttls_upgrades_and_starts_the_session_over() {
    let mut h = starttls_session(Setup::default()).await;
    let ehlo = h.cmd("EHLO client.example").await;
    assert!(ehlo.contains("250-STARTTLS\r\n"), "{ehlo}");
    h.cmd("MAIL FROM:<a@example.org>").await;
    assert_eq!(h.cmd("STARTTLS").await, "220 2.0.0 Ready to start TLS\r\n");
    let (mut tls, h) = upgrade(h).await;
    // RFC 3207 §4.2: no greeting, no transaction survives the upgrade.
    assert_eq!(
        tls_cmd(&mut tls, "MAIL FROM:<a@example.org>").await,
        "503 5.5.1 Bad sequence of commands: send HELO/EHLO first\r\n"
    );
    let ehlo = tls_cmd(&mut tls, "EHLO client.example").await;
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    assert_eq!(
        tls_cmd(&mut tls, "STARTTLS").await,
        "503 5.5.1 TLS already active\r\n"
    );
    tls_cmd(&mut tls, "MAIL FROM:<a@example.org>").await;
    tls_cmd(&mut tls, "RCPT TO:<bob@localhost>").await;
    tls_cmd(&mut tls, "DATA").await;
    let queued = tls_cmd(&mut tls, "Subject: x\r\n\r\nsecret\r\n.").await;
    assert!(queued.starts_with("250 2.0.0 Ok: queued"), "{queued}");
    let (_, stored) = super::queued_message(&h.spool);
    let stored = String::from_utf8(stored).expect("UTF-8");
    assert!(stored.contains("with ESMTPS id"), "{stored}");
    assert!(stored.contains("(using TLS"), "{stored}");
}

#[tokio::test]
async fn cleartext_pipelined_after_starttls_is_discarded() {
    let mut h = starttls_session(Setup::default()).await;
    h.cmd("EHLO client.example").await;
    // The injected MAIL would open a transaction if it were read after the
    // handshake.
    h.send(b"STARTTLS\r\nMAIL FROM:<evil@example.org>\r\n")
        .await;
    assert_eq!(h.reply().await, "220 2.0.0 Ready to start TLS\r\n");
    let (mut tls, _h) = upgrade(h).await;
    tls_cmd(&mut tls, "EHLO client.example").await;
    assert_eq!(
        tls_cmd(&mut tls, "RCPT TO:<bob@localhost>").await,
        "503 5.5.1 Bad sequence of commands\r\n"
    );
}

#[tokio::test]
async fn starttls_without_a_certificate_is_not_offered() {
    let mut h = Harness::with(Setup {
        listener: "tls = \"starttls\"".into(),
        ..Setup::default()
    })
    .await
    .greeted()
    .await;
    let ehlo = h.cmd("EHLO client.example").await;
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    assert!(h.cmd("STARTTLS").await.starts_with("454 4.7.0"));
}

#[tokio::test(start_paused = true)]
async fn a_client_that_never_finishes_the_handshake_is_let_go() {
    let mut h = starttls_session(Setup::default()).await;
    h.cmd("EHLO client.example").await;
    assert_eq!(h.cmd("STARTTLS").await, "220 2.0.0 Ready to start TLS\r\n");
    let started = tokio::time::Instant::now();
    assert!(h.closed().await);
    // Its own timeout, much shorter than the command timeout.
    let timeouts = &h.ctx.config.server.timeouts;
    assert_eq!(started.elapsed(), timeouts.tls_handshake);
    assert!(timeouts.tls_handshake < timeouts.command);
}

#[tokio::test(start_paused = true)]
async fn an_implicit_tls_client_that_never_says_hello_is_let_go() {
    let started = tokio::time::Instant::now();
    let mut h = tls_session("implicit", Setup::default()).await;
    assert!(h.closed().await);
    let timeouts = &h.ctx.config.server.timeouts;
    let took = started.elapsed();
    assert!(
        took >= timeouts.tls_handshake && took < timeouts.command,
        "{took:?}"
    );
}
