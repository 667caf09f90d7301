//! One SMTP session: the async driver between a client socket and the
//! sans-IO protocol code in `smtp/`. It reads commands, asks the pipeline
//! for each stage's verdict, receives DATA, and hands accepted messages to
//! the spool, answering `250` only once the spool says they are on disk.
//!
//! Replies to pipelined commands (RFC 2920) are collected and written in one
//! go when the client has no more complete commands waiting.
//!
//! The connection is plain TCP or TLS ([`stream::Stream`]): implicit TLS
//! shakes hands before the greeting, STARTTLS (RFC 3207) upgrades the same
//! session and forgets everything said before it. AUTH (RFC 4954) runs the
//! SASL exchange of `smtp::auth` and checks credentials with
//! [`Authenticator`].

mod message;
mod stream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::config::{AuthMode, Config, ListenerConfig, TlsMode};
use crate::delivery::DeliveryHandle;
use crate::dkim::DkimSigners;
use crate::metrics::METRICS;
use crate::pipeline::{
    HookArg, MailboxArg, Modification, PipelineSet, SessionFilters, SessionInfo, StageOutcome,
};
use crate::server::ConnectionLimits;
use crate::smtp::address::{Domain, ForwardPath, Mailbox, ReversePath};
use crate::smtp::auth::{self, Credentials, Exchange, Step};
use crate::smtp::command::{parse_command_with, Command, MailParams};
use crate::smtp::data::{DataError, DataLimits, DataProgress, DataReceiver};
use crate::smtp::line::{Line, LineBuffer};
use crate::smtp::received::{count_received, received_header, rfc5322_date};
use crate::smtp::reply::Reply;
use crate::smtp::submission;
use crate::tls::ReloadableTls;
use crate::users::{AuthOutcome, Authenticator, Locked};
use sluice_spool::{NewMessage, Spool};
use stream::{Pregreet, Stream};

/// RFC 5321 §4.5.3.1.4: a command line is at most 512 octets with CRLF.
const MAX_COMMAND_LINE: usize = 512;
/// RFC 4954 §4: AUTH lines (the command with an initial response, and the
/// responses to challenges) may be up to 12288 octets.
const MAX_AUTH_LINE: usize = 12288;
/// RFC 5321 §4.5.3.1.6: a text line is at most 1000 octets with CRLF.
const MAX_TEXT_LINE: usize = 1000;
/// Errors a client may make before it is disconnected (like Postfix's
/// smtpd_hard_error_limit): a confused or hostile client cannot keep a
/// session slot forever.
const MAX_ERRORS: u32 = 20;
const READ_CHUNK: usize = 16 * 1024;

/// What the server shares with every session.
pub struct SessionContext {
    pub config: Arc<Config>,
    pub pipelines: Arc<arc_swap::ArcSwap<PipelineSet>>,
    pub spool: Spool,
    pub delivery: DeliveryHandle,
    pub shutdown: watch::Receiver<bool>,
    pub authenticator: Arc<Authenticator>,
    /// `[[dkim.sign]]` keys for mail from authenticated or trusted clients.
    pub dkim: DkimSigners,
    /// The connection caps; sessions shorten idle timeouts under load.
    pub limits: Arc<ConnectionLimits>,
}

/// What one read brought.
enum Read {
    /// Input arrived.
    Data,
    /// The client closed, or the server is shutting down (reply queued).
    End,
    /// Nothing within the timeout.
    Idle,
}

/// How a command leaves the session.
enum Flow {
    Continue,
    Close,
}

/// The open mail transaction: between an accepted MAIL and the end of DATA
/// or RSET.
struct Transaction {
    reverse_path: ReversePath,
    recipients: Vec<String>,
    smtputf8: bool,
}

pub struct Session {
    stream: Stream,
    ctx: Arc<SessionContext>,
    listener: Arc<ListenerConfig>,
    /// The listener's certificate; None on a listener without TLS.
    tls: Option<Arc<ReloadableTls>>,
    /// An AUTH exchange waiting for the client's next line.
    sasl: Option<Exchange>,
    filters: SessionFilters,
    info: SessionInfo,
    input: LineBuffer,
    /// Replies waiting to be written.
    output: Vec<u8>,
    read_buf: Box<[u8]>,
    /// Set by EHLO (as opposed to HELO): selects ESMTP replies and the
    /// Received protocol.
    esmtp: bool,
    transaction: Option<Transaction>,
    errors: u32,
    /// Messages queued in this session, for the disconnect log line.
    queued: u32,
}

