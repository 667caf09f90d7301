//! One SMTP session: the async driver between a client's byte stream and
//! the sans-IO protocol code in `smtp/`. It reads commands, asks the
//! pipeline for each stage's verdict, receives DATA, and hands accepted
//! messages to the spool, answering `250` only once the spool says they
//! are on disk.
//!
//! Layout:
//! - this file: [`Session`] and [`SessionContext`], the command loop and
//!   the dispatch of each command by the session's state
//! - `connect`: before any command (pregreet test, connect stage, 220)
//! - `stage`: running a pipeline stage (the plugins' view of the session,
//!   the trace, the reply of a refusal)
//! - `state`: the explicit [`state::State`] (connected, greeted, SASL,
//!   mail transaction) and the envelope
//! - `connection` and `stream`: the stream (plain or TLS, over any
//!   `AsyncRead + AsyncWrite`), line buffer, queued replies, reads, flushes
//! - `wait`: how long a read or write may wait on the client (timeouts,
//!   deadlines, the shorter timeout under load)
//! - one file per verb: `ehlo` (EHLO/HELO), `mail`, `rcpt`, `data`,
//!   `auth`, `starttls`, `misc` (NOOP, RSET, VRFY/EXPN, HELP, QUIT)
//! - `intake`: between the end of DATA and its reply (data stage, header
//!   edits, Received, DKIM, spool); `headers`: the header edits themselves;
//!   `recipient_limit`: `max_recipients` over the recipients plugins added
//! - `trace`: each stage's outcome, kept for `sluice pipeline test`
//!
//! The session is generic over its stream ([`SessionStream`]): the server
//! runs it on TCP, Rust tests and the offline replay on an in-memory pipe,
//! so they drive the very code a socket does.

mod auth;
mod connect;
mod connection;
mod data;
mod ehlo;
mod headers;
mod intake;
mod mail;
mod misc;
mod rcpt;
mod recipient_limit;
mod stage;
mod starttls;
pub mod state;
mod stream;
pub mod trace;
mod wait;

#[cfg(test)]
mod tests;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::sync::watch;

use crate::config::{Config, ListenerConfig, TlsMode};
use crate::delivery::DeliveryHandle;
use crate::dkim::DkimSigners;
use crate::dns::Dns;
use crate::limits::ConnectionLimits;
use crate::memory::MessageMemory;
use crate::metrics::METRICS;
use crate::pipeline::{PipelineSet, SessionFilters};
use crate::smtp::command::{parse_command_with, Command};
use crate::smtp::line::Line;
use crate::smtp::reply::Reply;
use crate::tls::{ReloadableTls, TlsInfo};
use crate::users::Authenticator;
use connection::{Connection, Flush, Read};
use sluice_spool::Spool;
use state::State;
pub use stream::SessionStream;
use trace::StageTrace;
use wait::{Stall, Wait};

/// RFC 5321 §4.5.3.1.4: a command line is at most 512 octets with CRLF.
const MAX_COMMAND_LINE: usize = 512;
/// Errors a client may make before it is disconnected (like Postfix's
/// smtpd_hard_error_limit): a confused or hostile client cannot keep a
/// session slot forever, nor probe for recipients without limit (every
/// refused RCPT counts).
const MAX_ERRORS: u32 = 20;

/// What the server shares with every session. Every part can be built on
/// its own, so a test assembles one without a server.
pub struct SessionContext {
    pub config: Arc<Config>,
    pub pipelines: Arc<arc_swap::ArcSwap<PipelineSet>>,
    pub spool: Spool,
    /// Told of every message queued, to attempt it at once.
    pub delivery: DeliveryHandle,
    /// Set to true when the server shuts down: sessions say 421 and end.
    pub shutdown: watch::Receiver<bool>,
    pub authenticator: Arc<Authenticator>,
    /// `[[dkim.sign]]` keys for mail from authenticated or trusted clients.
    pub dkim: DkimSigners,
    /// The connection caps; sessions shorten idle timeouts under load.
    pub limits: Arc<ConnectionLimits>,
    /// The resolver of the clients' reverse names.
    pub dns: Dns,
    /// The budget of messages held whole in memory (DKIM, MIME parsing).
    pub memory: MessageMemory,
}

/// Who is on the other end, fixed for the whole connection.
struct Client {
    /// The session id of logs and plugins.
    id: String,
    ip: IpAddr,
    port: u16,
    /// The forward-confirmed PTR name, when looked up and confirmed.
    reverse_name: Option<String>,
}

/// How a command leaves the session.
enum Flow {
    Continue,
    Close,
}

pub struct Session<S> {
    conn: Connection<S>,
    ctx: Arc<SessionContext>,
    listener: Arc<ListenerConfig>,
    /// The listener's certificate; None on a listener without TLS.
    tls: Option<Arc<ReloadableTls>>,
    filters: SessionFilters,
    client: Client,
    state: State,
    /// What the TLS handshake negotiated, once there was one.
    tls_info: Option<TlsInfo>,
    /// Set by a successful AUTH; forgotten only by STARTTLS.
    user: Option<String>,
    /// Errors so far, against [`MAX_ERRORS`].
    errors: u32,
    /// Messages queued in this session, for the disconnect log line.
    queued: u32,
    /// Each stage's outcome, when the session is traced (replay).
    trace: Option<Vec<StageTrace>>,
    shutdown: watch::Receiver<bool>,
}

