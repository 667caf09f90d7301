//! The SMTP client that relays a message to a next hop: EHLO (HELO when
//! refused), MAIL, one RCPT per recipient with its own result, DATA with the
//! dot-stuffed message and its terminator in one write (TCP_NODELAY), QUIT.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::RecipientResult;
use crate::smtp::data::dot_stuff;

/// Client timeouts, RFC 5321 §4.5.3.2.
#[derive(Debug, Clone)]
pub struct ClientTimeouts {
    pub connect: Duration,
    pub greeting: Duration,
    pub command: Duration,
    pub data_init: Duration,
    pub data_end: Duration,
}

impl Default for ClientTimeouts {
    fn default() -> Self {
        ClientTimeouts {
            connect: Duration::from_secs(30),
            greeting: Duration::from_secs(300),
            command: Duration::from_secs(300),
            data_init: Duration::from_secs(120),
            data_end: Duration::from_secs(600),
        }
    }
}

/// A reply as read from the next hop: code and its text lines joined.
struct ServerReply {
    code: u16,
    text: String,
}

impl ServerReply {
    fn line(&self) -> String {
        format!("{} {}", self.code, self.text)
    }
}

#[derive(Debug, thiserror::Error)]
enum ClientError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("timed out")]
    Timeout,
    #[error("malformed reply {0:?}")]
    Malformed(String),
    #[error("connection closed by the next hop")]
    Closed,
}

struct Connection {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl Connection {
    async fn read_reply(&mut self, timeout: Duration) -> Result<ServerReply, ClientError> {
        let mut text = Vec::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(timeout, self.reader.read_line(&mut line))
                .await
                .map_err(|_| ClientError::Timeout)??;
            if n == 0 {
                return Err(ClientError::Closed);
            }
            let line = line.trim_end();
            let code = line
                .get(..3)
                .and_then(|c| c.parse::<u16>().ok())
                .ok_or_else(|| ClientError::Malformed(line.to_owned()))?;
            text.push(line.get(4..).unwrap_or("").to_owned());
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(ServerReply {
                    code,
                    text: text.join(" "),
                });
            }
        }
    }

    async fn command(&mut self, line: &str, timeout: Duration) -> Result<ServerReply, ClientError> {
        self.writer
            .write_all(format!("{line}\r\n").as_bytes())
            .await?;
        self.read_reply(timeout).await
    }
}

/// Relays one message; returns a result per recipient, in order.
pub async fn relay(
    next_hop: &str,
    hostname: &str,
    timeouts: &ClientTimeouts,
    reverse_path: &str,
    recipients: &[String],
    message: &[u8],
) -> Vec<RecipientResult> {
    match transaction(
        next_hop,
        hostname,
        timeouts,
        reverse_path,
        recipients,
        message,
    )
    .await
    {
        Ok(results) => results,
        Err(e) => recipients
            .iter()
            .map(|_| RecipientResult::Deferred(format!("451 4.4.1 {next_hop}: {e}")))
            .collect(),
    }
}

async fn transaction(
    next_hop: &str,
    hostname: &str,
    timeouts: &ClientTimeouts,
    reverse_path: &str,
    recipients: &[String],
    message: &[u8],
) -> Result<Vec<RecipientResult>, ClientError> {
    let stream = tokio::time::timeout(timeouts.connect, TcpStream::connect(next_hop))
        .await
        .map_err(|_| ClientError::Timeout)??;
    stream.set_nodelay(true)?;
    let (reader, writer) = stream.into_split();
    let mut conn = Connection {
        reader: BufReader::new(reader),
        writer,
    };
    let all = |r: &ServerReply, recipients: &[String]| -> Vec<RecipientResult> {
        recipients.iter().map(|_| classify(r)).collect()
    };

    let greeting = conn.read_reply(timeouts.greeting).await?;
    if greeting.code != 220 {
        return Ok(all(&greeting, recipients));
    }
    let mut hello = conn
        .command(&format!("EHLO {hostname}"), timeouts.command)
        .await?;
    if hello.code / 100 == 5 {
        hello = conn
            .command(&format!("HELO {hostname}"), timeouts.command)
            .await?;
    }
    if hello.code != 250 {
        return Ok(all(&hello, recipients));
    }
    let mail = conn
        .command(&format!("MAIL FROM:<{reverse_path}>"), timeouts.command)
        .await?;
    if mail.code != 250 {
        return Ok(all(&mail, recipients));
    }
    let mut results: Vec<Option<RecipientResult>> = Vec::with_capacity(recipients.len());
    for rcpt in recipients {
        let reply = conn
            .command(&format!("RCPT TO:<{rcpt}>"), timeouts.command)
            .await?;
        results.push(if reply.code / 100 == 2 {
            None
        } else {
            Some(classify(&reply))
        });
    }
    if results.iter().all(Option::is_some) {
        let _ = conn.command("QUIT", timeouts.command).await;
        return Ok(results.into_iter().flatten().collect());
    }
    let data = conn.command("DATA", timeouts.data_init).await?;
    let final_reply = if data.code == 354 {
        let mut body = Vec::with_capacity(message.len() + 64);
        dot_stuff(message, &mut body);
        conn.writer.write_all(&body).await?;
        conn.read_reply(timeouts.data_end).await?
    } else {
        data
    };
    let _ = conn.command("QUIT", timeouts.command).await;
    Ok(results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| classify(&final_reply)))
        .collect())
}

fn classify(reply: &ServerReply) -> RecipientResult {
    match reply.code / 100 {
        2 => RecipientResult::Delivered(reply.line()),
        5 => RecipientResult::Failed(reply.line()),
        _ => RecipientResult::Deferred(reply.line()),
    }
}