impl Session {
    pub fn new(
        stream: TcpStream,
        peer: SocketAddr,
        session_id: String,
        listener: Arc<ListenerConfig>,
        tls: Option<Arc<ReloadableTls>>,
        ctx: Arc<SessionContext>,
    ) -> Option<Session> {
        let pipelines = ctx.pipelines.load();
        let pipeline = pipelines.get(&listener.pipeline)?.clone();
        let info = SessionInfo {
            id: session_id.clone(),
            client_ip: canonical_ip(peer.ip()),
            client_port: peer.port(),
            listener: listener.name.clone(),
            reverse_name: None,
            helo: None,
            tls: None,
            authenticated_user: None,
            reverse_path: None,
            recipients: Vec::new(),
        };
        Some(Session {
            stream: Stream::Plain(stream),
            tls,
            sasl: None,
            filters: SessionFilters::new(pipeline, session_id),
            ctx,
            listener,
            info,
            // Sized for AUTH; other commands are held to 512 in `serve`.
            input: LineBuffer::new(MAX_AUTH_LINE),
            output: Vec::with_capacity(1024),
            read_buf: vec![0u8; READ_CHUNK].into_boxed_slice(),
            esmtp: false,
            transaction: None,
            errors: 0,
            queued: 0,
        })
    }

    fn hostname(&self) -> &str {
        &self.ctx.config.server.hostname
    }

    /// Runs the session to its end. I/O errors end it quietly: the client
    /// went away, and nothing it did not get a 250 for was kept.
    pub async fn run(mut self) {
        let peer = format!("{}:{}", self.info.client_ip, self.info.client_port);
        let started = std::time::Instant::now();
        tracing::info!(session = %self.info.id, client = %peer, listener = %self.listener.name, "connect");
        METRICS.connections.inc(&[&self.listener.name]);
        METRICS.connections_open.inc(&[&self.listener.name]);
        let implicit = self.listener.tls == TlsMode::Implicit;
        let ready = if implicit {
            self.handshake().await
        } else {
            Ok(())
        };
        match ready {
            Ok(()) => {
                if let Err(e) = self.serve().await {
                    tracing::debug!(session = %self.info.id, "connection ended: {e}");
                }
            }
            Err(e) => {
                tracing::info!(session = %self.info.id, client = %peer, "TLS handshake failed: {e}");
            }
        }
        // Bounded: a TLS close_notify must not wait on a client that stopped reading.
        let _ = tokio::time::timeout(Duration::from_secs(5), self.stream.shutdown()).await;
        tracing::info!(
            session = %self.info.id,
            client = %peer,
            listener = %self.listener.name,
            helo = self.info.helo.as_deref().unwrap_or(""),
            tls = self.info.tls.as_ref().map_or("none", |t| t.version.as_str()),
            user = self.info.authenticated_user.as_deref().unwrap_or(""),
            queued = self.queued,
            seconds = started.elapsed().as_secs_f64(),
            "disconnect"
        );
        METRICS.connections_open.dec(&[&self.listener.name]);
    }

    async fn serve(&mut self) -> std::io::Result<()> {
        // Before the plugins run: a bot that talks first costs no more than
        // the wait.
        let wait = self.listener.greet_delay;
        let exempt = self
            .ctx
            .config
            .server
            .greet_exempt
            .iter()
            .any(|net| net.contains(&self.info.client_ip));
        if !wait.is_zero() && !exempt {
            match self.stream.pregreet(wait).await? {
                Pregreet::Silent => {}
                Pregreet::Closed => return Ok(()),
                Pregreet::Talked => {
                    tracing::warn!(session = %self.info.id, client = %self.info.client_ip, "client talked before the greeting: dropped");
                    METRICS.pregreet_drops.inc(&[&self.listener.name]);
                    self.reply(Reply::pregreet());
                    self.flush().await?;
                    self.drain().await;
                    return Ok(());
                }
            }
        }
        let outcome = self.filters.run(&self.info, HookArg::Connect).await;
        match outcome {
            StageOutcome::Accept | StageOutcome::Discard | StageOutcome::Quarantine(_) => {
                let greeting = Reply::greeting(self.hostname());
                self.reply(greeting);
            }
            StageOutcome::Reject(reply)
            | StageOutcome::Tempfail(reply)
            | StageOutcome::Disconnect(reply) => {
                // A refused connection is closed at once; a 4xx refusal at
                // connect is 421 by RFC 5321 §3.1.
                let reply = if reply.is_transient() && reply.code != 421 {
                    Reply::new(421, reply.enhanced.as_deref(), reply.lines.join(" "))
                } else {
                    reply
                };
                self.reply(reply);
                return self.flush().await;
            }
        }
        self.flush().await?;

        loop {
            while let Some(line) = self.input.next_line() {
                let flow = match line {
                    Line::TooLong => {
                        // An overlong AUTH response also ends its exchange.
                        self.sasl = None;
                        self.error(Reply::line_too_long());
                        Flow::Continue
                    }
                    Line::Complete(bytes) => {
                        let bytes = bytes.to_vec();
                        if let Some(exchange) = self.sasl.take() {
                            let step = exchange.respond(&bytes);
                            self.sasl_step(step).await
                        } else if bytes.len() + 2 > MAX_COMMAND_LINE && !is_auth_command(&bytes) {
                            self.error(Reply::line_too_long());
                            Flow::Continue
                        } else {
                            self.command(&bytes).await?
                        }
                    }
                };
                if matches!(flow, Flow::Close) || self.errors >= MAX_ERRORS {
                    if self.errors >= MAX_ERRORS {
                        self.reply(Reply::new(
                            421,
                            Some("4.7.0"),
                            "Too many errors, closing connection",
                        ));
                    }
                    return self.flush().await;
                }
            }
            self.flush().await?;
            if !self.read_command().await? {
                return self.flush().await;
            }
        }
    }

