//! Trace headers (RFC 5321 §4.4): counting the `Received:` fields of an
//! incoming message for loop detection, and building the one sluice
//! prepends before the message goes to the spool. Client-supplied text is
//! sanitized so it can neither add header lines nor break the structure of
//! the field.

use std::net::IpAddr;

/// Number of `Received:` fields in the header section of `message` (names
/// compared case-insensitively; the section ends at the first empty line;
/// folded continuation lines are part of their field and do not count).
pub fn count_received(message: &[u8]) -> usize {
    let mut count = 0;
    for line in message.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            continue;
        }
        if let Some(colon) = line.iter().position(|&b| b == b':') {
            // RFC 5322 §4.5 obsolete syntax allows white space before ':'.
            let name = line[..colon].trim_ascii_end();
            if name.eq_ignore_ascii_case(b"received") {
                count += 1;
            }
        }
    }
    count
}

/// The `Received:` field sluice prepends, CRLF-terminated and folded:
///
/// ```text
/// Received: from HELO (REVERSE [IP])
///     (using TLS)
///     by HOSTNAME (sluice) with PROTOCOL id QUEUEID
///     for <RCPT>; DATE
/// ```
///
/// `reverse_name` is the verified reverse DNS name (left out when `None`),
/// `protocol` one of the RFC 3848 keywords (SMTP, ESMTP, ESMTPS, ESMTPSA,
/// UTF8SMTP, ...), `tls` a description such as `version=TLSv1.3
/// cipher=TLS_AES_128_GCM_SHA256` (its line is left out when `None`),
/// `recipient` the single recipient (left out for several, as RFC 5321
/// §7.2 advises to avoid disclosing Bcc recipients), `date` from
/// [`rfc5322_date`].
///
/// Every argument is sanitized: the HELO name and DNS names keep only
/// domain and address-literal characters, comment text loses control
/// characters, parentheses and backslashes, so nothing can inject a line
/// or close the comment early.
#[allow(clippy::too_many_arguments)] // one argument per clause of the field
pub fn received_header(
    helo: &str,
    reverse_name: Option<&str>,
    client_ip: IpAddr,
    hostname: &str,
    protocol: &str,
    tls: Option<&str>,
    queue_id: &str,
    recipient: Option<&str>,
    date: &str,
) -> String {
    let ip = match client_ip {
        IpAddr::V4(v4) => format!("[{v4}]"),
        IpAddr::V6(v6) => format!("[IPv6:{v6}]"),
    };
    let mut out = String::with_capacity(256);
    out.push_str("Received: from ");
    out.push_str(&name_token(helo));
    out.push_str(" (");
    if let Some(reverse) = reverse_name {
        out.push_str(&name_token(reverse));
        out.push(' ');
    }
    out.push_str(&ip);
    out.push_str(")\r\n");
    if let Some(tls) = tls {
        out.push_str("\t(using ");
        out.push_str(&comment_text(tls));
        out.push_str(")\r\n");
    }
    out.push_str("\tby ");
    out.push_str(&name_token(hostname));
    out.push_str(" (sluice) with ");
    out.push_str(&filtered(protocol, |c| c.is_ascii_alphanumeric(), "SMTP"));
    out.push_str(" id ");
    out.push_str(&filtered(
        queue_id,
        |c| c.is_ascii_alphanumeric() || "-_.".contains(c),
        "unknown",
    ));
    if let Some(rcpt) = recipient {
        let rcpt = rcpt
            .strip_prefix('<')
            .and_then(|r| r.strip_suffix('>'))
            .unwrap_or(rcpt);
        out.push_str("\r\n\tfor <");
        out.extend(rcpt.chars().map(|c| if c.is_control() { '?' } else { c }));
        out.push('>');
    }
    out.push_str("; ");
    out.push_str(&comment_text(date));
    out.push_str("\r\n");
    out
}

/// Longest name kept in the header; longer ones are cut (the SMTP line
/// limits make them impossible from a compliant client anyway).
const MAX_NAME: usize = 255;

/// A domain, HELO argument or address literal: only the characters these
/// can contain survive; anything else becomes `?`.
fn name_token(s: &str) -> String {
    filtered(
        s,
        |c| c.is_ascii_alphanumeric() || "-._:[]".contains(c),
        "unknown",
    )
}

