//! The `message` resource a data-stage plugin reads. The bytes stay where
//! they are: a header section in memory (small; for a received message it
//! may differ from the one received, e.g. with the Date a submission
//! server adds) and the rest in the spool's segment file, read by offset
//! one record at a time. Headers are split out on first use; the MIME parse
//! behind `body-text` and `attachments` needs the message whole, so it
//! first reserves the message's size in the server's [`MessageMemory`]
//! and keeps the reservation as long as it keeps the parsed parts. One
//! resource serves every plugin of a data stage, so each parse happens at
//! most once per transaction.

use std::sync::{Arc, Mutex, OnceLock};

use mail_parser::{MessageParser, MimeHeaders};
use sluice_spool::{MessageReader, SpoolError};
use tokio::sync::OnceCell;

use crate::memory::{MemoryPermit, MessageMemory};

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
    /// The start of the message: the header section (for a message held in
    /// memory, all of it).
    head: Arc<[u8]>,
    /// What follows `head`, in the spool.
    tail: Option<Tail>,
    size: u64,
    /// Reserved before the message is read whole.
    memory: Option<MessageMemory>,
    headers: OnceLock<Vec<HeaderField>>,
    parts: OnceCell<ParsedParts>,
}

/// The spooled part of a message: the received bytes from `from` on.
struct Tail {
    reader: Mutex<MessageReader>,
    from: u64,
}

struct ParsedParts {
    texts: Vec<String>,
    attachments: Vec<AttachmentInfo>,
    /// Held as long as the parts are: they are about the message's size.
    _memory: Option<MemoryPermit>,
}

impl ParsedParts {
    fn empty() -> ParsedParts {
        ParsedParts {
            texts: Vec::new(),
            attachments: Vec::new(),
            _memory: None,
        }
    }
}

/// A message read whole, with the memory reserved for it.
pub struct WholeMessage {
    bytes: WholeBytes,
    _memory: Option<MemoryPermit>,
}

enum WholeBytes {
    /// A message held in memory anyway.
    Shared(Arc<[u8]>),
    /// Read from the spool for this.
    Read(Vec<u8>),
}

impl std::ops::Deref for WholeMessage {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.bytes {
            WholeBytes::Shared(bytes) => bytes,
            WholeBytes::Read(bytes) => bytes,
        }
    }
}

impl MessageResource {
    /// A message held in memory (a recorded message, a test).
    pub fn new(bytes: Arc<[u8]>) -> Self {
        let size = bytes.len() as u64;
        MessageResource(Arc::new(ParsedMessage {
            head: bytes,
            tail: None,
            size,
            memory: None,
            headers: OnceLock::new(),
            parts: OnceCell::new(),
        }))
    }

    /// A message being received: `head`, then the bytes `reader` holds from
    /// octet `from` on (`from` is the length of the header section `head`
    /// stands for).
    pub fn spooled(
        head: Arc<[u8]>,
        reader: MessageReader,
        from: u64,
        memory: MessageMemory,
    ) -> Self {
        let size = head.len() as u64 + reader.len().saturating_sub(from);
        MessageResource(Arc::new(ParsedMessage {
            head,
            tail: Some(Tail {
                reader: Mutex::new(reader),
                from,
            }),
            size,
            memory: Some(memory),
            headers: OnceLock::new(),
            parts: OnceCell::new(),
        }))
    }

    /// A new reader of the spooled bytes behind the message (`None` for a
    /// message held in memory).
    pub fn fresh_reader(&self) -> Option<MessageReader> {
        let tail = self.0.tail.as_ref()?;
        let reader = tail.reader.lock().unwrap_or_else(|e| e.into_inner());
        Some(reader.fresh())
    }

    /// Whether both are the same message (clones of one resource).
    pub fn same(&self, other: &MessageResource) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// The header section as the stage sees it (for a message held in
    /// memory, the whole message).
    pub fn head(&self) -> &Arc<[u8]> {
        &self.0.head
    }

