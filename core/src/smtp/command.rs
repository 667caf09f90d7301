//! One SMTP command line (without its line ending, as `line::LineBuffer`
//! yields it) parsed into a typed [`Command`]. The session matches on the
//! result; a [`ParseError`] knows the reply it deserves.
//!
//! Verbs are case-insensitive. NUL, control characters and invalid UTF-8
//! are refused anywhere in a command line; non-ASCII is refused everywhere
//! except in a MAIL/RCPT path under SMTPUTF8 (RFC 6531).

use super::address::{
    self, parse_forward_path, parse_reverse_path, AddressError, ForwardPath, ReversePath,
};
use super::dsn;
use super::reply::Reply;
use sluice_spool::{DsnEnvelope, RecipientDsn};
use std::fmt;

/// A parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// EHLO with the client's domain or address literal, as sent.
    Ehlo(String),
    /// HELO with the client's domain or address literal, as sent.
    Helo(String),
    /// MAIL FROM.
    Mail {
        reverse_path: ReversePath,
        params: MailParams,
    },
    /// RCPT TO with its DSN parameters NOTIFY and ORCPT (RFC 3461), the
    /// only ones the parser lets through.
    Rcpt {
        forward_path: ForwardPath,
        dsn: RecipientDsn,
    },
    Data,
    Rset,
    /// NOOP; its optional argument is ignored (RFC 5321 §4.1.1.9).
    Noop,
    Quit,
    /// HELP with its optional topic.
    Help(Option<String>),
    Vrfy(String),
    Expn(String),
    StartTls,
    /// AUTH with the mechanism uppercased and the optional initial response
    /// (base64, or `=` for an empty one; RFC 4954 §4).
    Auth {
        mechanism: String,
        initial: Option<String>,
    },
}

/// The BODY= parameter (RFC 6152, RFC 3030).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    SevenBit,
    EightBitMime,
    /// Only valid with CHUNKING (RFC 3030 §3), which sluice does not offer:
    /// the session answers it with `Reply::unknown_parameter()` (555).
    BinaryMime,
}

/// ESMTP parameters of MAIL FROM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailParams {
    /// SIZE= announced by the client (RFC 1870).
    pub size: Option<u64>,
    /// BODY= (RFC 6152).
    pub body: Option<Body>,
    /// SMTPUTF8 (RFC 6531): the addresses and headers may be UTF-8.
    pub smtputf8: bool,
    /// RET and ENVID (RFC 3461 §4.3, §4.4).
    pub dsn: DsnEnvelope,
    /// Parameters the parser knows but does not interpret, keyword
    /// uppercased: AUTH (RFC 4954 §5). The session must refuse those of
    /// extensions it did not advertise.
    pub other: Vec<(String, Option<String>)>,
}

/// Which path a bad address came from; picks the enhanced code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathRole {
    Sender,
    Recipient,
}

impl fmt::Display for PathRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathRole::Sender => "sender",
            PathRole::Recipient => "recipient",
        })
    }
}

