//! The client half of an offline replay: speaks SMTP to a session over an
//! in-memory pipe, as a sending MTA would (greeting, EHLO, MAIL, each RCPT,
//! DATA, QUIT), and stops at the first refusal that ends the transaction.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use crate::smtp::data::dot_stuff;

/// How long the client waits for one reply: a data stage may call slow
/// plugins, and every one of them is bounded by its own timeout.
const REPLY_TIMEOUT: Duration = Duration::from_secs(300);

/// How far the dialogue got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// The message was sent and answered (whatever the answer).
    Answered,
    /// No recipient was accepted, so no DATA was sent.
    NoRecipient,
    /// The session refused or ended before DATA.
    Ended,
}

/// The envelope and message to send.
pub struct Dialogue<'a> {
    pub helo: &'a str,
    /// "" is the null reverse-path.
    pub from: &'a str,
    pub to: &'a [String],
    pub message: &'a [u8],
}

/// One SMTP reply: its code (0 when the session closed instead).
struct Reply {
    code: u16,
}

impl Reply {
    fn positive(&self) -> bool {
        (200..400).contains(&self.code)
    }
}

pub async fn send(stream: DuplexStream, dialogue: Dialogue<'_>) -> std::io::Result<Progress> {
    let mut client = Client {
        stream,
        buf: Vec::new(),
    };
    let progress = client.dialogue(&dialogue).await?;
    // The session may already be gone; its trace is complete either way.
    let _ = client.command("QUIT").await;
    Ok(progress)
}

struct Client {
    stream: DuplexStream,
    /// Reply bytes read and not yet consumed.
    buf: Vec<u8>,
}

impl Client {
    async fn dialogue(&mut self, d: &Dialogue<'_>) -> std::io::Result<Progress> {
        if !self.reply().await?.positive() {
            return Ok(Progress::Ended);
        }
        if !self.command(&format!("EHLO {}", d.helo)).await?.positive() {
            return Ok(Progress::Ended);
        }
        let utf8 = !d.from.is_ascii() || d.to.iter().any(|t| !t.is_ascii());
        let mail = format!(
            "MAIL FROM:<{}>{}",
            d.from,
            if utf8 { " SMTPUTF8" } else { "" }
        );
        if !self.command(&mail).await?.positive() {
            return Ok(Progress::Ended);
        }
        let mut accepted = 0;
        for to in d.to {
            let reply = self.command(&format!("RCPT TO:<{to}>")).await?;
            if reply.code == 0 {
                return Ok(Progress::Ended);
            }
            if reply.positive() {
                accepted += 1;
            }
        }
        if accepted == 0 {
            return Ok(Progress::NoRecipient);
        }
        if self.command("DATA").await?.code != 354 {
            return Ok(Progress::Ended);
        }
        let mut data = Vec::with_capacity(d.message.len() + d.message.len() / 32 + 8);
        dot_stuff(d.message, &mut data);
        self.stream.write_all(&data).await?;
        self.reply().await?;
        Ok(Progress::Answered)
    }

    async fn command(&mut self, line: &str) -> std::io::Result<Reply> {
        self.stream.write_all(line.as_bytes()).await?;
        self.stream.write_all(b"\r\n").await?;
        self.reply().await
    }

    /// Reads one (possibly multi-line) reply; code 0 when the session
    /// closed the pipe first.
    async fn reply(&mut self) -> std::io::Result<Reply> {
        loop {
            while let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                // "250-" continues, "250 " (or a bare "250") ends the reply.
                if line.get(3) != Some(&b'-') {
                    let code = std::str::from_utf8(line.get(..3).unwrap_or_default())
                        .ok()
                        .and_then(|c| c.parse().ok())
                        .unwrap_or(0);
                    return Ok(Reply { code });
                }
            }
            let mut chunk = [0u8; 4096];
            let n = match tokio::time::timeout(REPLY_TIMEOUT, self.stream.read(&mut chunk)).await {
                Ok(read) => read?,
                Err(_) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the session did not answer",
                    ))
                }
            };
            if n == 0 {
                return Ok(Reply { code: 0 });
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}