    pub fn size(&self) -> u64 {
        self.0.size
    }

    pub fn headers(&self) -> &[HeaderField] {
        self.0
            .headers
            .get_or_init(|| parse_header_section(&self.0.head))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers()
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }

    /// At most `len` octets from `offset`; empty past the end.
    pub fn read(&self, offset: u64, len: u32) -> Result<Vec<u8>, SpoolError> {
        let end = offset.saturating_add(u64::from(len)).min(self.0.size);
        let Some(wanted) = end.checked_sub(offset).filter(|&n| n > 0) else {
            return Ok(Vec::new());
        };
        let mut out = vec![0u8; wanted as usize];
        let head = &self.0.head;
        let head_len = head.len() as u64;
        let mut filled = 0usize;
        if offset < head_len {
            let from_head = (head_len - offset).min(wanted) as usize;
            let start = offset as usize;
            out[..from_head].copy_from_slice(&head[start..start + from_head]);
            filled = from_head;
        }
        if filled < out.len() {
            if let Some(tail) = &self.0.tail {
                let at = tail.from + (offset + filled as u64 - head_len);
                let mut reader = tail.reader.lock().unwrap_or_else(|e| e.into_inner());
                let n = reader.read_at(at, &mut out[filled..])?;
                out.truncate(filled + n);
            }
        }
        Ok(out)
    }

    /// The whole message in one buffer, once its size is reserved in the
    /// server's budget (held by the returned value).
    pub async fn whole(&self) -> Result<WholeMessage, SpoolError> {
        if self.0.tail.is_none() {
            return Ok(WholeMessage {
                bytes: WholeBytes::Shared(Arc::clone(&self.0.head)),
                _memory: None,
            });
        }
        let permit = match &self.0.memory {
            Some(memory) => Some(memory.reserve(self.0.size).await),
            None => None,
        };
        let len = u32::try_from(self.0.size).unwrap_or(u32::MAX);
        let bytes = self.read(0, len)?;
        Ok(WholeMessage {
            bytes: WholeBytes::Read(bytes),
            _memory: permit,
        })
    }

    pub async fn body_text(&self) -> &[String] {
        &self.parts().await.texts
    }

    pub async fn attachments(&self) -> &[AttachmentInfo] {
        &self.parts().await.attachments
    }

    async fn parts(&self) -> &ParsedParts {
        self.0
            .parts
            .get_or_init(|| async {
                match self.whole().await {
                    // A small message is parsed where it is: handing it to
                    // another thread costs more than the parse.
                    Ok(whole) if whole.len() <= INLINE_PARSE_LIMIT => {
                        let mut parts = parse_parts(&whole);
                        parts._memory = whole._memory;
                        parts
                    }
                    // The MIME parse decodes every part (about 110 ms of CPU
                    // for 16 MiB of base64): on the blocking pool, not an
                    // async worker and the sessions scheduled on it.
                    Ok(whole) => tokio::task::spawn_blocking(move || {
                        let mut parts = parse_parts(&whole);
                        parts._memory = whole._memory;
                        parts
                    })
                    .await
                    .unwrap_or_else(|e| {
                        tracing::error!("the MIME parse failed: {e}");
                        ParsedParts::empty()
                    }),
                    Err(e) => {
                        tracing::error!("cannot read the message for its MIME parts: {e}");
                        ParsedParts::empty()
                    }
                }
            })
            .await
    }
}

/// Messages up to this size are parsed on the async worker (a few hundred
/// microseconds of CPU at most); larger ones on the blocking pool.
const INLINE_PARSE_LIMIT: usize = 64 << 10;

/// How deep attached messages (message/rfc822 inside message/rfc822…) are
/// opened; deeper ones are listed as attachments but not looked into.
const MAX_NESTED_MESSAGES: usize = 8;

