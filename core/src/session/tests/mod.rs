//! In-process tests of whole sessions: a [`Harness`] builds a real
//! [`SessionContext`] (spool in a temporary directory, real plugins, a
//! real authenticator) from an inline TOML file, runs the session over an
//! in-memory pipe, and the tests write exact bytes and read exact replies.
//! Timeouts are tested with tokio's paused clock.

mod auth;
mod connect;
mod data;
mod dialogue;
mod starttls;
mod transaction;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::trace::StageTrace;
use super::{Session, SessionContext};
use crate::config::Config;
use crate::delivery::DeliveryHandle;
use crate::dkim::DkimSigners;
use crate::dns::Dns;
use crate::limits::{ConnectionLimits, ConnectionPermit};
use crate::pipeline::{PipelineSet, PluginEngine};
use crate::tls::ReloadableTls;
use crate::users::{Authenticator, UserStore};
use sluice_spool::Spool;

/// Where the fixture plugins are (`fixture_verdict.wasm`, ...).
pub fn fixture(name: &str) -> String {
    std::path::Path::new(env!("SLUICE_PLUGIN_DIR"))
        .join(format!("{name}.wasm"))
        .display()
        .to_string()
}

/// The `[pipeline.test]` and plugins of a session under test, and its
/// listener's settings.
pub struct Setup {
    /// Extra keys of `[[listener]]`.
    pub listener: String,
    /// The body of `[pipeline.test]`.
    pub pipeline: String,
    /// More TOML (plugins, `[server]` keys go in `server`).
    pub extra: String,
    /// Extra keys of `[server]`.
    pub server: String,
    /// The client's address.
    pub peer: SocketAddr,
    /// SMTP AUTH users and their passwords.
    pub users: Vec<(&'static str, &'static str)>,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            listener: String::new(),
            pipeline: r#"rcpt = ["relay"]"#.to_owned(),
            extra: String::new(),
            server: String::new(),
            peer: "127.0.0.1:40000".parse().expect("a socket address"),
            users: Vec::new(),
        }
    }
}

impl Setup {
    /// The relay plugin at rcpt and, at `stage`, a plugin `gate`
    /// (fixture-verdict) answering `spec` there (and prepending
    /// `X-Judged: yes` at data); at rcpt the gate replaces the relay.
    pub fn gate(stage: &str, spec: &str) -> Setup {
        let pipeline = if stage == "rcpt" {
            "rcpt = [\"gate\"]".to_owned()
        } else {
            format!("{stage} = [\"gate\"]\nrcpt = [\"relay\"]")
        };
        let extra = format!(
            "[plugins.gate]\npath = \"{}\"\n[plugins.gate.config]\n{stage} = \"{spec}\"\nheader = \"X-Judged: yes\"\n",
            fixture("fixture_verdict")
        );
        Setup {
            pipeline,
            extra,
            ..Setup::default()
        }
    }
}

/// The relay plugin, vouching for local domains and 127.0.0.0/8.
const RELAY: &str = r#"
[plugins.relay]
path = "builtin:relay"
[plugins.relay.config]
trusted_networks = ["127.0.0.0/8"]
"#;

/// One engine for every test: each reserves its instance pool up front,
/// and dozens of pools at once exhaust the address space.
static ENGINE: std::sync::LazyLock<PluginEngine> =
    std::sync::LazyLock::new(|| PluginEngine::new(64 << 20, None).expect("a plugin engine"));

pub struct Harness {
    /// The client's end of the pipe.
    client: DuplexStream,
    /// Reply bytes read and not yet returned.
    buf: Vec<u8>,
    pub task: JoinHandle<Vec<StageTrace>>,
    pub spool: Spool,
    pub ctx: Arc<SessionContext>,
    pub shutdown: watch::Sender<bool>,
    /// The data directory, removed with the harness.
    _dir: tempfile::TempDir,
}

impl Harness {
    /// A session with the default setup: the relay plugin at rcpt.
    pub async fn start() -> Harness {
        Harness::with(Setup::default()).await
    }

    pub async fn with(setup: Setup) -> Harness {
        Harness::build(setup, |_, _| None).await
    }

