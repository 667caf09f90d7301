//! The dialogue around transactions: greeting, EHLO/HELO, the verbs valid
//! in every state, errors and their limit, pipelining, timeouts, shutdown.

use std::time::Duration;

use super::{Harness, Setup};

#[tokio::test]
async fn ehlo_lists_the_extensions_of_a_plain_listener() {
    let mut h = Harness::start().await.greeted().await;
    assert_eq!(
        h.cmd("EHLO client.example").await,
        "250-mx.test greets client.example\r\n\
         250-PIPELINING\r\n\
         250-SIZE 26214400\r\n\
         250-8BITMIME\r\n\
         250-ENHANCEDSTATUSCODES\r\n\
         250-SMTPUTF8\r\n\
         250-DSN\r\n\
         250 HELP\r\n"
    );
    assert_eq!(
        h.cmd("QUIT").await,
        "221 2.0.0 mx.test closing connection\r\n"
    );
    assert!(h.closed().await);
}

#[tokio::test]
async fn helo_answers_one_line() {
    let mut h = Harness::start().await.greeted().await;
    assert_eq!(
        h.cmd("HELO client.example").await,
        "250 mx.test greets client.example\r\n"
    );
    assert_eq!(
        h.cmd("MAIL FROM:<a@example.org>").await,
        "250 2.1.0 Sender ok\r\n"
    );
}

#[tokio::test]
async fn verbs_valid_in_every_state() {
    let mut h = Harness::start().await.greeted().await;
    for _ in 0..2 {
        assert_eq!(h.cmd("NOOP").await, "250 2.0.0 Ok\r\n");
        assert_eq!(h.cmd("RSET").await, "250 2.0.0 Ok\r\n");
        assert_eq!(
            h.cmd("VRFY postmaster").await,
            "252 2.1.5 Cannot VRFY user, but will accept message and attempt delivery\r\n"
        );
        assert_eq!(
            h.cmd("EXPN staff").await,
            "252 2.1.5 Cannot VRFY user, but will accept message and attempt delivery\r\n"
        );
        assert!(h.cmd("HELP").await.starts_with("214 2.0.0 Commands:"));
        h.cmd("EHLO client.example").await;
        h.cmd("MAIL FROM:<a@example.org>").await;
    }
    assert_eq!(
        h.cmd("QUIT").await,
        "221 2.0.0 mx.test closing connection\r\n"
    );
    assert!(h.closed().await);
}

#[tokio::test]
async fn syntax_errors_and_long_lines() {
    let mut h = Harness::start().await.greeted().await;
    assert_eq!(
        h.cmd("BOGUS").await,
        "500 5.5.2 Syntax error, command unrecognized\r\n"
    );
    let long = format!("NOOP {}", "x".repeat(600));
    assert_eq!(h.cmd(&long).await, "500 5.5.2 Line too long\r\n");
    // An AUTH line may be longer than 512 octets (RFC 4954 §4): it is
    // parsed, not cut (and refused here because the listener has no AUTH).
    let auth = format!("AUTH PLAIN {}", "A".repeat(600));
    assert_eq!(h.cmd(&auth).await, "502 5.5.1 Command not implemented\r\n");
    assert_eq!(h.cmd("NOOP").await, "250 2.0.0 Ok\r\n");
}

#[tokio::test]
async fn too_many_errors_close_the_session() {
    let mut h = Harness::start().await.greeted().await;
    for _ in 0..19 {
        // Errors 1 to 19.
        assert_eq!(
            h.cmd("BOGUS").await,
            "500 5.5.2 Syntax error, command unrecognized\r\n"
        );
    }
    // The twentieth error is answered, then the session ends.
    assert_eq!(
        h.cmd("BOGUS").await,
        "500 5.5.2 Syntax error, command unrecognized\r\n"
    );
    assert_eq!(
        h.reply().await,
        "421 4.7.0 Too many errors, closing connection\r\n"
    );
    assert!(h.closed().await);
}

#[tokio::test]
async fn pipelined_commands_are_answered_in_order_in_one_write() {
    let mut h = Harness::start().await.greeted().await;
    h.send(
        b"EHLO client.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<bob@localhost>\r\nNOOP\r\n",
    )
    .await;
    assert!(h.reply().await.starts_with("250-mx.test greets"));
    assert_eq!(h.reply().await, "250 2.1.0 Sender ok\r\n");
    assert_eq!(h.reply().await, "250 2.1.5 Recipient ok\r\n");
    assert_eq!(h.reply().await, "250 2.0.0 Ok\r\n");
}