impl<S: SessionStream> Session<S> {
    /// A session for a client that just connected to `listener`. None when
    /// the listener's pipeline is missing from the running set.
    pub fn new(
        stream: S,
        peer: SocketAddr,
        session_id: String,
        listener: Arc<ListenerConfig>,
        tls: Option<Arc<ReloadableTls>>,
        ctx: Arc<SessionContext>,
    ) -> Option<Session<S>> {
        let pipeline = ctx.pipelines.load().get(&listener.pipeline)?.clone();
        Some(Session {
            conn: Connection::new(stream),
            tls,
            filters: SessionFilters::new(pipeline, session_id.clone()),
            shutdown: ctx.shutdown.clone(),
            ctx,
            listener,
            client: Client {
                id: session_id,
                ip: canonical_ip(peer.ip()),
                port: peer.port(),
                reverse_name: None,
            },
            state: State::Connected,
            tls_info: None,
            user: None,
            errors: 0,
            queued: 0,
            trace: None,
        })
    }

    /// Records every stage's outcome and each plugin's answer, returned
    /// by [`Self::run`] (`sluice pipeline test`).
    pub fn traced(mut self) -> Self {
        self.filters.record_steps();
        self.trace = Some(Vec::new());
        self
    }

    fn hostname(&self) -> &str {
        &self.ctx.config.server.hostname
    }

    /// Runs the session to its end and returns its trace (empty unless
    /// [`Self::traced`]). I/O errors end it quietly: the client went away,
    /// and nothing it did not get a 250 for was kept.
    pub async fn run(mut self) -> Vec<StageTrace> {
        let peer = format!("{}:{}", self.client.ip, self.client.port);
        let started = std::time::Instant::now();
        tracing::info!(session = %self.client.id, client = %peer, listener = %self.listener.name, "connect");
        METRICS.connections.inc(&[&self.listener.name]);
        METRICS.connections_open.inc(&[&self.listener.name]);
        let ready = if self.listener.tls == TlsMode::Implicit {
            self.handshake().await
        } else {
            Ok(())
        };
        match ready {
            Ok(()) => {
                if let Err(e) = self.serve().await {
                    tracing::debug!(session = %self.client.id, "connection ended: {e}");
                }
            }
            Err(e) => {
                tracing::info!(session = %self.client.id, client = %peer, "TLS handshake failed: {e}");
            }
        }
        self.conn.close().await;
        tracing::info!(
            session = %self.client.id,
            client = %peer,
            listener = %self.listener.name,
            helo = self.state.greeting().map_or("", |g| g.helo.as_str()),
            tls = self.tls_info.as_ref().map_or("none", |t| t.version.as_str()),
            user = self.user.as_deref().unwrap_or(""),
            queued = self.queued,
            seconds = started.elapsed().as_secs_f64(),
            "disconnect"
        );
        METRICS.connections_open.dec(&[&self.listener.name]);
        self.trace.unwrap_or_default()
    }

    async fn serve(&mut self) -> std::io::Result<()> {
        if !self.greet().await? {
            return Ok(());
        }
        loop {
            while let Some(flow) = self.next_command().await? {
                if matches!(flow, Flow::Close) {
                    return self.flush().await;
                }
                if self.errors >= MAX_ERRORS {
                    self.conn.queue(&Reply::too_many_errors());
                    return self.flush().await;
                }
            }
            self.flush().await?;
            if !self.read_command().await? {
                return self.flush().await;
            }
        }
    }

    /// Handles the next complete line already received: a SASL response
    /// while an AUTH exchange waits for one, a command otherwise. None when
    /// more input is needed.
    async fn next_command(&mut self) -> std::io::Result<Option<Flow>> {
        let sasl = matches!(self.state, State::Sasl(..));
        let line = match self.conn.next_line() {
            None => return Ok(None),
            Some(Line::TooLong) => None,
            Some(Line::Complete(bytes)) => Some(bytes.to_vec()),
        };
        let Some(line) = line else {
            // An overlong AUTH response also ends its exchange.
            if sasl {
                self.state.reset();
            }
            self.error(Reply::line_too_long());
            return Ok(Some(Flow::Continue));
        };
        if sasl {
            return Ok(Some(self.sasl_response(&line).await));
        }
        if line.len() + 2 > MAX_COMMAND_LINE && !is_auth_command(&line) {
            self.error(Reply::line_too_long());
            return Ok(Some(Flow::Continue));
        }
        self.command(&line).await.map(Some)
    }

