//! The SMTP and LMTP client that hands a message to the next hop: greeting,
//! EHLO (HELO when refused) or LHLO, STARTTLS by policy, MAIL with SIZE,
//! BODY and SMTPUTF8 when the server offers them, one RCPT per recipient
//! with its own result, DATA with the dot-stuffed message and terminator in
//! one write (TCP_NODELAY). With PIPELINING (RFC 2920) RSET (on a pooled
//! connection), MAIL, every RCPT and DATA go out in one write, so a message
//! costs two writes. LMTP (RFC 2033) reads one reply per accepted recipient
//! after the message.
//!
//! `deliver` tries the targets in order (MX hosts by preference, or a
//! route's addresses) until one takes the transaction; idle connections
//! are pooled per target so the next message skips connect, greeting,
//! EHLO and the TLS handshake.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UnixStream};

use super::transport::{server_name, ClientStream, OutboundTlsConfig};
use super::RecipientResult;
use crate::config::OutboundTls;
use crate::smtp::data::dot_stuff;

/// A reply line longer than this is a broken or hostile server.
const MAX_REPLY_LINE: u64 = 4096;
/// Lines in one multi-line reply (EHLO lists a dozen or so).
const MAX_REPLY_LINES: usize = 200;
/// A pooled connection keeps its write buffer up to this size; the buffer
/// of a larger message is freed rather than held while idle.
const KEPT_BUFFER: usize = 256 * 1024;

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Smtp,
    Lmtp,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TargetAddress {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::fmt::Display for TargetAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TargetAddress::Tcp(a) => write!(f, "{a}"),
            TargetAddress::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// One host to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The host name (MX exchange or route host): checked against the
    /// certificate under `required` TLS, and logged.
    pub host: String,
    pub address: TargetAddress,
}

/// What stays the same for every delivery.
pub struct ClientContext {
    pub hostname: String,
    pub timeouts: ClientTimeouts,
    pub tls: OutboundTlsConfig,
    pub pool: ConnectionPool,
}

/// The envelope and content of one transaction.
pub struct Envelope<'a> {
    pub reverse_path: &'a str,
    pub recipients: &'a [String],
    pub message: &'a [u8],
}

/// How a delivery to one destination went.
#[derive(Debug)]
pub struct Outcome {
    /// One per recipient, in order.
    pub results: Vec<RecipientResult>,
    /// The host that answered the transaction, if any did.
    pub host: Option<String>,
    /// The TLS protocol and cipher used, if any.
    pub tls: Option<String>,
}

/// A reply as read from the server.
#[derive(Debug, Clone)]
struct ServerReply {
    code: u16,
    lines: Vec<String>,
}

impl ServerReply {
    fn line(&self) -> String {
        format!("{} {}", self.code, self.lines.join(" "))
    }
}

/// What the server offered in its EHLO/LHLO reply.
#[derive(Debug, Default, Clone)]
struct Capabilities {
    pipelining: bool,
    starttls: bool,
    eight_bit_mime: bool,
    smtputf8: bool,
    /// SIZE's fixed limit; Some(0) means "no fixed limit" (RFC 1870).
    size: Option<u64>,
}

impl Capabilities {
    fn parse(reply: &ServerReply) -> Capabilities {
        let mut caps = Capabilities::default();
        // The first line is the greeting; extensions follow.
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let keyword = words.next().unwrap_or("").to_ascii_uppercase();
            match keyword.as_str() {
                "PIPELINING" => caps.pipelining = true,
                "STARTTLS" => caps.starttls = true,
                "8BITMIME" => caps.eight_bit_mime = true,
                "SMTPUTF8" => caps.smtputf8 = true,
                "SIZE" => caps.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                _ => {}
            }
        }
        caps
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
    #[error("connection closed by the server")]
    Closed,
    #[error("{0}")]
    Refused(String),
    #[error("TLS required: {0}")]
    TlsRequired(String),
    #[error("TLS handshake failed: {0}")]
    TlsHandshake(String),
    /// A pooled connection failed its RSET: the server closed it while it
    /// was idle. Not a failure of the target; a fresh connection is tried.
    #[error("pooled connection no longer usable")]
    Stale,
}

