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
    #[error("refused: {0}")]
    Refused(String),
}

/// Idle connections to next hops, kept after a transaction so the next
/// message to the same hop skips the TCP handshake, greeting and EHLO.
pub struct ConnectionPool {
    /// How long an idle connection may wait for its next message.
    max_idle: Duration,
    idle:
        std::sync::Mutex<std::collections::HashMap<String, Vec<(Connection, std::time::Instant)>>>,
}

impl ConnectionPool {
    pub fn new(max_idle: Duration) -> Self {
        ConnectionPool {
            max_idle,
            idle: Default::default(),
        }
    }

    fn take(&self, next_hop: &str) -> Option<Connection> {
        let max_idle = self.max_idle;
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.get_mut(next_hop)?;
        while let Some((conn, since)) = list.pop() {
            if since.elapsed() < max_idle {
                return Some(conn);
            }
        }
        None
    }

    fn put(&self, next_hop: &str, conn: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.entry(next_hop.to_owned())
            .or_default()
            .push((conn, std::time::Instant::now()));
    }
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
    pool: &ConnectionPool,
    next_hop: &str,
    hostname: &str,
    timeouts: &ClientTimeouts,
    reverse_path: &str,
    recipients: &[String],
    message: &[u8],
) -> Vec<RecipientResult> {
    // A pooled connection the next hop closed meanwhile fails at RSET; then
    // a fresh one is opened.
    let reused = match pool.take(next_hop) {
        Some(mut conn) => match conn.command("RSET", timeouts.command).await {
            Ok(reply) if reply.code == 250 => Some(conn),
            _ => None,
        },
        None => None,
    };
    let conn = match reused {
        Some(conn) => Ok(conn),
        None => open(next_hop, hostname, timeouts).await,
    };
    let result = match conn {
        Ok(mut conn) => {
            let result = transaction(&mut conn, timeouts, reverse_path, recipients, message).await;
            if result.is_ok() {
                pool.put(next_hop, conn);
            }
            result
        }
        Err(ClientError::Refused(reply)) => {
            let code = reply
                .get(..3)
                .and_then(|c| c.parse::<u16>().ok())
                .unwrap_or(451);
            return recipients
                .iter()
                .map(|_| {
                    classify(&ServerReply {
                        code,
                        text: reply.get(4..).unwrap_or("").to_owned(),
                    })
                })
                .collect();
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(results) => results,
        Err(e) => recipients
            .iter()
            .map(|_| RecipientResult::Deferred(format!("451 4.4.1 {next_hop}: {e}")))
            .collect(),
    }
}

/// Connects, reads the greeting and says EHLO (HELO when refused).
async fn open(
    next_hop: &str,
    hostname: &str,
    timeouts: &ClientTimeouts,
) -> Result<Connection, ClientError> {
    let stream = tokio::time::timeout(timeouts.connect, TcpStream::connect(next_hop))
        .await
        .map_err(|_| ClientError::Timeout)??;
    stream.set_nodelay(true)?;
    let (reader, writer) = stream.into_split();
    let mut conn = Connection {
        reader: BufReader::new(reader),
        writer,
    };
    let greeting = conn.read_reply(timeouts.greeting).await?;
    if greeting.code != 220 {
        return Err(ClientError::Refused(greeting.line()));
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
        return Err(ClientError::Refused(hello.line()));
    }
    Ok(conn)
}

/// One mail transaction on an open connection, which stays open after it.
async fn transaction(
    conn: &mut Connection,
    timeouts: &ClientTimeouts,
    reverse_path: &str,
    recipients: &[String],
    message: &[u8],
) -> Result<Vec<RecipientResult>, ClientError> {
    let all = |r: &ServerReply, recipients: &[String]| -> Vec<RecipientResult> {
        recipients.iter().map(|_| classify(r)).collect()
    };
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