/// Why a command line was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Unknown verb or empty line (500 5.5.2).
    #[error("command unrecognized")]
    Unrecognized,
    /// A NUL, control character, invalid UTF-8, or non-ASCII outside a path
    /// (500 5.5.2).
    #[error("invalid character in command")]
    InvalidCharacter,
    /// A known verb sluice does not implement: BDAT, ETRN, TURN... (502 5.5.1).
    #[error("command {0} not implemented")]
    NotImplemented(&'static str),
    /// Bad or missing arguments (501 5.5.4).
    #[error("syntax error: {0}")]
    Syntax(&'static str),
    /// A malformed path (501 5.1.7 sender, 501 5.1.3 recipient, 553 5.6.7
    /// non-ASCII without SMTPUTF8).
    #[error("bad {role} address: {source}")]
    BadAddress {
        role: PathRole,
        source: AddressError,
    },
    /// An AUTH initial response that is not base64 (501 5.5.2, RFC 4954 §4).
    #[error("initial response must be base64")]
    BadBase64,
    /// A MAIL/RCPT parameter sluice does not know (555 5.5.4).
    #[error("unknown parameter {0}")]
    UnknownParameter(String),
}

impl ParseError {
    /// The reply the client gets.
    pub fn reply(&self) -> Reply {
        match self {
            ParseError::Unrecognized => Reply::syntax_error(),
            ParseError::InvalidCharacter => Reply::invalid_character(),
            ParseError::NotImplemented(_) => Reply::not_implemented(),
            ParseError::BadBase64 => Reply::auth_bad_response(),
            ParseError::Syntax(detail) => Reply::param_error(detail),
            ParseError::BadAddress { role, source } => match (source, role) {
                (AddressError::NonAscii, _) => Reply::non_ascii_address(),
                (AddressError::PathTooLong, _) => Reply::path_too_long(),
                (_, PathRole::Sender) => Reply::bad_sender_address(),
                (_, PathRole::Recipient) => Reply::bad_address(),
            },
            ParseError::UnknownParameter(_) => Reply::unknown_parameter(),
        }
    }
}

/// Parses a command line outside an SMTPUTF8 transaction. Equivalent to
/// `parse_command_with(line, false)`.
pub fn parse_command(line: &[u8]) -> Result<Command, ParseError> {
    parse_command_with(line, false)
}

/// Parses a command line. `smtputf8` tells whether the current transaction's
/// MAIL FROM carried SMTPUTF8: only then may a RCPT path hold UTF-8 (MAIL
/// decides for itself from its own parameters).
pub fn parse_command_with(line: &[u8], smtputf8: bool) -> Result<Command, ParseError> {
    if line.iter().any(|&b| b.is_ascii_control()) {
        return Err(ParseError::InvalidCharacter);
    }
    let line = std::str::from_utf8(line).map_err(|_| ParseError::InvalidCharacter)?;
    // Trailing spaces are a common client habit and carry no meaning.
    let line = line.trim_end_matches(' ');
    let (verb, rest) = line.split_once(' ').unwrap_or((line, ""));
    if !verb.is_ascii() {
        return Err(ParseError::InvalidCharacter);
    }
    match verb.to_ascii_uppercase().as_str() {
        "EHLO" => parse_helo(rest).map(Command::Ehlo),
        "HELO" => parse_helo(rest).map(Command::Helo),
        "MAIL" => parse_mail(rest),
        "RCPT" => parse_rcpt(rest, smtputf8),
        "DATA" => no_argument(rest, Command::Data),
        "RSET" => no_argument(rest, Command::Rset),
        "QUIT" => no_argument(rest, Command::Quit),
        "STARTTLS" => no_argument(rest, Command::StartTls),
        "NOOP" => ascii(rest).map(|_| Command::Noop),
        "HELP" => ascii(rest).map(|topic| Command::Help(non_empty(topic))),
        "VRFY" => required(rest).map(Command::Vrfy),
        "EXPN" => required(rest).map(Command::Expn),
        "AUTH" => parse_auth(rest),
        "BDAT" => Err(ParseError::NotImplemented("BDAT")),
        "BURL" => Err(ParseError::NotImplemented("BURL")),
        "ETRN" => Err(ParseError::NotImplemented("ETRN")),
        "ATRN" => Err(ParseError::NotImplemented("ATRN")),
        "TURN" => Err(ParseError::NotImplemented("TURN")),
        "SEND" => Err(ParseError::NotImplemented("SEND")),
        "SOML" => Err(ParseError::NotImplemented("SOML")),
        "SAML" => Err(ParseError::NotImplemented("SAML")),
        _ => Err(ParseError::Unrecognized),
    }
}

fn no_argument(rest: &str, command: Command) -> Result<Command, ParseError> {
    if rest.is_empty() {
        Ok(command)
    } else {
        Err(ParseError::Syntax("no arguments allowed"))
    }
}

fn ascii(rest: &str) -> Result<&str, ParseError> {
    if rest.is_ascii() {
        Ok(rest)
    } else {
        Err(ParseError::InvalidCharacter)
    }
}

fn non_empty(s: &str) -> Option<String> {
    let s = s.trim_start_matches(' ');
    (!s.is_empty()).then(|| s.to_owned())
}

fn required(rest: &str) -> Result<String, ParseError> {
    non_empty(ascii(rest)?).ok_or(ParseError::Syntax("argument required"))
}

/// `Domain / address-literal` (RFC 5321 §4.1.1.1); one argument only.
fn parse_helo(rest: &str) -> Result<String, ParseError> {
    let name = rest.trim_start_matches(' ');
    if name.is_empty() {
        return Err(ParseError::Syntax(
            "HELO/EHLO requires a domain or address literal",
        ));
    }
    if !name.is_ascii() {
        return Err(ParseError::InvalidCharacter);
    }
    if name.contains(' ') {
        return Err(ParseError::Syntax("HELO/EHLO takes a single argument"));
    }
    address::parse_helo_domain(name)
        .map_err(|_| ParseError::Syntax("invalid domain or address literal"))?;
    Ok(name.to_owned())
}

/// Strips `keyword` (like `FROM:`) case-insensitively, then any spaces:
/// RFC 5321 has no space after the colon but many clients send one.
fn strip_keyword<'a>(rest: &'a str, keyword: &str) -> Option<&'a str> {
    let head = rest.get(..keyword.len())?;
    head.eq_ignore_ascii_case(keyword)
        .then(|| rest[keyword.len()..].trim_start_matches(' '))
}

