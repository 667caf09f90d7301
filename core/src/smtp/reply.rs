//! Typed SMTP replies. Every reply sluice sends is built here, by a named
//! constructor that carries its RFC 5321 basic code and its RFC 3463 enhanced
//! status code; the session hands the `Reply` to the connection driver, which
//! writes `to_bytes()` to the socket. No other module writes reply bytes.
//!
//! Text from clients and plugins can end up in a reply, so `write_to`
//! sanitizes it: nothing in a `Reply` can add a line to the wire form.

use std::fmt;

/// Longest reply line on the wire, CRLF included (RFC 5321 §4.5.3.1.5).
pub const MAX_REPLY_LINE: usize = 512;

/// One SMTP reply, possibly multi-line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Basic three-digit reply code (RFC 5321 §4.2).
    pub code: u16,
    /// Enhanced status code `class.subject.detail` (RFC 3463), repeated on
    /// every line; `None` where RFC 2034 forbids it (greeting, EHLO, 3xx).
    pub enhanced: Option<String>,
    /// Text of each line; one wire line per entry.
    pub lines: Vec<String>,
}

impl Reply {
    /// A single-line reply.
    pub fn new(code: u16, enhanced: Option<&str>, text: impl Into<String>) -> Reply {
        Reply {
            code,
            enhanced: enhanced.map(str::to_owned),
            lines: vec![text.into()],
        }
    }

    /// A multi-line reply (`250-a`, `250 b`), e.g. the EHLO response.
    pub fn multiline(code: u16, enhanced: Option<&str>, lines: Vec<String>) -> Reply {
        Reply {
            code,
            enhanced: enhanced.map(str::to_owned),
            lines,
        }
    }

