//! The `message` resource a data-stage plugin reads: the received bytes,
//! shared (never copied per plugin), with headers split out on first use and
//! MIME parts parsed by mail-parser only when a plugin asks for text or
//! attachments. One resource serves every plugin of a data stage, so each
//! parse happens at most once per transaction.

use std::sync::{Arc, OnceLock};

use mail_parser::{MessageParser, MimeHeaders};

/// One header field, name as sent, value unfolded and trimmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderField {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentInfo {
    pub filename: Option<String>,
    pub content_type: String,
    pub size: u64,
}

/// Host state behind a guest's `message` handle. Clones share the bytes
/// and whatever was parsed already.
#[derive(Clone)]
pub struct MessageResource(Arc<ParsedMessage>);

struct ParsedMessage {
    bytes: Arc<[u8]>,
    headers: OnceLock<Vec<HeaderField>>,
    parts: OnceLock<ParsedParts>,
}

struct ParsedParts {
    texts: Vec<String>,
    attachments: Vec<AttachmentInfo>,
}

impl MessageResource {
    pub fn new(bytes: Arc<[u8]>) -> Self {
        MessageResource(Arc::new(ParsedMessage {
            bytes,
            headers: OnceLock::new(),
            parts: OnceLock::new(),
        }))
    }

    /// The message as received.
    pub fn bytes(&self) -> &Arc<[u8]> {
        &self.0.bytes
    }

    pub fn size(&self) -> u64 {
        self.0.bytes.len() as u64
    }

    pub fn headers(&self) -> &[HeaderField] {
        self.0
            .headers
            .get_or_init(|| parse_header_section(&self.0.bytes))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers()
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }

    /// At most `len` octets from `offset`; empty past the end.
    pub fn read(&self, offset: u64, len: u32) -> &[u8] {
        let bytes = &self.0.bytes;
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        let end = start.saturating_add(len as usize).min(bytes.len());
        &bytes[start..end]
    }

    pub fn body_text(&self) -> &[String] {
        &self.parts().texts
    }

    pub fn attachments(&self) -> &[AttachmentInfo] {
        &self.parts().attachments
    }

    fn parts(&self) -> &ParsedParts {
        self.0.parts.get_or_init(|| parse_parts(&self.0.bytes))
    }
}

/// How deep attached messages (message/rfc822 inside message/rfc822…) are
/// opened; deeper ones are listed as attachments but not looked into.
const MAX_NESTED_MESSAGES: usize = 8;

fn parse_parts(bytes: &[u8]) -> ParsedParts {
    let mut parts = ParsedParts {
        texts: Vec::new(),
        attachments: Vec::new(),
    };
    if let Some(message) = MessageParser::default().parse(bytes) {
        collect_parts(&message, &mut parts, 0);
    }
    parts
}

/// Adds a message's text parts and attachments, then those of every message
/// attached to it (a forwarded message's text and files count as much as
/// the outer ones: hiding them one level down must not hide them).
fn collect_parts(message: &mail_parser::Message<'_>, parts: &mut ParsedParts, depth: usize) {
    for i in 0..message.text_body_count() {
        if let Some(text) = message.body_text(i) {
            parts.texts.push(text.into_owned());
        }
    }
    // The HTML parts as sent. A message without one lists its text/plain
    // parts here too, which `body_html` would render as HTML: the same
    // words again, at a cost, so those are left out.
    for &id in &message.html_body {
        if let Some(mail_parser::MessagePart {
            body: mail_parser::PartType::Html(html),
            ..
        }) = message.part(id)
        {
            parts.texts.push(html.clone().into_owned());
        }
    }
    for part in message.attachments() {
        parts.attachments.push(AttachmentInfo {
            filename: part.attachment_name().map(str::to_owned),
            content_type: part
                .content_type()
                .map(|ct| match ct.subtype() {
                    Some(sub) => format!("{}/{}", ct.ctype(), sub),
                    None => ct.ctype().to_owned(),
                })
                .unwrap_or_else(|| "application/octet-stream".to_owned()),
            size: part.len() as u64,
        });
        if depth < MAX_NESTED_MESSAGES {
            if let Some(nested) = part.message() {
                collect_parts(nested, parts, depth + 1);
            }
        }
    }
}

