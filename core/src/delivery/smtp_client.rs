//! The SMTP and LMTP client that hands a message to the next hop: greeting,
//! EHLO (HELO when refused) or LHLO, STARTTLS by policy, MAIL with SIZE,
//! BODY, SMTPUTF8 and the DSN request (RET, ENVID; NOTIFY and ORCPT on
//! RCPT, RFC 3461 §5.2) when the server offers them, one RCPT per recipient
//! with its own result, DATA with the dot-stuffed message in pieces of
//! 128 KiB, the terminator in the write of the last (one write for a small
//! message; TCP_NODELAY). With PIPELINING (RFC 2920) RSET (on a pooled
//! connection), MAIL, every RCPT and DATA go out in one write, so a message
//! costs two writes. LMTP (RFC 2033) reads one reply per accepted recipient
//! after the message.
//!
//! `deliver` tries the targets in order (MX hosts by preference, or a
//! route's addresses) until one takes the transaction; idle connections
//! are pooled per target so the next message skips connect, greeting,
//! EHLO and the TLS handshake.
//!
//! Every read and write has a deadline (`[delivery.timeouts]`), and the
//! whole attempt one more, so a next hop that stops answering or reading
//! costs the deliveries waiting on it and nothing else. A timeout before
//! the message was sent moves on to the next target; once the final dot
//! went out the message may have arrived, so its recipients are deferred
//! without offering it to another host (RFC 5321 §6.1 duplicates).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UnixStream};

use super::credentials::Credentials;
use super::dane::{DaneVerifier, Tlsa};
use super::transport::{server_name, ClientStream, OutboundTlsConfig};
use super::RecipientResult;
use crate::config::{DeliveryTimeouts, OutboundTls};
use crate::smtp::data::DotStuffer;
use crate::smtp::dsn::{notify_value, ret_value, xtext_encode};
use sluice_spool::{DsnEnvelope, MessageReader, RecipientDsn, SpoolError};

/// A reply line longer than this is a broken or hostile server.
const MAX_REPLY_LINE: u64 = 4096;
/// Lines in one multi-line reply (EHLO lists a dozen or so).
const MAX_REPLY_LINES: usize = 200;
/// The message goes out stuffed in pieces of this many octets: the write
/// buffer stays this small whatever the message's size.
const SEND_PIECE: usize = 128 * 1024;
/// A pooled connection keeps its write buffer up to this size; the buffer
/// of a larger message is freed rather than held while idle.
const KEPT_BUFFER: usize = 256 * 1024;

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
    /// The host's usable TLSA records (RFC 7672): TLS is then required
    /// and the certificate must match one of them, whatever `HopPolicy`
    /// says.
    pub dane: Option<Arc<[Tlsa]>>,
}

/// How to speak to one destination's targets.
#[derive(Debug, Clone, Copy)]
pub struct HopPolicy<'a> {
    pub protocol: Protocol,
    pub tls: OutboundTls,
    /// What to AUTH with (a route's `auth_file`), after TLS.
    pub auth: Option<&'a Credentials>,
}

/// What stays the same for every delivery.
pub struct ClientContext {
    pub hostname: String,
    pub timeouts: DeliveryTimeouts,
    pub tls: OutboundTlsConfig,
    pub pool: ConnectionPool,
}

/// The envelope and content of one transaction.
pub struct Envelope<'a> {
    pub reverse_path: &'a str,
    pub recipients: &'a [String],
    pub message: Content<'a>,
    /// The sender's DSN request, passed on to a server that offers DSN;
    /// None where sluice reports itself (final delivery over LMTP).
    pub dsn: Option<DsnRequest<'a>>,
}

/// The DSN parameters of a transaction (RFC 3461).
#[derive(Clone, Copy)]
pub struct DsnRequest<'a> {
    /// RET and ENVID.
    pub envelope: &'a DsnEnvelope,
    /// NOTIFY and ORCPT, in the order of `Envelope::recipients`.
    pub recipients: &'a [RecipientDsn],
}

