//! DATA and the intake behind it: what is stored, what the data stage can
//! do to it, the limits, and the state the session is left in.

use std::time::Duration;

use super::{queued_message, Harness, Setup};
use crate::pipeline::{Modification, Stage, StageOutcome};

/// A session in a transaction for bob@localhost, DATA accepted.
async fn in_data(h: Harness) -> Harness {
    let mut h = h.ehlo().await;
    assert_eq!(
        h.cmd("MAIL FROM:<alice@example.org>").await,
        "250 2.1.0 Sender ok\r\n"
    );
    assert_eq!(
        h.cmd("RCPT TO:<bob@localhost>").await,
        "250 2.1.5 Recipient ok\r\n"
    );
    assert_eq!(
        h.cmd("DATA").await,
        "354 End data with <CR><LF>.<CR><LF>\r\n"
    );
    h
}

#[tokio::test]
async fn an_accepted_message_is_stored_with_its_received_header() {
    let mut h = in_data(Harness::start().await).await;
    // Dot-stuffed line, and the next command pipelined after the dot.
    h.send(b"Subject: hi\r\n\r\n..leading dot\r\nbody\r\n.\r\nNOOP\r\n")
        .await;
    let queued = h.reply().await;
    assert!(queued.starts_with("250 2.0.0 Ok: queued as "), "{queued}");
    assert_eq!(h.reply().await, "250 2.0.0 Ok\r\n");
    let (entry, stored) = queued_message(&h.spool);
    let id = queued.trim_end().rsplit(' ').next().unwrap_or_default();
    assert_eq!(entry.id.to_string(), id);
    let stored = String::from_utf8(stored).expect("UTF-8");
    assert!(
        stored.starts_with("Received: from client.example ([127.0.0.1])\r\n\tby mx.test"),
        "{stored}"
    );
    assert!(stored.contains(&format!("with ESMTP id {id}")), "{stored}");
    assert!(stored.contains("for <bob@localhost>"), "{stored}");
    assert!(
        stored.ends_with("\r\nSubject: hi\r\n\r\n.leading dot\r\nbody\r\n"),
        "{stored}"
    );
    // DATA ended the transaction, the greeting stays.
    assert_eq!(
        h.cmd("RCPT TO:<bob@localhost>").await,
        "503 5.5.1 Bad sequence of commands\r\n"
    );
    assert_eq!(
        h.cmd("MAIL FROM:<alice@example.org>").await,
        "250 2.1.0 Sender ok\r\n"
    );
}

#[tokio::test]
async fn a_message_over_the_size_limit_is_refused_and_not_stored() {
    let setup = Setup {
        server: "max_message_size = \"1k\"".into(),
        ..Setup::default()
    };
    let mut h = in_data(Harness::with(setup).await).await;
    let body = "x".repeat(70);
    let mut message = String::from("Subject: big\r\n\r\n");
    for _ in 0..20 {
        message.push_str(&body);
        message.push_str("\r\n");
    }
    message.push_str(".\r\n");
    h.send(message.as_bytes()).await;
    assert_eq!(
        h.reply().await,
        "552 5.3.4 Message size exceeds fixed maximum message size\r\n"
    );
    assert!(h.spool.entries().expect("lists").is_empty());
    assert_eq!(
        h.cmd("RCPT TO:<bob@localhost>").await,
        "503 5.5.1 Bad sequence of commands\r\n"
    );
}

#[tokio::test]
async fn a_line_over_1000_octets_is_refused() {
    let mut h = in_data(Harness::start().await).await;
    let message = format!("Subject: long\r\n\r\n{}\r\n.\r\n", "y".repeat(1200));
    h.send(message.as_bytes()).await;
    assert_eq!(
        h.reply().await,
        "500 5.6.0 Line too long: message lines are limited to 1000 octets\r\n"
    );
    assert!(h.spool.entries().expect("lists").is_empty());
}

#[tokio::test]
async fn a_mail_loop_is_refused() {
    let mut h = in_data(Harness::start().await).await;
    let mut message = String::new();
    // One more than the default limit of 50.
    for i in 0..51 {
        message.push_str(&format!("Received: from hop{i} by hop{}\r\n", i + 1));
    }
    message.push_str("Subject: loop\r\n\r\nround\r\n.\r\n");
    h.send(message.as_bytes()).await;
    assert_eq!(
        h.reply().await,
        "554 5.4.6 Too many Received headers: mail loop\r\n"
    );
    assert!(h.spool.entries().expect("lists").is_empty());
}

#[tokio::test]
async fn a_data_stage_rejection_stores_nothing() {
    let mut h = in_data(Harness::with(Setup::gate("data", "reject 550 5.7.1 spam")).await).await;
    assert_eq!(
        h.cmd("Subject: x\r\n\r\nbuy now\r\n.").await,
        "550 5.7.1 spam\r\n"
    );
    assert!(h.spool.entries().expect("lists").is_empty());
    h.cmd("QUIT").await;
    let trace = h.finish().await;
    let data = trace.last().expect("the data stage is traced");
    assert_eq!(data.stage, Stage::Data);
    assert!(matches!(data.outcome, StageOutcome::Reject(_)));
    assert!(data.applied.is_empty());
}

#[tokio::test]
async fn a_discarded_message_gets_250_and_is_not_stored() {
    let mut h = in_data(Harness::with(Setup::gate("data", "discard")).await).await;
    assert_eq!(
        h.cmd("Subject: x\r\n\r\nbye\r\n.").await,
        "250 2.0.0 Ok\r\n"
    );
    assert!(h.spool.entries().expect("lists").is_empty());
}