/// Text inside a comment: no control characters, no parentheses or
/// backslashes (which would end or escape the comment), ASCII only.
fn comment_text(s: &str) -> String {
    s.chars()
        .take(MAX_NAME)
        .map(|c| match c {
            c if c.is_control() => ' ',
            '(' | ')' | '\\' => '?',
            c if !c.is_ascii() => '?',
            c => c,
        })
        .collect()
}

/// Keeps characters accepted by `keep`, replaces the others by `?`; an
/// empty input gives `empty`.
fn filtered(s: &str, keep: impl Fn(char) -> bool, empty: &str) -> String {
    if s.is_empty() {
        return empty.to_owned();
    }
    s.chars()
        .take(MAX_NAME)
        .map(|c| if keep(c) { c } else { '?' })
        .collect()
}

/// `unix_secs` as an RFC 5322 §3.3 date in UTC, e.g.
/// `Sun, 22 Nov 2026 22:31:00 +0000`.
pub fn rfc5322_date(unix_secs: i64) -> String {
    rfc5322_date_with_offset(unix_secs, 0)
}

/// `unix_secs` as an RFC 5322 §3.3 date shown in the zone `offset_minutes`
/// east of UTC (clamped to ±23:59).
pub fn rfc5322_date_with_offset(unix_secs: i64, offset_minutes: i32) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let offset = offset_minutes.clamp(-1439, 1439);
    let local = unix_secs.saturating_add(i64::from(offset) * 60);
    let days = local.div_euclid(86_400);
    let secs = local.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    // 1970-01-01 was a Thursday.
    let weekday = DAYS[days.rem_euclid(7) as usize];
    let sign = if offset < 0 { '-' } else { '+' };
    let abs = offset.unsigned_abs();
    format!(
        "{weekday}, {day} {} {year:04} {:02}:{:02}:{:02} {sign}{:02}{:02}",
        MONTHS[(month - 1) as usize],
        secs / 3600,
        secs % 3600 / 60,
        secs % 60,
        abs / 60,
        abs % 60,
    )
}