/// Splits the header section (up to the first empty line) into fields,
/// unfolding continuation lines. Lines that are not `name: value` are
/// skipped rather than trusted.
pub fn parse_header_section(bytes: &[u8]) -> Vec<HeaderField> {
    let mut fields: Vec<HeaderField> = Vec::new();
    for raw_line in HeaderLines::new(bytes) {
        let line = String::from_utf8_lossy(raw_line);
        if line.starts_with([' ', '\t']) {
            if let Some(last) = fields.last_mut() {
                let piece = line.trim();
                if !piece.is_empty() {
                    if !last.value.is_empty() {
                        last.value.push(' ');
                    }
                    last.value.push_str(piece);
                }
            }
            continue;
        }
        if let Some((name, value)) = line.split_once(':') {
            let name = name.trim_end();
            if !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
                fields.push(HeaderField {
                    name: name.to_owned(),
                    value: value.trim().to_owned(),
                });
            }
        }
    }
    fields
}

/// Byte offset just past the header section's terminating empty line (or
/// the message length when there is no body).
pub fn header_section_end(bytes: &[u8]) -> usize {
    let mut lines = HeaderLines::new(bytes);
    while lines.next().is_some() {}
    lines.pos
}

/// Iterates the header lines of a message (without line endings), stopping
/// at the empty line that ends the header section.
struct HeaderLines<'a> {
    bytes: &'a [u8],
    pos: usize,
    done: bool,
}

impl<'a> HeaderLines<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        HeaderLines {
            bytes,
            pos: 0,
            done: false,
        }
    }
}