    /// Like [`Harness::with`]; `tls` may give the listener a certificate.
    pub async fn build(
        setup: Setup,
        tls: impl FnOnce(&Config, &std::path::Path) -> Option<Arc<ReloadableTls>>,
    ) -> Harness {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let text = format!(
            r#"
[server]
hostname = "mx.test"
data_dir = "{data}"
{lookup}
{server}

[domains]
local = ["localhost"]

[[listener]]
name = "mx"
address = "127.0.0.1:2525"
pipeline = "test"
{listener}

[pipeline.test]
{pipeline}
{RELAY}
{extra}
"#,
            data = dir.path().display(),
            // Off unless a test asks: the answer would depend on the
            // machine's resolver.
            lookup = if setup.server.contains("reverse_lookup") {
                ""
            } else {
                "reverse_lookup = false"
            },
            server = setup.server,
            listener = setup.listener,
            pipeline = setup.pipeline,
            extra = setup.extra,
        );
        let config = crate::config::load_str(&text, "test.toml").expect("a valid test config");
        let users = crate::users::UserFile::in_data_dir(dir.path());
        for (name, password) in &setup.users {
            let hash = crate::users::password::hash_password(password).expect("hashes");
            users.add(name, &hash).expect("the users file is written");
        }
        let tls = tls(&config, dir.path());
        let spool = Spool::open(&dir.path().join("spool")).expect("a spool");
        let dns = Dns::new(&config.dns).expect("a resolver");
        let set = PipelineSet::build(&ENGINE, &config, &spool, &dns)
            .await
            .expect("the pipelines build");
        let (shutdown, shutdown_rx) = watch::channel(false);
        let ctx = Arc::new(SessionContext {
            authenticator: Arc::new(Authenticator::new(
                Arc::new(UserStore::new(&config.server.data_dir)),
                config.auth.max_failures,
                config.auth.lockout,
            )),
            config: Arc::new(config),
            pipelines: Arc::new(arc_swap::ArcSwap::from_pointee(set)),
            spool: spool.clone(),
            delivery: DeliveryHandle::detached(),
            shutdown: shutdown_rx,
            dkim: DkimSigners::default(),
            limits: Arc::new(ConnectionLimits::new(100, 100)),
            dns,
            memory: crate::memory::MessageMemory::new(crate::config::DEFAULT_MESSAGE_MEMORY),
        });
        let listener = Arc::new(ctx.config.listeners[0].clone());
        let (server_end, client) = tokio::io::duplex(256 * 1024);
        let session = Session::new(
            server_end,
            setup.peer,
            "s1".to_owned(),
            listener,
            tls,
            ctx.clone(),
        )
        .expect("the listener's pipeline exists");
        let task = tokio::spawn(session.traced().run());
        Harness {
            client,
            buf: Vec::new(),
            task,
            spool,
            ctx,
            shutdown,
            _dir: dir,
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.client
            .write_all(bytes)
            .await
            .expect("the session reads");
    }

    /// The next complete reply, all its lines with their CRLFs; "" when the
    /// session closed the pipe.
    pub async fn reply(&mut self) -> String {
        let mut reply = String::new();
        loop {
            while let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                let line = String::from_utf8(line).expect("replies are UTF-8");
                let last = line.as_bytes().get(3) != Some(&b'-');
                reply.push_str(&line);
                if last {
                    return reply;
                }
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(600), self.client.read(&mut chunk))
                .await
                .expect("the session answers")
                .expect("the pipe reads");
            if n == 0 {
                assert!(self.buf.is_empty(), "a partial reply: {:?}", self.buf);
                return reply;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Sends one command line and returns its reply.
    pub async fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    /// The greeting, checked.
    pub async fn greeted(mut self) -> Harness {
        assert_eq!(self.reply().await, "220 mx.test ESMTP sluice\r\n");
        self
    }

    /// Greeting and EHLO done.
    pub async fn ehlo(self) -> Harness {
        let mut h = self.greeted().await;
        let reply = h.cmd("EHLO client.example").await;
        assert!(
            reply.starts_with("250-mx.test greets client.example\r\n"),
            "{reply}"
        );
        h
    }

    /// Reads until the session closes the pipe; true if nothing else came.
    pub async fn closed(&mut self) -> bool {
        self.reply().await.is_empty()
    }

    /// Holds 80 of the session's 100 connection slots, putting the server
    /// under load until the permits are dropped.
    pub fn load(&self) -> Vec<ConnectionPermit> {
        (0..80u8)
            .map(|i| {
                let ip = std::net::IpAddr::from([127, 0, 1, i]);
                self.ctx.limits.admit(ip).expect("a free slot")
            })
            .collect()
    }

    /// Pipelines NOOPs and never reads a reply, until the session hangs
    /// up; returns how long that took. The pipe's buffers fill after a few
    /// thousand replies, so the session's writes block.
    pub async fn never_read(&mut self) -> Duration {
        let storm = b"NOOP\r\n".repeat(200_000);
        let started = tokio::time::Instant::now();
        let written =
            tokio::time::timeout(Duration::from_secs(3600), self.client.write_all(&storm))
                .await
                .expect("the session hangs up within the hour");
        assert!(written.is_err(), "the session stopped reading and hung up");
        started.elapsed()
    }

    /// Waits for the session to end and returns its trace.
    pub async fn finish(self) -> Vec<StageTrace> {
        drop(self.client);
        self.task
            .await
            .expect("the session task ends without a panic")
    }
}

/// The single message queued by a test, as stored.
pub fn queued_message(spool: &Spool) -> (sluice_spool::QueueEntry, Vec<u8>) {
    let entries = spool.entries().expect("the spool lists");
    assert_eq!(entries.len(), 1, "one message queued");
    let entry = entries.into_iter().next().expect("one entry");
    let bytes = spool.message(entry.id).expect("reads").expect("has bytes");
    (entry, bytes.to_vec())
}
