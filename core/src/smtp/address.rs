//! RFC 5321 paths and mailboxes: the `<...>` of MAIL FROM and RCPT TO parsed
//! into typed addresses. `command` calls these parsers; the session hands the
//! resulting `Mailbox` to the pipeline (relay and recipient checks) and the
//! spool.
//!
//! Parsing is strict where laxness could turn sluice into an open relay:
//! exactly one `@` outside quotes, quoted local parts unquoted (so a relay
//! check sees `a@b` in `"a@b"@local` and can refuse it), no trailing dot,
//! lowercased domains, the RFC 5321 §4.5.3.1 length limits, and no control
//! characters anywhere.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Longest local part, in octets (RFC 5321 §4.5.3.1.1).
pub const MAX_LOCAL_PART: usize = 64;
/// Longest domain, in octets (RFC 5321 §4.5.3.1.2).
pub const MAX_DOMAIN: usize = 255;
/// Longest path including `<` and `>`, in octets (RFC 5321 §4.5.3.1.3).
pub const MAX_PATH: usize = 256;
/// Longest domain label, in octets (RFC 1035 §2.3.4).
pub const MAX_LABEL: usize = 63;

/// The domain of a mailbox.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Domain {
    /// A domain name, ASCII-lowercased, without trailing dot; may hold
    /// UTF-8 labels when the transaction uses SMTPUTF8.
    Name(String),
    /// An address literal: `[192.0.2.1]` or `[IPv6:2001:db8::1]`.
    Literal(IpAddr),
    /// No domain: only for the special recipient `<postmaster>`.
    None,
}

/// A mailbox `local-part@domain`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mailbox {
    /// The local part with quoting removed (`"a b"@x` gives `a b`).
    pub local_part: String,
    /// The domain.
    pub domain: Domain,
}

/// The argument of MAIL FROM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReversePath {
    /// `<>`: bounces and other mail that must not be answered.
    Null,
    /// A sender mailbox.
    Mailbox(Mailbox),
}

/// The argument of RCPT TO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardPath(pub Mailbox);

/// Why a path or mailbox was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// The path is not enclosed in `<` and `>`.
    #[error("address must be enclosed in angle brackets")]
    MissingBrackets,
    /// Characters follow the closing `>`.
    #[error("unexpected characters after the address")]
    TrailingCharacters,
    /// `<>` where a mailbox is required (RCPT TO).
    #[error("empty address")]
    Empty,
    /// Over 256 octets including the brackets.
    #[error("path longer than {MAX_PATH} octets")]
    PathTooLong,
    /// Over 64 octets.
    #[error("local part longer than {MAX_LOCAL_PART} octets")]
    LocalPartTooLong,
    /// Over 255 octets.
    #[error("domain longer than {MAX_DOMAIN} octets")]
    DomainTooLong,
    /// A label over 63 octets.
    #[error("domain label longer than {MAX_LABEL} octets")]
    LabelTooLong,
    /// Nothing before the `@`.
    #[error("empty local part")]
    EmptyLocalPart,
    /// No `@domain`.
    #[error("missing domain")]
    MissingDomain,
    /// A quoted local part without its closing quote.
    #[error("unbalanced quote in local part")]
    UnbalancedQuote,
    /// A character outside the dot-string/quoted-string grammar, or a dot at
    /// either end or doubled.
    #[error("invalid local part")]
    InvalidLocalPart,
    /// Empty label, trailing dot, bad character (including a second `@`),
    /// hyphen at a label edge.
    #[error("invalid domain")]
    InvalidDomain,
    /// `[...]` that is not an IPv4 or `IPv6:` literal.
    #[error("invalid address literal")]
    InvalidAddressLiteral,
    /// A malformed `@a,@b:` source route.
    #[error("invalid source route")]
    InvalidSourceRoute,
    /// Non-ASCII without SMTPUTF8.
    #[error("non-ASCII address without SMTPUTF8")]
    NonAscii,
    /// A NUL or other control character.
    #[error("control character in address")]
    ControlCharacter,
}

impl Domain {
    /// The domain name, if this is one.
    pub fn as_name(&self) -> Option<&str> {
        match self {
            Domain::Name(name) => Some(name),
            _ => None,
        }
    }
}