impl<'a> Iterator for HeaderLines<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.done || self.pos >= self.bytes.len() {
            self.done = true;
            return None;
        }
        let rest = &self.bytes[self.pos..];
        let (line, advance) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (&rest[..i], i + 1),
            None => (rest, rest.len()),
        };
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        self.pos += advance;
        if line.is_empty() {
            self.done = true;
            return None;
        }
        Some(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"Subject: hello\r\n world\r\nFrom: a@example.org\r\nX-Empty:\r\n\r\nbody line\r\nSubject: not a header\r\n";

    #[test]
    fn clones_share_what_was_parsed() {
        let first = MessageResource::new(Arc::from(MSG));
        let second = first.clone();
        assert!(second.0.headers.get().is_none());
        first.headers();
        assert!(second.0.headers.get().is_some());
        assert!(std::ptr::eq(first.body_text(), second.body_text()));
    }

    #[test]
    fn headers_are_unfolded_and_stop_at_the_body() {
        let m = MessageResource::new(Arc::from(MSG));
        assert_eq!(m.header("subject"), Some("hello world"));
        assert_eq!(m.header("FROM"), Some("a@example.org"));
        assert_eq!(m.header("x-empty"), Some(""));
        assert_eq!(m.headers().len(), 3);
        assert_eq!(
            header_section_end(MSG),
            MSG.len() - b"body line\r\nSubject: not a header\r\n".len()
        );
    }

    #[test]
    fn read_is_bounded() {
        let m = MessageResource::new(Arc::from(MSG));
        assert_eq!(m.read(0, 7), b"Subject");
        assert_eq!(m.read(u64::MAX, 10), b"");
        assert_eq!(m.read(MSG.len() as u64 - 2, 100), b"\r\n");
    }

    #[test]
    fn text_parts_and_attachments_are_parsed() {
        let msg = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhello text\r\n--b\r\nContent-Type: application/zip\r\nContent-Disposition: attachment; filename=\"x.zip\"\r\n\r\nPK\r\n--b--\r\n";
        let m = MessageResource::new(Arc::from(&msg[..]));
        assert!(m.body_text().iter().any(|t| t.contains("hello text")));
        assert_eq!(m.attachments().len(), 1);
        assert_eq!(m.attachments()[0].filename.as_deref(), Some("x.zip"));
        assert_eq!(m.attachments()[0].content_type, "application/zip");
    }

    #[test]
    fn each_text_part_is_listed_once_as_sent() {
        let plain = b"Subject: s\r\n\r\nonly words\r\n";
        let m = MessageResource::new(Arc::from(&plain[..]));
        assert_eq!(m.body_text(), ["only words\r\n"]);
        // An HTML-only message: its text rendering, then the HTML itself.
        let html = b"Content-Type: text/html\r\n\r\n<p>Hi <b>there</b></p>\r\n";
        let m = MessageResource::new(Arc::from(&html[..]));
        let texts = m.body_text();
        assert_eq!(texts.len(), 2, "{texts:?}");
        assert!(texts[0].contains("Hi there"), "{texts:?}");
        assert!(texts[1].contains("<b>there</b>"), "{texts:?}");
    }

    #[test]
    fn encoded_parts_nested_multiparts_and_attached_messages_are_seen() {
        let msg = concat!(
            "Subject: outer\r\n",
            "MIME-Version: 1.0\r\n",
            "Content-Type: multipart/mixed; boundary=outer\r\n",
            "\r\n",
            "--outer\r\n",
            "Content-Type: multipart/alternative; boundary=alt\r\n",
            "\r\n",
            "--alt\r\n",
            "Content-Type: text/plain; charset=iso-8859-1\r\n",
            "Content-Transfer-Encoding: quoted-printable\r\n",
            "\r\n",
            "caf=E9 au lait, soft=\r\n",
            "break\r\n",
            "--alt\r\n",
            "Content-Type: text/html; charset=utf-8\r\n",
            "Content-Transfer-Encoding: base64\r\n",
            "\r\n",
            "PHA+V2luIHRoZSBsb3R0ZXJ5PC9wPg==\r\n",
            "--alt--\r\n",
            "--outer\r\n",
            "Content-Type: application/x-msdownload\r\n",
            "Content-Disposition: attachment; filename=\"invoice.pdf.exe\"\r\n",
            "Content-Transfer-Encoding: base64\r\n",
            "\r\n",
            "TVqQAA==\r\n",
            "--outer\r\n",
            "Content-Type: message/rfc822\r\n",
            "\r\n",
            "Subject: inner\r\n",
            "Content-Type: multipart/mixed; boundary=inner\r\n",
            "\r\n",
            "--inner\r\n",
            "Content-Type: text/plain\r\n",
            "\r\n",
            "forwarded words\r\n",
            "--inner\r\n",
            "Content-Type: application/javascript\r\n",
            "Content-Disposition: attachment; filename=\"run.js\"\r\n",
            "\r\n",
            "alert(1)\r\n",
            "--inner--\r\n",
            "--outer--\r\n",
        );
        let m = MessageResource::new(Arc::from(msg.as_bytes()));
        let texts = m.body_text();
        assert!(
            texts.iter().any(|t| t.contains("café au lait, softbreak")),
            "{texts:?}"
        );
        assert!(
            texts.iter().any(|t| t.contains("<p>Win the lottery</p>")),
            "{texts:?}"
        );
        assert!(
            texts.iter().any(|t| t.contains("forwarded words")),
            "{texts:?}"
        );
        let names: Vec<_> = m
            .attachments()
            .iter()
            .map(|a| (a.filename.as_deref(), a.content_type.as_str()))
            .collect();
        assert!(
            names.contains(&(Some("invoice.pdf.exe"), "application/x-msdownload")),
            "{names:?}"
        );
        assert!(
            names.contains(&(Some("run.js"), "application/javascript")),
            "{names:?}"
        );
        assert!(
            names.iter().any(|(_, ct)| *ct == "message/rfc822"),
            "{names:?}"
        );
        let exe = m
            .attachments()
            .iter()
            .find(|a| a.filename.as_deref() == Some("invoice.pdf.exe"));
        assert_eq!(exe.map(|a| a.size), Some(4));
    }
}
