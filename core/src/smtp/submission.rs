//! Message submission (RFC 6409), sans-IO: the author addresses of a
//! message (From, and Sender when present) that the session checks against
//! what the authenticated user may send as, and the Date and Message-ID
//! fields an MSA adds when the client left them out (RFC 6409 §8.2, §8.3).

use mail_parser::{Address, HeaderName, HeaderValue, MessageParser};

use crate::pipeline::message::header_section_end;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthorError {
    #[error("the message has no From header field")]
    MissingFrom,
    #[error("the message has more than one From header field")]
    SeveralFrom,
    #[error("the From header field holds no address")]
    NoAddress,
}

/// Every address of the From field and of the Sender field, if any,
/// lower-cased. RFC 5322 §3.6 wants exactly one From; a message with none
/// or several is refused rather than guessed at.
pub fn author_addresses(message: &[u8]) -> Result<Vec<String>, AuthorError> {
    let header_end = header_section_end(message);
    let headers = &message[..header_end];
    let Some(parsed) = MessageParser::new().parse_headers(headers) else {
        return Err(AuthorError::MissingFrom);
    };
    let mut from_fields = 0;
    let mut out = Vec::new();
    for header in parsed.headers() {
        let is_from = matches!(header.name, HeaderName::From);
        if !is_from && !matches!(header.name, HeaderName::Sender) {
            continue;
        }
        if is_from {
            from_fields += 1;
        }
        let before = out.len();
        if let HeaderValue::Address(address) = &header.value {
            push_addresses(address, &mut out);
        }
        if is_from && out.len() == before {
            return Err(AuthorError::NoAddress);
        }
    }
    match from_fields {
        0 => Err(AuthorError::MissingFrom),
        1 => Ok(out),
        _ => Err(AuthorError::SeveralFrom),
    }
}

/// The domain of the first From address, lower-cased: the domain a DKIM
/// signature for the message is made with (DMARC aligns on it).
pub fn from_domain(message: &[u8]) -> Option<String> {
    let header_end = header_section_end(message);
    let parsed = MessageParser::new().parse_headers(&message[..header_end])?;
    let address = parsed.from()?.first()?.address.as_deref()?;
    let (_, domain) = address.trim().rsplit_once('@')?;
    Some(domain.trim_end_matches('.').to_lowercase())
}

fn push_addresses(address: &Address<'_>, out: &mut Vec<String>) {
    let addrs: Vec<&mail_parser::Addr<'_>> = match address {
        Address::List(list) => list.iter().collect(),
        Address::Group(groups) => groups.iter().flat_map(|g| g.addresses.iter()).collect(),
    };
    for addr in addrs {
        if let Some(a) = &addr.address {
            out.push(a.trim().to_lowercase());
        }
    }
}

/// Which of Date and Message-ID the header section lacks.
pub fn missing_fields(message: &[u8]) -> (bool, bool) {
    let header_end = header_section_end(message);
    let mut date = false;
    let mut message_id = false;
    for line in message[..header_end].split(|&b| b == b'\n') {
        if let Some(colon) = line.iter().position(|&b| b == b':') {
            let name = line[..colon].trim_ascii_end();
            date |= name.eq_ignore_ascii_case(b"date");
            message_id |= name.eq_ignore_ascii_case(b"message-id");
        }
    }
    (!date, !message_id)
}

/// A new Message-ID value: `<SECONDS.RANDOM@HOSTNAME>`, unique without any
/// state (128 random bits).
pub fn new_message_id(unix_secs: u64, hostname: &str) -> String {
    use ring::rand::SecureRandom;
    let mut random = [0u8; 16];
    // SystemRandom fails only without an OS random source; the time and a
    // process-wide counter still keep the id unique on this host then.
    if ring::rand::SystemRandom::new().fill(&mut random).is_err() {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        random[..8].copy_from_slice(&n.to_be_bytes());
        random[8..12].copy_from_slice(&std::process::id().to_be_bytes());
    }
    let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
    format!("<{unix_secs}.{hex}@{hostname}>")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_and_sender_addresses() {
        let m =
            b"From: Alice <Alice@Example.ORG>, bob@example.org\r\nSender: carol@example.org\r\n\
Subject: x\r\n\r\nFrom: not@header.test\r\n";
        assert_eq!(
            author_addresses(m),
            Ok(vec![
                "alice@example.org".to_owned(),
                "bob@example.org".to_owned(),
                "carol@example.org".to_owned()
            ])
        );
        assert_eq!(from_domain(m).as_deref(), Some("example.org"));
        assert_eq!(from_domain(b"Subject: x\r\n\r\n"), None);
        let group = b"From: Team: a@example.org, b@example.org;\r\n\r\nbody";
        assert_eq!(author_addresses(group).unwrap().len(), 2);
    }

    #[test]
    fn missing_several_or_empty_from() {
        assert_eq!(
            author_addresses(b"Subject: x\r\n\r\nbody"),
            Err(AuthorError::MissingFrom)
        );
        assert_eq!(
            author_addresses(b"From: a@example.org\r\nFrom: b@example.org\r\n\r\n"),
            Err(AuthorError::SeveralFrom)
        );
        assert_eq!(
            author_addresses(b"From: undisclosed\r\n\r\n"),
            Err(AuthorError::NoAddress)
        );
        assert_eq!(author_addresses(b""), Err(AuthorError::MissingFrom));
    }

    #[test]
    fn date_and_message_id_detection() {
        assert_eq!(
            missing_fields(b"From: a@b.c\r\n\r\nDate: x\r\n"),
            (true, true)
        );
        assert_eq!(
            missing_fields(b"DATE: x\r\nmessage-id: <a@b>\r\n\r\n"),
            (false, false)
        );
        let id = new_message_id(1_700_000_000, "mx.example.test");
        assert!(id.starts_with("<1700000000."));
        assert!(id.ends_with("@mx.example.test>"));
        assert_ne!(id, new_message_id(1_700_000_000, "mx.example.test"));
    }
}