/// The message of a transaction: bytes in memory, or a spooled message
/// read a piece at a time while it is sent.
pub enum Content<'a> {
    /// The client's own tests' messages.
    #[cfg(test)]
    Bytes(&'a [u8]),
    Spooled {
        reader: &'a MessageReader,
        /// Whether any octet is above 127 (8BITMIME), found beforehand.
        eight_bit: bool,
    },
}

impl Content<'_> {
    fn len(&self) -> u64 {
        match self {
            #[cfg(test)]
            Content::Bytes(bytes) => bytes.len() as u64,
            Content::Spooled { reader, .. } => reader.len(),
        }
    }

    fn eight_bit(&self) -> bool {
        match self {
            #[cfg(test)]
            Content::Bytes(bytes) => has_eight_bit(bytes),
            Content::Spooled { eight_bit, .. } => *eight_bit,
        }
    }
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
    /// The server offered DSN and got the sender's request: it, not
    /// sluice, reports success from here on.
    pub dsn_passed: bool,
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
    /// DSN (RFC 3461): RET, ENVID, NOTIFY and ORCPT may be passed on.
    dsn: bool,
    /// SIZE's fixed limit; Some(0) means "no fixed limit" (RFC 1870).
    size: Option<u64>,
    /// The SASL mechanisms of `AUTH` (RFC 4954), upper-cased.
    auth: Vec<String>,
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
                "DSN" => caps.dsn = true,
                "SIZE" => caps.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                "AUTH" => caps.auth.extend(words.map(str::to_ascii_uppercase)),
                // The pre-standard form some servers still send beside AUTH.
                k if k.starts_with("AUTH=") => {
                    let first = k.trim_start_matches("AUTH=").to_owned();
                    caps.auth.push(first);
                    caps.auth.extend(words.map(str::to_ascii_uppercase));
                }
                _ => {}
            }
        }
        caps
    }
}

/// What a timed-out client was waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiting {
    Connect,
    Greeting,
    /// The reply to this command (or its write).
    Reply(&'static str),
    /// The server to read more of the message.
    MessageWrite,
    /// The reply after the final dot.
    FinalReply,
}

impl std::fmt::Display for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Waiting::Connect => f.write_str("connecting"),
            Waiting::Greeting => f.write_str("waiting for the greeting"),
            Waiting::Reply(verb) => write!(f, "waiting for the reply to {verb}"),
            Waiting::MessageWrite => {
                f.write_str("writing the message (the server stopped reading)")
            }
            Waiting::FinalReply => f.write_str("waiting for the reply to the message"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum ClientError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("timed out after {} {waiting}", humantime::format_duration(*.after))]
    Timeout { waiting: Waiting, after: Duration },
    /// The attempt's overall deadline (`delivery.timeouts.attempt`) passed.
    #[error("attempt deadline of {} passed", humantime::format_duration(*.0))]
    Deadline(Duration),
    /// The message was sent, its final reply never came: it may have been
    /// delivered. `results` holds the replies that did come (LMTP, rejected
    /// RCPTs); None where the outcome is unknown.
    #[error("message sent, then {cause}")]
    Unconfirmed {
        results: Vec<Option<RecipientResult>>,
        cause: Box<ClientError>,
    },
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
    /// A DANE host without STARTTLS, or whose certificate matches none
    /// of its TLSA records.
    #[error("DANE: {0}")]
    Dane(String),
    /// The next hop refused the route's credentials or offers no
    /// mechanism sluice speaks.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// A pooled connection failed its RSET: the server closed it while it
    /// was idle. Not a failure of the target; a fresh connection is tried.
    #[error("pooled connection no longer usable")]
    Stale,
    /// The message could not be read back from the spool while it was sent.
    #[error("reading the message from the spool: {0}")]
    Spool(#[from] SpoolError),
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

impl ClientError {
    /// The enhanced status of a deferral for this error (RFC 3463): no
    /// answer from the host (X.4.1), or a connection that went bad (X.4.2).
    fn enhanced(&self) -> &'static str {
        match self {
            ClientError::Timeout {
                waiting: Waiting::Connect | Waiting::Greeting,
                ..
            } => "4.4.1",
            ClientError::Timeout { .. }
            | ClientError::Deadline(_)
            | ClientError::Unconfirmed { .. } => "4.4.2",
            ClientError::Auth(_) => "4.7.0",
            // RFC 3463: a cryptographic failure.
            ClientError::Dane(_) => "4.7.5",
            _ => "4.4.1",
        }
    }
}

