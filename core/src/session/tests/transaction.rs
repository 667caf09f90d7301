//! MAIL, RCPT and the state they move through: every out-of-order command
//! is answered from the state, and the envelope is the one the spool gets.

use super::{queued_message, Harness, Setup};
use crate::pipeline::{Stage, StageOutcome};

#[tokio::test]
async fn commands_out_of_sequence() {
    let mut h = Harness::start().await.greeted().await;
    assert_eq!(
        h.cmd("MAIL FROM:<a@example.org>").await,
        "503 5.5.1 Bad sequence of commands: send HELO/EHLO first\r\n"
    );
    assert_eq!(
        h.cmd("RCPT TO:<bob@localhost>").await,
        "503 5.5.1 Bad sequence of commands\r\n"
    );
    assert_eq!(
        h.cmd("DATA").await,
        "503 5.5.1 Bad sequence of commands\r\n"
    );
    h.cmd("EHLO client.example").await;
    assert_eq!(
        h.cmd("RCPT TO:<bob@localhost>").await,
        "503 5.5.1 Bad sequence of commands\r\n"
    );
    assert_eq!(
        h.cmd("DATA").await,
        "503 5.5.1 Bad sequence of commands\r\n"
    );
    assert_eq!(
        h.cmd("MAIL FROM:<a@example.org>").await,
        "250 2.1.0 Sender ok\r\n"
    );
    // A second MAIL inside the transaction (RFC 5321 §4.1.1.2).
    assert_eq!(
        h.cmd("MAIL FROM:<b@example.org>").await,
        "503 5.5.1 Bad sequence of commands\r\n"
    );
    // DATA after only failed RCPTs (RFC 2920 §3.1).
    assert_eq!(h.cmd("DATA").await, "554 5.5.1 No valid recipients\r\n");
}

#[tokio::test]
async fn rset_and_ehlo_drop_the_transaction() {
    let mut h = Harness::start().await.ehlo().await;
    h.cmd("MAIL FROM:<a@example.org>").await;
    assert_eq!(
        h.cmd("RCPT TO:<bob@localhost>").await,
        "250 2.1.5 Recipient ok\r\n"
    );
    assert_eq!(h.cmd("RSET").await, "250 2.0.0 Ok\r\n");
    assert_eq!(
        h.cmd("RCPT TO:<bob@localhost>").await,
        "503 5.5.1 Bad sequence of commands\r\n"
    );
    // RSET keeps the greeting: MAIL needs no new EHLO.
    assert_eq!(
        h.cmd("MAIL FROM:<a@example.org>").await,
        "250 2.1.0 Sender ok\r\n"
    );
    h.cmd("EHLO again.example").await;
    assert_eq!(
        h.cmd("RCPT TO:<bob@localhost>").await,
        "503 5.5.1 Bad sequence of commands\r\n"
    );
    // EHLO left the session greeted under its new name.
    assert_eq!(
        h.cmd("MAIL FROM:<a@example.org>").await,
        "250 2.1.0 Sender ok\r\n"
    );
}

#[tokio::test]
async fn the_rcpt_chain_is_closed() {
    // 192.0.2.9 is not trusted by the relay plugin: mail for other domains
    // is refused, local recipients are not.
    let mut h = Harness::with(Setup {
        peer: "192.0.2.9:5000".parse().expect("an address"),
        ..Setup::default()
    })
    .await
    .ehlo()
    .await;
    h.cmd("MAIL FROM:<a@example.org>").await;
    let refused = h.cmd("RCPT TO:<someone@elsewhere.test>").await;
    assert!(refused.starts_with("554 5.7.1"), "{refused}");
    assert_eq!(
        h.cmd("RCPT TO:<bob@localhost>").await,
        "250 2.1.5 Recipient ok\r\n"
    );
    h.cmd("QUIT").await;
    let trace = h.finish().await;
    let rcpt: Vec<_> = trace.iter().filter(|s| s.stage == Stage::Rcpt).collect();
    assert_eq!(rcpt.len(), 2);
    assert_eq!(rcpt[0].argument.as_deref(), Some("someone@elsewhere.test"));
    assert!(matches!(rcpt[0].outcome, StageOutcome::Reject(_)));
    assert_eq!(rcpt[1].outcome, StageOutcome::Accept);
}

