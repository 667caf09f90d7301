//! The header section as a milter sees it: one (name, value) per field, in
//! order, the value without the whitespace after the colon and folded lines
//! joined by LF, as libmilter hands them to `xxfi_header`.

pub fn fields(head: &[u8]) -> Vec<(String, String)> {
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in head.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        let text = String::from_utf8_lossy(line);
        if line[0] == b' ' || line[0] == b'\t' {
            if let Some((_, value)) = fields.last_mut() {
                value.push('\n');
                value.push_str(&text);
            }
            continue;
        }
        // A line without a colon is not a field; it is left out.
        if let Some((name, value)) = text.split_once(':') {
            let value = value.trim_start_matches([' ', '\t']);
            fields.push((name.trim_end().to_owned(), value.to_owned()));
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_keep_their_folding_as_lf_and_lose_the_leading_space() {
        let head =
            b"Subject: one\r\n two\r\nX-Empty:\r\nFrom:\t<a@example.org>\r\n\r\nbody: no\r\n";
        assert_eq!(
            fields(head),
            vec![
                ("Subject".to_owned(), "one\n two".to_owned()),
                ("X-Empty".to_owned(), String::new()),
                ("From".to_owned(), "<a@example.org>".to_owned()),
            ]
        );
    }
}