/// `future`, or a timeout naming what was awaited.
async fn bounded<T>(
    after: Duration,
    waiting: Waiting,
    future: impl std::future::Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    tokio::time::timeout(after, future)
        .await
        .map_err(|_| ClientError::Timeout { waiting, after })?
}

/// Writes all of `bytes`, each write allowed `idle` to make progress: a
/// slow reader is served, a server that stopped reading is given up on.
async fn write_bounded<W: AsyncWrite + Unpin>(
    stream: &mut W,
    mut bytes: &[u8],
    idle: Duration,
    waiting: Waiting,
) -> Result<(), ClientError> {
    while !bytes.is_empty() {
        let n = bounded(idle, waiting, async { Ok(stream.write(bytes).await?) }).await?;
        if n == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into());
        }
        bytes = &bytes[n..];
    }
    // TLS may still hold the tail in its buffer.
    bounded(idle, waiting, async { Ok(stream.flush().await?) }).await
}

impl Connection {
    async fn read_reply(
        &mut self,
        timeout: Duration,
        waiting: Waiting,
    ) -> Result<ServerReply, ClientError> {
        bounded(timeout, waiting, self.read_reply_untimed()).await
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

    async fn send(
        &mut self,
        bytes: &[u8],
        timeout: Duration,
        waiting: Waiting,
    ) -> Result<(), ClientError> {
        write_bounded(self.stream.get_mut(), bytes, timeout, waiting).await
    }

    /// Writes what was built in `out`.
    async fn send_out(&mut self, timeout: Duration, waiting: Waiting) -> Result<(), ClientError> {
        write_bounded(self.stream.get_mut(), &self.out, timeout, waiting).await
    }

    /// Sends `line` and reads its reply, both within `timeout`; `verb`
    /// names the command in a timeout.
    async fn command(
        &mut self,
        line: &str,
        verb: &'static str,
        timeout: Duration,
    ) -> Result<ServerReply, ClientError> {
        let waiting = Waiting::Reply(verb);
        self.send(format!("{line}\r\n").as_bytes(), timeout, waiting)
            .await?;
        self.read_reply(timeout, waiting).await
    }
}

/// Delivers one message to the first target that takes the transaction,
/// within the attempt's deadline.
pub async fn deliver(
    ctx: &ClientContext,
    targets: &[Target],
    policy: HopPolicy<'_>,
    envelope: &Envelope<'_>,
) -> Outcome {
    let deadline = tokio::time::Instant::now() + ctx.timeouts.attempt;
    let mut last_error = String::from("4.4.1 no host to deliver to");
    for target in targets {
        let tried = tokio::time::timeout_at(deadline, deliver_to(ctx, target, policy, envelope))
            .await
            .unwrap_or(Err(ClientError::Deadline(ctx.timeouts.attempt)));
        let e = match tried {
            Ok(outcome) => return outcome,
            Err(e) => e,
        };
        tracing::info!(host = %target.host, address = %target.address, "cannot deliver: {e}");
        let reason = format!("{} {} [{}]: {e}", e.enhanced(), target.host, target.address);
        match e {
            // Offering it to another host could deliver it twice.
            ClientError::Unconfirmed { results, .. } => {
                let unknown =
                    format!("451 {reason}; not offered to another host, it may have arrived");
                return Outcome {
                    results: results
                        .into_iter()
                        .map(|r| r.unwrap_or_else(|| RecipientResult::Deferred(unknown.clone())))
                        .collect(),
                    host: Some(target.host.clone()),
                    tls: None,
                    dsn_passed: false,
                };
            }
            ClientError::Deadline(_) => {
                last_error = reason;
                break;
            }
            _ => last_error = reason,
        }
    }
    Outcome {
        results: envelope
            .recipients
            .iter()
            .map(|_| RecipientResult::Deferred(format!("451 {last_error}")))
            .collect(),
        host: None,
        tls: None,
        dsn_passed: false,
    }
}

/// One target: a pooled or new connection, then the transaction. An error
/// means "try the next target"; replies to the transaction are results.
async fn deliver_to(
    ctx: &ClientContext,
    target: &Target,
    policy: HopPolicy<'_>,
    envelope: &Envelope<'_>,
) -> Result<Outcome, ClientError> {
    let HopPolicy {
        protocol,
        tls,
        auth,
    } = policy;
    // A pooled connection is as authenticated as it was when opened.
    let user = auth.map_or("", Credentials::username);
    let dane = if target.dane.is_some() { " dane" } else { "" };
    let key = format!("{protocol:?} {} {tls:?}{dane} {user}", target.address);
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
            let opened = open(ctx, target, protocol, tls).await;
            let opened = match (opened, &target.dane) {
                (Err(ClientError::TlsRequired(why)), Some(_)) => Err(ClientError::Dane(
                    why.trim_start_matches("unexpected error: ").to_owned(),
                )),
                (opened, _) => opened,
            };
            let mut conn = match opened {
                // Opportunistic TLS that fails is retried in clear text, as
                // RFC 7435 expects: encryption is a bonus, not a condition.
                Err(ClientError::TlsHandshake(e))
                    if tls == OutboundTls::Opportunistic && target.dane.is_none() =>
                {
                    tracing::info!(host = %target.host, "TLS handshake failed ({e}); retrying without TLS");
                    open(ctx, target, protocol, OutboundTls::None).await?
                }
                other => other?,
            };
            if let Some(credentials) = auth {
                // Config makes such routes `tls = "required"`; this holds
                // whatever the policy says.
                if conn.tls.is_none() {
                    return Err(ClientError::TlsRequired(
                        "credentials are only sent over TLS".to_owned(),
                    ));
                }
                authenticate(&mut conn, credentials, ctx.timeouts.command).await?;
            }
            let results = transaction(&mut conn, &ctx.timeouts, protocol, envelope, false).await?;
            (conn, results)
        }
    };
    let tls = conn.tls.clone();
    let dsn_passed = conn.caps.dsn && envelope.dsn.is_some();
    if conn.out.capacity() > KEPT_BUFFER {
        conn.out = Vec::new();
    }
    ctx.pool.put(key, conn);
    Ok(Outcome {
        results,
        host: Some(target.host.clone()),
        tls,
        dsn_passed,
    })
}