    /// Writes every queued reply within `timeouts.command`, or within
    /// `timeouts.command_under_load` while the server is under load. A
    /// client that does not read its replies (it pipelines commands and
    /// never reads) blocks the writes once the socket buffers are full:
    /// it is then let go, with an error that ends the session.
    async fn flush(&mut self) -> std::io::Result<()> {
        let timeouts = &self.ctx.config.server.timeouts;
        let wait = Wait::new(timeouts.command, timeouts.command_under_load);
        loop {
            match self.conn.flush(wait.step_end()).await? {
                Flush::Done => return Ok(()),
                Flush::Stalled if wait.expired(self.ctx.limits.under_load()) => {
                    self.stalled(Stall::Write);
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the client does not read its replies",
                    ));
                }
                Flush::Stalled => {}
            }
        }
    }

    /// Waits for more command input: up to `timeouts.command`, but an idle
    /// client is let go after `timeouts.command_under_load` while the
    /// server is under load, also when the load arrived while it was
    /// already waiting. Returns false when the session must end: the
    /// client closed, went idle, or the server is shutting down (the reply
    /// for the last two is queued).
    async fn read_command(&mut self) -> std::io::Result<bool> {
        let timeouts = &self.ctx.config.server.timeouts;
        let wait = Wait::new(timeouts.command, timeouts.command_under_load);
        loop {
            match self.read_some(wait.step_end()).await? {
                Read::Data => return Ok(true),
                Read::Closed => return Ok(false),
                Read::Idle if wait.expired(self.ctx.limits.under_load()) => {
                    self.stalled(Stall::Command);
                    self.conn.queue(&Reply::timeout(self.hostname()));
                    return Ok(false);
                }
                Read::Idle => {}
            }
        }
    }

    /// One read, giving up at `until`; a shutdown queues its reply and
    /// reads as a close.
    async fn read_some(&mut self, until: tokio::time::Instant) -> std::io::Result<Read> {
        if *self.shutdown.borrow() {
            self.conn.queue(&Reply::shutting_down(self.hostname()));
            return Ok(Read::Closed);
        }
        tokio::select! {
            read = self.conn.read(until) => read,
            _ = self.shutdown.changed() => {
                self.conn.queue(&Reply::shutting_down(&self.ctx.config.server.hostname));
                Ok(Read::Closed)
            }
        }
    }

    /// Logs and counts a session ended because its client stalled.
    fn stalled(&self, phase: Stall) {
        tracing::info!(session = %self.client.id, client = %self.client.ip, phase = phase.as_str(), "client stalled: closing the session");
        METRICS
            .session_timeouts
            .inc(&[&self.listener.name, phase.as_str()]);
    }

    /// Parses one command line and answers it from the session's state.
    async fn command(&mut self, line: &[u8]) -> std::io::Result<Flow> {
        let smtputf8 = self.state.transaction().is_some_and(|t| t.smtputf8);
        let command = match parse_command_with(line, smtputf8) {
            Ok(command) => command,
            Err(e) => {
                self.error(e.reply());
                return Ok(Flow::Continue);
            }
        };
        let flow = match command {
            Command::Ehlo(name) => self.ehlo(name, true).await,
            Command::Helo(name) => self.ehlo(name, false).await,
            Command::Mail {
                reverse_path,
                params,
            } => match self.state {
                State::Greeted(_) => self.mail(reverse_path, params).await,
                State::Connected => self.error(Reply::need_helo()),
                State::Mail(..) | State::Sasl(..) => self.error(Reply::bad_sequence()),
            },
            Command::Rcpt { forward_path, dsn } => match self.state {
                State::Mail(..) => self.rcpt(forward_path, dsn).await,
                _ => self.error(Reply::bad_sequence()),
            },
            Command::Data => match self.state.transaction() {
                Some(t) if t.recipients.is_empty() => {
                    // RFC 2920 §3.1: DATA after only failed RCPTs.
                    self.error(Reply::no_valid_recipients())
                }
                Some(_) => self.data().await?,
                None => self.error(Reply::bad_sequence()),
            },
            Command::Rset => self.rset(),
            Command::Noop => self.noop(),
            Command::Quit => self.quit(),
            Command::Help(_) => self.help(),
            Command::Vrfy(_) | Command::Expn(_) => self.vrfy(),
            Command::StartTls => self.starttls().await?,
            Command::Auth { mechanism, initial } => self.auth(&mechanism, initial.as_deref()).await,
        };
        Ok(flow)
    }

    /// Queues a reply.
    fn reply(&mut self, reply: Reply) -> Flow {
        self.conn.queue(&reply);
        Flow::Continue
    }

    /// Queues a reply that counts as a client error.
    fn error(&mut self, reply: Reply) -> Flow {
        self.errors += 1;
        self.reply(reply)
    }
}

/// Whether a command line is AUTH, whose line may exceed 512 octets.
fn is_auth_command(line: &[u8]) -> bool {
    line.len() >= 5 && line[..5].eq_ignore_ascii_case(b"AUTH ")
}

/// An IPv4 client reached over an IPv6 socket is reported as IPv4.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}
