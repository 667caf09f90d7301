//! What a milter answers (`SMFIR_*`), decoded into types: a verdict that
//! ends the step, progress that extends its deadline, or (at end of
//! message) a change to the message or envelope.

use super::wire::{Fields, Packet};
use super::MilterError;

/// One decoded packet from the milter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Verdict(Verdict),
    /// Still working: wait another timeout.
    Progress,
    /// Body chunk: send no more body, go on to end of message.
    Skip,
    Change(Change),
}

/// A milter's answer to a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No objection; carry on.
    Continue,
    /// Accept without further filtering (for the rest of the message, or
    /// from connect on, of the connection).
    Accept,
    /// Reject with the standard reply, or `SMFIR_REPLYCODE`'s 5xx.
    Reject(Option<ReplyText>),
    /// Temporary failure, or `SMFIR_REPLYCODE`'s 4xx.
    Tempfail(Option<ReplyText>),
    /// Accept and drop the message.
    Discard,
    /// Close the connection (`SMFIR_CONN_FAIL`, `SMFIR_SHUTDOWN`).
    Disconnect,
}

/// An SMTP reply as `SMFIR_REPLYCODE` carries it, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyText {
    pub code: u16,
    pub enhanced: Option<String>,
    pub text: String,
}

/// A change asked for at end of message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    AddHeader {
        name: String,
        value: String,
    },
    /// Insert before the `index`th header field (0: at the top).
    InsertHeader {
        index: u32,
        name: String,
        value: String,
    },
    /// The `index`th (from 1) field of that name; an empty value deletes it.
    ChangeHeader {
        index: u32,
        name: String,
        value: String,
    },
    AddRecipient(String),
    DeleteRecipient(String),
    ChangeSender(String),
    ReplaceBody(Vec<u8>),
    Quarantine(String),
}

pub fn decode(packet: &Packet) -> Result<Response, MilterError> {
    let mut fields = Fields::new(&packet.data);
    let response = match packet.command {
        b'c' => Response::Verdict(Verdict::Continue),
        b'a' => Response::Verdict(Verdict::Accept),
        b'r' => Response::Verdict(Verdict::Reject(None)),
        b't' => Response::Verdict(Verdict::Tempfail(None)),
        b'd' => Response::Verdict(Verdict::Discard),
        b'f' | b'4' => Response::Verdict(Verdict::Disconnect),
        b'y' => Response::Verdict(reply_code(&fields.string()?)?),
        b'p' => Response::Progress,
        b's' => Response::Skip,
        b'h' => Response::Change(Change::AddHeader {
            name: fields.string()?,
            value: fields.string()?,
        }),
        b'i' => Response::Change(Change::InsertHeader {
            index: fields.u32()?,
            name: fields.string()?,
            value: fields.string()?,
        }),
        b'm' => {
            let index = fields.u32()?;
            let name = fields.string()?;
            // A deletion may carry no value at all.
            let value = if fields.is_empty() {
                String::new()
            } else {
                fields.string()?
            };
            Response::Change(Change::ChangeHeader { index, name, value })
        }
        // `SMFIR_ADDRCPT_PAR` carries ESMTP arguments sluice does not keep.
        b'+' | b'2' => Response::Change(Change::AddRecipient(unbracket(&fields.string()?))),
        b'-' => Response::Change(Change::DeleteRecipient(unbracket(&fields.string()?))),
        b'e' => Response::Change(Change::ChangeSender(unbracket(&fields.string()?))),
        b'b' => Response::Change(Change::ReplaceBody(packet.data.clone())),
        b'q' => Response::Change(Change::Quarantine(fields.string()?)),
        other => {
            return Err(MilterError::Protocol(format!(
                "unknown reply {:?}",
                char::from(other)
            )))
        }
    };
    Ok(response)
}

/// `<a@b>` or `a@b`: the bare address.
fn unbracket(address: &str) -> String {
    let trimmed = address.trim();
    trimmed
        .strip_prefix('<')
        .and_then(|a| a.strip_suffix('>'))
        .unwrap_or(trimmed)
        .to_owned()
}

