//! The client's reverse name: looked up at connect (during the greeting
//! delay), forward-confirmed, shown to plugins and in the Received field.

use super::{queued_message, Harness, Setup};
use crate::replay::fixture_dns;

/// A DNS server on 127.0.0.1 that names 192.0.2.1 (confirmed) and
/// 192.0.2.2 (a PTR whose name does not point back).
async fn dns() -> (fixture_dns::FixtureServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = dir.path().join("zone.toml");
    std::fs::write(
        &file,
        r#"
["1.2.0.192.in-addr.arpa"]
PTR = ["client.example.test."]
["2.2.0.192.in-addr.arpa"]
PTR = ["liar.example.test."]
["client.example.test"]
A = ["192.0.2.1"]
["liar.example.test"]
A = ["198.51.100.1"]
"#,
    )
    .expect("the zone is written");
    let zone = fixture_dns::load(&file).expect("the zone loads");
    (
        fixture_dns::serve(zone).await.expect("the server starts"),
        dir,
    )
}

async fn received_from(peer: &str, lookup: bool) -> String {
    let (server, _zone) = dns().await;
    let setup = Setup {
        server: format!("reverse_lookup = {lookup}"),
        extra: format!(
            "[dns]\nnameservers = [\"{}\"]\ntimeout = \"2s\"\nattempts = 1\n",
            server.address
        ),
        peer: peer.parse().expect("an address"),
        ..Setup::default()
    };
    let mut h = Harness::with(setup).await.ehlo().await;
    h.cmd("MAIL FROM:<a@example.org>").await;
    assert_eq!(
        h.cmd("RCPT TO:<bob@localhost>").await,
        "250 2.1.5 Recipient ok\r\n"
    );
    h.cmd("DATA").await;
    assert!(h
        .cmd("Subject: x\r\n\r\nhi\r\n.")
        .await
        .starts_with("250 2.0.0"));
    let (_, stored) = queued_message(&h.spool);
    let stored = String::from_utf8(stored).expect("UTF-8");
    stored.lines().take(2).collect::<Vec<_>>().join("\n")
}

#[tokio::test]
async fn a_confirmed_reverse_name_is_in_the_received_field() {
    let received = received_from("192.0.2.1:4000", true).await;
    assert!(
        received.starts_with("Received: from client.example (client.example.test [192.0.2.1])"),
        "{received}"
    );
}

#[tokio::test]
async fn an_unconfirmed_reverse_name_is_not_used() {
    let received = received_from("192.0.2.2:4000", true).await;
    assert!(
        received.starts_with("Received: from client.example ([192.0.2.2])"),
        "{received}"
    );
}

#[tokio::test]
async fn no_lookup_when_switched_off() {
    let received = received_from("192.0.2.1:4000", false).await;
    assert!(
        received.starts_with("Received: from client.example ([192.0.2.1])"),
        "{received}"
    );
}
