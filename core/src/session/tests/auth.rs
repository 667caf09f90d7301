//! AUTH: the listener's rules, the SASL state, and credential checks.

use base64::Engine as _;

use super::{Harness, Setup};

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// A listener offering AUTH in cleartext (loopback testing) with one user.
fn auth_listener(mode: &str) -> Setup {
    Setup {
        listener: format!("auth = \"{mode}\"\nauth_without_tls = true"),
        users: vec![("alice", "correct horse battery")],
        ..Setup::default()
    }
}

#[tokio::test]
async fn auth_is_offered_only_over_tls_by_default() {
    let mut h = Harness::with(Setup {
        // STARTTLS without a certificate here: TLS never comes.
        listener: "tls = \"starttls\"\nauth = \"optional\"".into(),
        ..Setup::default()
    })
    .await
    .greeted()
    .await;
    let ehlo = h.cmd("EHLO client.example").await;
    assert!(!ehlo.contains("AUTH"), "{ehlo}");
    let refused = h.cmd(&format!("AUTH PLAIN {}", b64("\0alice\0x"))).await;
    assert!(refused.starts_with("538 5.7.11"), "{refused}");
}

#[tokio::test]
async fn plain_with_an_initial_response() {
    let mut h = Harness::with(auth_listener("optional"))
        .await
        .greeted()
        .await;
    let plain = format!("AUTH PLAIN {}", b64("\0alice\0correct horse battery"));
    assert_eq!(
        h.cmd(&plain).await,
        "503 5.5.1 Bad sequence of commands: send HELO/EHLO first\r\n"
    );
    let ehlo = h.cmd("EHLO client.example").await;
    assert!(ehlo.contains("250-AUTH PLAIN LOGIN\r\n"), "{ehlo}");
    assert!(h.cmd(&plain).await.starts_with("235 2.7.0"));
    assert!(h.cmd(&plain).await.starts_with("503 5.5.1"));
    h.cmd("MAIL FROM:<alice@example.org>").await;
    h.cmd("RCPT TO:<bob@localhost>").await;
    h.cmd("DATA").await;
    assert!(h
        .cmd("Subject: x\r\n\r\nhi\r\n.")
        .await
        .starts_with("250 2.0.0"));
    let (_, stored) = super::queued_message(&h.spool);
    let stored = String::from_utf8(stored).expect("UTF-8");
    // RFC 3848: ESMTPA for an authenticated client.
    assert!(stored.contains("with ESMTPA id"), "{stored}");
}

#[tokio::test]
async fn a_wrong_password_is_535_and_counts_as_an_error() {
    let mut h = Harness::with(auth_listener("optional")).await.ehlo().await;
    let reply = h
        .cmd(&format!("AUTH PLAIN {}", b64("\0alice\0wrong")))
        .await;
    assert!(reply.starts_with("535 5.7.8"), "{reply}");
    assert_eq!(h.cmd("NOOP").await, "250 2.0.0 Ok\r\n");
}

#[tokio::test]
async fn login_goes_through_the_sasl_state() {
    let mut h = Harness::with(auth_listener("optional")).await.ehlo().await;
    assert_eq!(h.cmd("AUTH LOGIN").await, "334 VXNlcm5hbWU6\r\n");
    // In the SASL state a line is a response, never a command.
    assert_eq!(h.cmd(&b64("alice")).await, "334 UGFzc3dvcmQ6\r\n");
    assert!(h
        .cmd(&b64("correct horse battery"))
        .await
        .starts_with("235 2.7.0"));
    assert_eq!(h.cmd("NOOP").await, "250 2.0.0 Ok\r\n");
}

#[tokio::test]
async fn a_star_cancels_the_exchange() {
    let mut h = Harness::with(auth_listener("optional")).await.ehlo().await;
    assert_eq!(h.cmd("AUTH PLAIN").await, "334 \r\n");
    assert!(h.cmd("*").await.starts_with("501 5.0.0"));
    // Back to greeted: commands are commands again.
    assert_eq!(h.cmd("NOOP").await, "250 2.0.0 Ok\r\n");
}

#[tokio::test]
async fn auth_inside_a_transaction_is_out_of_sequence() {
    let mut h = Harness::with(auth_listener("optional")).await.ehlo().await;
    h.cmd("MAIL FROM:<a@example.org>").await;
    let reply = h
        .cmd(&format!(
            "AUTH PLAIN {}",
            b64("\0alice\0correct horse battery")
        ))
        .await;
    assert_eq!(reply, "503 5.5.1 Bad sequence of commands\r\n");
}

#[tokio::test]
async fn a_required_auth_listener_refuses_mail_before_auth() {
    let setup = Setup {
        extra: "[submission]\nsenders = { alice = [\"alice@localhost\"] }\n".into(),
        ..auth_listener("required")
    };
    let mut h = Harness::with(setup).await.ehlo().await;
    let refused = h.cmd("MAIL FROM:<alice@localhost>").await;
    assert!(refused.starts_with("530 5.7.0"), "{refused}");
    let plain = format!("AUTH PLAIN {}", b64("\0alice\0correct horse battery"));
    assert!(h.cmd(&plain).await.starts_with("235 2.7.0"));
    // A required-AUTH listener is a submission one (RFC 6409 §6.1): the
    // sender must be the user's own.
    let foreign = h.cmd("MAIL FROM:<mallory@localhost>").await;
    assert!(foreign.starts_with("553 5.7.1"), "{foreign}");
    assert_eq!(
        h.cmd("MAIL FROM:<alice@localhost>").await,
        "250 2.1.0 Sender ok\r\n"
    );
}
