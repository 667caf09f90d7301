//! Delivery status notifications (RFC 3464): the report a sender gets
//! when recipients finally fail, once when delivery is delayed, and, when
//! NOTIFY=SUCCESS asked for it (RFC 3461), when a recipient was delivered
//! or relayed to a next hop that does not pass DSN requests on. It is a
//! `multipart/report; report-type=delivery-status` from `<>` (so it can
//! never cause another DSN) with a human-readable part, a machine-readable
//! `message/delivery-status` part (with the sender's ENVID and ORCPT
//! quoted back), and the original message: its headers
//! (`text/rfc822-headers`, at most [`MAX_QUOTED_HEADERS`] of them, cut
//! between two header fields), or the whole of it (`message/rfc822`) for
//! a failure under RET=FULL.

use crate::smtp::dsn::xtext_encode;
use crate::smtp::received::rfc5322_date;
use sluice_spool::OriginalRecipient;

fn date(unix_seconds: u64) -> String {
    rfc5322_date(i64::try_from(unix_seconds).unwrap_or(i64::MAX))
}

/// The most of the original header section a report quotes: a message
/// with megabytes of headers must not make its report as large.
pub const MAX_QUOTED_HEADERS: usize = 64 * 1024;

/// What happened to the recipients a report is about (its `Action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportKind {
    /// Failed for good.
    Failed,
    /// Still being retried.
    Delayed,
    /// Delivered to the mailbox (Maildir, LMTP).
    Delivered,
    /// Handed to a next hop that does not take DSN requests.
    Relayed,
}

/// One recipient the report is about.
#[derive(Debug, Clone)]
pub struct RecipientReport {
    pub address: String,
    /// The last reply, e.g. "550 5.1.1 no such user".
    pub reply: String,
    /// The host that gave the reply, when a remote one did.
    pub remote_mta: Option<String>,
    /// The recipient's ORCPT, quoted as `Original-Recipient`.
    pub original: Option<OriginalRecipient>,
}

/// What a report needs to know about the original message.
pub struct Original<'a> {
    pub queue_id: &'a str,
    pub reverse_path: &'a str,
    /// Unix seconds at which the message was accepted.
    pub received_at: u64,
    /// The sender's ENVID, quoted as `Original-Envelope-Id`.
    pub envid: Option<&'a str>,
    /// The message, or at least its head.
    pub message: &'a [u8],
    /// `message` is the whole message and goes back whole (RET=FULL).
    pub whole: bool,
}