    /// The wire form, e.g. `"250-a\r\n250 b\r\n"`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        self.write_to(&mut out);
        out
    }

    /// Appends the wire form to `out`.
    ///
    /// A code outside 200..=599 cannot mean anything to a client (SMTP has no
    /// 1xx and nothing above 5xx), so it is sent as 451: a broken plugin reply
    /// becomes a safe temporary failure. An enhanced code that is malformed or
    /// whose class differs from the basic code is left out (RFC 3463 §2
    /// requires them to agree). Text is sanitized: CR, LF and TAB become a
    /// space, other control and non-ASCII characters become `?`, and each line
    /// is cut so that it fits in [`MAX_REPLY_LINE`] octets.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let code = self.wire_code();
        let code_text = code.to_string();
        let enhanced = self
            .enhanced
            .as_deref()
            .filter(|e| enhanced_matches(e, code));
        // Room left for text: "ddd" + sep + [enhanced + " "] + text + CRLF.
        let overhead = 3 + 1 + enhanced.map_or(0, |e| e.len() + 1) + 2;
        let room = MAX_REPLY_LINE.saturating_sub(overhead);
        let empty = [String::new()];
        let lines: &[String] = if self.lines.is_empty() {
            &empty
        } else {
            &self.lines
        };
        for (i, line) in lines.iter().enumerate() {
            let last = i + 1 == lines.len();
            out.extend_from_slice(code_text.as_bytes());
            let text = sanitize(line, room);
            // "334 " keeps its space even when empty (RFC 4954 §4 grammar).
            if last && enhanced.is_none() && text.is_empty() && code != 334 {
                out.extend_from_slice(b"\r\n");
                continue;
            }
            out.push(if last { b' ' } else { b'-' });
            if let Some(e) = enhanced {
                out.extend_from_slice(e.as_bytes());
                if !text.is_empty() {
                    out.push(b' ');
                }
            }
            out.extend_from_slice(text.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }

    /// The code that goes on the wire (see [`Reply::write_to`]).
    fn wire_code(&self) -> u16 {
        if (200..=599).contains(&self.code) {
            self.code
        } else {
            451
        }
    }

    /// 2xx or 3xx: completed, or accepted pending more input.
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    /// 4xx: the client may try again later.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// 5xx: the client must not repeat the same request.
    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }

    /// All text lines joined by a space, for logs.
    pub fn text(&self) -> String {
        self.lines.join(" ")
    }

    // ----- Connection -----

    /// 220 greeting (RFC 5321 §4.2; no enhanced code before EHLO, RFC 2034 §3).
    pub fn greeting(hostname: &str) -> Reply {
        Reply::new(220, None, format!("{hostname} ESMTP sluice"))
    }

    /// 221 2.0.0 answer to QUIT (RFC 5321 §4.1.1.10).
    pub fn closing(hostname: &str) -> Reply {
        Reply::new(221, Some("2.0.0"), format!("{hostname} closing connection"))
    }

    /// 421 4.4.2: the client was idle for too long (RFC 3463 X.4.2 "Bad
    /// connection"; RFC 5321 §4.2.3: 421 carries the server's name).
    pub fn timeout(hostname: &str) -> Reply {
        Reply::new(
            421,
            Some("4.4.2"),
            format!("{hostname} Error: timeout exceeded, closing connection"),
        )
    }

    /// 421 4.3.2: the server is shutting down (RFC 3463 X.3.2 "System not
    /// accepting network messages").
    pub fn shutting_down(hostname: &str) -> Reply {
        Reply::new(
            421,
            Some("4.3.2"),
            format!("{hostname} Service shutting down, closing connection"),
        )
    }

    /// 421 4.7.0: the connection limit is reached; sent before any greeting,
    /// so it carries no host name (the server does not know which listener
    /// name to give at accept time).
    pub fn too_many_connections() -> Reply {
        Reply::new(421, Some("4.7.0"), "Too many connections, try again later")
    }

    /// 421 4.7.0: the client made too many errors (RFC 5321 §4.2.3 421).
    pub fn too_many_errors() -> Reply {
        Reply::new(421, Some("4.7.0"), "Too many errors, closing connection")
    }

    // ----- Replies to commands -----

    /// 250 answer to HELO (RFC 5321 §4.1.1.1; no enhanced code, RFC 2034 §3).
    pub fn helo(hostname: &str, client: &str) -> Reply {
        Reply::new(250, None, format!("{hostname} greets {client}"))
    }

    /// 250 multi-line answer to EHLO: the greeting, then one line per
    /// extension keyword (RFC 5321 §4.1.1.1).
    pub fn ehlo(hostname: &str, client: &str, extensions: &[String]) -> Reply {
        let mut lines = Vec::with_capacity(extensions.len() + 1);
        lines.push(format!("{hostname} greets {client}"));
        lines.extend(extensions.iter().cloned());
        Reply::multiline(250, None, lines)
    }

    /// 250 2.0.0 generic success (RSET, NOOP).
    pub fn ok() -> Reply {
        Reply::new(250, Some("2.0.0"), "Ok")
    }

    /// 250 2.1.0 MAIL accepted (RFC 3463 X.1.0 "Other address status").
    pub fn sender_ok() -> Reply {
        Reply::new(250, Some("2.1.0"), "Sender ok")
    }

    /// 250 2.1.5 RCPT accepted (RFC 3463 X.1.5 "Destination address valid").
    pub fn recipient_ok() -> Reply {
        Reply::new(250, Some("2.1.5"), "Recipient ok")
    }

    /// 354 go-ahead for DATA (no enhanced code on 3xx, RFC 3463 classes are
    /// 2, 4 and 5 only).
    pub fn start_data() -> Reply {
        Reply::new(354, None, "End data with <CR><LF>.<CR><LF>")
    }

    /// 250 2.0.0 after the message is durably queued.
    pub fn queued(id: &str) -> Reply {
        Reply::new(250, Some("2.0.0"), format!("Ok: queued as {id}"))
    }

    /// 252 2.1.5 to VRFY/EXPN: sluice does not disclose its users
    /// (RFC 5321 §3.5.3 recommends 252 over 502 in that case).
    pub fn vrfy() -> Reply {
        Reply::new(
            252,
            Some("2.1.5"),
            "Cannot VRFY user, but will accept message and attempt delivery",
        )
    }

    /// 214 2.0.0 answer to HELP (RFC 5321 §4.1.1.8).
    pub fn help() -> Reply {
        Reply::new(
            214,
            Some("2.0.0"),
            "Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT HELP VRFY; see RFC 5321",
        )
    }

    // ----- Syntax and sequence errors (RFC 5321 §4.2.2, RFC 3463 X.5.x) -----

    /// 500 5.5.2: command unrecognized.
    pub fn syntax_error() -> Reply {
        Reply::new(500, Some("5.5.2"), "Syntax error, command unrecognized")
    }

    /// 500 5.5.2: a NUL, control character, invalid UTF-8 or non-ASCII byte
    /// where the command syntax allows none.
    pub fn invalid_character() -> Reply {
        Reply::new(
            500,
            Some("5.5.2"),
            "Syntax error, invalid character in command",
        )
    }

    /// 500 5.5.2: command line over 512 octets (RFC 5321 §4.5.3.1.4; the
    /// reply text is the one §4.5.3.1.10 gives).
    pub fn line_too_long() -> Reply {
        Reply::new(500, Some("5.5.2"), "Line too long")
    }

    /// 501 5.5.4: bad arguments (RFC 3463 X.5.4 "Invalid command arguments").
    pub fn param_error(detail: &str) -> Reply {
        Reply::new(
            501,
            Some("5.5.4"),
            format!("Syntax error in parameters: {detail}"),
        )
    }

    /// 501 5.1.3: bad recipient address syntax (RFC 3463 X.1.3 "Bad
    /// destination mailbox address syntax").
    pub fn bad_address() -> Reply {
        Reply::new(501, Some("5.1.3"), "Bad recipient address syntax")
    }

    /// 501 5.1.7: bad sender address syntax (RFC 3463 X.1.7 "Bad sender's
    /// mailbox address syntax").
    pub fn bad_sender_address() -> Reply {
        Reply::new(501, Some("5.1.7"), "Bad sender address syntax")
    }

    /// 501 5.1.3: a path over 256 octets (text from RFC 5321 §4.5.3.1.10).
    pub fn path_too_long() -> Reply {
        Reply::new(501, Some("5.1.3"), "Path too long")
    }

    /// 553 5.6.7: a non-ASCII address without SMTPUTF8 (RFC 6531 registers
    /// X.6.7 "Non-ASCII addresses not permitted for that
    /// sender/recipient").
    pub fn non_ascii_address() -> Reply {
        Reply::new(
            553,
            Some("5.6.7"),
            "Non-ASCII addresses not permitted without SMTPUTF8",
        )
    }

    /// 502 5.5.1: a known command sluice does not implement.
    pub fn not_implemented() -> Reply {
        Reply::new(502, Some("5.5.1"), "Command not implemented")
    }

    /// 503 5.5.1: command out of sequence.
    pub fn bad_sequence() -> Reply {
        Reply::new(503, Some("5.5.1"), "Bad sequence of commands")
    }

    /// 503 5.5.1: MAIL before HELO/EHLO.
    pub fn need_helo() -> Reply {
        Reply::new(
            503,
            Some("5.5.1"),
            "Bad sequence of commands: send HELO/EHLO first",
        )
    }

    /// 554 5.5.1: DATA without any accepted recipient (RFC 5321 §3.3: 554
    /// "no valid recipients").
    pub fn no_valid_recipients() -> Reply {
        Reply::new(554, Some("5.5.1"), "No valid recipients")
    }

    /// 555 5.5.4: unknown MAIL/RCPT parameter (RFC 5321 §4.1.1.11, RFC 1869 §6).
    pub fn unknown_parameter() -> Reply {
        Reply::new(
            555,
            Some("5.5.4"),
            "MAIL FROM/RCPT TO parameters not recognized or not implemented",
        )
    }

    // ----- Policy and limits -----

    /// 452 4.5.3: more recipients than allowed in one transaction (RFC 5321
    /// §4.5.3.1.10 "452 Too many recipients"; RFC 3463 X.5.3).
    pub fn too_many_recipients() -> Reply {
        Reply::new(452, Some("4.5.3"), "Too many recipients")
    }

    /// 552 5.3.4: the message grew over the size limit during DATA.
    pub fn message_too_big() -> Reply {
        Reply::new(
            552,
            Some("5.3.4"),
            "Message size exceeds fixed maximum message size",
        )
    }

    /// 552 5.3.4: MAIL announced SIZE= over the limit (RFC 1870 §6.1).
    pub fn size_exceeds_limit() -> Reply {
        Reply::new(
            552,
            Some("5.3.4"),
            "Message size exceeds fixed maximum message size",
        )
    }

    /// 500 5.6.0: a DATA line over 1000 octets (RFC 5321 §4.5.3.1.6).
    ///
    /// Why this code: RFC 5321 §4.5.3.1.10 gives "500 Line too long" as the
    /// reply for exceeding the line limits, and a text line is part of the
    /// message content, whose enhanced subject is X.6 "Message Content or
    /// Media Status" (RFC 3463 §3.7); X.6.0 is its "other or undefined"
    /// detail. X.5.2 would claim a command syntax error, which it is not.
    pub fn data_line_too_long() -> Reply {
        Reply::new(
            500,
            Some("5.6.0"),
            "Line too long: message lines are limited to 1000 octets",
        )
    }

    /// 554 5.4.6: too many Received headers (RFC 5321 §6.3, RFC 3463 X.4.6
    /// "Routing loop detected").
    pub fn loop_detected() -> Reply {
        Reply::new(554, Some("5.4.6"), "Too many Received headers: mail loop")
    }

    /// 554 5.7.1: recipient outside sluice's domains and the client may not
    /// relay (RFC 3463 X.7.1 "Delivery not authorized").
    pub fn relay_denied() -> Reply {
        Reply::new(554, Some("5.7.1"), "Relay access denied")
    }

    /// 451 4.3.0: any other local failure; details go to the log only.
    pub fn local_error() -> Reply {
        Reply::new(
            451,
            Some("4.3.0"),
            "Local error in processing, try again later",
        )
    }

    /// 452 4.3.1: the spool is full or unwritable (RFC 3463 X.3.1 "Mail
    /// system full").
    pub fn storage() -> Reply {
        Reply::new(452, Some("4.3.1"), "Insufficient system storage")
    }

    // ----- STARTTLS (RFC 3207) and AUTH (RFC 4954) -----

    /// 220 2.0.0 go-ahead for the TLS handshake.
    pub fn starttls_ready() -> Reply {
        Reply::new(220, Some("2.0.0"), "Ready to start TLS")
    }

    /// 454 4.7.0: TLS cannot be started now (RFC 3207 §4).
    pub fn tls_not_available() -> Reply {
        Reply::new(
            454,
            Some("4.7.0"),
            "TLS not available due to temporary reason",
        )
    }

    /// 530 5.7.0: the listener requires TLS first (RFC 3207 §4).
    pub fn must_starttls() -> Reply {
        Reply::new(530, Some("5.7.0"), "Must issue a STARTTLS command first")
    }

    /// 553 5.7.1 at MAIL on a submission listener: the reverse-path is not
    /// one the authenticated user may use (RFC 6409 §6.1).
    pub fn sender_not_owned(user: &str) -> Reply {
        Reply::new(
            553,
            Some("5.7.1"),
            format!("Sender address not owned by user {}", printable(user)),
        )
    }

    /// 550 5.7.1 after DATA on a submission listener: a From (or Sender)
    /// address is not the authenticated user's.
    pub fn author_not_owned(address: &str) -> Reply {
        Reply::new(
            550,
            Some("5.7.1"),
            format!(
                "From address {} not owned by the authenticated user",
                printable(address)
            ),
        )
    }

    /// 550 5.6.0 after DATA on a submission listener: no single From.
    pub fn bad_author(detail: &str) -> Reply {
        Reply::new(550, Some("5.6.0"), format!("Invalid message: {detail}"))
    }

    /// 554 5.5.0: the client talked before the greeting (postscreen's
    /// pregreet test); the connection is closed.
    pub fn pregreet() -> Reply {
        Reply::new(
            554,
            Some("5.5.0"),
            "Protocol error: data sent before the greeting",
        )
    }

    /// 334 SASL challenge; `challenge` is base64 (RFC 4954 §4).
    pub fn auth_challenge(challenge: &str) -> Reply {
        Reply::new(334, None, challenge)
    }

    /// 235 2.7.0 authentication succeeded (RFC 4954 §6).
    pub fn auth_success() -> Reply {
        Reply::new(235, Some("2.7.0"), "Authentication successful")
    }

    /// 535 5.7.8 bad credentials (RFC 4954 §6).
    pub fn auth_failed() -> Reply {
        Reply::new(535, Some("5.7.8"), "Authentication credentials invalid")
    }

    /// 454 4.7.0 temporary authentication failure (RFC 4954 §6).
    pub fn auth_tempfail() -> Reply {
        Reply::new(454, Some("4.7.0"), "Temporary authentication failure")
    }

    /// 530 5.7.0 authentication required (RFC 4954 §6).
    pub fn auth_required() -> Reply {
        Reply::new(530, Some("5.7.0"), "Authentication required")
    }

    /// 538 5.7.11: AUTH over a cleartext channel (RFC 4954 §6).
    pub fn encryption_required() -> Reply {
        Reply::new(
            538,
            Some("5.7.11"),
            "Encryption required for requested authentication mechanism",
        )
    }

    /// 504 5.5.4: unknown SASL mechanism (RFC 4954 §4).
    pub fn auth_mechanism_unsupported() -> Reply {
        Reply::new(504, Some("5.5.4"), "Unrecognized authentication type")
    }

    /// 501 5.0.0: the client cancelled the exchange with `*` (RFC 4954 §4).
    pub fn auth_cancelled() -> Reply {
        Reply::new(501, Some("5.0.0"), "Authentication cancelled")
    }

    /// 503 5.5.1: STARTTLS on a connection already in TLS (RFC 3207 §4).
    pub fn tls_already_active() -> Reply {
        Reply::new(503, Some("5.5.1"), "TLS already active")
    }

    /// 501 5.5.2: an AUTH response that is not valid base64 or not a
    /// well-formed SASL message (RFC 4954 §4).
    pub fn auth_bad_response() -> Reply {
        Reply::new(501, Some("5.5.2"), "Cannot decode response")
    }

    /// 454 4.7.0: AUTH refused for a while after too many failures from
    /// this client.
    pub fn auth_locked_out() -> Reply {
        Reply::new(
            454,
            Some("4.7.0"),
            "Too many failed authentication attempts, try again later",
        )
    }

    /// 503 5.5.1: AUTH after a successful AUTH (RFC 4954 §4).
    pub fn already_authenticated() -> Reply {
        Reply::new(503, Some("5.5.1"), "Already authenticated")
    }
}