    /// Waits for more command input: up to `timeouts.command`, but an idle
    /// client is let go after `timeouts.command_under_load` while the
    /// server is under load, also when the load arrived while it was
    /// already waiting (the wait is cut into slices of that length).
    /// Returns false when the session must end, as [`Self::read_more`].
    async fn read_command(&mut self) -> std::io::Result<bool> {
        let timeouts = &self.ctx.config.server.timeouts;
        let slice = timeouts.command_under_load.min(timeouts.command);
        let deadline = tokio::time::Instant::now() + timeouts.command;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left <= slice || self.ctx.limits.under_load() {
                return self.read_more(left.min(slice)).await;
            }
            match self.read_some(slice).await? {
                Read::Data => return Ok(true),
                Read::End => return Ok(false),
                Read::Idle => {}
            }
        }
    }

    /// Reads and discards what the client already sent (at most 64 KiB,
    /// for at most half a second): closing a socket with unread input
    /// resets the connection, and the client could lose the last reply.
    async fn drain(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
        let mut total = 0;
        while total < 64 * 1024 {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut self.read_buf)).await {
                Ok(Ok(n)) if n > 0 => total += n,
                _ => break,
            }
        }
    }

    /// Reads more input into the line buffer. Returns false when the session
    /// must end (client closed, timeout or server shutdown; the reply for
    /// the last two is already queued).
    async fn read_more(&mut self, timeout: Duration) -> std::io::Result<bool> {
        match self.read_some(timeout).await? {
            Read::Data => Ok(true),
            Read::End => Ok(false),
            Read::Idle => {
                self.reply(Reply::timeout(self.hostname()));
                Ok(false)
            }
        }
    }

    /// One read of at most `timeout`; a shutdown queues its reply and ends.
    async fn read_some(&mut self, timeout: Duration) -> std::io::Result<Read> {
        let mut shutdown = self.ctx.shutdown.clone();
        if *shutdown.borrow() {
            self.reply(Reply::shutting_down(self.hostname()));
            return Ok(Read::End);
        }
        tokio::select! {
            read = tokio::time::timeout(timeout, self.stream.read(&mut self.read_buf)) => match read {
                Ok(Ok(0)) => Ok(Read::End),
                Ok(Ok(n)) => {
                    self.input.push(&self.read_buf[..n]);
                    Ok(Read::Data)
                }
                Ok(Err(e)) => Err(e),
                Err(_) => Ok(Read::Idle),
            },
            _ = shutdown.changed() => {
                self.reply(Reply::shutting_down(self.hostname()));
                Ok(Read::End)
            }
        }
    }

    fn reply(&mut self, reply: Reply) {
        reply.write_to(&mut self.output);
    }

    fn error(&mut self, reply: Reply) {
        self.errors += 1;
        self.reply(reply);
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.output.is_empty() {
            self.stream.write_all(&self.output).await?;
            // TLS buffers records until flushed.
            self.stream.flush().await?;
            self.output.clear();
        }
        Ok(())
    }

    async fn command(&mut self, line: &[u8]) -> std::io::Result<Flow> {
        let smtputf8 = self.transaction.as_ref().is_some_and(|t| t.smtputf8);
        let command = match parse_command_with(line, smtputf8) {
            Ok(command) => command,
            Err(e) => {
                self.error(e.reply());
                return Ok(Flow::Continue);
            }
        };
        match command {
            Command::Ehlo(name) => self.helo(name, true).await,
            Command::Helo(name) => self.helo(name, false).await,
            Command::Mail {
                reverse_path,
                params,
            } => self.mail(reverse_path, params).await,
            Command::Rcpt { forward_path, .. } => self.rcpt(forward_path).await,
            Command::Data => self.data().await,
            Command::Rset => {
                self.reset_transaction();
                self.reply(Reply::ok());
                Ok(Flow::Continue)
            }
            Command::Noop => {
                self.reply(Reply::ok());
                Ok(Flow::Continue)
            }
            Command::Quit => {
                let closing = Reply::closing(self.hostname());
                self.reply(closing);
                Ok(Flow::Close)
            }
            Command::Help(_) => {
                self.reply(Reply::help());
                Ok(Flow::Continue)
            }
            // Never disclose whether a mailbox exists (RFC 5321 §3.5.3).
            Command::Vrfy(_) | Command::Expn(_) => {
                self.reply(Reply::vrfy());
                Ok(Flow::Continue)
            }
            Command::StartTls => self.starttls().await,
            Command::Auth { mechanism, initial } => {
                Ok(self.auth(&mechanism, initial.as_deref()).await)
            }
        }
    }

    /// The TLS handshake, bounded by the command timeout. Records what was
    /// negotiated for plugins and the Received header.
    async fn handshake(&mut self) -> std::io::Result<()> {
        let Some(tls) = &self.tls else {
            return Err(std::io::Error::other("the listener has no certificate"));
        };
        let timeout = self.ctx.config.server.timeouts.command;
        let info = match self.stream.upgrade(tls.acceptor(), timeout).await {
            Ok(info) => info,
            Err(e) => {
                METRICS.tls_handshakes.inc(&["failed", ""]);
                return Err(e);
            }
        };
        METRICS.tls_handshakes.inc(&["ok", &info.version]);
        tracing::info!(session = %self.info.id, version = %info.version, cipher = %info.cipher, "TLS established");
        self.info.tls = Some(info);
        Ok(())
    }

    async fn starttls(&mut self) -> std::io::Result<Flow> {
        if self.stream.is_tls() {
            self.error(Reply::tls_already_active());
            return Ok(Flow::Continue);
        }
        if self.listener.tls != TlsMode::Starttls || self.tls.is_none() {
            self.error(Reply::tls_not_available());
            return Ok(Flow::Continue);
        }
        // RFC 3207 §4.2, CVE-2011-0411: whatever the client pipelined
        // after STARTTLS was sent in cleartext and must never be read as a
        // command of the protected session.
        let injected = self.input.take_remaining();
        if !injected.is_empty() {
            tracing::info!(session = %self.info.id, bytes = injected.len(), "discarded cleartext sent after STARTTLS");
        }
        self.reply(Reply::starttls_ready());
        self.flush().await?;
        if let Err(e) = self.handshake().await {
            tracing::info!(session = %self.info.id, "TLS handshake failed: {e}");
            return Err(e);
        }
        // RFC 3207 §4.2: start over as if the connection had just opened.
        self.esmtp = false;
        self.info.helo = None;
        self.info.authenticated_user = None;
        self.sasl = None;
        self.reset_transaction();
        Ok(Flow::Continue)
    }

    async fn auth(&mut self, mechanism: &str, initial: Option<&str>) -> Flow {
        if self.listener.auth == AuthMode::None {
            self.error(Reply::not_implemented());
        } else if !self.listener.auth_offered(self.stream.is_tls()) {
            self.error(Reply::encryption_required());
        } else if self.info.helo.is_none() {
            self.error(Reply::need_helo());
        } else if self.info.authenticated_user.is_some() {
            self.error(Reply::already_authenticated());
        } else if self.transaction.is_some() {
            self.error(Reply::bad_sequence());
        } else {
            let step = auth::start(mechanism, initial);
            return self.sasl_step(step).await;
        }
        Flow::Continue
    }

    async fn sasl_step(&mut self, step: Step) -> Flow {
        match step {
            Step::Continue(exchange, challenge) => {
                self.sasl = Some(exchange);
                self.reply(challenge);
            }
            Step::Failed(reply) => self.error(reply),
            Step::Done(credentials) => self.check_credentials(credentials).await,
        }
        Flow::Continue
    }

    async fn check_credentials(&mut self, credentials: Credentials) {
        let outcome = self
            .ctx
            .authenticator
            .authenticate(
                self.info.client_ip,
                &credentials.username,
                &credentials.password,
            )
            .await;
        let user = &credentials.username;
        match outcome {
            AuthOutcome::Success(user) => {
                tracing::info!(session = %self.info.id, user = ?user, "authenticated");
                METRICS.auth_attempts.inc(&["success"]);
                self.info.authenticated_user = Some(user);
                self.reply(Reply::auth_success());
            }
            AuthOutcome::BadCredentials => {
                tracing::warn!(session = %self.info.id, client = %self.info.client_ip, user = ?user, "authentication failed");
                METRICS.auth_attempts.inc(&["failure"]);
                self.error(Reply::auth_failed());
            }
            AuthOutcome::Locked(Locked::Client) => {
                tracing::warn!(session = %self.info.id, client = %self.info.client_ip, user = ?user, "authentication refused: client locked out");
                METRICS.auth_attempts.inc(&["locked_out"]);
                self.error(Reply::auth_locked_out());
            }
            AuthOutcome::Locked(Locked::User) => {
                // Same reply as a wrong password: a lockout must not tell
                // a guesser that the name exists.
                tracing::warn!(session = %self.info.id, client = %self.info.client_ip, user = ?user, "authentication refused: user locked out");
                METRICS.auth_attempts.inc(&["locked_out"]);
                self.error(Reply::auth_failed());
            }
            AuthOutcome::Unavailable => self.reply(Reply::auth_tempfail()),
        }
    }

    async fn helo(&mut self, name: String, esmtp: bool) -> std::io::Result<Flow> {
        self.reset_transaction();
        let outcome = self.filters.run(&self.info, HookArg::Helo(&name)).await;
        if let Some(flow) = self.refused(outcome) {
            return Ok(flow);
        }
        self.esmtp = esmtp;
        self.info.helo = Some(name.clone());
        let greeting = format!("{} greets {}", self.hostname(), name);
        if esmtp {
            let mut lines = vec![
                greeting,
                "PIPELINING".to_owned(),
                format!("SIZE {}", self.ctx.config.server.max_message_size),
                "8BITMIME".to_owned(),
                "ENHANCEDSTATUSCODES".to_owned(),
                "SMTPUTF8".to_owned(),
            ];
            let tls_active = self.stream.is_tls();
            if self.listener.tls == TlsMode::Starttls && self.tls.is_some() && !tls_active {
                lines.push("STARTTLS".to_owned());
            }
            if self.listener.auth_offered(tls_active) {
                lines.push(format!("AUTH {}", auth::MECHANISMS));
            }
            lines.push("HELP".to_owned());
            self.reply(Reply::multiline(250, None, lines));
        } else {
            self.reply(Reply::new(250, None, greeting));
        }
        Ok(Flow::Continue)
    }

    async fn mail(
        &mut self,
        reverse_path: ReversePath,
        params: MailParams,
    ) -> std::io::Result<Flow> {
        if self.info.helo.is_none() {
            self.error(Reply::need_helo());
            return Ok(Flow::Continue);
        }
        if self.transaction.is_some() {
            self.error(Reply::bad_sequence());
            return Ok(Flow::Continue);
        }
        if self.listener.auth == AuthMode::Required && self.info.authenticated_user.is_none() {
            // Both 530 5.7.0; the text says which step is missing.
            let reply = if self.listener.auth_offered(self.stream.is_tls()) {
                Reply::auth_required()
            } else {
                Reply::must_starttls()
            };
            self.error(reply);
            return Ok(Flow::Continue);
        }
        // Backpressure: with the spool's disk nearly full, new transactions
        // are refused (the client retries later); mail already accepted is
        // unaffected. The measurement is cached by the spool for a second.
        let min_free = self.ctx.config.queue.min_free_space;
        if min_free > 0 {
            match self.ctx.spool.free_space() {
                Ok(free) if free < min_free => {
                    tracing::warn!(
                        session = %self.info.id,
                        free_bytes = free,
                        min_free_space = min_free,
                        "MAIL refused: too little free space for the spool"
                    );
                    self.reply(Reply::storage());
                    return Ok(Flow::Continue);
                }
                Ok(_) => {}
                // Not knowing is no reason to refuse mail: a write that
                // then fails is still answered with a 4xx.
                Err(e) => tracing::warn!(session = %self.info.id, "{e}"),
            }
        }
        if params
            .size
            .is_some_and(|size| size > self.ctx.config.server.max_message_size)
        {
            self.reply(Reply::size_exceeds_limit());
            return Ok(Flow::Continue);
        }
        // RFC 6409 §6.1: on a submission listener the envelope sender must
        // be the user's own (<> stays allowed, e.g. for MDNs).
        if self.listener.submission {
            if let (Some(user), ReversePath::Mailbox(mailbox)) =
                (&self.info.authenticated_user, &reverse_path)
            {
                if !self
                    .ctx
                    .config
                    .submission
                    .may_send_as(user, &mailbox.to_string())
                {
                    tracing::warn!(session = %self.info.id, user = ?user, sender = %mailbox, "sender refused: not owned by the user");
                    let reply = Reply::sender_not_owned(user);
                    self.reply(reply);
                    return Ok(Flow::Continue);
                }
            }
        }
        let argument = match &reverse_path {
            ReversePath::Null => None,
            ReversePath::Mailbox(mailbox) => Some(self.mailbox_arg(mailbox)),
        };
        let outcome = self
            .filters
            .run(&self.info, HookArg::Mail(argument.as_ref()))
            .await;
        if let Some(flow) = self.refused(outcome) {
            return Ok(flow);
        }
        self.info.reverse_path = Some(match &reverse_path {
            ReversePath::Null => String::new(),
            ReversePath::Mailbox(mailbox) => mailbox.to_string(),
        });
        self.info.recipients.clear();
        self.transaction = Some(Transaction {
            reverse_path,
            recipients: Vec::new(),
            smtputf8: params.smtputf8,
        });
        self.reply(Reply::sender_ok());
        Ok(Flow::Continue)
    }

    async fn rcpt(&mut self, forward_path: ForwardPath) -> std::io::Result<Flow> {
        let Some(transaction) = &self.transaction else {
            self.error(Reply::bad_sequence());
            return Ok(Flow::Continue);
        };
        if transaction.recipients.len() >= self.ctx.config.server.max_recipients {
            self.reply(Reply::too_many_recipients());
            return Ok(Flow::Continue);
        }
        let argument = self.mailbox_arg(&forward_path.0);
        let outcome = self.filters.run(&self.info, HookArg::Rcpt(&argument)).await;
        if let Some(flow) = self.refused(outcome) {
            return Ok(flow);
        }
        let address = format!(
            "{}@{}",
            quote_local_part(&argument.local_part),
            argument.domain
        );
        if let Some(transaction) = &mut self.transaction {
            transaction.recipients.push(address.clone());
        }
        self.info.recipients.push(address);
        self.reply(Reply::recipient_ok());
        Ok(Flow::Continue)
    }

    async fn data(&mut self) -> std::io::Result<Flow> {
        let has_recipients = self.transaction.as_ref().map(|t| !t.recipients.is_empty());
        match has_recipients {
            None => {
                self.error(Reply::bad_sequence());
                return Ok(Flow::Continue);
            }
            Some(false) => {
                // RFC 2920 §3.1: DATA after only failed RCPTs.
                self.error(Reply::new(554, Some("5.5.1"), "No valid recipients"));
                return Ok(Flow::Continue);
            }
            Some(true) => {}
        }
        self.reply(Reply::start_data());
        self.flush().await?;

        let Some(received) = self.receive_data().await? else {
            return Ok(Flow::Close);
        };
        let message = match received {
            Ok(message) => message,
            Err(DataError::TooBig) => {
                self.reset_transaction();
                self.reply(Reply::message_too_big());
                return Ok(Flow::Continue);
            }
            Err(e @ (DataError::LineTooLong | DataError::Incomplete)) => {
                self.reset_transaction();
                self.error(e.reply());
                return Ok(Flow::Continue);
            }
        };
        let flow = self.finish_message(message).await;
        self.reset_transaction();
        flow
    }

    /// Receives the message text after 354. Returns None when the session
    /// must end (client gone, timeout, shutdown).
    async fn receive_data(&mut self) -> std::io::Result<Option<Result<Vec<u8>, DataError>>> {
        let limits = DataLimits {
            max_size: self.ctx.config.server.max_message_size,
            max_line: MAX_TEXT_LINE,
        };
        let mut receiver = DataReceiver::new(limits);
        let pending = self.input.take_remaining();
        if let DataProgress::Done { consumed } = receiver.feed(&pending) {
            // Whatever followed the terminator is the next command.
            self.input.push(&pending[consumed..]);
            return Ok(Some(receiver.finish()));
        }
        let timeout = self.ctx.config.server.timeouts.data_block;
        loop {
            match tokio::time::timeout(timeout, self.stream.read(&mut self.read_buf)).await {
                Ok(Ok(0)) => return Ok(None),
                // Fed straight from the read buffer: the receiver copies
                // only the message.
                Ok(Ok(n)) => {
                    if let DataProgress::Done { consumed } = receiver.feed(&self.read_buf[..n]) {
                        self.input.push(&self.read_buf[consumed..n]);
                        return Ok(Some(receiver.finish()));
                    }
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    self.reply(Reply::timeout(self.hostname()));
                    self.flush().await?;
                    return Ok(None);
                }
            }
        }
    }

    /// Runs the data stage on a complete message and, if it is accepted,
    /// stores it durably before answering.
    async fn finish_message(&mut self, message: Vec<u8>) -> std::io::Result<Flow> {
        let config = &self.ctx.config;
        if count_received(&message) > config.server.max_received_headers {
            self.reply(Reply::loop_detected());
            return Ok(Flow::Continue);
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let message = if self.listener.submission {
            match self.submission_checks(message, now) {
                Ok(message) => message,
                Err(reply) => {
                    self.reply(reply);
                    return Ok(Flow::Continue);
                }
            }
        } else {
            message
        };
        let message: Arc<[u8]> = Arc::from(message);
        let decision = self.filters.run_data(&self.info, &message).await;
        let quarantine = match decision.outcome {
            StageOutcome::Accept => None,
            StageOutcome::Quarantine(reason) => Some(reason),
            StageOutcome::Discard => {
                tracing::info!(session = %self.info.id, "message discarded by the data stage");
                count_message("discarded", message.len());
                self.reply(Reply::ok());
                return Ok(Flow::Continue);
            }
            refused => {
                let outcome = match refused {
                    StageOutcome::Reject(_) => "rejected",
                    _ => "tempfailed",
                };
                count_message(outcome, message.len());
                return Ok(self.refused(refused).unwrap_or(Flow::Continue));
            }
        };
        let Some(transaction) = self.transaction.as_mut() else {
            self.error(Reply::bad_sequence());
            return Ok(Flow::Continue);
        };
        let mut remove = Vec::new();
        let mut prepend = Vec::new();
        let mut append = Vec::new();
        for modification in decision.modifications {
            match modification {
                Modification::PrependHeader { name, value } => prepend.push((name, value)),
                Modification::AppendHeader { name, value } => append.push((name, value)),
                Modification::RemoveHeader(name) => remove.push(name),
                Modification::AddRecipient(rcpt) => {
                    if !transaction.recipients.contains(&rcpt) {
                        transaction.recipients.push(rcpt)
                    }
                }
                Modification::RemoveRecipient(rcpt) => {
                    transaction.recipients.retain(|r| *r != rcpt)
                }
            }
        }
        if transaction.recipients.is_empty() {
            // Plugins removed every recipient: nobody is left to deliver to.
            tracing::info!(session = %self.info.id, "every recipient removed by the data stage");
            self.reply(Reply::ok());
            return Ok(Flow::Continue);
        }

        let queue_id = match self.ctx.spool.allocate_id() {
            Ok(id) => id,
            Err(e) => {
                tracing::error!(session = %self.info.id, "spool id allocation failed: {e}");
                self.reply(Reply::local_error());
                return Ok(Flow::Continue);
            }
        };
        // RFC 3848 / RFC 6531 §3.7.3: S for TLS, A for an authenticated client.
        let mut protocol = match (self.esmtp, transaction.smtputf8) {
            (true, true) => "UTF8SMTP",
            (true, false) => "ESMTP",
            (false, _) => "SMTP",
        }
        .to_owned();
        if self.esmtp {
            if self.info.tls.is_some() {
                protocol.push('S');
            }
            if self.info.authenticated_user.is_some() {
                protocol.push('A');
            }
        }
        let tls_comment = self
            .info
            .tls
            .as_ref()
            .map(|t| format!("{} with cipher {}", t.version, t.cipher));
        let single_recipient = match transaction.recipients.as_slice() {
            [only] => Some(only.as_str()),
            _ => None,
        };
        let trace = received_header(
            self.info.helo.as_deref().unwrap_or("unknown"),
            self.info.reverse_name.as_deref(),
            self.info.client_ip,
            &config.server.hostname,
            &protocol,
            tls_comment.as_deref(),
            &queue_id.to_string(),
            single_recipient,
            &rfc5322_date(now as i64),
        );
        let body: std::borrow::Cow<'_, [u8]> =
            if prepend.is_empty() && append.is_empty() && remove.is_empty() {
                std::borrow::Cow::Borrowed(&message[..])
            } else {
                std::borrow::Cow::Owned(message::apply_header_changes(
                    &message, &remove, &prepend, &append,
                ))
            };
        // Signed before spooling, so the signature is in the queue and
        // survives a restart; the Received field goes above it, unsigned.
        let signatures = match Self::dkim_signatures(&self.ctx, &self.info, &body) {
            Ok(signatures) => signatures,
            Err(e) => {
                tracing::error!(session = %self.info.id, "{e}");
                self.reply(Reply::local_error());
                return Ok(Flow::Continue);
            }
        };
        let signatures_len: usize = signatures.iter().map(String::len).sum();
        let mut stored = Vec::with_capacity(trace.len() + signatures_len + body.len());
        stored.extend_from_slice(trace.as_bytes());
        for signature in &signatures {
            stored.extend_from_slice(signature.as_bytes());
        }
        stored.extend_from_slice(&body);

        let new_message = NewMessage {
            reverse_path: match &transaction.reverse_path {
                ReversePath::Null => String::new(),
                ReversePath::Mailbox(m) => m.to_string(),
            },
            recipients: transaction.recipients.clone(),
            message: stored,
            received_at: now,
            client: format!("{}:{}", self.info.client_ip, self.info.client_port),
            quarantine: quarantine.clone(),
        };
        let recipients = new_message.recipients.len();
        let new_reverse_path = new_message.reverse_path.clone();
        match self.ctx.spool.enqueue_with_id(queue_id, new_message).await {
            Ok(id) => {
                tracing::info!(
                    session = %self.info.id,
                    queue_id = %id,
                    from = %new_reverse_path,
                    recipients,
                    size = message.len(),
                    quarantine = quarantine.as_deref().unwrap_or(""),
                    "message queued"
                );
                self.queued += 1;
                if quarantine.is_none() {
                    self.ctx.delivery.enqueued(id);
                }
                let outcome = match quarantine {
                    None => "accepted",
                    Some(_) => "quarantined",
                };
                count_message(outcome, message.len());
                self.reply(Reply::queued(&id.to_string()));
            }
            Err(e) => {
                tracing::error!(session = %self.info.id, "spool write failed: {e}");
                count_message("tempfailed", message.len());
                self.reply(Reply::local_error());
            }
        }
        Ok(Flow::Continue)
    }

    /// Submission (RFC 6409): every From and Sender address must be one
    /// the authenticated user may send as; a missing Date or Message-ID is
    /// added (§8.2, §8.3). Returns the message to go on with, or the reply
    /// refusing it.
    fn submission_checks(&self, message: Vec<u8>, now: u64) -> Result<Vec<u8>, Reply> {
        if let Some(user) = &self.info.authenticated_user {
            let authors = submission::author_addresses(&message).map_err(|e| {
                tracing::warn!(session = %self.info.id, user = ?user, "message refused: {e}");
                Reply::bad_author(&e.to_string())
            })?;
            let submission_config = &self.ctx.config.submission;
            if let Some(foreign) = authors
                .iter()
                .find(|a| !submission_config.may_send_as(user, a))
            {
                tracing::warn!(session = %self.info.id, user = ?user, from = ?foreign, "message refused: From not owned by the user");
                return Err(Reply::author_not_owned(foreign));
            }
        }
        let (no_date, no_message_id) = submission::missing_fields(&message);
        if !no_date && !no_message_id {
            return Ok(message);
        }
        let mut append = Vec::new();
        if no_date {
            append.push(("Date".to_owned(), rfc5322_date(now as i64)));
        }
        if no_message_id {
            append.push((
                "Message-ID".to_owned(),
                submission::new_message_id(now, self.hostname()),
            ));
        }
        Ok(message::apply_header_changes(&message, &[], &[], &append))
    }

    /// The DKIM-Signature fields for a message whose From domain has a
    /// `[[dkim.sign]]` key, from a client in `[dkim] trusted_networks` or an
    /// authenticated user that may send as every author; none otherwise.
    fn dkim_signatures(
        ctx: &SessionContext,
        info: &SessionInfo,
        message: &[u8],
    ) -> Result<Vec<String>, crate::dkim::SignError> {
        let signers = &ctx.dkim;
        if signers.is_empty() {
            return Ok(Vec::new());
        }
        let ip = info.client_ip;
        let trusted = ctx
            .config
            .dkim
            .trusted_networks
            .iter()
            .any(|net| net.contains(&ip));
        // An authenticated user gets a signature only for authors it owns:
        // on a listener that is not a submission one nothing checked the
        // From, and the domain's key must not vouch for someone else's.
        let owned = info.authenticated_user.as_ref().is_some_and(|user| {
            submission::author_addresses(message).is_ok_and(|authors| {
                authors
                    .iter()
                    .all(|a| ctx.config.submission.may_send_as(user, a))
            })
        });
        if !trusted && !owned {
            return Ok(Vec::new());
        }
        match submission::from_domain(message) {
            Some(domain) if signers.has_domain(&domain) => {
                let signatures = signers.sign(&domain, message)?;
                tracing::info!(session = %info.id, %domain, signatures = signatures.len(), "DKIM-signed");
                Ok(signatures)
            }
            _ => Ok(Vec::new()),
        }
    }

    /// Writes the reply of a refusing outcome; None when the stage accepted.
    fn refused(&mut self, outcome: StageOutcome) -> Option<Flow> {
        match outcome {
            StageOutcome::Accept | StageOutcome::Discard | StageOutcome::Quarantine(_) => None,
            StageOutcome::Reject(reply) | StageOutcome::Tempfail(reply) => {
                self.reply(reply);
                Some(Flow::Continue)
            }
            StageOutcome::Disconnect(reply) => {
                self.reply(reply);
                Some(Flow::Close)
            }
        }
    }

    fn reset_transaction(&mut self) {
        self.transaction = None;
        self.info.reverse_path = None;
        self.info.recipients.clear();
    }

    /// The plugin view of a mailbox. `<postmaster>` (RFC 5321 §4.5.1) is
    /// the postmaster of our first local domain.
    fn mailbox_arg(&self, mailbox: &Mailbox) -> MailboxArg {
        let domain = match &mailbox.domain {
            Domain::Name(name) => name.clone(),
            Domain::Literal(std::net::IpAddr::V4(ip)) => format!("[{ip}]"),
            Domain::Literal(std::net::IpAddr::V6(ip)) => format!("[IPv6:{ip}]"),
            Domain::None => self
                .ctx
                .config
                .domains
                .local
                .first()
                .cloned()
                .unwrap_or_else(|| self.hostname().to_owned()),
        };
        MailboxArg {
            local_part: mailbox.local_part.clone(),
            domain,
        }
    }
}