impl fmt::Display for Domain {
    /// `example.com`, `[192.0.2.1]`, `[IPv6:2001:db8::1]`, or nothing.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Domain::Name(name) => f.write_str(name),
            Domain::Literal(IpAddr::V4(ip)) => write!(f, "[{ip}]"),
            Domain::Literal(IpAddr::V6(ip)) => write!(f, "[IPv6:{ip}]"),
            Domain::None => Ok(()),
        }
    }
}

impl Mailbox {
    /// True if neither part holds non-ASCII (such a mailbox needs SMTPUTF8
    /// to be relayed).
    pub fn is_ascii(&self) -> bool {
        self.local_part.is_ascii() && self.domain.as_name().is_none_or(str::is_ascii)
    }
}

impl fmt::Display for Mailbox {
    /// Canonical `local@domain`; the local part is re-quoted when it is not a
    /// valid dot-string, so the output parses back to the same mailbox.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if is_dot_string(&self.local_part, true) {
            f.write_str(&self.local_part)?;
        } else {
            f.write_str("\"")?;
            for c in self.local_part.chars() {
                if c == '"' || c == '\\' {
                    f.write_str("\\")?;
                }
                write!(f, "{c}")?;
            }
            f.write_str("\"")?;
        }
        match self.domain {
            Domain::None => Ok(()),
            ref domain => write!(f, "@{domain}"),
        }
    }
}

impl ReversePath {
    /// The sender mailbox, `None` for `<>`.
    pub fn mailbox(&self) -> Option<&Mailbox> {
        match self {
            ReversePath::Null => None,
            ReversePath::Mailbox(m) => Some(m),
        }
    }

    /// The path as written in an SMTP command: `<>` or `<local@domain>`.
    pub fn to_path_string(&self) -> String {
        match self {
            ReversePath::Null => "<>".to_owned(),
            ReversePath::Mailbox(m) => format!("<{m}>"),
        }
    }
}

impl ForwardPath {
    /// The path as written in an SMTP command: `<local@domain>`.
    pub fn to_path_string(&self) -> String {
        format!("<{}>", self.0)
    }
}

/// Parses the argument of MAIL FROM: `<>` or a path.
pub fn parse_reverse_path(s: &str, smtputf8: bool) -> Result<ReversePath, AddressError> {
    check_chars(s, smtputf8)?;
    if s == "<>" {
        return Ok(ReversePath::Null);
    }
    parse_path(s, smtputf8).map(ReversePath::Mailbox)
}

/// Parses the argument of RCPT TO: a path, or `<postmaster>` (any case,
/// RFC 5321 §4.1.1.3), which yields local part `postmaster` and
/// [`Domain::None`].
pub fn parse_forward_path(s: &str, smtputf8: bool) -> Result<ForwardPath, AddressError> {
    check_chars(s, smtputf8)?;
    if s == "<>" {
        return Err(AddressError::Empty);
    }
    if s.eq_ignore_ascii_case("<postmaster>") {
        return Ok(ForwardPath(Mailbox {
            local_part: "postmaster".to_owned(),
            domain: Domain::None,
        }));
    }
    parse_path(s, smtputf8).map(ForwardPath)
}

/// Parses `<[source-route:]mailbox>`.
///
/// A source route (`<@a.example,@b.example:user@c.example>`) is checked
/// for syntax and then ignored, as RFC 5321 §4.1.1.3 and appendix C ask:
/// the mail goes to `user@c.example` on sluice's own routing decision, so a
/// route can never make sluice relay.
pub fn parse_path(s: &str, smtputf8: bool) -> Result<Mailbox, AddressError> {
    check_chars(s, smtputf8)?;
    if s.len() > MAX_PATH {
        return Err(AddressError::PathTooLong);
    }
    if !s.starts_with('<') {
        return Err(AddressError::MissingBrackets);
    }
    let end = path_end(s)?;
    if end + 1 != s.len() {
        return Err(AddressError::TrailingCharacters);
    }
    let mut inner = &s[1..end];
    if inner.is_empty() {
        return Err(AddressError::Empty);
    }
    if inner.starts_with('@') {
        let Some(colon) = inner.find(':') else {
            return Err(AddressError::InvalidSourceRoute);
        };
        for hop in inner[..colon].split(',') {
            let name = hop
                .strip_prefix('@')
                .ok_or(AddressError::InvalidSourceRoute)?;
            parse_domain_name(name, smtputf8, false)
                .map_err(|_| AddressError::InvalidSourceRoute)?;
        }
        inner = &inner[colon + 1..];
    }
    parse_mailbox(inner, smtputf8)
}