async fn connect(address: &TargetAddress, timeout: Duration) -> Result<ClientStream, ClientError> {
    let stream = match address {
        TargetAddress::Tcp(addr) => {
            let stream = bounded(timeout, Waiting::Connect, async {
                Ok(TcpStream::connect(addr).await?)
            })
            .await?;
            stream.set_nodelay(true)?;
            ClientStream::Tcp(stream)
        }
        TargetAddress::Unix(path) => ClientStream::Unix(
            bounded(timeout, Waiting::Connect, async {
                Ok(UnixStream::connect(path).await?)
            })
            .await?,
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
    let greeting = conn.read_reply(t.greeting, Waiting::Greeting).await?;
    if greeting.code != 220 {
        return Err(ClientError::Refused(greeting.line()));
    }
    hello(&mut conn, &ctx.hostname, protocol, t.command).await?;
    // A DANE host gets TLS with a matching certificate or nothing.
    let tls = match target.dane {
        Some(_) => OutboundTls::Required,
        None => tls,
    };
    let wants_tls = match tls {
        OutboundTls::None => false,
        OutboundTls::Required if conn.caps.starttls => true,
        OutboundTls::Required => {
            return Err(ClientError::TlsRequired(
                "the server does not offer STARTTLS".to_owned(),
            ))
        }
        _ => conn.caps.starttls,
    };
    if !wants_tls {
        return Ok(conn);
    }
    let name = server_name(&target.host).ok_or_else(|| {
        ClientError::TlsRequired(format!("{:?} is not a valid server name", target.host))
    })?;
    let config = match (&target.dane, tls) {
        (Some(records), _) => DaneVerifier::new(records.clone(), name.clone())
            .client_config()
            .map_err(|e| ClientError::TlsRequired(e.to_string()))?,
        (None, OutboundTls::Required) => ctx.tls.verified.clone().ok_or_else(|| {
            ClientError::TlsRequired("no CA bundle to verify certificates with".to_owned())
        })?,
        (None, _) => ctx.tls.unverified.clone(),
    };
    let reply = conn.command("STARTTLS", "STARTTLS", t.command).await?;
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

/// AUTH PLAIN (with its initial response) when offered, else LOGIN
/// (RFC 4954 §4). Any reply but 235 fails the target; the reply text is
/// kept for the log and the deferral, the credentials are not.
async fn authenticate(
    conn: &mut Connection,
    credentials: &Credentials,
    timeout: Duration,
) -> Result<(), ClientError> {
    let offered = |mechanism: &str| conn.caps.auth.iter().any(|m| m == mechanism);
    let reply = if offered("PLAIN") {
        let command = format!("AUTH PLAIN {}", credentials.plain());
        conn.command(&command, "AUTH", timeout).await?
    } else if offered("LOGIN") {
        let (username, password) = credentials.login();
        let mut reply = conn.command("AUTH LOGIN", "AUTH", timeout).await?;
        for answer in [username, password] {
            if reply.code != 334 {
                break;
            }
            reply = conn.command(&answer, "AUTH", timeout).await?;
        }
        reply
    } else {
        return Err(ClientError::Auth(format!(
            "the server offers no AUTH PLAIN or LOGIN (offered: {})",
            conn.caps.auth.join(" ")
        )));
    };
    match reply.code {
        235 => Ok(()),
        _ => Err(ClientError::Auth(reply.line())),
    }
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
    let reply = conn
        .command(&format!("{verb} {hostname}"), verb, timeout)
        .await?;
    if reply.code == 250 {
        conn.caps = Capabilities::parse(&reply);
        return Ok(());
    }
    if protocol == Protocol::Smtp && reply.code / 100 == 5 {
        let helo = conn
            .command(&format!("HELO {hostname}"), "HELO", timeout)
            .await?;
        if helo.code == 250 {
            conn.caps = Capabilities::default();
            return Ok(());
        }
        return Err(ClientError::Refused(helo.line()));
    }
    Err(ClientError::Refused(reply.line()))
}

/// Whether a message needs 8BITMIME: any octet above 127.
pub fn has_eight_bit(message: &[u8]) -> bool {
    // std's check goes a word at a time.
    !message.is_ascii()
}

/// The MAIL command with the parameters the server understands.
fn mail_command(caps: &Capabilities, envelope: &Envelope<'_>, utf8: bool) -> String {
    let mut line = format!("MAIL FROM:<{}>", envelope.reverse_path);
    if caps.size.is_some() {
        line.push_str(&format!(" SIZE={}", envelope.message.len()));
    }
    if caps.eight_bit_mime && envelope.message.eight_bit() {
        line.push_str(" BODY=8BITMIME");
    }
    if utf8 {
        line.push_str(" SMTPUTF8");
    }
    if let Some(dsn) = envelope.dsn.filter(|_| caps.dsn) {
        if let Some(ret) = dsn.envelope.ret {
            line.push_str(&format!(" RET={}", ret_value(ret)));
        }
        if let Some(envid) = &dsn.envelope.envid {
            line.push_str(&format!(" ENVID={}", xtext_encode(envid)));
        }
    }
    line
}

/// The RCPT command for the `index`th recipient, with its NOTIFY and
/// ORCPT when the server offers DSN.
fn rcpt_command(caps: &Capabilities, envelope: &Envelope<'_>, index: usize) -> String {
    let rcpt = &envelope.recipients[index];
    let mut line = format!("RCPT TO:<{rcpt}>");
    let wanted = envelope
        .dsn
        .filter(|_| caps.dsn)
        .and_then(|dsn| dsn.recipients.get(index));
    if let Some(wanted) = wanted {
        if let Some(notify) = &wanted.notify {
            line.push_str(&format!(" NOTIFY={}", notify_value(notify)));
        }
        if let Some(orcpt) = &wanted.orcpt {
            line.push_str(&format!(
                " ORCPT={};{}",
                orcpt.addr_type,
                xtext_encode(&orcpt.address)
            ));
        }
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
    timeouts: &DeliveryTimeouts,
    protocol: Protocol,
    envelope: &Envelope<'_>,
    reset: bool,
) -> Result<Vec<RecipientResult>, ClientError> {
    let recipients = envelope.recipients;
    let all = |result: RecipientResult| recipients.iter().map(|_| result.clone()).collect();
    if let Some(limit) = conn.caps.size.filter(|l| *l > 0) {
        if envelope.message.len() > limit {
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
        for index in 0..recipients.len() {
            out.extend_from_slice(rcpt_command(&conn.caps, envelope, index).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"DATA\r\n");
        let sent = conn
            .send_out(timeouts.command, Waiting::Reply("MAIL"))
            .await;
        if reset {
            // A closed connection shows at the write or at the first reply.
            let rset = match sent {
                Ok(()) => {
                    conn.read_reply(timeouts.command, Waiting::Reply("RSET"))
                        .await
                }
                Err(e) => Err(e),
            };
            if !matches!(rset, Ok(ServerReply { code: 250, .. })) {
                return Err(ClientError::Stale);
            }
        } else {
            sent?;
        }
        let mail_reply = conn
            .read_reply(timeouts.command, Waiting::Reply("MAIL"))
            .await?;
        let mut rcpt_replies = Vec::with_capacity(recipients.len());
        for _ in recipients {
            rcpt_replies.push(
                conn.read_reply(timeouts.command, Waiting::Reply("RCPT"))
                    .await?,
            );
        }
        let data_reply = conn
            .read_reply(timeouts.data_init, Waiting::Reply("DATA"))
            .await?;
        (mail_reply, rcpt_replies, Some(data_reply))
    } else {
        if reset
            && !matches!(
                conn.command("RSET", "RSET", timeouts.command).await,
                Ok(ServerReply { code: 250, .. })
            )
        {
            return Err(ClientError::Stale);
        }
        let mail_reply = conn.command(&mail, "MAIL", timeouts.command).await?;
        let mut rcpt_replies = Vec::with_capacity(recipients.len());
        if mail_reply.code == 250 {
            for index in 0..recipients.len() {
                let rcpt = rcpt_command(&conn.caps, envelope, index);
                rcpt_replies.push(conn.command(&rcpt, "RCPT", timeouts.command).await?);
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
        None => conn.command("DATA", "DATA", timeouts.data_init).await?,
    };
    if data_reply.code != 354 {
        return Ok(results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| classify(&data_reply)))
            .collect());
    }
    // Until the final dot is out nothing was delivered: an error here lets
    // the next target be tried.
    send_content(conn, &envelope.message, timeouts).await?;
    // From here on a missing reply leaves the outcome unknown.
    let open: Vec<usize> = (0..results.len())
        .filter(|&i| results[i].is_none())
        .collect();
    // SMTP answers once for all; LMTP (RFC 2033 §4.2) once per accepted
    // recipient, in order.
    let groups: Vec<&[usize]> = match protocol {
        Protocol::Smtp => vec![&open[..]],
        Protocol::Lmtp => open.chunks(1).collect(),
    };
    for group in groups {
        let reply = match conn
            .read_reply(timeouts.data_end, Waiting::FinalReply)
            .await
        {
            Ok(reply) => classify(&reply),
            Err(cause) => {
                return Err(ClientError::Unconfirmed {
                    results,
                    cause: Box::new(cause),
                })
            }
        };
        for &i in group {
            results[i] = Some(reply.clone());
        }
    }
    Ok(results.into_iter().flatten().collect())
}

/// Sends the message dot-stuffed, a piece at a time, the terminator in the
/// write of the last piece (one write for a small message).
async fn send_content(
    conn: &mut Connection,
    content: &Content<'_>,
    timeouts: &DeliveryTimeouts,
) -> Result<(), ClientError> {
    let mut stuffer = DotStuffer::default();
    let mut piece = Vec::new();
    let mut reader = match content {
        #[cfg(test)]
        Content::Bytes(_) => None,
        Content::Spooled { reader, .. } => Some(reader.fresh()),
    };
    let len = content.len();
    let mut offset = 0u64;
    loop {
        conn.out.clear();
        let end = (offset + SEND_PIECE as u64).min(len);
        let bytes: &[u8] = match (content, &mut reader) {
            #[cfg(test)]
            (Content::Bytes(bytes), _) => &bytes[offset as usize..end as usize],
            (_, Some(reader)) => {
                piece.resize((end - offset) as usize, 0);
                let n = reader.read_at(offset, &mut piece)?;
                piece.truncate(n);
                &piece
            }
            (Content::Spooled { .. }, None) => &[],
        };
        stuffer.feed(bytes, &mut conn.out);
        offset += bytes.len() as u64;
        let last = bytes.is_empty() || offset >= len;
        if last {
            stuffer.finish(&mut conn.out);
        }
        conn.send_out(timeouts.data_block, Waiting::MessageWrite)
            .await?;
        if last {
            return Ok(());
        }
    }
}

async fn end_empty_data(
    conn: &mut Connection,
    timeouts: &DeliveryTimeouts,
) -> Result<(), ClientError> {
    conn.send(b".\r\n", timeouts.data_end, Waiting::FinalReply)
        .await?;
    conn.read_reply(timeouts.data_end, Waiting::FinalReply)
        .await?;
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
    fn auth_mechanisms_from_ehlo_in_both_forms() {
        let caps = Capabilities::parse(&reply(
            250,
            &["hop greets", "AUTH login Plain", "AUTH=CRAM-MD5"],
        ));
        assert_eq!(caps.auth, ["LOGIN", "PLAIN", "CRAM-MD5"]);
        assert!(
            Capabilities::parse(&reply(250, &["hop greets", "PIPELINING"]))
                .auth
                .is_empty()
        );
    }

    #[test]
    fn mail_parameters_follow_capabilities() {
        let recipients = vec!["b@example.org".to_owned()];
        let envelope = Envelope {
            reverse_path: "a@example.org",
            recipients: &recipients,
            message: Content::Bytes("Subject: caf\u{e9}\r\n\r\n".as_bytes()),
            dsn: None,
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

    #[test]
    fn the_dsn_request_goes_only_to_a_server_that_offers_dsn() {
        let recipients = vec!["b@example.org".to_owned(), "c@example.org".to_owned()];
        let request = DsnEnvelope {
            ret: Some(sluice_spool::Ret::Hdrs),
            envid: Some("id=1 x".into()),
        };
        let wanted = vec![RecipientDsn {
            notify: Some(sluice_spool::Notify {
                success: true,
                failure: true,
                delay: false,
            }),
            orcpt: Some(sluice_spool::OriginalRecipient {
                addr_type: "rfc822".into(),
                address: "b+x@example.org".into(),
            }),
        }];
        let envelope = Envelope {
            reverse_path: "a@example.org",
            recipients: &recipients,
            message: Content::Bytes(b"Subject: x\r\n\r\n"),
            dsn: Some(DsnRequest {
                envelope: &request,
                recipients: &wanted,
            }),
        };
        let plain = Capabilities::default();
        assert_eq!(
            mail_command(&plain, &envelope, false),
            "MAIL FROM:<a@example.org>"
        );
        assert_eq!(
            rcpt_command(&plain, &envelope, 0),
            "RCPT TO:<b@example.org>"
        );
        let dsn = Capabilities {
            dsn: true,
            ..Default::default()
        };
        assert_eq!(
            mail_command(&dsn, &envelope, false),
            "MAIL FROM:<a@example.org> RET=HDRS ENVID=id+3D1+20x"
        );
        assert_eq!(
            rcpt_command(&dsn, &envelope, 0),
            "RCPT TO:<b@example.org> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+2Bx@example.org"
        );
        // No parameters of its own: none passed on.
        assert_eq!(rcpt_command(&dsn, &envelope, 1), "RCPT TO:<c@example.org>");
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
            timeouts: DeliveryTimeouts::default(),
            tls: OutboundTlsConfig::new(None).unwrap(),
            pool: ConnectionPool::new(Duration::from_secs(3600)),
        };
        let targets = [Target {
            host: "hop.test".into(),
            address: TargetAddress::Tcp(address),
            dane: None,
        }];
        let recipients = vec!["r@example.test".to_owned()];
        let bodies: [&[u8]; 3] = [b"Subject: 1\r\n\r\n.one\r\n", b"two\n.\n", b"three"];
        for body in bodies {
            let envelope = Envelope {
                reverse_path: "s@example.test",
                recipients: &recipients,
                message: Content::Bytes(body),
                dsn: None,
            };
            let outcome = deliver(
                &ctx,
                &targets,
                HopPolicy {
                    protocol: Protocol::Smtp,
                    tls: OutboundTls::None,
                    auth: None,
                },
                &envelope,
            )
            .await;
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

    #[tokio::test(start_paused = true)]
    async fn a_write_the_peer_stops_reading_times_out_and_a_slow_reader_does_not() {
        // The peer never reads: the pipe fills and the write makes no
        // progress for the idle bound.
        let (mut ours, _theirs) = tokio::io::duplex(1024);
        let message = vec![b'x'; 64 * 1024];
        let begin = tokio::time::Instant::now();
        let err = write_bounded(
            &mut ours,
            &message,
            Duration::from_secs(3),
            Waiting::MessageWrite,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(
                err,
                ClientError::Timeout {
                    waiting: Waiting::MessageWrite,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(begin.elapsed(), Duration::from_secs(3));
        assert_eq!(
            err.to_string(),
            "timed out after 3s writing the message (the server stopped reading)"
        );

        // A reader taking 1 KiB a second takes a minute for the message,
        // yet never leaves a write idle for the bound: it all arrives.
        let (mut ours, mut theirs) = tokio::io::duplex(1024);
        let reader = tokio::spawn(async move {
            let mut got = 0;
            let mut buf = [0u8; 1024];
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                match theirs.read(&mut buf).await {
                    Ok(0) | Err(_) => return got,
                    Ok(n) => got += n,
                }
            }
        });
        write_bounded(
            &mut ours,
            &message,
            Duration::from_secs(3),
            Waiting::MessageWrite,
        )
        .await
        .unwrap();
        drop(ours);
        assert_eq!(reader.await.unwrap(), message.len());
    }

    #[test]
    fn timeouts_before_the_greeting_are_no_answer_and_later_ones_a_bad_connection() {
        let after = Duration::from_secs(1);
        let timeout = |waiting| ClientError::Timeout { waiting, after };
        assert_eq!(timeout(Waiting::Connect).enhanced(), "4.4.1");
        assert_eq!(timeout(Waiting::Greeting).enhanced(), "4.4.1");
        assert_eq!(timeout(Waiting::Reply("EHLO")).enhanced(), "4.4.2");
        assert_eq!(timeout(Waiting::MessageWrite).enhanced(), "4.4.2");
        assert_eq!(ClientError::Deadline(after).enhanced(), "4.4.2");
        assert_eq!(ClientError::Closed.enhanced(), "4.4.1");
        assert_eq!(
            timeout(Waiting::Reply("EHLO")).to_string(),
            "timed out after 1s waiting for the reply to EHLO"
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