/// Days since 1970-01-01 to (year, month 1-12, day 1-31) in the proleptic
/// Gregorian calendar (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March-based
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_received_fields_in_header_only() {
        let m = b"Received: from a\r\n\tby b; date\r\nreceived:x\r\nRECEIVED : y\r\nX-Received: no\r\nSubject: Received: no\r\n\r\nReceived: in body\r\n";
        assert_eq!(count_received(m), 3);
        assert_eq!(count_received(b""), 0);
        assert_eq!(count_received(b"\r\nReceived: x\r\n"), 0);
        assert_eq!(
            count_received(b"Received: a\nReceived: b\n\nReceived: c\n"),
            2
        );
        // Folded lines that look like fields do not count.
        assert_eq!(
            count_received(b"Subject: x\r\n Received: y\r\n\tReceived: z\r\n\r\n"),
            0
        );
        assert_eq!(
            count_received(b"Receivedx: a\r\nReceive: b\r\nno colon\r\nReceived:\r\n"),
            1
        );
        let many: Vec<u8> = b"Received: x\r\n".repeat(60);
        assert_eq!(count_received(&many), 60);
    }

    #[test]
    fn header_with_everything() {
        let h = received_header(
            "client.example",
            Some("mail.client.example"),
            "192.0.2.7".parse().unwrap(),
            "mx.example.org",
            "ESMTPS",
            Some("version=TLSv1.3 cipher=TLS_AES_128_GCM_SHA256"),
            "01HXYZ",
            Some("user@example.org"),
            "Sun, 22 Nov 2026 22:31:00 +0000",
        );
        assert_eq!(
            h,
            "Received: from client.example (mail.client.example [192.0.2.7])\r\n\
             \t(using version=TLSv1.3 cipher=TLS_AES_128_GCM_SHA256)\r\n\
             \tby mx.example.org (sluice) with ESMTPS id 01HXYZ\r\n\
             \tfor <user@example.org>; Sun, 22 Nov 2026 22:31:00 +0000\r\n"
        );
    }

    #[test]
    fn header_minimal() {
        let h = received_header(
            "[IPv6:2001:db8::5]",
            None,
            "2001:db8::5".parse().unwrap(),
            "mx",
            "SMTP",
            None,
            "Q1",
            None,
            "Mon, 2 Mar 2026 01:02:03 +0000",
        );
        assert_eq!(
            h,
            "Received: from [IPv6:2001:db8::5] ([IPv6:2001:db8::5])\r\n\
             \tby mx (sluice) with SMTP id Q1; Mon, 2 Mar 2026 01:02:03 +0000\r\n"
        );
        let h = received_header(
            "x",
            None,
            "127.0.0.1".parse().unwrap(),
            "mx",
            "ESMTP",
            None,
            "Q",
            Some("<a@b>"),
            "D",
        );
        assert!(h.contains("\tfor <a@b>; D\r\n"));
    }

    #[test]
    fn hostile_input_is_sanitized() {
        let h = received_header(
            "evil\r\nX-Injected: 1 (x)",
            Some("bad)name\n"),
            "192.0.2.1".parse().unwrap(),
            "mx",
            "ESMTP\r\nX: y",
            Some("v=1) (oops\\\r\nX-Bad: 1"),
            "id\r\n",
            Some("a\r\nX-Rcpt: 1@b"),
            "date\r\nX-Date: 1",
        );
        // Exactly the 4 line ends of the layout, each followed by a tab.
        assert_eq!(h.matches("\r\n").count(), 4);
        assert_eq!(h.matches('\n').count(), 4);
        assert_eq!(h.matches('\r').count(), 4);
        for line in h.split("\r\n").skip(1).filter(|l| !l.is_empty()) {
            assert!(line.starts_with('\t'), "{line:?}");
        }
        assert!(h.starts_with("Received: from evil??X-Injected:?1??x? (bad?name? [192.0.2.1])\r\n"));
        assert!(h.contains("\t(using v=1? ?oops?  X-Bad: 1)\r\n"));
        assert!(h.contains("with ESMTP??X??y id id??\r\n"));
        assert!(h.contains("\tfor <a??X-Rcpt: 1@b>; date  X-Date: 1\r\n"));
        // Comment parentheses stay balanced.
        let opens = h.matches('(').count();
        assert_eq!(opens, h.matches(')').count());
        assert_eq!(count_received(h.as_bytes()), 1);
    }

    #[test]
    fn empty_and_long_names() {
        let long = "a".repeat(1000);
        let h = received_header(
            "",
            None,
            "192.0.2.1".parse().unwrap(),
            &long,
            "",
            None,
            "",
            None,
            "D",
        );
        assert!(h.starts_with("Received: from unknown ([192.0.2.1])\r\n"));
        assert!(h.contains(&format!(
            "\tby {} (sluice) with SMTP id unknown; D",
            "a".repeat(255)
        )));
    }

    #[test]
    fn dates() {
        assert_eq!(rfc5322_date(0), "Thu, 1 Jan 1970 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(1_795_386_660),
            "Sun, 22 Nov 2026 22:31:00 +0000"
        );
        assert_eq!(rfc5322_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(4_107_542_399),
            "Sun, 28 Feb 2100 23:59:59 +0000"
        );
        assert_eq!(
            rfc5322_date(4_107_542_400),
            "Mon, 1 Mar 2100 00:00:00 +0000"
        );
        assert_eq!(rfc5322_date(-1), "Wed, 31 Dec 1969 23:59:59 +0000");
        assert_eq!(
            rfc5322_date(253_402_300_799),
            "Fri, 31 Dec 9999 23:59:59 +0000"
        );
        assert_eq!(
            rfc5322_date_with_offset(0, -300),
            "Wed, 31 Dec 1969 19:00:00 -0500"
        );
        assert_eq!(
            rfc5322_date_with_offset(0, 330),
            "Thu, 1 Jan 1970 05:30:00 +0530"
        );
        assert_eq!(
            rfc5322_date_with_offset(0, 100_000),
            "Thu, 1 Jan 1970 23:59:00 +2359"
        );
        assert_eq!(
            rfc5322_date_with_offset(0, -100_000),
            "Wed, 31 Dec 1969 00:01:00 -2359"
        );
    }

    #[test]
    fn civil_dates_match_day_counting() {
        // Walk 1600..2500 day by day and check against a naive calendar.
        let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        let mut days = civil_days_before(1600);
        for year in 1600..2500 {
            for month in 1..=12u32 {
                let len = match month {
                    2 if leap(year) => 29,
                    2 => 28,
                    4 | 6 | 9 | 11 => 30,
                    _ => 31,
                };
                for day in 1..=len {
                    assert_eq!(civil_from_days(days), (year, month, day));
                    days += 1;
                }
            }
        }
    }

    /// Days from 1970-01-01 back to January 1st of `year` (< 1970).
    fn civil_days_before(year: i64) -> i64 {
        let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        -(year..1970)
            .map(|y| if leap(y) { 366 } else { 365 })
            .sum::<i64>()
    }
}