/// Parses a bare `local-part@domain` (no brackets), e.g. from
/// configuration or from inside a path.
pub fn parse_mailbox(s: &str, smtputf8: bool) -> Result<Mailbox, AddressError> {
    check_chars(s, smtputf8)?;
    let (local_part, wire_len, rest) = if let Some(quoted) = s.strip_prefix('"') {
        let (local, consumed) = unquote(quoted)?;
        (local, consumed + 1, &quoted[consumed..])
    } else {
        let at = s.find('@').unwrap_or(s.len());
        let local = &s[..at];
        if local.is_empty() {
            return Err(AddressError::EmptyLocalPart);
        }
        if !is_dot_string(local, smtputf8) {
            return Err(AddressError::InvalidLocalPart);
        }
        (local.to_owned(), local.len(), &s[at..])
    };
    if local_part.is_empty() {
        return Err(AddressError::EmptyLocalPart);
    }
    if wire_len > MAX_LOCAL_PART {
        return Err(AddressError::LocalPartTooLong);
    }
    let domain = match rest.strip_prefix('@') {
        Some(domain) => domain,
        None if rest.is_empty() => return Err(AddressError::MissingDomain),
        None => return Err(AddressError::InvalidLocalPart),
    };
    if domain.is_empty() {
        return Err(AddressError::MissingDomain);
    }
    Ok(Mailbox {
        local_part,
        domain: parse_domain(domain, smtputf8)?,
    })
}

/// Parses a domain name or an address literal (`[192.0.2.1]`,
/// `[IPv6:2001:db8::1]`); names are lowercased.
pub fn parse_domain(s: &str, smtputf8: bool) -> Result<Domain, AddressError> {
    check_chars(s, smtputf8)?;
    if s.starts_with('[') {
        parse_literal(s).map(Domain::Literal)
    } else {
        parse_domain_name(s, smtputf8, false).map(Domain::Name)
    }
}

/// Parses the argument of HELO/EHLO: a domain or an address literal, ASCII
/// only. Unlike [`parse_domain`] it tolerates `_` in labels: many Windows
/// hosts announce such names and refusing them would lose legitimate mail
/// (the name is only informative; nothing is routed on it).
pub fn parse_helo_domain(s: &str) -> Result<Domain, AddressError> {
    check_chars(s, false)?;
    if s.starts_with('[') {
        parse_literal(s).map(Domain::Literal)
    } else {
        parse_domain_name(s, false, true).map(Domain::Name)
    }
}

/// Index of the `>` that closes the path starting at `s[0] == '<'`,
/// skipping over quoted strings (a quoted local part may hold `>`).
pub fn path_end(s: &str) -> Result<usize, AddressError> {
    let bytes = s.as_bytes();
    let mut in_quote = false;
    let mut i = 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if in_quote => i += 1,
            b'"' => in_quote = !in_quote,
            b'>' if !in_quote => return Ok(i),
            _ => {}
        }
        i += 1;
    }
    Err(if in_quote {
        AddressError::UnbalancedQuote
    } else {
        AddressError::MissingBrackets
    })
}

/// Rejects control characters everywhere and non-ASCII without SMTPUTF8.
fn check_chars(s: &str, smtputf8: bool) -> Result<(), AddressError> {
    if s.chars().any(char::is_control) {
        return Err(AddressError::ControlCharacter);
    }
    if !smtputf8 && !s.is_ascii() {
        return Err(AddressError::NonAscii);
    }
    Ok(())
}

/// `atext` of RFC 5322 §3.2.3, extended with non-ASCII by RFC 6531 §3.3.
fn is_atext(c: char, utf8: bool) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || (utf8 && !c.is_ascii())
}

/// `Dot-string = Atom *("." Atom)` (RFC 5321 §4.1.2).
fn is_dot_string(s: &str, utf8: bool) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(|c| is_atext(c, utf8)))
}

