//! RFC 2047 encoded-words in header values (`=?utf-8?B?...?=`), decoded so
//! that content rules match what a reader sees, not the transfer encoding.
//!
//! UTF-8, US-ASCII, ISO-8859-1 and Windows-1252 are decoded exactly; any
//! other charset is read as UTF-8 with replacement characters, which keeps
//! its ASCII letters matchable. A malformed word is left as written.

/// Decodes every encoded-word of an (unfolded) header value. Whitespace
/// between two adjacent encoded-words is dropped (RFC 2047 §6.2).
pub fn decode(value: &str) -> String {
    if !value.contains("=?") {
        return value.to_owned();
    }
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    // Whitespace seen after an encoded-word, held back until we know
    // whether another encoded-word follows.
    let mut pending_space: Option<&str> = None;
    while !rest.is_empty() {
        if rest.starts_with("=?") {
            if let Some((decoded, len)) = encoded_word(rest) {
                pending_space = None;
                out.push_str(&decoded);
                rest = &rest[len..];
                let spaces = rest.len() - rest.trim_start_matches([' ', '\t']).len();
                if spaces > 0 {
                    pending_space = Some(&rest[..spaces]);
                    rest = &rest[spaces..];
                }
                continue;
            }
        }
        if let Some(space) = pending_space.take() {
            out.push_str(space);
        }
        let next = rest[1..].find("=?").map_or(rest.len(), |i| i + 1);
        out.push_str(&rest[..next]);
        rest = &rest[next..];
    }
    if let Some(space) = pending_space {
        out.push_str(space);
    }
    out
}

/// One `=?charset?enc?text?=` at the start of `input`: its text and the
/// length it spans.
fn encoded_word(input: &str) -> Option<(String, usize)> {
    let body = input.strip_prefix("=?")?;
    let (field, body) = body.split_once('?')?;
    let (encoding, body) = body.split_once('?')?;
    let end = body.find("?=")?;
    let text = &body[..end];
    if field.is_empty() || text.contains([' ', '\t']) {
        return None;
    }
    let bytes = match encoding {
        "B" | "b" => base64(text)?,
        "Q" | "q" => q_decode(text)?,
        _ => return None,
    };
    // RFC 2231 allows a language after the charset: `utf-8*en`.
    let charset = field.split('*').next().unwrap_or(field);
    let len = 2 + field.len() + 1 + encoding.len() + 1 + end + 2;
    Some((to_text(charset, &bytes), len))
}

fn to_text(charset: &str, bytes: &[u8]) -> String {
    let charset = charset.to_ascii_lowercase();
    match charset.as_str() {
        "iso-8859-1" | "latin1" | "iso_8859-1" | "l1" => bytes.iter().map(|&b| b as char).collect(),
        "windows-1252" | "cp1252" => bytes.iter().map(|&b| cp1252(b)).collect(),
        _ => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// Windows-1252 differs from ISO-8859-1 only in 0x80..=0x9F.
fn cp1252(b: u8) -> char {
    const HIGH: [char; 32] = [
        '€', '\u{81}', '‚', 'ƒ', '„', '…', '†', '‡', 'ˆ', '‰', 'Š', '‹', 'Œ', '\u{8d}', 'Ž',
        '\u{8f}', '\u{90}', '‘', '’', '“', '”', '•', '–', '—', '˜', '™', 'š', '›', 'œ', '\u{9d}',
        'ž', 'Ÿ',
    ];
    match b {
        0x80..=0x9f => HIGH[usize::from(b - 0x80)],
        _ => b as char,
    }
}

fn q_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'_' => out.push(b' '),
            b'=' => {
                let hi = hex(*bytes.get(i + 1)?)?;
                let lo = hex(*bytes.get(i + 2)?)?;
                out.push(hi << 4 | lo);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    Some(out)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn base64(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for b in text.bytes() {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => return None,
        };
        acc = acc << 6 | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::decode;

    #[test]
    fn plain_values_pass_through() {
        assert_eq!(decode("hello world"), "hello world");
        assert_eq!(decode("a =? b"), "a =? b");
    }

    #[test]
    fn base64_and_q_words_decode() {
        assert_eq!(decode("=?utf-8?B?VmlhZ3Jh?="), "Viagra");
        assert_eq!(decode("=?UTF-8?Q?cheap_V=C3=AFagra?="), "cheap Vïagra");
        assert_eq!(decode("=?iso-8859-1?q?caf=E9?="), "café");
        assert_eq!(decode("=?windows-1252?Q?=80uro?="), "€uro");
        assert_eq!(decode("=?utf-8*en?B?VmlhZ3Jh?="), "Viagra");
    }

    #[test]
    fn space_between_words_is_dropped_but_not_around_text() {
        assert_eq!(decode("=?utf-8?Q?Vi?= =?utf-8?Q?agra?="), "Viagra");
        assert_eq!(decode("Buy =?utf-8?B?VmlhZ3Jh?= now"), "Buy Viagra now");
        assert_eq!(decode("=?utf-8?B?VmlhZ3Jh?= "), "Viagra ");
    }

    #[test]
    fn malformed_words_stay_as_written() {
        assert_eq!(decode("=?utf-8?X?abc?="), "=?utf-8?X?abc?=");
        assert_eq!(decode("=?utf-8?Q?a=Z?="), "=?utf-8?Q?a=Z?=");
        assert_eq!(decode("=?utf-8?B?unterminated"), "=?utf-8?B?unterminated");
    }
}