/// Idle connections, kept after a transaction so the next message to the
/// same target skips the TCP and TLS handshakes, greeting and EHLO.
pub struct ConnectionPool {
    max_idle: Duration,
    idle: std::sync::Mutex<std::collections::HashMap<String, Vec<(Connection, Instant)>>>,
}

impl ConnectionPool {
    pub fn new(max_idle: Duration) -> Self {
        ConnectionPool {
            max_idle,
            idle: Default::default(),
        }
    }

    fn take(&self, key: &str) -> Option<Connection> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.get_mut(key)?;
        while let Some((conn, since)) = list.pop() {
            if since.elapsed() < self.max_idle {
                return Some(conn);
            }
        }
        None
    }

    fn put(&self, key: String, conn: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.entry(key).or_default().push((conn, Instant::now()));
    }
}

struct Connection {
    stream: BufReader<ClientStream>,
    caps: Capabilities,
    tls: Option<String>,
    /// Pipelined commands, then the stuffed message, are built here and
    /// sent with one write each; kept so messages reuse the allocation.
    out: Vec<u8>,
}

impl Connection {
    async fn read_reply(&mut self, timeout: Duration) -> Result<ServerReply, ClientError> {
        tokio::time::timeout(timeout, self.read_reply_untimed())
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    async fn read_reply_untimed(&mut self) -> Result<ServerReply, ClientError> {
        let mut lines = Vec::new();
        let mut raw = Vec::new();
        loop {
            raw.clear();
            let n = (&mut self.stream)
                .take(MAX_REPLY_LINE)
                .read_until(b'\n', &mut raw)
                .await?;
            if n == 0 {
                return Err(ClientError::Closed);
            }
            let line = String::from_utf8_lossy(&raw);
            let line = line.trim_end_matches(['\r', '\n']);
            let code = line
                .get(..3)
                .and_then(|c| c.parse::<u16>().ok())
                .filter(|c| (200..600).contains(c))
                .ok_or_else(|| ClientError::Malformed(line.to_owned()))?;
            lines.push(line.get(4..).unwrap_or("").to_owned());
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(ServerReply { code, lines });
            }
            if lines.len() >= MAX_REPLY_LINES {
                return Err(ClientError::Malformed("reply has too many lines".into()));
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.stream.get_mut().write_all(bytes).await?;
        Ok(())
    }

    /// Writes what was built in `out`.
    async fn send_out(&mut self) -> Result<(), ClientError> {
        self.stream.get_mut().write_all(&self.out).await?;
        Ok(())
    }

    async fn command(&mut self, line: &str, timeout: Duration) -> Result<ServerReply, ClientError> {
        self.send(format!("{line}\r\n").as_bytes()).await?;
        self.read_reply(timeout).await
    }
}

/// Delivers one message to the first target that takes the transaction.
pub async fn deliver(
    ctx: &ClientContext,
    targets: &[Target],
    protocol: Protocol,
    tls: OutboundTls,
    envelope: &Envelope<'_>,
) -> Outcome {
    let mut last_error = String::from("no host to deliver to");
    for target in targets {
        match deliver_to(ctx, target, protocol, tls, envelope).await {
            Ok(outcome) => return outcome,
            Err(e) => {
                tracing::info!(host = %target.host, address = %target.address, "cannot deliver: {e}");
                last_error = format!("{} [{}]: {e}", target.host, target.address);
            }
        }
    }
    Outcome {
        results: envelope
            .recipients
            .iter()
            .map(|_| RecipientResult::Deferred(format!("451 4.4.1 {last_error}")))
            .collect(),
        host: None,
        tls: None,
    }
}

/// One target: a pooled or new connection, then the transaction. An error
/// means "try the next target"; replies to the transaction are results.
async fn deliver_to(
    ctx: &ClientContext,
    target: &Target,
    protocol: Protocol,
    tls: OutboundTls,
    envelope: &Envelope<'_>,
) -> Result<Outcome, ClientError> {
    let key = format!("{protocol:?} {} {tls:?}", target.address);
    // A pooled connection the server closed meanwhile fails at RSET (sent
    // ahead of the transaction); a fresh one is opened then.
    let mut pooled = None;
    if let Some(mut conn) = ctx.pool.take(&key) {
        match transaction(&mut conn, &ctx.timeouts, protocol, envelope, true).await {
            Ok(results) => pooled = Some((conn, results)),
            Err(ClientError::Stale) => {}
            Err(e) => return Err(e),
        }
    }
    let (mut conn, results) = match pooled {
        Some(done) => done,
        None => {
            let mut conn = match open(ctx, target, protocol, tls).await {
                // Opportunistic TLS that fails is retried in clear text, as
                // RFC 7435 expects: encryption is a bonus, not a condition.
                Err(ClientError::TlsHandshake(e)) if tls == OutboundTls::Opportunistic => {
                    tracing::info!(host = %target.host, "TLS handshake failed ({e}); retrying without TLS");
                    open(ctx, target, protocol, OutboundTls::None).await?
                }
                other => other?,
            };
            let results = transaction(&mut conn, &ctx.timeouts, protocol, envelope, false).await?;
            (conn, results)
        }
    };
    let tls = conn.tls.clone();
    if conn.out.capacity() > KEPT_BUFFER {
        conn.out = Vec::new();
    }
    ctx.pool.put(key, conn);
    Ok(Outcome {
        results,
        host: Some(target.host.clone()),
        tls,
    })
}

async fn connect(address: &TargetAddress, timeout: Duration) -> Result<ClientStream, ClientError> {
    let stream = match address {
        TargetAddress::Tcp(addr) => {
            let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
                .await
                .map_err(|_| ClientError::Timeout)??;
            stream.set_nodelay(true)?;
            ClientStream::Tcp(stream)
        }
        TargetAddress::Unix(path) => ClientStream::Unix(
            tokio::time::timeout(timeout, UnixStream::connect(path))
                .await
                .map_err(|_| ClientError::Timeout)??,
        ),
    };
    Ok(stream)
}

/// Connects, reads the greeting, says hello and sets up TLS by policy.
async fn open(
    ctx: &ClientContext,
    target: &Target,
    protocol: Protocol,
    tls: OutboundTls,
) -> Result<Connection, ClientError> {
    let t = &ctx.timeouts;
    let stream = connect(&target.address, t.connect).await?;
    let mut conn = Connection {
        stream: BufReader::new(stream),
        caps: Capabilities::default(),
        tls: None,
        out: Vec::new(),
    };
    let greeting = conn.read_reply(t.greeting).await?;
    if greeting.code != 220 {
        return Err(ClientError::Refused(greeting.line()));
    }
    hello(&mut conn, &ctx.hostname, protocol, t.command).await?;
    let wants_tls = match tls {
        OutboundTls::None => false,
        OutboundTls::Opportunistic => conn.caps.starttls,
        OutboundTls::Required if conn.caps.starttls => true,
        OutboundTls::Required => {
            return Err(ClientError::TlsRequired(
                "the server does not offer STARTTLS".to_owned(),
            ))
        }
    };
    if !wants_tls {
        return Ok(conn);
    }
    let config = match tls {
        OutboundTls::Required => ctx.tls.verified.clone().ok_or_else(|| {
            ClientError::TlsRequired("no CA bundle to verify certificates with".to_owned())
        })?,
        _ => ctx.tls.unverified.clone(),
    };
    let name = server_name(&target.host).ok_or_else(|| {
        ClientError::TlsRequired(format!("{:?} is not a valid server name", target.host))
    })?;
    let reply = conn.command("STARTTLS", t.command).await?;
    if reply.code != 220 {
        return match tls {
            OutboundTls::Required => Err(ClientError::TlsRequired(reply.line())),
            _ => Err(ClientError::TlsHandshake(reply.line())),
        };
    }
    // Anything the server sent after its 220 arrived in clear text and
    // could be an injection: refuse the connection.
    if !conn.stream.buffer().is_empty() {
        return Err(ClientError::Malformed(
            "data after the STARTTLS reply".to_owned(),
        ));
    }
    let ClientStream::Tcp(tcp) = conn.stream.into_inner() else {
        return Err(ClientError::TlsHandshake("not a TCP connection".to_owned()));
    };
    let connector = tokio_rustls::TlsConnector::from(config);
    let tls_stream = tokio::time::timeout(t.command, connector.connect(name, tcp))
        .await
        .map_err(|_| ClientError::TlsHandshake("timed out".to_owned()))?
        .map_err(|e| match tls {
            OutboundTls::Required => ClientError::TlsRequired(e.to_string()),
            _ => ClientError::TlsHandshake(e.to_string()),
        })?;
    let stream = ClientStream::Tls(Box::new(tls_stream));
    let description = stream.tls_description();
    let mut conn = Connection {
        stream: BufReader::new(stream),
        caps: Capabilities::default(),
        tls: description,
        out: Vec::new(),
    };
    // RFC 3207 §4.2: everything learned before TLS is forgotten.
    hello(&mut conn, &ctx.hostname, protocol, t.command).await?;
    Ok(conn)
}

async fn hello(
    conn: &mut Connection,
    hostname: &str,
    protocol: Protocol,
    timeout: Duration,
) -> Result<(), ClientError> {
    let verb = match protocol {
        Protocol::Smtp => "EHLO",
        Protocol::Lmtp => "LHLO",
    };
    let reply = conn.command(&format!("{verb} {hostname}"), timeout).await?;
    if reply.code == 250 {
        conn.caps = Capabilities::parse(&reply);
        return Ok(());
    }
    if protocol == Protocol::Smtp && reply.code / 100 == 5 {
        let helo = conn.command(&format!("HELO {hostname}"), timeout).await?;
        if helo.code == 250 {
            conn.caps = Capabilities::default();
            return Ok(());
        }
        return Err(ClientError::Refused(helo.line()));
    }
    Err(ClientError::Refused(reply.line()))
}

/// Whether a message needs 8BITMIME: any octet above 127.
fn has_eight_bit(message: &[u8]) -> bool {
    // std's check goes a word at a time.
    !message.is_ascii()
}

/// The MAIL command with the parameters the server understands.
fn mail_command(caps: &Capabilities, envelope: &Envelope<'_>, utf8: bool) -> String {
    let mut line = format!("MAIL FROM:<{}>", envelope.reverse_path);
    if caps.size.is_some() {
        line.push_str(&format!(" SIZE={}", envelope.message.len()));
    }
    if caps.eight_bit_mime && has_eight_bit(envelope.message) {
        line.push_str(" BODY=8BITMIME");
    }
    if utf8 {
        line.push_str(" SMTPUTF8");
    }
    line
}

/// One mail transaction; the connection stays usable after it. An error
/// is returned for failures that another target might not have (the
/// connection broke, MAIL got a 4xx), results for everything else.
/// `reset` (a pooled connection) sends RSET first, pipelined with the rest
/// when the server allows; `Stale` if that RSET fails.
async fn transaction(
    conn: &mut Connection,
    timeouts: &ClientTimeouts,
    protocol: Protocol,
    envelope: &Envelope<'_>,
    reset: bool,
) -> Result<Vec<RecipientResult>, ClientError> {
    let recipients = envelope.recipients;
    let all = |result: RecipientResult| recipients.iter().map(|_| result.clone()).collect();
    if let Some(limit) = conn.caps.size.filter(|l| *l > 0) {
        if envelope.message.len() as u64 > limit {
            return Ok(all(RecipientResult::Failed(format!(
                "552 5.3.4 message size {} exceeds the server's limit of {limit}",
                envelope.message.len()
            ))));
        }
    }
    let utf8 = !envelope.reverse_path.is_ascii() || recipients.iter().any(|r| !r.is_ascii());
    if utf8 && !conn.caps.smtputf8 {
        return Ok(all(RecipientResult::Failed(
            "553 5.6.7 the server does not support SMTPUTF8 addresses".to_owned(),
        )));
    }
    let mail = mail_command(&conn.caps, envelope, utf8);

    let (mail_reply, rcpt_replies, data_reply) = if conn.caps.pipelining {
        let out = &mut conn.out;
        out.clear();
        if reset {
            out.extend_from_slice(b"RSET\r\n");
        }
        out.extend_from_slice(mail.as_bytes());
        out.extend_from_slice(b"\r\n");
        for rcpt in recipients {
            out.extend_from_slice(b"RCPT TO:<");
            out.extend_from_slice(rcpt.as_bytes());
            out.extend_from_slice(b">\r\n");
        }
        out.extend_from_slice(b"DATA\r\n");
        let sent = conn.send_out().await;
        if reset {
            // A closed connection shows at the write or at the first reply.
            let rset = match sent {
                Ok(()) => conn.read_reply(timeouts.command).await,
                Err(e) => Err(e),
            };
            if !matches!(rset, Ok(ServerReply { code: 250, .. })) {
                return Err(ClientError::Stale);
            }
        } else {
            sent?;
        }
        let mail_reply = conn.read_reply(timeouts.command).await?;
        let mut rcpt_replies = Vec::with_capacity(recipients.len());
        for _ in recipients {
            rcpt_replies.push(conn.read_reply(timeouts.command).await?);
        }
        let data_reply = conn.read_reply(timeouts.data_init).await?;
        (mail_reply, rcpt_replies, Some(data_reply))
    } else {
        if reset
            && !matches!(
                conn.command("RSET", timeouts.command).await,
                Ok(ServerReply { code: 250, .. })
            )
        {
            return Err(ClientError::Stale);
        }
        let mail_reply = conn.command(&mail, timeouts.command).await?;
        let mut rcpt_replies = Vec::with_capacity(recipients.len());
        if mail_reply.code == 250 {
            for rcpt in recipients {
                rcpt_replies.push(
                    conn.command(&format!("RCPT TO:<{rcpt}>"), timeouts.command)
                        .await?,
                );
            }
        }
        (mail_reply, rcpt_replies, None)
    };

    if mail_reply.code / 100 == 4 {
        if data_reply.as_ref().is_some_and(|r| r.code == 354) {
            end_empty_data(conn, timeouts).await?;
        }
        return Err(ClientError::Refused(mail_reply.line()));
    }
    if mail_reply.code != 250 {
        if data_reply.as_ref().is_some_and(|r| r.code == 354) {
            end_empty_data(conn, timeouts).await?;
        }
        return Ok(all(classify(&mail_reply)));
    }
    let mut results: Vec<Option<RecipientResult>> = rcpt_replies
        .iter()
        .map(|r| (r.code / 100 != 2).then(|| classify(r)))
        .collect();
    let accepted = results.iter().filter(|r| r.is_none()).count();
    if accepted == 0 {
        // A server that answers 354 with no recipient (RFC 2920 §3.1)
        // gets an empty message ended at once.
        if data_reply.as_ref().is_some_and(|r| r.code == 354) {
            end_empty_data(conn, timeouts).await?;
        }
        return Ok(results.into_iter().flatten().collect());
    }
    let data_reply = match data_reply {
        Some(reply) => reply,
        None => conn.command("DATA", timeouts.data_init).await?,
    };
    if data_reply.code != 354 {
        return Ok(results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| classify(&data_reply)))
            .collect());
    }
    conn.out.clear();
    dot_stuff(envelope.message, &mut conn.out);
    conn.send_out().await?;
    match protocol {
        Protocol::Smtp => {
            let reply = conn.read_reply(timeouts.data_end).await?;
            for slot in results.iter_mut().filter(|r| r.is_none()) {
                *slot = Some(classify(&reply));
            }
        }
        // RFC 2033 §4.2: one reply per accepted recipient, in order.
        Protocol::Lmtp => {
            for slot in results.iter_mut().filter(|r| r.is_none()) {
                let reply = conn.read_reply(timeouts.data_end).await?;
                *slot = Some(classify(&reply));
            }
        }
    }
    Ok(results.into_iter().flatten().collect())
}