/// Reads a quoted string whose opening quote was already stripped: returns
/// the unquoted text and the octets consumed including the closing quote.
/// `qtextSMTP` is printable ASCII but `"` and `\`, plus UTF-8 under SMTPUTF8
/// (already checked by `check_chars`); `quoted-pairSMTP` is `\` + printable
/// ASCII.
fn unquote(s: &str) -> Result<(String, usize), AddressError> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, i + 1)),
            '\\' => match chars.next() {
                Some((_, e)) if (' '..='~').contains(&e) => out.push(e),
                Some(_) => return Err(AddressError::InvalidLocalPart),
                None => return Err(AddressError::UnbalancedQuote),
            },
            c => out.push(c),
        }
    }
    Err(AddressError::UnbalancedQuote)
}

/// `sub-domain *("." sub-domain)` with LDH labels (RFC 5321 §4.1.2), UTF-8
/// labels under SMTPUTF8 (RFC 6531 §3.3), `_` only for HELO names.
fn parse_domain_name(s: &str, utf8: bool, underscore: bool) -> Result<String, AddressError> {
    if s.is_empty() {
        return Err(AddressError::InvalidDomain);
    }
    if s.len() > MAX_DOMAIN {
        return Err(AddressError::DomainTooLong);
    }
    for label in s.split('.') {
        if label.is_empty() {
            // Also catches a leading or trailing dot.
            return Err(AddressError::InvalidDomain);
        }
        if label.len() > MAX_LABEL {
            return Err(AddressError::LabelTooLong);
        }
        let ok = |c: char| {
            c.is_ascii_alphanumeric()
                || c == '-'
                || (underscore && c == '_')
                || (utf8 && !c.is_ascii() && c.is_alphanumeric())
        };
        if !label.chars().all(ok) || label.starts_with('-') || label.ends_with('-') {
            return Err(AddressError::InvalidDomain);
        }
    }
    Ok(s.to_ascii_lowercase())
}