/// Splits `<path> params` at the closing bracket.
fn split_path(rest: &str, role: PathRole) -> Result<(&str, &str), ParseError> {
    let bad = |source| ParseError::BadAddress { role, source };
    if !rest.starts_with('<') {
        return Err(bad(AddressError::MissingBrackets));
    }
    let end = address::path_end(rest).map_err(bad)?;
    let (path, params) = rest.split_at(end + 1);
    if !params.is_empty() && !params.starts_with(' ') {
        return Err(bad(AddressError::TrailingCharacters));
    }
    Ok((path, params))
}

fn parse_mail(rest: &str) -> Result<Command, ParseError> {
    let rest = strip_keyword(rest, "FROM:").ok_or(ParseError::Syntax("expected FROM:<address>"))?;
    let (path, params) = split_path(rest, PathRole::Sender)?;
    let mut mail = MailParams::default();
    for (keyword, value) in esmtp_params(params)? {
        let duplicate = match keyword.as_str() {
            "SIZE" => mail.size.replace(parse_size(value)?).is_some(),
            "BODY" => mail.body.replace(parse_body(value)?).is_some(),
            "SMTPUTF8" => {
                if value.is_some() {
                    return Err(ParseError::Syntax("SMTPUTF8 takes no value"));
                }
                std::mem::replace(&mut mail.smtputf8, true)
            }
            "RET" => {
                let ret = dsn::parse_ret(param_value(value)?).map_err(ParseError::Syntax)?;
                mail.dsn.ret.replace(ret).is_some()
            }
            "ENVID" => {
                let envid = dsn::parse_envid(param_value(value)?).map_err(ParseError::Syntax)?;
                mail.dsn.envid.replace(envid).is_some()
            }
            "AUTH" => {
                let value = param_value(value)?;
                let seen = mail.other.iter().any(|(k, _)| *k == keyword);
                mail.other.push((keyword.clone(), Some(value.to_owned())));
                seen
            }
            _ => return Err(ParseError::UnknownParameter(keyword)),
        };
        if duplicate {
            return Err(ParseError::Syntax("duplicate parameter"));
        }
    }
    let reverse_path =
        parse_reverse_path(path, mail.smtputf8).map_err(|source| ParseError::BadAddress {
            role: PathRole::Sender,
            source,
        })?;
    Ok(Command::Mail {
        reverse_path,
        params: mail,
    })
}

fn parse_rcpt(rest: &str, smtputf8: bool) -> Result<Command, ParseError> {
    let rest = strip_keyword(rest, "TO:").ok_or(ParseError::Syntax("expected TO:<address>"))?;
    let (path, params) = split_path(rest, PathRole::Recipient)?;
    let mut out = RecipientDsn::default();
    for (keyword, value) in esmtp_params(params)? {
        let duplicate = match keyword.as_str() {
            "NOTIFY" => {
                let notify = dsn::parse_notify(param_value(value)?).map_err(ParseError::Syntax)?;
                out.notify.replace(notify).is_some()
            }
            "ORCPT" => {
                let orcpt = dsn::parse_orcpt(param_value(value)?).map_err(ParseError::Syntax)?;
                out.orcpt.replace(orcpt).is_some()
            }
            _ => return Err(ParseError::UnknownParameter(keyword)),
        };
        if duplicate {
            return Err(ParseError::Syntax("duplicate parameter"));
        }
    }
    let forward_path =
        parse_forward_path(path, smtputf8).map_err(|source| ParseError::BadAddress {
            role: PathRole::Recipient,
            source,
        })?;
    Ok(Command::Rcpt {
        forward_path,
        dsn: out,
    })
}