impl fmt::Display for Reply {
    /// The wire form without line endings, lines joined by " / ", for logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.to_bytes();
        let text = String::from_utf8_lossy(&bytes);
        let mut first = true;
        for line in text.split("\r\n").filter(|l| !l.is_empty()) {
            if !first {
                f.write_str(" / ")?;
            }
            f.write_str(line)?;
            first = false;
        }
        Ok(())
    }
}

/// True if `enhanced` is `c.s.d` (1–3 digits each, no leading zeros beyond
/// a single 0 per RFC 3463 §2) with class 2, 4 or 5 equal to the first digit
/// of `code`.
fn enhanced_matches(enhanced: &str, code: u16) -> bool {
    let mut parts = enhanced.split('.');
    let (Some(class), Some(subject), Some(detail), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let number = |p: &str| {
        !p.is_empty()
            && p.len() <= 3
            && p.bytes().all(|b| b.is_ascii_digit())
            && !(p.len() > 1 && p.starts_with('0'))
    };
    let class_ok =
        matches!(class, "2" | "4" | "5") && class.as_bytes()[0] - b'0' == (code / 100) as u8;
    class_ok && number(subject) && number(detail)
}

/// Replaces anything that could break the line structure and cuts the text
/// to `room` octets (the result is ASCII, so any cut is a char boundary).
fn sanitize(text: &str, room: usize) -> String {
    let mut out = String::with_capacity(text.len().min(room));
    for c in text.chars() {
        if out.len() >= room {
            break;
        }
        let c = match c {
            '\r' | '\n' | '\t' => ' ',
            c if c.is_ascii_control() || !c.is_ascii() => '?',
            c => c,
        };
        out.push(c);
    }
    out
}

/// Client-supplied text quoted in a reply: printable ASCII only, at most
/// 100 characters, so it can neither break the reply line nor bloat it.
fn printable(text: &str) -> String {
    text.chars()
        .take(100)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(reply: &Reply) -> String {
        String::from_utf8(reply.to_bytes()).unwrap()
    }

    #[test]
    fn single_line_with_enhanced_code() {
        assert_eq!(wire(&Reply::ok()), "250 2.0.0 Ok\r\n");
        assert_eq!(wire(&Reply::new(550, None, "No")), "550 No\r\n");
    }

    #[test]
    fn multiline_repeats_code_and_enhanced() {
        let r = Reply::multiline(250, None, vec!["a".into(), "b".into(), "c".into()]);
        assert_eq!(wire(&r), "250-a\r\n250-b\r\n250 c\r\n");
        let r = Reply::multiline(550, Some("5.7.1"), vec!["x".into(), "y".into()]);
        assert_eq!(wire(&r), "550-5.7.1 x\r\n550 5.7.1 y\r\n");
    }

    #[test]
    fn empty_text_and_empty_lines() {
        assert_eq!(wire(&Reply::new(250, None, "")), "250\r\n");
        assert_eq!(wire(&Reply::new(250, Some("2.0.0"), "")), "250 2.0.0\r\n");
        assert_eq!(wire(&Reply::multiline(250, None, vec![])), "250\r\n");
        let r = Reply::multiline(250, None, vec![String::new(), "b".into()]);
        assert_eq!(wire(&r), "250-\r\n250 b\r\n");
    }

    #[test]
    fn text_cannot_inject_lines() {
        let r = Reply::new(550, Some("5.7.1"), "bad\r\n250 2.0.0 Ok\nmore\rx\ty");
        assert_eq!(wire(&r), "550 5.7.1 bad  250 2.0.0 Ok more x y\r\n");
        let r = Reply::new(451, None, "nul\0del\x7fesc\x1bé");
        assert_eq!(wire(&r), "451 nul?del?esc??\r\n");
        let bytes = Reply::multiline(250, None, vec!["a\r\nb".into(), "c\nd".into()]).to_bytes();
        assert_eq!(bytes.iter().filter(|&&b| b == b'\n').count(), 2);
        assert_eq!(bytes.iter().filter(|&&b| b == b'\r').count(), 2);
    }

    #[test]
    fn lines_fit_in_512_octets() {
        let r = Reply::multiline(550, Some("5.7.1"), vec!["x".repeat(2000), "é".repeat(900)]);
        let bytes = r.to_bytes();
        let text = String::from_utf8(bytes).unwrap();
        let lines: Vec<&str> = text.split_inclusive("\r\n").collect();
        assert_eq!(lines.len(), 2);
        for line in lines {
            assert_eq!(line.len(), MAX_REPLY_LINE);
            assert!(line.ends_with("\r\n"));
        }
    }

    #[test]
    fn bad_code_or_enhanced_is_made_safe() {
        assert_eq!(wire(&Reply::new(99, Some("2.0.0"), "x")), "451 x\r\n");
        assert_eq!(wire(&Reply::new(600, None, "x")), "451 x\r\n");
        assert_eq!(
            wire(&Reply::new(1234, Some("4.3.0"), "x")),
            "451 4.3.0 x\r\n"
        );
        // Class must match the basic code.
        assert_eq!(wire(&Reply::new(550, Some("2.0.0"), "x")), "550 x\r\n");
        for bad in [
            "5.7",
            "5.7.1.1",
            "5..1",
            "5.7.1\r\n250 ok",
            "5.7.x",
            "5.1234.1",
            "5.01.1",
            "3.0.0",
        ] {
            assert_eq!(
                wire(&Reply::new(550, Some(bad), "x")),
                "550 x\r\n",
                "{bad:?}"
            );
        }
        assert_eq!(
            wire(&Reply::new(550, Some("5.7.26"), "x")),
            "550 5.7.26 x\r\n"
        );
        assert_eq!(
            wire(&Reply::new(550, Some("5.0.0"), "x")),
            "550 5.0.0 x\r\n"
        );
    }

    #[test]
    fn classification() {
        assert!(Reply::ok().is_positive());
        assert!(Reply::start_data().is_positive());
        assert!(!Reply::ok().is_transient() && !Reply::ok().is_permanent());
        assert!(Reply::local_error().is_transient());
        assert!(!Reply::local_error().is_positive() && !Reply::local_error().is_permanent());
        assert!(Reply::relay_denied().is_permanent());
        assert!(!Reply::relay_denied().is_transient());
    }

    #[test]
    fn display_is_one_line() {
        let r = Reply::multiline(250, None, vec!["a".into(), "b".into()]);
        assert_eq!(r.to_string(), "250-a / 250 b");
        assert_eq!(r.text(), "a b");
    }

    #[test]
    fn every_constructor_has_its_code() {
        let h = "mx.example";
        let cases: Vec<(Reply, &str)> = vec![
            (Reply::greeting(h), "220 mx.example ESMTP sluice\r\n"),
            (
                Reply::closing(h),
                "221 2.0.0 mx.example closing connection\r\n",
            ),
            (
                Reply::timeout(h),
                "421 4.4.2 mx.example Error: timeout exceeded, closing connection\r\n",
            ),
            (
                Reply::shutting_down(h),
                "421 4.3.2 mx.example Service shutting down, closing connection\r\n",
            ),
            (
                Reply::too_many_connections(),
                "421 4.7.0 Too many connections, try again later\r\n",
            ),
            (
                Reply::too_many_errors(),
                "421 4.7.0 Too many errors, closing connection\r\n",
            ),
            (
                Reply::helo(h, "client.example"),
                "250 mx.example greets client.example\r\n",
            ),
            (Reply::ok(), "250 2.0.0 Ok\r\n"),
            (Reply::sender_ok(), "250 2.1.0 Sender ok\r\n"),
            (Reply::recipient_ok(), "250 2.1.5 Recipient ok\r\n"),
            (
                Reply::start_data(),
                "354 End data with <CR><LF>.<CR><LF>\r\n",
            ),
            (
                Reply::queued("ABC123"),
                "250 2.0.0 Ok: queued as ABC123\r\n",
            ),
            (
                Reply::vrfy(),
                "252 2.1.5 Cannot VRFY user, but will accept message and attempt delivery\r\n",
            ),
            (
                Reply::syntax_error(),
                "500 5.5.2 Syntax error, command unrecognized\r\n",
            ),
            (
                Reply::invalid_character(),
                "500 5.5.2 Syntax error, invalid character in command\r\n",
            ),
            (Reply::line_too_long(), "500 5.5.2 Line too long\r\n"),
            (
                Reply::param_error("bad SIZE"),
                "501 5.5.4 Syntax error in parameters: bad SIZE\r\n",
            ),
            (
                Reply::bad_address(),
                "501 5.1.3 Bad recipient address syntax\r\n",
            ),
            (
                Reply::bad_sender_address(),
                "501 5.1.7 Bad sender address syntax\r\n",
            ),
            (Reply::path_too_long(), "501 5.1.3 Path too long\r\n"),
            (
                Reply::non_ascii_address(),
                "553 5.6.7 Non-ASCII addresses not permitted without SMTPUTF8\r\n",
            ),
            (
                Reply::not_implemented(),
                "502 5.5.1 Command not implemented\r\n",
            ),
            (
                Reply::bad_sequence(),
                "503 5.5.1 Bad sequence of commands\r\n",
            ),
            (
                Reply::need_helo(),
                "503 5.5.1 Bad sequence of commands: send HELO/EHLO first\r\n",
            ),
            (
                Reply::no_valid_recipients(),
                "554 5.5.1 No valid recipients\r\n",
            ),
            (
                Reply::unknown_parameter(),
                "555 5.5.4 MAIL FROM/RCPT TO parameters not recognized or not implemented\r\n",
            ),
            (
                Reply::too_many_recipients(),
                "452 4.5.3 Too many recipients\r\n",
            ),
            (
                Reply::message_too_big(),
                "552 5.3.4 Message size exceeds fixed maximum message size\r\n",
            ),
            (
                Reply::size_exceeds_limit(),
                "552 5.3.4 Message size exceeds fixed maximum message size\r\n",
            ),
            (
                Reply::data_line_too_long(),
                "500 5.6.0 Line too long: message lines are limited to 1000 octets\r\n",
            ),
            (
                Reply::loop_detected(),
                "554 5.4.6 Too many Received headers: mail loop\r\n",
            ),
            (Reply::relay_denied(), "554 5.7.1 Relay access denied\r\n"),
            (
                Reply::local_error(),
                "451 4.3.0 Local error in processing, try again later\r\n",
            ),
            (
                Reply::storage(),
                "452 4.3.1 Insufficient system storage\r\n",
            ),
            (Reply::starttls_ready(), "220 2.0.0 Ready to start TLS\r\n"),
            (
                Reply::tls_not_available(),
                "454 4.7.0 TLS not available due to temporary reason\r\n",
            ),
            (
                Reply::must_starttls(),
                "530 5.7.0 Must issue a STARTTLS command first\r\n",
            ),
            (
                Reply::auth_challenge("VXNlcm5hbWU6"),
                "334 VXNlcm5hbWU6\r\n",
            ),
            (
                Reply::auth_success(),
                "235 2.7.0 Authentication successful\r\n",
            ),
            (
                Reply::auth_failed(),
                "535 5.7.8 Authentication credentials invalid\r\n",
            ),
            (
                Reply::auth_tempfail(),
                "454 4.7.0 Temporary authentication failure\r\n",
            ),
            (
                Reply::auth_required(),
                "530 5.7.0 Authentication required\r\n",
            ),
            (
                Reply::encryption_required(),
                "538 5.7.11 Encryption required for requested authentication mechanism\r\n",
            ),
            (
                Reply::auth_mechanism_unsupported(),
                "504 5.5.4 Unrecognized authentication type\r\n",
            ),
            (
                Reply::auth_cancelled(),
                "501 5.0.0 Authentication cancelled\r\n",
            ),
            (
                Reply::already_authenticated(),
                "503 5.5.1 Already authenticated\r\n",
            ),
        ];
        for (reply, expected) in cases {
            assert_eq!(wire(&reply), expected);
        }
        assert!(wire(&Reply::help()).starts_with("214 2.0.0 "));
    }

    #[test]
    fn ehlo_lists_extensions() {
        let ext = vec!["PIPELINING".to_owned(), "SIZE 1000".to_owned()];
        assert_eq!(
            wire(&Reply::ehlo("mx", "c.example", &ext)),
            "250-mx greets c.example\r\n250-PIPELINING\r\n250 SIZE 1000\r\n"
        );
        assert_eq!(wire(&Reply::ehlo("mx", "c", &[])), "250 mx greets c\r\n");
    }
}