fn parse_parts(bytes: &[u8]) -> ParsedParts {
    let mut parts = ParsedParts::empty();
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

    #[tokio::test]
    async fn clones_share_what_was_parsed() {
        let first = MessageResource::new(Arc::from(MSG));
        let second = first.clone();
        assert!(second.0.headers.get().is_none());
        first.headers();
        assert!(second.0.headers.get().is_some());
        assert!(std::ptr::eq(
            first.body_text().await,
            second.body_text().await
        ));
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
        assert_eq!(m.read(0, 7).unwrap(), b"Subject");
        assert_eq!(m.read(u64::MAX, 10).unwrap(), b"");
        assert_eq!(m.read(MSG.len() as u64 - 2, 100).unwrap(), b"\r\n");
    }

    #[tokio::test]
    async fn a_spooled_message_is_its_head_then_the_received_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let spool = sluice_spool::Spool::open(dir.path()).unwrap();
        let mut staged = spool.stage(spool.allocate_id().unwrap());
        let received = b"Subject: old\r\n\r\nbody line\r\n";
        staged.write(received).unwrap();
        let head: Arc<[u8]> = Arc::from(&b"Subject: new\r\nDate: now\r\n\r\n"[..]);
        let from = b"Subject: old\r\n\r\n".len() as u64;
        let memory = MessageMemory::new(1 << 20);
        let m = MessageResource::spooled(head, staged.reader().unwrap(), from, memory.clone());
        let expected = b"Subject: new\r\nDate: now\r\n\r\nbody line\r\n";
        assert_eq!(m.size(), expected.len() as u64);
        assert_eq!(m.header("date"), Some("now"));
        assert_eq!(m.read(20, 100).unwrap(), &expected[20..]);
        assert_eq!(m.read(0, 1000).unwrap(), expected);
        let whole = m.whole().await.unwrap();
        assert_eq!(&whole[..], expected);
        assert_eq!(memory.available(), (1 << 20) - expected.len());
        drop(whole);
        assert!(m.body_text().await.iter().any(|t| t.contains("body line")));
        // The parsed parts keep their reservation while they are kept.
        assert_eq!(memory.available(), (1 << 20) - expected.len());
    }

    #[tokio::test]
    async fn text_parts_and_attachments_are_parsed() {
        let msg = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhello text\r\n--b\r\nContent-Type: application/zip\r\nContent-Disposition: attachment; filename=\"x.zip\"\r\n\r\nPK\r\n--b--\r\n";
        let m = MessageResource::new(Arc::from(&msg[..]));
        assert!(m.body_text().await.iter().any(|t| t.contains("hello text")));
        assert_eq!(m.attachments().await.len(), 1);
        assert_eq!(m.attachments().await[0].filename.as_deref(), Some("x.zip"));
        assert_eq!(m.attachments().await[0].content_type, "application/zip");
    }

    #[tokio::test]
    async fn each_text_part_is_listed_once_as_sent() {
        let plain = b"Subject: s\r\n\r\nonly words\r\n";
        let m = MessageResource::new(Arc::from(&plain[..]));
        assert_eq!(m.body_text().await, ["only words\r\n"]);
        // An HTML-only message: its text rendering, then the HTML itself.
        let html = b"Content-Type: text/html\r\n\r\n<p>Hi <b>there</b></p>\r\n";
        let m = MessageResource::new(Arc::from(&html[..]));
        let texts = m.body_text().await;
        assert_eq!(texts.len(), 2, "{texts:?}");
        assert!(texts[0].contains("Hi there"), "{texts:?}");
        assert!(texts[1].contains("<b>there</b>"), "{texts:?}");
    }

    #[tokio::test]
    async fn encoded_parts_nested_multiparts_and_attached_messages_are_seen() {
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
        let texts = m.body_text().await;
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
            .await
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
            .await
            .iter()
            .find(|a| a.filename.as_deref() == Some("invoice.pdf.exe"));
        assert_eq!(exe.map(|a| a.size), Some(4));
    }
}