/// The complete report message, CRLF line ends.
pub fn report(
    hostname: &str,
    kind: ReportKind,
    original: &Original<'_>,
    recipients: &[RecipientReport],
    now: u64,
    retry_until: Option<u64>,
) -> Vec<u8> {
    let boundary = format!("{}.{now}/{hostname}", original.queue_id);
    let (subject, action, intro) = match kind {
        ReportKind::Delivered => (
            "Successful Mail Delivery Report",
            "delivered",
            "Your message was delivered to the recipients below.",
        ),
        ReportKind::Relayed => (
            "Successful Mail Delivery Report",
            "relayed",
            "Your message was handed on to the recipients' next mail server,\r\n\
             which does not report delivery; no further notice will follow.",
        ),
        ReportKind::Failed => (
            "Undelivered Mail Returned to Sender",
            "failed",
            "Your message could not be delivered to one or more recipients.\r\n\
             It has been given up on; the reasons follow.",
        ),
        ReportKind::Delayed => (
            "Delayed Mail (still being retried)",
            "delayed",
            "Your message has not been delivered to one or more recipients yet.\r\n\
             Delivery is still being retried; you need not send it again.",
        ),
    };
    let whole = original.whole && kind == ReportKind::Failed;
    let headers = quoted_headers(header_block(original.message));
    let mut out = String::with_capacity(2048);
    out.push_str(&format!(
        "From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n\
         To: <{}>\r\n\
         Subject: {subject}\r\n\
         Date: {}\r\n\
         Message-ID: <{}.{now}.dsn@{hostname}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\
         \tboundary=\"{boundary}\"\r\n\
         \r\n\
         This is a MIME-encapsulated delivery status notification.\r\n\
         \r\n",
        original.reverse_path,
        date(now),
        original.queue_id,
    ));

    out.push_str(&format!(
        "--{boundary}\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n\
         This is the mail system at {hostname}.\r\n\
         \r\n\
         {intro}\r\n\
         \r\n"
    ));
    for rcpt in recipients {
        let said = if is_smtp_reply(&rcpt.reply) {
            one_line(&rcpt.reply)
        } else {
            action.to_owned()
        };
        out.push_str(&format!("<{}>: {said}\r\n", rcpt.address));
    }
    if headers.cut && !whole {
        out.push_str(&format!(
            "\r\nThe original message's header section ({} octets) is too large\r\n\
             to quote whole: only its first {} octets follow.\r\n",
            headers.whole,
            headers.bytes.len()
        ));
    }
    out.push_str("\r\n");

    out.push_str(&format!(
        "--{boundary}\r\n\
         Content-Type: message/delivery-status\r\n\
         \r\n"
    ));
    if let Some(envid) = original.envid {
        out.push_str(&format!("Original-Envelope-Id: {}\r\n", one_line(envid)));
    }
    out.push_str(&format!(
        "Reporting-MTA: dns; {hostname}\r\n\
         X-Sluice-Queue-ID: {}\r\n\
         Arrival-Date: {}\r\n",
        original.queue_id,
        date(original.received_at),
    ));
    for rcpt in recipients {
        out.push_str("\r\n");
        if let Some(orcpt) = &rcpt.original {
            out.push_str(&format!(
                "Original-Recipient: {}; {}\r\n",
                orcpt.addr_type,
                printable_address(&orcpt.address)
            ));
        }
        out.push_str(&format!(
            "Final-Recipient: rfc822; {}\r\n\
             Action: {action}\r\n\
             Status: {}\r\n",
            printable_address(&rcpt.address),
            status_code(&rcpt.reply, kind),
        ));
        if let Some(mta) = &rcpt.remote_mta {
            out.push_str(&format!("Remote-MTA: dns; {mta}\r\n"));
        }
        // Only a server's reply: a local delivery's note is ours alone.
        if is_smtp_reply(&rcpt.reply) {
            out.push_str(&format!(
                "Diagnostic-Code: smtp; {}\r\n",
                one_line(&rcpt.reply)
            ));
        }
        out.push_str(&format!("Last-Attempt-Date: {}\r\n", date(now)));
        if let Some(until) = retry_until.filter(|_| kind == ReportKind::Delayed) {
            out.push_str(&format!("Will-Retry-Until: {}\r\n", date(until)));
        }
    }
    out.push_str("\r\n");

    let mut bytes = if whole {
        out.push_str(&format!(
            "--{boundary}\r\nContent-Type: message/rfc822\r\n\r\n"
        ));
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(original.message);
        bytes
    } else {
        out.push_str(&format!(
            "--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        ));
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(headers.bytes);
        bytes
    };
    if !bytes.ends_with(b"\r\n") {
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    bytes
}

/// The message's header section, without the blank line that ends it.
fn header_block(message: &[u8]) -> &[u8] {
    if message.starts_with(b"\r\n") {
        return &[];
    }
    match message.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(end) => &message[..end + 2],
        None => message,
    }
}

/// What of the original header section a report quotes.
struct QuotedHeaders<'a> {
    /// Whole header fields, CRLF-terminated, at most `MAX_QUOTED_HEADERS`.
    bytes: &'a [u8],
    /// Octets in the whole header section.
    whole: usize,
    /// Whether fields were left out.
    cut: bool,
}

/// The header section, or as many of its first fields as fit in
/// [`MAX_QUOTED_HEADERS`]: a cut falls only before a line that starts a
/// new field, never inside a folded one.
fn quoted_headers(block: &[u8]) -> QuotedHeaders<'_> {
    let whole = block.len();
    if whole <= MAX_QUOTED_HEADERS {
        return QuotedHeaders {
            bytes: block,
            whole,
            cut: false,
        };
    }
    let mut end = 0;
    let mut at = 0;
    while let Some(line) = block[at..].windows(2).position(|w| w == b"\r\n") {
        let next = at + line + 2;
        if next > MAX_QUOTED_HEADERS {
            break;
        }
        // A line starting with white space continues the field before it.
        if !matches!(block.get(next), Some(b' ' | b'\t')) {
            end = next;
        }
        at = next;
    }
    QuotedHeaders {
        bytes: &block[..end],
        whole,
        cut: true,
    }
}