/// `[a.b.c.d]` or `[IPv6:...]` (RFC 5321 §4.1.3). General address literals
/// (`[tag:...]`) are refused: sluice cannot route to them.
fn parse_literal(s: &str) -> Result<IpAddr, AddressError> {
    let inner = s
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .ok_or(AddressError::InvalidAddressLiteral)?;
    if inner.len() > 5 && inner.is_char_boundary(5) && inner[..5].eq_ignore_ascii_case("IPv6:") {
        inner[5..]
            .parse::<Ipv6Addr>()
            .map(IpAddr::V6)
            .map_err(|_| AddressError::InvalidAddressLiteral)
    } else {
        inner
            .parse::<Ipv4Addr>()
            .map(IpAddr::V4)
            .map_err(|_| AddressError::InvalidAddressLiteral)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mbox(local: &str, domain: &str) -> Mailbox {
        Mailbox {
            local_part: local.to_owned(),
            domain: Domain::Name(domain.to_owned()),
        }
    }

    fn path(s: &str) -> Result<Mailbox, AddressError> {
        parse_path(s, false)
    }

    #[test]
    fn simple_paths() {
        assert_eq!(path("<user@example.com>"), Ok(mbox("user", "example.com")));
        assert_eq!(
            path("<User.Name+tag@EXAMPLE.Com>"),
            Ok(mbox("User.Name+tag", "example.com"))
        );
        assert_eq!(path("<a@localhost>"), Ok(mbox("a", "localhost")));
        assert_eq!(
            path("<!#$%&'*+-/=?^_`{|}~@x.y>"),
            Ok(mbox("!#$%&'*+-/=?^_`{|}~", "x.y"))
        );
        assert_eq!(
            path("<a@xn--bcher-kva.example>"),
            Ok(mbox("a", "xn--bcher-kva.example"))
        );
    }

    #[test]
    fn null_and_postmaster() {
        assert_eq!(parse_reverse_path("<>", false), Ok(ReversePath::Null));
        assert_eq!(parse_forward_path("<>", false), Err(AddressError::Empty));
        assert_eq!(path("<>"), Err(AddressError::Empty));
        let pm = ForwardPath(Mailbox {
            local_part: "postmaster".into(),
            domain: Domain::None,
        });
        assert_eq!(parse_forward_path("<postmaster>", false), Ok(pm.clone()));
        assert_eq!(parse_forward_path("<PostMaster>", false), Ok(pm));
        assert_eq!(
            parse_reverse_path("<postmaster>", false),
            Err(AddressError::MissingDomain)
        );
        assert_eq!(
            parse_forward_path("<abuse>", false),
            Err(AddressError::MissingDomain)
        );
        assert_eq!(
            parse_forward_path("<postmaster@Example.org>", false),
            Ok(ForwardPath(mbox("postmaster", "example.org")))
        );
    }

    #[test]
    fn source_routes_are_ignored() {
        assert_eq!(
            path("<@a.example,@b.example:user@c.example>"),
            Ok(mbox("user", "c.example"))
        );
        assert_eq!(
            path("<@a.example:user@c.example>"),
            Ok(mbox("user", "c.example"))
        );
        for bad in [
            "<@:user@c.example>",
            "<@a.example,:user@c.example>",
            "<@a.example,b.example:user@c.example>",
            "<@a.example>",
            "<@a..example:user@c.example>",
            "<@[1.2.3.4]:user@c.example>",
        ] {
            assert_eq!(path(bad), Err(AddressError::InvalidSourceRoute), "{bad}");
        }
        assert_eq!(
            path("<@a.example:@c.example>"),
            Err(AddressError::EmptyLocalPart)
        );
    }

    #[test]
    fn quoted_local_parts_are_unquoted() {
        assert_eq!(
            path("<\"a@b\"@local.example>"),
            Ok(mbox("a@b", "local.example"))
        );
        assert_eq!(
            path("<\"john doe\"@x.example>"),
            Ok(mbox("john doe", "x.example"))
        );
        assert_eq!(
            path("<\"a\\\"b\\\\c\"@x.example>"),
            Ok(mbox("a\"b\\c", "x.example"))
        );
        assert_eq!(path("<\"a>b\"@x.example>"), Ok(mbox("a>b", "x.example")));
        assert_eq!(
            path("<\"user%other@host\"@x>"),
            Ok(mbox("user%other@host", "x"))
        );
        assert_eq!(path("<\"..\"@x>"), Ok(mbox("..", "x")));
    }

    #[test]
    fn quoting_errors() {
        assert_eq!(
            path("<\"abc@x.example>"),
            Err(AddressError::UnbalancedQuote)
        );
        assert_eq!(
            parse_mailbox("\"abc@x.example", false),
            Err(AddressError::UnbalancedQuote)
        );
        assert_eq!(
            parse_mailbox("\"abc\\", false),
            Err(AddressError::UnbalancedQuote)
        );
        assert_eq!(path("<a\"b@x.example>"), Err(AddressError::UnbalancedQuote));
        assert_eq!(
            path("<a\"b\"c@x.example>"),
            Err(AddressError::InvalidLocalPart)
        );
        assert_eq!(
            path("<\"a\"b@x.example>"),
            Err(AddressError::InvalidLocalPart)
        );
        assert_eq!(path("<\"\"@x.example>"), Err(AddressError::EmptyLocalPart));
        assert_eq!(path("<\"a\">"), Err(AddressError::MissingDomain));
    }

    #[test]
    fn relay_tricks_are_refused() {
        assert_eq!(path("<a@b@c.example>"), Err(AddressError::InvalidDomain));
        assert_eq!(
            path("<user@example.com.>"),
            Err(AddressError::InvalidDomain)
        );
        assert_eq!(
            path("<user@.example.com>"),
            Err(AddressError::InvalidDomain)
        );
        assert_eq!(
            path("<user@exa..mple.com>"),
            Err(AddressError::InvalidDomain)
        );
        assert_eq!(
            path("<user@exa mple.com>"),
            Err(AddressError::InvalidDomain)
        );
        assert_eq!(path("<user@-x.com>"), Err(AddressError::InvalidDomain));
        assert_eq!(path("<user@x-.com>"), Err(AddressError::InvalidDomain));
        assert_eq!(path("<user@x_y.com>"), Err(AddressError::InvalidDomain));
        assert_eq!(path("<user@x.com:25>"), Err(AddressError::InvalidDomain));
        assert_eq!(path("<user@>"), Err(AddressError::MissingDomain));
        assert_eq!(path("<user>"), Err(AddressError::MissingDomain));
        assert_eq!(path("<@x.com>"), Err(AddressError::InvalidSourceRoute));
        assert_eq!(path("<.user@x.com>"), Err(AddressError::InvalidLocalPart));
        assert_eq!(path("<user.@x.com>"), Err(AddressError::InvalidLocalPart));
        assert_eq!(path("<us..er@x.com>"), Err(AddressError::InvalidLocalPart));
        assert_eq!(path("<us er@x.com>"), Err(AddressError::InvalidLocalPart));
        assert_eq!(path("<us(er)@x.com>"), Err(AddressError::InvalidLocalPart));
        assert_eq!(path("<us,er@x.com>"), Err(AddressError::InvalidLocalPart));
        assert_eq!(path("<a@x.com> "), Err(AddressError::TrailingCharacters));
        assert_eq!(path("<a@x.com>>"), Err(AddressError::TrailingCharacters));
        assert_eq!(path("<<a@x.com>>"), Err(AddressError::TrailingCharacters));
        assert_eq!(path("<<a@x.com>"), Err(AddressError::InvalidLocalPart));
    }

    #[test]
    fn brackets_are_required() {
        assert_eq!(path("user@example.com"), Err(AddressError::MissingBrackets));
        assert_eq!(
            path("<user@example.com"),
            Err(AddressError::MissingBrackets)
        );
        assert_eq!(
            path("user@example.com>"),
            Err(AddressError::MissingBrackets)
        );
        assert_eq!(path(""), Err(AddressError::MissingBrackets));
        assert_eq!(
            parse_reverse_path("", false),
            Err(AddressError::MissingBrackets)
        );
    }

    #[test]
    fn control_characters_and_nul() {
        for bad in [
            "<a\0b@x.com>",
            "<ab@x\0.com>",
            "<a\tb@x.com>",
            "<a@x.com\r>",
            "<\"a\nb\"@x>",
            "<a\x7f@x>",
        ] {
            assert_eq!(path(bad), Err(AddressError::ControlCharacter), "{bad:?}");
            assert_eq!(
                parse_reverse_path(bad, true),
                Err(AddressError::ControlCharacter)
            );
            assert_eq!(
                parse_forward_path(bad, true),
                Err(AddressError::ControlCharacter)
            );
        }
        assert_eq!(
            parse_domain("a\u{85}b", true),
            Err(AddressError::ControlCharacter)
        );
    }

    #[test]
    fn length_limits() {
        let local64 = "a".repeat(64);
        let p = format!("<{local64}@x.com>");
        assert_eq!(path(&p).map(|m| m.local_part.len()), Ok(64));
        let p = format!("<{}@x.com>", "a".repeat(65));
        assert_eq!(path(&p), Err(AddressError::LocalPartTooLong));
        // The quotes count: the limit is on the wire form.
        let p = format!("<\"{}\"@x.com>", "a".repeat(63));
        assert_eq!(path(&p), Err(AddressError::LocalPartTooLong));
        let label63 = "b".repeat(63);
        assert!(path(&format!("<a@{label63}.com>")).is_ok());
        assert_eq!(
            path(&format!("<a@{}.com>", "b".repeat(64))),
            Err(AddressError::LabelTooLong)
        );
        // 4 labels of 63 + 3 dots = 255: a valid domain.
        let domain255 = [label63.as_str(); 4].join(".");
        assert_eq!(domain255.len(), 255);
        assert!(parse_domain(&domain255, false).is_ok());
        assert_eq!(
            parse_domain(&format!("{domain255}x"), false),
            Err(AddressError::DomainTooLong)
        );
        // The path limit (256 with brackets) bites before the domain limit.
        assert_eq!(
            path(&format!("<a@{domain255}>")),
            Err(AddressError::PathTooLong)
        );
        let domain = [
            label63.as_str(),
            label63.as_str(),
            label63.as_str(),
            &"c".repeat(59),
        ]
        .join(".");
        let p = format!("<ab@{domain}>");
        assert_eq!(p.len(), 256);
        assert!(path(&p).is_ok());
        let p = format!("<abc@{domain}>");
        assert_eq!(path(&p), Err(AddressError::PathTooLong));
    }

    #[test]
    fn address_literals() {
        assert_eq!(
            path("<a@[192.0.2.1]>").map(|m| m.domain),
            Ok(Domain::Literal("192.0.2.1".parse().unwrap()))
        );
        assert_eq!(
            path("<a@[IPv6:2001:db8::1]>").map(|m| m.domain),
            Ok(Domain::Literal("2001:db8::1".parse().unwrap()))
        );
        assert_eq!(
            path("<a@[ipv6:::ffff:192.0.2.1]>").map(|m| m.domain),
            Ok(Domain::Literal("::ffff:192.0.2.1".parse().unwrap()))
        );
        for bad in [
            "<a@[192.0.2]>",
            "<a@[192.0.2.256]>",
            "<a@[2001:db8::1]>",
            "<a@[IPv6:192.0.2.1]>",
            "<a@[IPv6:]>",
            "<a@[x-tag:foo]>",
            "<a@[]>",
            "<a@[192.0.2.1>",
            "<a@[192.0.2.1]x>",
            "<a@[ 192.0.2.1]>",
            "<a@[IPv6:2001:db8::1%eth0]>",
        ] {
            assert!(path(bad).is_err(), "{bad}");
        }
        assert_eq!(
            path("<a@[192.0.2]>"),
            Err(AddressError::InvalidAddressLiteral)
        );
    }

    #[test]
    fn utf8_only_with_smtputf8() {
        assert_eq!(path("<jösé@example.com>"), Err(AddressError::NonAscii));
        assert_eq!(path("<a@bücher.example>"), Err(AddressError::NonAscii));
        assert_eq!(
            parse_path("<jösé@Bücher.EXAMPLE>", true),
            Ok(mbox("jösé", "bücher.example"))
        );
        assert_eq!(parse_path("<\"é x\"@x>", true), Ok(mbox("é x", "x")));
        assert_eq!(
            parse_path("<a@b☃.example>", true),
            Err(AddressError::InvalidDomain)
        );
        assert!(!parse_path("<jösé@x>", true).unwrap().is_ascii());
        assert!(!parse_path("<a@bücher.example>", true).unwrap().is_ascii());
        assert!(path("<a@x>").unwrap().is_ascii());
    }

    #[test]
    fn display_round_trips() {
        for (input, canonical) in [
            ("<user@Example.COM>", "user@example.com"),
            ("<\"a@b\"@local>", "\"a@b\"@local"),
            ("<\"john doe\"@x>", "\"john doe\"@x"),
            ("<\"plain\"@x>", "plain@x"),
            ("<\"a\\\"b\"@x>", "\"a\\\"b\"@x"),
            ("<\"a.\"@x>", "\"a.\"@x"),
            ("<a@[192.0.2.1]>", "a@[192.0.2.1]"),
            ("<a@[IPv6:2001:DB8::1]>", "a@[IPv6:2001:db8::1]"),
            ("<@r.example:u@x>", "u@x"),
        ] {
            let m = path(input).unwrap();
            assert_eq!(m.to_string(), canonical);
            assert_eq!(path(&format!("<{m}>")).unwrap(), m, "{input}");
        }
        let pm = parse_forward_path("<Postmaster>", false).unwrap();
        assert_eq!(pm.0.to_string(), "postmaster");
        assert_eq!(pm.to_path_string(), "<postmaster>");
        assert_eq!(ReversePath::Null.to_path_string(), "<>");
        let rp = parse_reverse_path("<a@x>", false).unwrap();
        assert_eq!(rp.to_path_string(), "<a@x>");
        assert_eq!(rp.mailbox(), Some(&mbox("a", "x")));
        assert_eq!(ReversePath::Null.mailbox(), None);
    }

    #[test]
    fn helo_names() {
        assert_eq!(
            parse_helo_domain("Mail.Example.com"),
            Ok(Domain::Name("mail.example.com".into()))
        );
        assert_eq!(
            parse_helo_domain("my_pc.lan"),
            Ok(Domain::Name("my_pc.lan".into()))
        );
        assert_eq!(
            parse_helo_domain("[127.0.0.1]"),
            Ok(Domain::Literal("127.0.0.1".parse().unwrap()))
        );
        assert!(parse_helo_domain("[IPv6:::1]").is_ok());
        for bad in [
            "", "a b", "a..b", "a.b.", "[1.2.3]", "héllo", "a\0b", "a@b", "x/y",
        ] {
            assert!(parse_helo_domain(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn path_end_skips_quotes() {
        assert_eq!(path_end("<a@b> X=1"), Ok(4));
        assert_eq!(path_end("<\"a>\\\"b\"@c> X"), Ok(10));
        assert_eq!(path_end("<\"a>b@c"), Err(AddressError::UnbalancedQuote));
        assert_eq!(path_end("<a@b"), Err(AddressError::MissingBrackets));
    }
}