/// `SMFIR_REPLYCODE`: "550 5.7.1 text" (continuation lines, "550-…\r\n",
/// joined into one). Only 4xx and 5xx are valid.
fn reply_code(text: &str) -> Result<Verdict, MilterError> {
    let bad = || MilterError::Protocol(format!("reply code {text:?}"));
    let code: u16 = text.get(..3).and_then(|c| c.parse().ok()).ok_or_else(bad)?;
    let mut enhanced = None;
    let mut parts = Vec::new();
    for line in text.split("\r\n").filter(|l| !l.is_empty()) {
        let rest = line.get(4..).unwrap_or("");
        let (first, after) = rest.split_once(' ').unwrap_or((rest, ""));
        let is_enhanced = first.split('.').count() == 3
            && first
                .split('.')
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        if is_enhanced {
            enhanced.get_or_insert_with(|| first.to_owned());
            parts.push(after.to_owned());
        } else {
            parts.push(rest.to_owned());
        }
    }
    let reply = Some(ReplyText {
        code,
        enhanced,
        text: parts.join(" ").trim().to_owned(),
    });
    match code / 100 {
        4 => Ok(Verdict::Tempfail(reply)),
        5 => Ok(Verdict::Reject(reply)),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(command: u8, data: &[u8]) -> Response {
        decode(&Packet::new(command, data.to_vec())).unwrap()
    }

    #[test]
    fn verdicts_decode() {
        assert_eq!(decoded(b'c', b""), Response::Verdict(Verdict::Continue));
        assert_eq!(decoded(b'a', b""), Response::Verdict(Verdict::Accept));
        assert_eq!(decoded(b'r', b""), Response::Verdict(Verdict::Reject(None)));
        assert_eq!(
            decoded(b't', b""),
            Response::Verdict(Verdict::Tempfail(None))
        );
        assert_eq!(decoded(b'd', b""), Response::Verdict(Verdict::Discard));
        assert_eq!(decoded(b'f', b""), Response::Verdict(Verdict::Disconnect));
        assert_eq!(decoded(b'p', b""), Response::Progress);
        assert_eq!(decoded(b's', b""), Response::Skip);
    }

    #[test]
    fn reply_codes_keep_their_class_and_text() {
        assert_eq!(
            decoded(b'y', b"554 5.7.1 Gtube pattern\0"),
            Response::Verdict(Verdict::Reject(Some(ReplyText {
                code: 554,
                enhanced: Some("5.7.1".into()),
                text: "Gtube pattern".into(),
            })))
        );
        assert_eq!(
            decoded(b'y', b"451-4.7.1 one\r\n451 4.7.1 two\0"),
            Response::Verdict(Verdict::Tempfail(Some(ReplyText {
                code: 451,
                enhanced: Some("4.7.1".into()),
                text: "one two".into(),
            })))
        );
        for bad in [&b"250 ok\0"[..], b"5x0 no\0", b"\0"] {
            assert!(decode(&Packet::new(b'y', bad.to_vec())).is_err());
        }
    }

    #[test]
    fn changes_decode() {
        let header = |name: &str, value: &str| (name.to_owned(), value.to_owned());
        let (spam, yes) = header("X-Spam", "Yes");
        let cases: [(u8, &[u8], Change); 8] = [
            (
                b'h',
                b"X-Spam\0Yes\0",
                Change::AddHeader {
                    name: spam,
                    value: yes,
                },
            ),
            (
                b'i',
                b"\0\0\0\x01DKIM-Signature\0v=1\0",
                Change::InsertHeader {
                    index: 1,
                    name: "DKIM-Signature".into(),
                    value: "v=1".into(),
                },
            ),
            (
                b'm',
                b"\0\0\0\x01Subject\0",
                Change::ChangeHeader {
                    index: 1,
                    name: "Subject".into(),
                    value: String::new(),
                },
            ),
            (
                b'+',
                b"<b@example.org>\0",
                Change::AddRecipient("b@example.org".into()),
            ),
            (
                b'2',
                b"c@example.org\0NOTIFY=NEVER\0",
                Change::AddRecipient("c@example.org".into()),
            ),
            (
                b'-',
                b"<a@example.org>\0",
                Change::DeleteRecipient("a@example.org".into()),
            ),
            (
                b'e',
                b"<s@example.org>\0",
                Change::ChangeSender("s@example.org".into()),
            ),
            (
                b'q',
                b"virus found\0",
                Change::Quarantine("virus found".into()),
            ),
        ];
        for (command, data, change) in cases {
            assert_eq!(decoded(command, data), Response::Change(change));
        }
        assert!(decode(&Packet::new(b'Z', vec![])).is_err());
        assert!(decode(&Packet::new(b'h', b"only\0".to_vec())).is_err());
    }
}