async fn end_empty_data(
    conn: &mut Connection,
    timeouts: &ClientTimeouts,
) -> Result<(), ClientError> {
    conn.send(b".\r\n").await?;
    conn.read_reply(timeouts.data_end).await?;
    Ok(())
}

fn classify(reply: &ServerReply) -> RecipientResult {
    match reply.code / 100 {
        2 => RecipientResult::Delivered(reply.line()),
        5 => RecipientResult::Failed(reply.line()),
        _ => RecipientResult::Deferred(reply.line()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(code: u16, lines: &[&str]) -> ServerReply {
        ServerReply {
            code,
            lines: lines.iter().map(|l| l.to_string()).collect(),
        }
    }

    #[test]
    fn capabilities_from_ehlo() {
        let caps = Capabilities::parse(&reply(
            250,
            &[
                "mx.example.org Hello",
                "PIPELINING",
                "SIZE 10240000",
                "starttls",
                "8BITMIME",
                "SMTPUTF8",
            ],
        ));
        assert!(caps.pipelining && caps.starttls && caps.eight_bit_mime && caps.smtputf8);
        assert_eq!(caps.size, Some(10_240_000));
        // The greeting line is not an extension.
        let caps = Capabilities::parse(&reply(250, &["PIPELINING"]));
        assert!(!caps.pipelining);
        let caps = Capabilities::parse(&reply(250, &["x", "SIZE"]));
        assert_eq!(caps.size, Some(0));
    }

    #[test]
    fn mail_parameters_follow_capabilities() {
        let recipients = vec!["b@example.org".to_owned()];
        let envelope = Envelope {
            reverse_path: "a@example.org",
            recipients: &recipients,
            message: "Subject: caf\u{e9}\r\n\r\n".as_bytes(),
        };
        let none = Capabilities::default();
        assert_eq!(
            mail_command(&none, &envelope, false),
            "MAIL FROM:<a@example.org>"
        );
        let all = Capabilities {
            size: Some(0),
            eight_bit_mime: true,
            smtputf8: true,
            ..Default::default()
        };
        assert_eq!(
            mail_command(&all, &envelope, true),
            format!(
                "MAIL FROM:<a@example.org> SIZE={} BODY=8BITMIME SMTPUTF8",
                envelope.message.len()
            )
        );
    }

    /// A next hop for the pool test: PIPELINING, answers everything, keeps
    /// each message and the chunks that held the commands; closes its first
    /// connection after one message, as a server timing out an idle client.
    async fn scripted_next_hop(
        listener: tokio::net::TcpListener,
        log: Arc<Mutex<HopLog>>,
    ) -> std::io::Result<()> {
        for connection in 0.. {
            let (mut tcp, _) = listener.accept().await?;
            tcp.write_all(b"220 hop\r\n").await?;
            let mut pending = Vec::new();
            let mut buf = [0u8; 8192];
            let mut in_data = false;
            'conn: loop {
                let n = tcp.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                pending.extend_from_slice(&buf[..n]);
                if !in_data {
                    log.lock().unwrap().chunks.push(buf[..n].to_vec());
                }
                let mut replies = Vec::new();
                loop {
                    if in_data {
                        let Some(end) = pending.windows(5).position(|w| w == b"\r\n.\r\n") else {
                            break;
                        };
                        log.lock()
                            .unwrap()
                            .messages
                            .push(pending[..end + 5].to_vec());
                        pending.drain(..end + 5);
                        in_data = false;
                        replies.extend_from_slice(b"250 queued\r\n");
                        if connection == 0 {
                            tcp.write_all(&replies).await?;
                            break 'conn;
                        }
                        continue;
                    }
                    let Some(lf) = pending.iter().position(|&b| b == b'\n') else {
                        break;
                    };
                    let line: Vec<u8> = pending.drain(..=lf).collect();
                    match &line[..4] {
                        b"EHLO" => replies.extend_from_slice(b"250-hop\r\n250 PIPELINING\r\n"),
                        b"DATA" => {
                            replies.extend_from_slice(b"354 go\r\n");
                            in_data = true;
                        }
                        _ => replies.extend_from_slice(b"250 ok\r\n"),
                    }
                }
                tcp.write_all(&replies).await?;
            }
        }
        Ok(())
    }

    #[derive(Default)]
    struct HopLog {
        /// What each read before DATA returned.
        chunks: Vec<Vec<u8>>,
        /// Each message as received, stuffed, with its terminator.
        messages: Vec<Vec<u8>>,
    }

    use std::sync::{Arc, Mutex};
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn pooled_connection_pipelines_rset_and_survives_a_server_close() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(HopLog::default()));
        let server = tokio::spawn(scripted_next_hop(listener, Arc::clone(&log)));
        let ctx = ClientContext {
            hostname: "client.test".into(),
            timeouts: ClientTimeouts::default(),
            tls: OutboundTlsConfig::new(None).unwrap(),
            pool: ConnectionPool::new(Duration::from_secs(3600)),
        };
        let targets = [Target {
            host: "hop.test".into(),
            address: TargetAddress::Tcp(address),
        }];
        let recipients = vec!["r@example.test".to_owned()];
        let bodies: [&[u8]; 3] = [b"Subject: 1\r\n\r\n.one\r\n", b"two\n.\n", b"three"];
        for body in bodies {
            let envelope = Envelope {
                reverse_path: "s@example.test",
                recipients: &recipients,
                message: body,
            };
            let outcome =
                deliver(&ctx, &targets, Protocol::Smtp, OutboundTls::None, &envelope).await;
            assert!(
                matches!(outcome.results[..], [RecipientResult::Delivered(_)]),
                "{outcome:?}"
            );
        }
        server.abort();
        let log = log.lock().unwrap();
        // The second message found its pooled connection closed and went
        // over a fresh one; nothing was sent twice.
        assert_eq!(
            log.messages,
            vec![
                b"Subject: 1\r\n\r\n..one\r\n.\r\n".to_vec(),
                b"two\r\n..\r\n.\r\n".to_vec(),
                b"three\r\n.\r\n".to_vec(),
            ]
        );
        // The third reused the second's connection: RSET, MAIL, RCPT and
        // DATA came in one write.
        assert_eq!(
            log.chunks.last().map(Vec::as_slice),
            Some(
                &b"RSET\r\nMAIL FROM:<s@example.test>\r\nRCPT TO:<r@example.test>\r\nDATA\r\n"[..]
            )
        );
    }

    #[test]
    fn replies_classify_by_first_digit() {
        assert!(matches!(
            classify(&reply(250, &["2.0.0 ok"])),
            RecipientResult::Delivered(_)
        ));
        assert_eq!(
            classify(&reply(451, &["4.3.0 try", "later"])),
            RecipientResult::Deferred("451 4.3.0 try later".into())
        );
        assert!(matches!(
            classify(&reply(550, &["5.1.1 no"])),
            RecipientResult::Failed(_)
        ));
    }
}