/// Whether a recipient's reply came from a server ("250 ...", "550 ..."),
/// not from local delivery.
fn is_smtp_reply(reply: &str) -> bool {
    let code = reply.as_bytes().get(..3);
    code.is_some_and(|c| c.iter().all(u8::is_ascii_digit))
        && matches!(reply.as_bytes().get(3), None | Some(b' ' | b'-'))
}

/// An address for a `message/delivery-status` field, which is ASCII
/// (RFC 3464 §2.3.1): a UTF-8 one goes in xtext.
fn printable_address(address: &str) -> String {
    if address.bytes().all(|b| (b' '..=b'~').contains(&b)) {
        address.to_owned()
    } else {
        xtext_encode(address)
    }
}

/// The RFC 3463 status of a reply: its enhanced code when it has one,
/// else one derived from the reply code's class.
pub fn status_code(reply: &str, kind: ReportKind) -> String {
    let enhanced = reply.split_whitespace().nth(1).filter(|word| {
        let parts: Vec<&str> = word.split('.').collect();
        parts.len() == 3
            && matches!(parts[0], "2" | "4" | "5")
            && parts[1..]
                .iter()
                .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
    });
    match (enhanced, kind) {
        (Some(code), ReportKind::Failed) if code.starts_with('5') => code.to_owned(),
        (Some(code), ReportKind::Delayed) if code.starts_with('4') => code.to_owned(),
        (Some(code), ReportKind::Delivered | ReportKind::Relayed) if code.starts_with('2') => {
            code.to_owned()
        }
        (_, ReportKind::Failed) => "5.0.0".to_owned(),
        (_, ReportKind::Delayed) => "4.0.0".to_owned(),
        (_, ReportKind::Delivered | ReportKind::Relayed) => "2.0.0".to_owned(),
    }
}