/// The value of a parameter that must have one.
fn param_value(value: Option<&str>) -> Result<&str, ParseError> {
    value.ok_or(ParseError::Syntax("parameter requires a value"))
}

/// `esmtp-param *(SP esmtp-param)` after the path (RFC 5321 §4.1.2):
/// `esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")`,
/// `esmtp-value = 1*(%d33-60 / %d62-126)`. Keywords come back uppercased.
fn esmtp_params(s: &str) -> Result<Vec<(String, Option<&str>)>, ParseError> {
    if !s.is_ascii() {
        return Err(ParseError::InvalidCharacter);
    }
    let mut out = Vec::new();
    for param in s.split(' ').filter(|p| !p.is_empty()) {
        let (keyword, value) = match param.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (param, None),
        };
        let keyword_ok = keyword
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
            && keyword
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !keyword_ok {
            return Err(ParseError::Syntax("invalid parameter keyword"));
        }
        if let Some(v) = value {
            if v.is_empty() || !v.bytes().all(|b| (33..=126).contains(&b) && b != b'=') {
                return Err(ParseError::Syntax("invalid parameter value"));
            }
        }
        out.push((keyword.to_ascii_uppercase(), value));
    }
    Ok(out)
}

fn parse_size(value: Option<&str>) -> Result<u64, ParseError> {
    let value = value.ok_or(ParseError::Syntax("SIZE requires a value"))?;
    // RFC 1870: size-value = 1*20DIGIT; more than fits a u64 is an error.
    if value.len() > 20 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ParseError::Syntax("SIZE must be a number"));
    }
    value
        .parse()
        .map_err(|_| ParseError::Syntax("SIZE out of range"))
}

fn parse_body(value: Option<&str>) -> Result<Body, ParseError> {
    let value = value.ok_or(ParseError::Syntax("BODY requires a value"))?;
    match value.to_ascii_uppercase().as_str() {
        "7BIT" => Ok(Body::SevenBit),
        "8BITMIME" => Ok(Body::EightBitMime),
        "BINARYMIME" => Ok(Body::BinaryMime),
        _ => Err(ParseError::Syntax(
            "BODY must be 7BIT, 8BITMIME or BINARYMIME",
        )),
    }
}

/// `AUTH mechanism [initial-response]` (RFC 4954 §4).
fn parse_auth(rest: &str) -> Result<Command, ParseError> {
    let rest = ascii(rest)?;
    let mut words = rest.split(' ').filter(|w| !w.is_empty());
    let mechanism = words
        .next()
        .ok_or(ParseError::Syntax("AUTH requires a mechanism"))?;
    let initial = words.next();
    if words.next().is_some() {
        return Err(ParseError::Syntax("too many AUTH arguments"));
    }
    // SASL mechanism names: 1-20 of A-Z, 0-9, '-', '_' (RFC 4422 §3.1).
    let mechanism_ok = mechanism.len() <= 20
        && mechanism
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !mechanism_ok {
        return Err(ParseError::Syntax("invalid SASL mechanism name"));
    }
    if let Some(initial) = initial {
        if initial != "=" && !is_base64(initial) {
            return Err(ParseError::BadBase64);
        }
    }
    Ok(Command::Auth {
        mechanism: mechanism.to_ascii_uppercase(),
        initial: initial.map(str::to_owned),
    })
}