#[tokio::test]
async fn an_empty_rcpt_chain_accepts_nobody() {
    let mut h = Harness::with(Setup {
        pipeline: String::new(),
        ..Setup::default()
    })
    .await
    .ehlo()
    .await;
    h.cmd("MAIL FROM:<a@example.org>").await;
    assert!(h
        .cmd("RCPT TO:<bob@localhost>")
        .await
        .starts_with("554 5.7.1"));
}

#[tokio::test]
async fn the_recipient_limit() {
    let mut h = Harness::with(Setup {
        server: "max_recipients = 2".into(),
        ..Setup::default()
    })
    .await
    .ehlo()
    .await;
    h.cmd("MAIL FROM:<a@example.org>").await;
    assert_eq!(
        h.cmd("RCPT TO:<a@localhost>").await,
        "250 2.1.5 Recipient ok\r\n"
    );
    assert_eq!(
        h.cmd("RCPT TO:<b@localhost>").await,
        "250 2.1.5 Recipient ok\r\n"
    );
    assert_eq!(
        h.cmd("RCPT TO:<c@localhost>").await,
        "452 4.5.3 Too many recipients\r\n"
    );
}

#[tokio::test]
async fn a_declared_size_over_the_limit_is_refused_at_mail() {
    let mut h = Harness::with(Setup {
        server: "max_message_size = \"1k\"".into(),
        ..Setup::default()
    })
    .await
    .ehlo()
    .await;
    assert_eq!(
        h.cmd("MAIL FROM:<a@example.org> SIZE=5000").await,
        "552 5.3.4 Message size exceeds fixed maximum message size\r\n"
    );
    assert_eq!(
        h.cmd("MAIL FROM:<a@example.org> SIZE=500").await,
        "250 2.1.0 Sender ok\r\n"
    );
}

#[tokio::test]
async fn binarymime_is_refused_without_chunking() {
    // RFC 3030 §3: BODY=BINARYMIME is only for BDAT, which is not offered.
    let mut h = Harness::start().await.ehlo().await;
    assert_eq!(
        h.cmd("MAIL FROM:<a@example.org> BODY=BINARYMIME").await,
        "555 5.5.4 MAIL FROM/RCPT TO parameters not recognized or not implemented\r\n"
    );
    assert_eq!(
        h.cmd("RCPT TO:<bob@localhost>").await,
        "503 5.5.1 Bad sequence of commands\r\n"
    );
    assert_eq!(
        h.cmd("MAIL FROM:<a@example.org> BODY=8BITMIME").await,
        "250 2.1.0 Sender ok\r\n"
    );
}

#[tokio::test]
async fn a_mail_stage_refusal_opens_no_transaction() {
    let mut h = Harness::with(Setup::gate("mail", "reject 550 5.7.1 no senders today"))
        .await
        .ehlo()
        .await;
    assert_eq!(
        h.cmd("MAIL FROM:<a@example.org>").await,
        "550 5.7.1 no senders today\r\n"
    );
    assert_eq!(
        h.cmd("RCPT TO:<bob@localhost>").await,
        "503 5.5.1 Bad sequence of commands\r\n"
    );
}

#[tokio::test]
async fn a_disconnect_verdict_ends_the_session() {
    let mut h = Harness::with(Setup::gate("rcpt", "disconnect 421 4.7.0 go away"))
        .await
        .ehlo()
        .await;
    h.cmd("MAIL FROM:<a@example.org>").await;
    assert_eq!(
        h.cmd("RCPT TO:<bob@localhost>").await,
        "421 4.7.0 go away\r\n"
    );
    assert!(h.closed().await);
}

