//! The header edits data-stage plugins ask for, applied to the raw message
//! before it goes to the spool (see `intake`).

use crate::pipeline::message::header_section_end;

/// Applies header modifications (already filtered to the header kinds) to
/// the raw message: removals first, then prepends (in order, so the first
/// plugin's header ends up on top), then appends at the end of the header
/// section.
pub fn apply_header_changes(
    message: &[u8],
    remove: &[String],
    prepend: &[(String, String)],
    append: &[(String, String)],
) -> Vec<u8> {
    let header_end = header_section_end(message);
    let (headers, body) = message.split_at(header_end);
    let mut out = Vec::with_capacity(message.len() + 256);
    for (name, value) in prepend {
        push_header(&mut out, name, value);
    }
    let kept = if remove.is_empty() {
        headers.to_vec()
    } else {
        remove_headers(headers, remove)
    };
    // Appended headers go before the empty line that ends the section.
    let (fields, separator) = split_separator(&kept);
    out.extend_from_slice(fields);
    for (name, value) in append {
        push_header(&mut out, name, value);
    }
    out.extend_from_slice(separator);
    out.extend_from_slice(body);
    out
}

/// Writes `Name: value\r\n`, dropping CR, LF and NUL a plugin may have put
/// in, so a header can never split into two or end the header section.
fn push_header(out: &mut Vec<u8>, name: &str, value: &str) {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if matches!(c, '\r' | '\n' | '\0') {
                    ' '
                } else {
                    c
                }
            })
            .collect()
    };
    let name: String = clean(name)
        .chars()
        .filter(|c| *c != ':' && *c != ' ')
        .collect();
    if name.is_empty() {
        return;
    }
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(clean(value).trim().as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Splits the header section into its fields and the terminating empty line.
fn split_separator(headers: &[u8]) -> (&[u8], &[u8]) {
    if let Some(fields) = headers.strip_suffix(b"\r\n\r\n") {
        return headers.split_at(fields.len() + 2);
    }
    if let Some(fields) = headers.strip_suffix(b"\n\n") {
        return headers.split_at(fields.len() + 1);
    }
    if headers == b"\r\n" || headers == b"\n" {
        return (&[], headers);
    }
    (headers, &[])
}

/// Drops every field (with its continuation lines) whose name is in `names`.
fn remove_headers(headers: &[u8], names: &[String]) -> Vec<u8> {
    let mut out = Vec::with_capacity(headers.len());
    let mut dropping = false;
    for line in headers.split_inclusive(|&b| b == b'\n') {
        let continuation = line.first().is_some_and(|b| *b == b' ' || *b == b'\t');
        if !continuation {
            dropping = match line.iter().position(|&b| b == b':') {
                Some(colon) => {
                    let name = String::from_utf8_lossy(&line[..colon]);
                    let name = name.trim();
                    names.iter().any(|n| n.eq_ignore_ascii_case(name))
                }
                None => false,
            };
        }
        if !dropping {
            out.extend_from_slice(line);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"Subject: hi\r\nX-Spam: yes\r\n  folded\r\nFrom: a@b\r\n\r\nbody\r\n";

    #[test]
    fn prepend_append_remove() {
        let out = apply_header_changes(
            MSG,
            &["x-spam".into()],
            &[
                ("X-First".into(), "1".into()),
                ("X-Second".into(), "2".into()),
            ],
            &[("X-Last".into(), "z".into())],
        );
        assert_eq!(
            out,
            b"X-First: 1\r\nX-Second: 2\r\nSubject: hi\r\nFrom: a@b\r\nX-Last: z\r\n\r\nbody\r\n"
        );
    }

    #[test]
    fn unchanged_without_changes() {
        assert_eq!(apply_header_changes(MSG, &[], &[], &[]), MSG);
    }

    #[test]
    fn injected_line_breaks_are_neutralised() {
        let out = apply_header_changes(MSG, &[], &[("X-A".into(), "v\r\n\r\nbody".into())], &[]);
        assert!(out.starts_with(b"X-A: v    body\r\nSubject: hi\r\n"));
    }

    #[test]
    fn message_without_body() {
        let out = apply_header_changes(b"Subject: x\r\n", &[], &[], &[("X-L".into(), "1".into())]);
        assert_eq!(out, b"Subject: x\r\nX-L: 1\r\n");
    }
}