#[tokio::test(start_paused = true)]
async fn an_idle_client_is_let_go_after_the_command_timeout() {
    let mut h = Harness::start().await.ehlo().await;
    let started = tokio::time::Instant::now();
    assert_eq!(
        h.reply().await,
        "421 4.4.2 mx.test Error: timeout exceeded, closing connection\r\n"
    );
    // The paused clock moves only by the session's own timers.
    assert_eq!(started.elapsed(), h.ctx.config.server.timeouts.command);
    assert!(h.closed().await);
}

#[tokio::test(start_paused = true)]
async fn the_timeout_counts_from_the_last_command() {
    let mut h = Harness::start().await.ehlo().await;
    let timeout = h.ctx.config.server.timeouts.command;
    tokio::time::sleep(timeout - Duration::from_secs(1)).await;
    assert_eq!(h.cmd("NOOP").await, "250 2.0.0 Ok\r\n");
    let started = tokio::time::Instant::now();
    assert!(h.reply().await.starts_with("421 4.4.2"));
    assert_eq!(started.elapsed(), timeout);
}

#[tokio::test]
async fn shutdown_says_421_and_ends() {
    let mut h = Harness::start().await.ehlo().await;
    h.shutdown.send(true).expect("the session listens");
    assert_eq!(
        h.reply().await,
        "421 4.3.2 mx.test Service shutting down, closing connection\r\n"
    );
    assert!(h.closed().await);
}

#[tokio::test(start_paused = true)]
async fn a_client_that_talks_before_the_greeting_is_dropped() {
    let mut h = Harness::with(Setup {
        listener: r#"greet_delay = "2s""#.into(),
        peer: "192.0.2.7:4000".parse().expect("an address"),
        ..Setup::default()
    })
    .await;
    h.send(b"EHLO too.early\r\n").await;
    assert!(h.reply().await.starts_with("554 5.5.0"));
    assert!(h.closed().await);
    let trace = h.finish().await;
    assert!(trace.is_empty(), "no stage ran: {trace:?}");
}

#[tokio::test(start_paused = true)]
async fn a_patient_client_is_greeted_after_the_delay() {
    let mut h = Harness::with(Setup {
        listener: r#"greet_delay = "2s""#.into(),
        // Not loopback, which is exempt by default.
        peer: "192.0.2.7:4000".parse().expect("an address"),
        ..Setup::default()
    })
    .await;
    let started = tokio::time::Instant::now();
    assert_eq!(h.reply().await, "220 mx.test ESMTP sluice\r\n");
    assert_eq!(started.elapsed(), Duration::from_secs(2));
}

#[tokio::test]
async fn a_connect_stage_tempfail_is_a_421_and_the_end() {
    let mut h = Harness::with(Setup::gate("connect", "tempfail 450 4.7.1 later")).await;
    assert_eq!(h.reply().await, "421 4.7.1 later\r\n");
    assert!(h.closed().await);
}

#[tokio::test]
async fn a_helo_stage_refusal_keeps_the_session_ungreeted() {
    let mut h = Harness::with(Setup::gate("helo", "reject 550 5.7.1 not you"))
        .await
        .greeted()
        .await;
    assert_eq!(h.cmd("EHLO bad.example").await, "550 5.7.1 not you\r\n");
    assert_eq!(
        h.cmd("MAIL FROM:<a@example.org>").await,
        "503 5.5.1 Bad sequence of commands: send HELO/EHLO first\r\n"
    );
}

#[tokio::test(start_paused = true)]
async fn a_client_that_never_reads_its_replies_is_let_go_after_the_command_timeout() {
    let mut h = Harness::start().await.greeted().await;
    let took = h.never_read().await;
    let timeout = h.ctx.config.server.timeouts.command;
    assert!(
        took >= timeout && took < timeout + Duration::from_secs(10),
        "{took:?}"
    );
    h.finish().await;
}

#[tokio::test(start_paused = true)]
async fn under_load_a_client_that_never_reads_is_let_go_sooner() {
    let mut h = Harness::start().await.greeted().await;
    let _load = h.load();
    let took = h.never_read().await;
    let timeout = h.ctx.config.server.timeouts.command_under_load;
    assert!(
        took >= timeout && took < timeout + Duration::from_secs(5),
        "{took:?}"
    );
    h.finish().await;
}