#[tokio::test]
async fn a_quarantined_message_is_held_with_its_reason_and_edits() {
    let mut h = in_data(Harness::with(Setup::gate("data", "quarantine looks odd")).await).await;
    assert!(h
        .cmd("Subject: x\r\n\r\nhmm\r\n.")
        .await
        .starts_with("250 2.0.0 Ok: queued as"));
    let (entry, stored) = queued_message(&h.spool);
    assert_eq!(entry.quarantine.as_deref(), Some("looks odd"));
    let stored = String::from_utf8(stored).expect("UTF-8");
    assert!(
        stored.contains("\r\nX-Judged: yes\r\nSubject: x\r\n"),
        "{stored}"
    );
    h.cmd("QUIT").await;
    let trace = h.finish().await;
    let data = trace.last().expect("the data stage is traced");
    assert_eq!(
        data.applied,
        vec![Modification::PrependHeader {
            name: "X-Judged".into(),
            value: "yes".into()
        }]
    );
}

#[tokio::test]
async fn the_client_closing_mid_data_stores_nothing() {
    let mut h = in_data(Harness::start().await).await;
    h.send(b"Subject: cut\r\n\r\nhalf a mess").await;
    let trace = h.finish().await;
    assert!(trace.iter().all(|s| s.stage != Stage::Data));
}

#[tokio::test(start_paused = true)]
async fn a_stalled_data_phase_times_out() {
    let mut h = in_data(Harness::start().await).await;
    h.send(b"Subject: slow\r\n").await;
    let started = tokio::time::Instant::now();
    assert_eq!(
        h.reply().await,
        "421 4.4.2 mx.test Error: timeout exceeded, closing connection\r\n"
    );
    assert_eq!(started.elapsed(), h.ctx.config.server.timeouts.data_block);
    assert!(started.elapsed() > Duration::ZERO);
    assert!(h.closed().await);
    assert!(h.spool.entries().expect("lists").is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_trickled_message_is_cut_at_the_data_deadline_and_not_stored() {
    let mut h = in_data(Harness::start().await).await;
    let timeouts = h.ctx.config.server.timeouts.clone();
    // A byte every 70 s: each well within data_block, never the end.
    let every = Duration::from_secs(70);
    assert!(every < timeouts.data_block);
    let started = tokio::time::Instant::now();
    let mut reply = String::new();
    for _ in 0..30 {
        h.send(b"x").await;
        if let Ok(answer) = tokio::time::timeout(every, h.reply()).await {
            reply = answer;
            break;
        }
    }
    assert_eq!(
        reply,
        "421 4.4.2 mx.test Error: timeout exceeded, closing connection\r\n"
    );
    let took = started.elapsed();
    assert!(
        took >= timeouts.data && took < timeouts.data + every,
        "{took:?}"
    );
    assert!(h.closed().await);
    assert!(h.spool.entries().expect("lists").is_empty());
}

#[tokio::test(start_paused = true)]
async fn under_load_a_stalled_data_phase_times_out_sooner() {
    let mut h = in_data(Harness::start().await).await;
    let _load = h.load();
    h.send(b"Subject: slow\r\n").await;
    let started = tokio::time::Instant::now();
    assert_eq!(
        h.reply().await,
        "421 4.4.2 mx.test Error: timeout exceeded, closing connection\r\n"
    );
    assert_eq!(
        started.elapsed(),
        h.ctx.config.server.timeouts.command_under_load
    );
    assert!(h.closed().await);
    assert!(h.spool.entries().expect("lists").is_empty());
}

/// A data stage whose plugin adds `recipients`, granted or not.
fn adding(recipients: &str, allow: &str, server: &str) -> Setup {
    Setup {
        pipeline: "data = [\"adder\"]\nrcpt = [\"relay\"]".into(),
        extra: format!(
            "[plugins.adder]\npath = \"{}\"\nallow = {allow}\n[plugins.adder.config]\nadd_recipients = {recipients}\n",
            super::fixture("fixture_verdict")
        ),
        server: server.into(),
        ..Setup::default()
    }
}

#[tokio::test]
async fn a_granted_added_recipient_is_stored_in_rcpt_form() {
    let setup = adding(r#"["Copy@LocalHost"]"#, r#"["recipients"]"#, "");
    let mut h = in_data(Harness::with(setup).await).await;
    let queued = h.cmd("Subject: s\r\n\r\nbody\r\n.").await;
    assert!(queued.starts_with("250 2.0.0 Ok: queued as "), "{queued}");
    let (entry, _) = queued_message(&h.spool);
    let addresses: Vec<&str> = entry.recipients.iter().map(|r| &*r.address).collect();
    assert_eq!(addresses, ["bob@localhost", "Copy@localhost"]);
}

#[tokio::test]
async fn an_added_recipient_without_the_grant_or_with_crlf_is_not_stored() {
    for (recipients, allow) in [
        (r#"["copy@localhost"]"#, "[]"),
        (
            r#"["copy@localhost\r\nRCPT TO:<x@example.net>"]"#,
            r#"["recipients"]"#,
        ),
    ] {
        let mut h = in_data(Harness::with(adding(recipients, allow, "")).await).await;
        assert_eq!(
            h.cmd("Subject: s\r\n\r\nbody\r\n.").await,
            "451 4.3.0 Temporary filter failure, try again later\r\n",
            "{recipients} {allow}"
        );
        assert!(h.spool.entries().expect("lists").is_empty());
    }
}

#[tokio::test]
async fn added_recipients_count_toward_max_recipients() {
    let setup = adding(
        r#"["copy@localhost"]"#,
        r#"["recipients"]"#,
        "max_recipients = 1",
    );
    let mut h = in_data(Harness::with(setup).await).await;
    assert_eq!(
        h.cmd("Subject: s\r\n\r\nbody\r\n.").await,
        "452 4.5.3 Too many recipients\r\n"
    );
    assert!(h.spool.entries().expect("lists").is_empty());
}