/// Replies from other servers go into header fields: no line breaks.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(kind: ReportKind) -> String {
        let original = Original {
            queue_id: "00000000000000ab",
            reverse_path: "alice@example.org",
            received_at: 1_700_000_000,
            envid: None,
            message: b"Subject: hello\r\nMessage-ID: <m1@example.org>\r\n\r\nsecret body\r\n",
            whole: false,
        };
        let recipients = vec![RecipientReport {
            address: "bob@example.net".into(),
            reply: "550 5.1.1 <bob@example.net>: no such user\r\nx".into(),
            remote_mta: Some("mx.example.net".into()),
            original: None,
        }];
        String::from_utf8(report(
            "mx.example.org",
            kind,
            &original,
            &recipients,
            1_700_000_100,
            Some(1_700_400_000),
        ))
        .unwrap()
    }

    #[test]
    fn failure_report_has_rfc3464_fields_and_headers_only() {
        let dsn = sample(ReportKind::Failed);
        for needle in [
            "From: Mail Delivery System <MAILER-DAEMON@mx.example.org>\r\n",
            "To: <alice@example.org>\r\n",
            "Auto-Submitted: auto-replied\r\n",
            "Content-Type: multipart/report; report-type=delivery-status;",
            "Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.org\r\n",
            "Final-Recipient: rfc822; bob@example.net\r\nAction: failed\r\nStatus: 5.1.1\r\n",
            "Remote-MTA: dns; mx.example.net\r\n",
            "Diagnostic-Code: smtp; 550 5.1.1 <bob@example.net>: no such user  x\r\n",
            "Content-Type: text/rfc822-headers\r\n\r\nSubject: hello\r\nMessage-ID: <m1@example.org>\r\n",
        ] {
            assert!(dsn.contains(needle), "missing {needle:?} in\n{dsn}");
        }
        assert!(!dsn.contains("secret body"));
        assert!(!dsn.contains("Will-Retry-Until"));
        assert!(dsn.ends_with("--\r\n"));
        assert!(!dsn.contains("\n\n") && !dsn.replace("\r\n", "").contains('\n'));
    }

    #[test]
    fn delay_report_says_delayed_and_until_when() {
        let dsn = sample(ReportKind::Delayed);
        assert!(
            dsn.contains("Action: delayed\r\nStatus: 4.0.0\r\n"),
            "{dsn}"
        );
        assert!(dsn.contains("Will-Retry-Until: "));
    }

    fn failed_report(message: &[u8]) -> String {
        let original = Original {
            queue_id: "00000000000000ac",
            reverse_path: "alice@example.org",
            received_at: 1_700_000_000,
            envid: None,
            message,
            whole: false,
        };
        let recipients = vec![RecipientReport {
            address: "bob@example.net".into(),
            reply: "550 5.1.1 no such user".into(),
            remote_mta: None,
            original: None,
        }];
        let dsn = report(
            "mx.example.org",
            ReportKind::Failed,
            &original,
            &recipients,
            1_700_000_100,
            None,
        );
        String::from_utf8(dsn).unwrap()
    }

    /// The `text/rfc822-headers` part's content.
    fn quoted_part(dsn: &str) -> &str {
        let start = dsn
            .find("Content-Type: text/rfc822-headers\r\n\r\n")
            .unwrap()
            + "Content-Type: text/rfc822-headers\r\n\r\n".len();
        // The part ends with the blank line before the closing boundary.
        let end = dsn[start..].find("\r\n--").unwrap() + start;
        &dsn[start..end]
    }

    #[test]
    fn a_large_header_section_is_cut_between_fields_to_64_kib() {
        // 3,000 fields of ~67 octets, each folded over two lines: ~200 KiB.
        let mut headers = String::from("Subject: first\r\n");
        for n in 0..3000 {
            headers.push_str(&format!(
                "X-Trace-{n:04}: a value long enough to need\r\n\tfolding {n:04} ........\r\n"
            ));
        }
        let message = format!("{headers}\r\nthe body\r\n");
        assert!(headers.len() > 2 * MAX_QUOTED_HEADERS);
        let dsn = failed_report(message.as_bytes());
        let quoted = quoted_part(&dsn);
        assert!(quoted.len() <= MAX_QUOTED_HEADERS, "{}", quoted.len());
        assert!(quoted.len() > MAX_QUOTED_HEADERS - 200, "{}", quoted.len());
        // A prefix of the original made of whole fields: the last one kept
        // ends with its continuation line.
        assert!(headers.starts_with(quoted));
        let last = quoted.trim_end().rsplit("\r\n").next().unwrap();
        assert!(last.starts_with("\tfolding "), "{last:?}");
        assert!(!dsn.contains("the body"));
        assert!(
            dsn.contains(&format!(
                "The original message's header section ({} octets) is too large\r\n\
                 to quote whole: only its first {} octets follow.\r\n",
                headers.len(),
                quoted.len()
            )),
            "{}",
            &dsn[..dsn.len().min(1500)]
        );
        assert!(dsn.ends_with("--\r\n"));
    }

    #[test]
    fn a_small_header_section_is_quoted_whole_without_a_note() {
        let headers = "Subject: hello\r\nX-Folded: one\r\n two\r\n";
        let dsn = failed_report(format!("{headers}\r\nbody\r\n").as_bytes());
        assert_eq!(quoted_part(&dsn), headers);
        assert!(!dsn.contains("too large"));
    }

    #[test]
    fn one_field_larger_than_the_cap_is_left_out_whole() {
        let giant = format!("X-Giant: {}\r\n", "x".repeat(MAX_QUOTED_HEADERS));
        let dsn = failed_report(format!("{giant}Subject: s\r\n\r\nbody\r\n").as_bytes());
        assert_eq!(quoted_part(&dsn), "");
        assert!(dsn.contains("only its first 0 octets follow"));
    }

    fn dsn_request_report(kind: ReportKind, reply: &str, whole: bool) -> String {
        let original = Original {
            queue_id: "00000000000000ad",
            reverse_path: "alice@example.org",
            received_at: 1_700_000_000,
            envid: Some("QQ314159"),
            message: b"Subject: hello\r\n\r\nsecret body\r\n",
            whole,
        };
        let recipients = vec![RecipientReport {
            address: "b\u{f6}b@example.net".into(),
            reply: reply.into(),
            remote_mta: None,
            original: Some(OriginalRecipient {
                addr_type: "rfc822".into(),
                address: "bob+list@example.net".into(),
            }),
        }];
        let dsn = report(
            "mx.example.org",
            kind,
            &original,
            &recipients,
            1_700_000_100,
            None,
        );
        String::from_utf8(dsn).unwrap()
    }

    #[test]
    fn envid_and_orcpt_are_quoted_back() {
        let dsn = dsn_request_report(ReportKind::Failed, "550 5.1.1 no such user", false);
        assert!(
            dsn.contains(
                "Content-Type: message/delivery-status\r\n\r\n\
                 Original-Envelope-Id: QQ314159\r\nReporting-MTA: dns; mx.example.org\r\n"
            ),
            "{dsn}"
        );
        assert!(
            dsn.contains(
                "\r\n\r\nOriginal-Recipient: rfc822; bob+list@example.net\r\n\
                 Final-Recipient: rfc822; b+C3+B6b@example.net\r\nAction: failed\r\n"
            ),
            "{dsn}"
        );
        assert!(!dsn.contains("secret body"));
    }

    #[test]
    fn ret_full_returns_the_whole_message_on_failure_only() {
        let dsn = dsn_request_report(ReportKind::Failed, "550 5.1.1 no such user", true);
        assert!(
            dsn.contains(
                "Content-Type: message/rfc822\r\n\r\nSubject: hello\r\n\r\nsecret body\r\n\r\n--"
            ),
            "{dsn}"
        );
        assert!(!dsn.contains("text/rfc822-headers"));
        let delayed = dsn_request_report(ReportKind::Delayed, "451 4.4.1 later", true);
        assert!(!delayed.contains("secret body"));
        assert!(delayed.contains("text/rfc822-headers"));
    }

    #[test]
    fn success_reports_say_delivered_or_relayed() {
        let delivered = dsn_request_report(ReportKind::Delivered, "maildir /srv/mail/x", false);
        assert!(
            delivered.contains("Action: delivered\r\nStatus: 2.0.0\r\nLast-Attempt-Date: "),
            "{delivered}"
        );
        assert!(!delivered.contains("/srv/mail"), "{delivered}");
        let relayed = dsn_request_report(ReportKind::Relayed, "250 2.6.0 queued as 1", false);
        assert!(
            relayed.contains(
                "Action: relayed\r\nStatus: 2.6.0\r\nDiagnostic-Code: smtp; 250 2.6.0 queued as 1\r\n"
            ),
            "{relayed}"
        );
        assert!(relayed.contains("Subject: Successful Mail Delivery Report\r\n"));
    }

    #[test]
    fn status_codes() {
        assert_eq!(status_code("550 5.7.1 denied", ReportKind::Failed), "5.7.1");
        assert_eq!(status_code("550 denied", ReportKind::Failed), "5.0.0");
        assert_eq!(
            status_code("451 4.4.1 timeout", ReportKind::Failed),
            "5.0.0"
        );
        assert_eq!(
            status_code("451 4.4.1 timeout", ReportKind::Delayed),
            "4.4.1"
        );
        assert_eq!(status_code("550 5.1.1x no", ReportKind::Failed), "5.0.0");
    }
}
