//! The header section as a milter sees it: one (name, value) per field, in
//! order, the value without the whitespace after the colon and folded lines
//! joined by LF, as libmilter hands them to `xxfi_header`.

/// The fields as octets: a header that is not UTF-8 (8-bit, SMTPUTF8)
/// reaches the milter as received, so a signing milter signs what is sent.
pub fn fields(head: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut fields: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for line in head.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            if let Some((_, value)) = fields.last_mut() {
                value.push(b'\n');
                value.extend_from_slice(line);
            }
            continue;
        }
        // A line without a colon is not a field; it is left out.
        if let Some(colon) = memchr::memchr(b':', line) {
            let name = line[..colon].trim_ascii_end();
            let value = &line[colon + 1..];
            let start = value
                .iter()
                .position(|&b| b != b' ' && b != b'\t')
                .unwrap_or(value.len());
            fields.push((name.to_vec(), value[start..].to_vec()));
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_keep_their_folding_as_lf_their_octets_and_lose_the_leading_space() {
        let head: &[u8] = b"Subject: one\r\n two\r\nX-Empty:\r\nFrom:\t<a@example.org>\r\nX-8bit: caf\xe9\r\n\r\nbody: no\r\n";
        let field = |n: &[u8], v: &[u8]| (n.to_vec(), v.to_vec());
        assert_eq!(
            fields(head),
            vec![
                field(b"Subject", b"one\n two"),
                field(b"X-Empty", b""),
                field(b"From", b"<a@example.org>"),
                field(b"X-8bit", b"caf\xe9"),
            ]
        );
    }
}