/// Base64 alphabet with at most two `=` of padding at the end, length a
/// multiple of four.
fn is_base64(s: &str) -> bool {
    let data = s.trim_end_matches('=');
    s.len().is_multiple_of(4)
        && s.len() - data.len() <= 2
        && data
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::address::{Domain, Mailbox};

    fn parse(s: &str) -> Result<Command, ParseError> {
        parse_command(s.as_bytes())
    }

    fn mbox(local: &str, domain: &str) -> Mailbox {
        Mailbox {
            local_part: local.into(),
            domain: Domain::Name(domain.into()),
        }
    }

    fn mail(s: &str) -> (ReversePath, MailParams) {
        match parse(s) {
            Ok(Command::Mail {
                reverse_path,
                params,
            }) => (reverse_path, params),
            other => panic!("{s}: {other:?}"),
        }
    }

    fn code(r: Result<Command, ParseError>) -> (u16, String) {
        let reply = r.unwrap_err().reply();
        (reply.code, reply.enhanced.unwrap_or_default())
    }

    #[test]
    fn simple_verbs_any_case() {
        assert_eq!(parse("DATA"), Ok(Command::Data));
        assert_eq!(parse("data"), Ok(Command::Data));
        assert_eq!(parse("DaTa  "), Ok(Command::Data));
        assert_eq!(parse("RSET"), Ok(Command::Rset));
        assert_eq!(parse("quit"), Ok(Command::Quit));
        assert_eq!(parse("STARTTLS"), Ok(Command::StartTls));
        assert_eq!(parse("NOOP"), Ok(Command::Noop));
        assert_eq!(parse("NOOP anything at all"), Ok(Command::Noop));
        assert_eq!(parse("HELP"), Ok(Command::Help(None)));
        assert_eq!(parse("HELP MAIL"), Ok(Command::Help(Some("MAIL".into()))));
        assert_eq!(parse("VRFY root"), Ok(Command::Vrfy("root".into())));
        assert_eq!(parse("EXPN staff"), Ok(Command::Expn("staff".into())));
    }

    #[test]
    fn arguments_where_none_allowed() {
        for s in ["DATA x", "RSET now", "QUIT bye", "STARTTLS x"] {
            assert_eq!(
                parse(s),
                Err(ParseError::Syntax("no arguments allowed")),
                "{s}"
            );
            assert_eq!(code(parse(s)), (501, "5.5.4".into()));
        }
        assert_eq!(code(parse("VRFY")), (501, "5.5.4".into()));
        assert_eq!(code(parse("EXPN ")), (501, "5.5.4".into()));
    }

    #[test]
    fn unknown_and_unimplemented_verbs() {
        assert_eq!(parse(""), Err(ParseError::Unrecognized));
        assert_eq!(parse("FOO bar"), Err(ParseError::Unrecognized));
        assert_eq!(parse("MAILFROM:<a@b>"), Err(ParseError::Unrecognized));
        assert_eq!(parse(" MAIL FROM:<a@b>"), Err(ParseError::Unrecognized));
        assert_eq!(parse("GET / HTTP/1.1"), Err(ParseError::Unrecognized));
        assert_eq!(code(parse("FOO")), (500, "5.5.2".into()));
        assert_eq!(
            parse("BDAT 100 LAST"),
            Err(ParseError::NotImplemented("BDAT"))
        );
        assert_eq!(
            parse("etrn example.com"),
            Err(ParseError::NotImplemented("ETRN"))
        );
        assert_eq!(code(parse("TURN")), (502, "5.5.1".into()));
    }

    #[test]
    fn nul_control_and_non_ascii_bytes() {
        for line in [
            &b"MAIL FROM:<a@b>\0"[..],
            b"\0DATA",
            b"DA\0TA",
            b"HELO x\ty",
            b"RCPT TO:<a@b>\r",
            b"NOOP \x1b[31m",
            b"DATA\x7f",
            b"EHLO \xff\xfe",
            b"MAIL FROM:<\xc3@b>",
        ] {
            assert_eq!(
                parse_command(line),
                Err(ParseError::InvalidCharacter),
                "{line:?}"
            );
            assert_eq!(
                parse_command_with(line, true),
                Err(ParseError::InvalidCharacter)
            );
        }
        assert_eq!(code(parse_command(b"DA\0TA")), (500, "5.5.2".into()));
        assert_eq!(parse("DÄTA"), Err(ParseError::InvalidCharacter));
        assert_eq!(
            parse("EHLO bücher.example"),
            Err(ParseError::InvalidCharacter)
        );
        assert_eq!(parse("NOOP é"), Err(ParseError::InvalidCharacter));
        assert_eq!(parse("VRFY jösé"), Err(ParseError::InvalidCharacter));
        assert_eq!(
            parse("MAIL FROM:<a@b> SIZE=1é"),
            Err(ParseError::InvalidCharacter)
        );
    }

    #[test]
    fn helo_and_ehlo() {
        assert_eq!(
            parse("EHLO mail.example.com"),
            Ok(Command::Ehlo("mail.example.com".into()))
        );
        assert_eq!(
            parse("ehlo Mail.Example.COM"),
            Ok(Command::Ehlo("Mail.Example.COM".into()))
        );
        assert_eq!(
            parse("HELO [192.0.2.1]"),
            Ok(Command::Helo("[192.0.2.1]".into()))
        );
        assert_eq!(
            parse("EHLO [IPv6:2001:db8::1]"),
            Ok(Command::Ehlo("[IPv6:2001:db8::1]".into()))
        );
        assert_eq!(
            parse("EHLO  localhost"),
            Ok(Command::Ehlo("localhost".into()))
        );
        assert_eq!(parse("EHLO win_pc"), Ok(Command::Ehlo("win_pc".into())));
        for bad in [
            "EHLO",
            "EHLO ",
            "HELO a b",
            "EHLO [1.2.3]",
            "EHLO a..b",
            "EHLO a.b.",
            "EHLO <a@b>",
            "EHLO [IPv6:zz]",
        ] {
            let r = parse(bad);
            assert!(matches!(r, Err(ParseError::Syntax(_))), "{bad}: {r:?}");
            assert_eq!(code(r), (501, "5.5.4".into()));
        }
    }

    #[test]
    fn mail_from_forms() {
        let (rp, params) = mail("MAIL FROM:<a@b.example>");
        assert_eq!(rp, ReversePath::Mailbox(mbox("a", "b.example")));
        assert_eq!(params, MailParams::default());
        assert_eq!(mail("mail from:<>").0, ReversePath::Null);
        assert_eq!(
            mail("MAIL FROM: <a@b>").0,
            ReversePath::Mailbox(mbox("a", "b"))
        );
        assert_eq!(
            mail("MAIL From:<a@B> ").0,
            ReversePath::Mailbox(mbox("a", "b"))
        );
        assert_eq!(
            mail("MAIL FROM:<@r.example:a@b>").0,
            ReversePath::Mailbox(mbox("a", "b"))
        );
        assert_eq!(
            parse("MAIL"),
            Err(ParseError::Syntax("expected FROM:<address>"))
        );
        assert_eq!(
            parse("MAIL TO:<a@b>"),
            Err(ParseError::Syntax("expected FROM:<address>"))
        );
        assert_eq!(
            parse("MAIL FROM <a@b>"),
            Err(ParseError::Syntax("expected FROM:<address>"))
        );
    }

    #[test]
    fn mail_params() {
        let (_, p) = mail("MAIL FROM:<a@b> SIZE=12345 BODY=8bitmime");
        assert_eq!(p.size, Some(12345));
        assert_eq!(p.body, Some(Body::EightBitMime));
        assert!(!p.smtputf8);
        let (_, p) = mail("MAIL FROM:<a@b>  body=7BIT   smtputf8");
        assert_eq!(p.body, Some(Body::SevenBit));
        assert!(p.smtputf8);
        let (_, p) = mail("MAIL FROM:<a@b> BODY=BINARYMIME");
        assert_eq!(p.body, Some(Body::BinaryMime));
        let (_, p) = mail("MAIL FROM:<a@b> AUTH=<> RET=hdrs ENVID=QQ+2B314159");
        assert_eq!(p.other, vec![("AUTH".to_owned(), Some("<>".to_owned()))]);
        assert_eq!(p.dsn.ret, Some(sluice_spool::Ret::Hdrs));
        assert_eq!(p.dsn.envid.as_deref(), Some("QQ+314159"));
        let (_, p) = mail("MAIL FROM:<a@b> SIZE=18446744073709551615");
        assert_eq!(p.size, Some(u64::MAX));
    }

    #[test]
    fn mail_param_errors() {
        let unknown = parse("MAIL FROM:<a@b> XFOO=1");
        assert_eq!(unknown, Err(ParseError::UnknownParameter("XFOO".into())));
        assert_eq!(code(unknown), (555, "5.5.4".into()));
        assert_eq!(
            code(parse("MAIL FROM:<a@b> NOTIFY=NEVER")),
            (555, "5.5.4".into())
        );
        for bad in [
            "MAIL FROM:<a@b> SIZE",
            "MAIL FROM:<a@b> SIZE=",
            "MAIL FROM:<a@b> SIZE=-1",
            "MAIL FROM:<a@b> SIZE=1k",
            "MAIL FROM:<a@b> SIZE=18446744073709551616",
            "MAIL FROM:<a@b> SIZE=123456789012345678901",
            "MAIL FROM:<a@b> SIZE=1 SIZE=2",
            "MAIL FROM:<a@b> BODY=9BIT",
            "MAIL FROM:<a@b> BODY",
            "MAIL FROM:<a@b> BODY=7BIT BODY=7BIT",
            "MAIL FROM:<a@b> SMTPUTF8=yes",
            "MAIL FROM:<a@b> SMTPUTF8 SMTPUTF8",
            "MAIL FROM:<a@b> RET=ALL",
            "MAIL FROM:<a@b> RET=FULL RET=HDRS",
            "MAIL FROM:<a@b> ENVID=a+2",
            "MAIL FROM:<a@b> ENVID=a+0Ab",
            "MAIL FROM:<a@b> ENVID",
            "MAIL FROM:<a@b> ENVID=1 ENVID=2",
            "MAIL FROM:<a@b> AUTH",
            "MAIL FROM:<a@b> -X=1",
            "MAIL FROM:<a@b> X_Y=1",
            "MAIL FROM:<a@b> X=a=b",
            "MAIL FROM:<a@b> =1",
        ] {
            let r = parse(bad);
            assert!(matches!(r, Err(ParseError::Syntax(_))), "{bad}: {r:?}");
            assert_eq!(code(r), (501, "5.5.4".into()), "{bad}");
        }
    }

    #[test]
    fn mail_address_errors() {
        for (bad, source) in [
            ("MAIL FROM:a@b", AddressError::MissingBrackets),
            ("MAIL FROM:<a@b", AddressError::MissingBrackets),
            ("MAIL FROM:<\"a@b>", AddressError::UnbalancedQuote),
            ("MAIL FROM:<a@b>SIZE=1", AddressError::TrailingCharacters),
            ("MAIL FROM:<a@b@c>", AddressError::InvalidDomain),
            ("MAIL FROM:<a@b.>", AddressError::InvalidDomain),
            ("MAIL FROM:<a..b@c>", AddressError::InvalidLocalPart),
        ] {
            assert_eq!(
                parse(bad),
                Err(ParseError::BadAddress {
                    role: PathRole::Sender,
                    source
                }),
                "{bad}"
            );
            assert_eq!(code(parse(bad)), (501, "5.1.7".into()));
        }
        let long = format!("MAIL FROM:<{}@{}>", "a".repeat(60), "b.".repeat(100) + "c");
        assert_eq!(code(parse(&long)), (501, "5.1.3".into()));
    }

    #[test]
    fn mail_utf8_needs_smtputf8_param() {
        let r = parse("MAIL FROM:<jösé@bücher.example>");
        assert_eq!(
            r,
            Err(ParseError::BadAddress {
                role: PathRole::Sender,
                source: AddressError::NonAscii
            })
        );
        assert_eq!(code(r), (553, "5.6.7".into()));
        let (rp, p) = mail("MAIL FROM:<jösé@Bücher.example> SMTPUTF8");
        assert!(p.smtputf8);
        assert_eq!(rp, ReversePath::Mailbox(mbox("jösé", "bücher.example")));
        // The transaction flag does not matter for MAIL: its own param does.
        assert!(parse_command_with("MAIL FROM:<jösé@x>".as_bytes(), true).is_err());
    }

    #[test]
    fn rcpt_to() {
        assert_eq!(
            parse("RCPT TO:<User@Example.COM>"),
            Ok(Command::Rcpt {
                forward_path: ForwardPath(mbox("User", "example.com")),
                dsn: RecipientDsn::default()
            })
        );
        assert_eq!(
            parse("rcpt to: <postmaster>"),
            Ok(Command::Rcpt {
                forward_path: ForwardPath(Mailbox {
                    local_part: "postmaster".into(),
                    domain: Domain::None
                }),
                dsn: RecipientDsn::default()
            })
        );
        assert_eq!(
            parse("RCPT TO:<a@b> notify=success,delay ORCPT=rfc822;a+2Bx@b"),
            Ok(Command::Rcpt {
                forward_path: ForwardPath(mbox("a", "b")),
                dsn: RecipientDsn {
                    notify: Some(sluice_spool::Notify {
                        success: true,
                        failure: false,
                        delay: true
                    }),
                    orcpt: Some(sluice_spool::OriginalRecipient {
                        addr_type: "rfc822".into(),
                        address: "a+x@b".into()
                    }),
                }
            })
        );
        assert_eq!(
            parse("RCPT FROM:<a@b>"),
            Err(ParseError::Syntax("expected TO:<address>"))
        );
        assert_eq!(code(parse("RCPT TO:<>")), (501, "5.1.3".into()));
        assert_eq!(code(parse("RCPT TO:a@b")), (501, "5.1.3".into()));
        assert_eq!(code(parse("RCPT TO:<a@b@c>")), (501, "5.1.3".into()));
        assert_eq!(
            code(parse("RCPT TO:<\"a@b\"@c> SIZE=1")),
            (555, "5.5.4".into())
        );
        for bad in [
            "RCPT TO:<a@b> NOTIFY=NEVER,SUCCESS",
            "RCPT TO:<a@b> NOTIFY=sometimes",
            "RCPT TO:<a@b> NOTIFY",
            "RCPT TO:<a@b> ORCPT=a@b",
            "RCPT TO:<a@b> NOTIFY=NEVER NOTIFY=NEVER",
            "RCPT TO:<a@b> ORCPT=rfc822;a@b ORCPT=rfc822;a@b",
            "RCPT TO:<a@b> ORCPT=rfc822;a+4",
            "RCPT TO:<a@b> ORCPT",
        ] {
            assert_eq!(code(parse(bad)), (501, "5.5.4".into()), "{bad}");
        }
    }

    #[test]
    fn rcpt_utf8_depends_on_transaction() {
        let line = "RCPT TO:<jösé@bücher.example>".as_bytes();
        assert_eq!(code(parse_command(line)), (553, "5.6.7".into()));
        assert_eq!(
            parse_command_with(line, true),
            Ok(Command::Rcpt {
                forward_path: ForwardPath(mbox("jösé", "bücher.example")),
                dsn: RecipientDsn::default()
            })
        );
    }

    #[test]
    fn quoted_local_part_survives_command_parsing() {
        match parse("RCPT TO:<\"a b>c\"@x.example> NOTIFY=NEVER") {
            Ok(Command::Rcpt { forward_path, dsn }) => {
                assert_eq!(forward_path.0.local_part, "a b>c");
                assert_eq!(dsn.notify, Some(sluice_spool::Notify::default()));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn auth() {
        assert_eq!(
            parse("AUTH plain AGFsaWNlAHNlY3JldA=="),
            Ok(Command::Auth {
                mechanism: "PLAIN".into(),
                initial: Some("AGFsaWNlAHNlY3JldA==".into())
            })
        );
        assert_eq!(
            parse("AUTH LOGIN"),
            Ok(Command::Auth {
                mechanism: "LOGIN".into(),
                initial: None
            })
        );
        assert_eq!(
            parse("AUTH PLAIN ="),
            Ok(Command::Auth {
                mechanism: "PLAIN".into(),
                initial: Some("=".into())
            })
        );
        for bad in ["AUTH PLAIN abc", "AUTH PLAIN ab=c", "AUTH PLAIN a==="] {
            assert_eq!(code(parse(bad)), (501, "5.5.2".into()), "{bad}");
        }
        for bad in [
            "AUTH",
            "AUTH PLAIN a b",
            "AUTH PL/AIN",
            "AUTH ABCDEFGHIJKLMNOPQRSTU",
        ] {
            assert_eq!(code(parse(bad)), (501, "5.5.4".into()), "{bad}");
        }
    }

    #[test]
    fn error_display_carries_details() {
        let e = parse("MAIL FROM:<a@b.>").unwrap_err();
        assert_eq!(e.to_string(), "bad sender address: invalid domain");
        let e = parse("RCPT TO:<a@b> X=1").unwrap_err();
        assert_eq!(e.to_string(), "unknown parameter X");
    }
}