/// Whether a command line is AUTH, whose line may exceed 512 octets.
fn is_auth_command(line: &[u8]) -> bool {
    line.len() >= 5 && line[..5].eq_ignore_ascii_case(b"AUTH ")
}

/// An IPv4 client reached over an IPv6 socket is reported as IPv4.
fn canonical_ip(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(std::net::IpAddr::V4)
            .unwrap_or(std::net::IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// Re-quotes a local part that is not a valid dot-string, so the stored
/// address reads back as the same mailbox.
fn quote_local_part(local: &str) -> String {
    let atext = |c: char| c.is_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii();
    let dot_string = !local.is_empty()
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local.chars().all(|c| c == '.' || atext(c));
    if dot_string {
        local.to_owned()
    } else {
        let mut quoted = String::with_capacity(local.len() + 2);
        quoted.push('"');
        for c in local.chars() {
            if c == '"' || c == '\\' {
                quoted.push('\\');
            }
            quoted.push(c);
        }
        quoted.push('"');
        quoted
    }
}

/// Counts one message received at DATA by its outcome.
fn count_message(outcome: &str, size: usize) {
    METRICS.messages.inc(&[outcome]);
    METRICS
        .message_bytes
        .add(&[outcome], u64::try_from(size).unwrap_or(u64::MAX));
}