#[tokio::test]
async fn the_envelope_reaches_the_spool() {
    let mut h = Harness::start().await.ehlo().await;
    h.cmd("MAIL FROM:<>").await;
    h.cmd("RCPT TO:<Bob@localhost>").await;
    h.cmd("RCPT TO:<\"john smith\"@localhost>").await;
    h.cmd("RCPT TO:<postmaster>").await;
    assert_eq!(
        h.cmd("DATA").await,
        "354 End data with <CR><LF>.<CR><LF>\r\n"
    );
    let queued = h.cmd("Subject: x\r\n\r\nhi\r\n.").await;
    assert!(queued.starts_with("250 2.0.0 Ok: queued as "), "{queued}");
    let (entry, _) = queued_message(&h.spool);
    assert_eq!(entry.reverse_path, "");
    let recipients: Vec<_> = entry
        .recipients
        .iter()
        .map(|r| r.address.as_str())
        .collect();
    assert_eq!(
        recipients,
        [
            "Bob@localhost",
            "\"john smith\"@localhost",
            "postmaster@localhost"
        ]
    );
    assert_eq!(entry.client, "127.0.0.1:40000");
}

#[tokio::test]
async fn dsn_is_offered_and_its_parameters_reach_the_spool() {
    let mut h = Harness::start().await.greeted().await;
    let ehlo = h.cmd("EHLO client.example").await;
    assert!(ehlo.contains("250-DSN\r\n"), "{ehlo}");
    assert_eq!(
        h.cmd("MAIL FROM:<a@example.org> RET=SHORT").await,
        "501 5.5.4 Syntax error in parameters: RET must be FULL or HDRS\r\n"
    );
    let long = format!("MAIL FROM:<a@example.org> ENVID={}", "x".repeat(101));
    assert!(h.cmd(&long).await.starts_with("501 5.5.4 "));
    assert_eq!(
        h.cmd("MAIL FROM:<a@example.org> RET=HDRS ENVID=QQ+2B314159")
            .await,
        "250 2.1.0 Sender ok\r\n"
    );
    assert!(h
        .cmd("RCPT TO:<bob@localhost> NOTIFY=NEVER,DELAY")
        .await
        .starts_with("501 5.5.4 "));
    assert!(h
        .cmd("RCPT TO:<bob@localhost> X-NOTIFY=NEVER")
        .await
        .starts_with("555 5.5.4 "));
    h.cmd("RCPT TO:<bob@localhost> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;Bob+2Bx@example.org")
        .await;
    h.cmd("RCPT TO:<carol@localhost>").await;
    h.cmd("DATA").await;
    let queued = h.cmd("Subject: x\r\n\r\nhi\r\n.").await;
    assert!(queued.starts_with("250 2.0.0 Ok: queued as "), "{queued}");
    let (entry, _) = queued_message(&h.spool);
    assert_eq!(entry.dsn.ret, Some(sluice_spool::Ret::Hdrs));
    assert_eq!(entry.dsn.envid.as_deref(), Some("QQ+314159"));
    let bob = &entry.recipients[0].dsn;
    let notify = bob.notify.expect("NOTIFY kept");
    assert!(notify.success && notify.failure && !notify.delay);
    let orcpt = bob.orcpt.as_ref().expect("ORCPT kept");
    assert_eq!(
        (orcpt.addr_type.as_str(), orcpt.address.as_str()),
        ("rfc822", "Bob+x@example.org")
    );
    assert!(entry.recipients[1].dsn.is_empty());
}

// Paused: without the limit the session would wait out its command
// timeout instead of answering 421, and the test would fail at once.
#[tokio::test(start_paused = true)]
async fn refused_recipients_count_toward_the_error_limit() {
    let mut h = Harness::with(Setup::gate("rcpt", "reject 550 5.1.1 unknown user"))
        .await
        .ehlo()
        .await;
    h.cmd("MAIL FROM:<a@example.org>").await;
    for i in 0..20 {
        assert_eq!(
            h.cmd(&format!("RCPT TO:<user{i}@localhost>")).await,
            "550 5.1.1 unknown user\r\n"
        );
    }
    assert_eq!(
        h.reply().await,
        "421 4.7.0 Too many errors, closing connection\r\n"
    );
    assert!(h.closed().await);
}
