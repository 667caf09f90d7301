//! The server: takes the certificates and DKIM keys `assets` loaded,
//! binds the listeners and drops root (`privilege`), opens the spool,
//! builds the plugin pipelines, generates a self-signed certificate for
//! TLS listeners without one, listens, accepts connections under the
//! global and per-client limits, reloads certificates and
//! pipelines on SIGHUP (pipelines also on `sluice reload` and file changes,
//! see `reload`), and runs the shutdown sequence (stop accepting, let sessions finish or
//! tempfail, stop delivery, flush the spool). It also runs the admin
//! endpoint, which reports ready only while the SMTP listeners accept.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::admin::{AdminError, AdminListeners, AdminState};
use crate::assets::{AssetError, Assets};
use crate::config::DkimKeyConfig;
use crate::config::{Config, ListenerConfig, TlsMode};
use crate::delivery::{self, Credentials, DeliverySettings, OutboundTlsConfig};
use crate::dkim::DkimSigners;
use crate::dns::Dns;
use crate::limits::ConnectionLimits;
use crate::memory::MessageMemory;
use crate::metrics::METRICS;
use crate::pipeline::{PipelineError, PipelineSet, PluginEngine};
use crate::privilege::{self, Outcome, PrivilegeError};
use crate::proxy::{self, ProxiedPeer};
use crate::reload::{self, Reloader, Trigger};
use crate::session::{Session, SessionContext};
use crate::smtp::reply::Reply;
use crate::state::{StateBackend, StateError};
use crate::tls::{ReloadableTls, TlsError};
use crate::users::{Authenticator, UserStore};
use sluice_spool::Spool;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A certificate or DKIM key the configuration names did not load.
    #[error(transparent)]
    Assets(#[from] AssetError),
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the spool in {path}: {source}")]
    Spool {
        path: std::path::PathBuf,
        source: sluice_spool::SpoolError,
    },
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Dns(#[from] crate::dns::ResolverSetupError),
    #[error("delivery.ca_file: {0}")]
    OutboundTls(#[from] delivery::TlsSetupError),
    #[error("listener {name}: {source}")]
    Tls { name: String, source: TlsError },
    #[error("listener {name}: cannot listen on {address}: {source}")]
    Bind {
        name: String,
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Privilege(#[from] PrivilegeError),
}

/// A server that has opened its spool, built its pipelines and bound its
/// listeners, ready to run.
pub struct Server {
    config: Arc<Config>,
    spool: Spool,
    dns: Dns,
    outbound_tls: OutboundTlsConfig,
    /// DANE's validating lookups, when `[dns]` configures DNSSEC.
    dane: Option<Arc<delivery::Dane>>,
    engine: Arc<PluginEngine>,
    /// The largest plugin memory the engine's pool was sized for.
    max_memory: u64,
    pipelines: Arc<ArcSwap<PipelineSet>>,
    /// The file the config came from, read again on reload.
    config_path: Option<std::path::PathBuf>,
    listeners: Vec<Listener>,
    /// Every distinct certificate in use, for reloading on SIGHUP.
    certificates: Vec<Arc<ReloadableTls>>,
    admin: AdminListeners,
    dkim: DkimSigners,
    /// The routes' AUTH credentials, read at start.
    route_credentials: BTreeMap<String, Arc<Credentials>>,
    /// Built once: its lockout counts outlive reloads.
    authenticator: Arc<Authenticator>,
}

/// A bound listener with what its sessions need from it.
struct Listener {
    config: Arc<ListenerConfig>,
    socket: TcpListener,
    tls: Option<Arc<ReloadableTls>>,
}

impl Server {
    pub async fn start(config: Config) -> Result<Server, ServerError> {
        // The configured files first, each read once: one that does not
        // load stops the start before anything is created.
        let assets = Assets::load(&config)?;
        for warning in &assets.warnings {
            tracing::warn!("{warning}");
        }
        let data_dir = config.server.data_dir.clone();
        private_data_dir(&data_dir).map_err(|source| ServerError::DataDir {
            path: data_dir.clone(),
            source,
        })?;
        // Bound (ports below 1024 need root) but not listening until the
        // server is about to serve.
        let mut sockets = Vec::new();
        for listener in &config.listeners {
            let socket = bind(listener.address).map_err(|source| ServerError::Bind {
                name: listener.name.clone(),
                address: listener.address,
                source,
            })?;
            sockets.push(socket);
        }
        let cache_dir = config.plugin_cache.resolve(&data_dir);
        let owned: Vec<&std::path::Path> = std::iter::once(data_dir.as_path())
            .chain(cache_dir.as_deref())
            .collect();
        match privilege::drop_root(&config.server, &owned)? {
            Outcome::Dropped { user, uid, gid } => {
                tracing::info!(%user, uid, gid, "dropped root")
            }
            Outcome::StillRoot | Outcome::Unprivileged => {}
        }
        let spool_dir = data_dir.join("spool");
        let spool = Spool::open(&spool_dir).map_err(|source| ServerError::Spool {
            path: spool_dir,
            source,
        })?;
        let dns = Dns::new(&config.dns)?;
        let outbound_tls = OutboundTlsConfig::new(config.delivery.ca_file.as_deref())?;
        let dane = match config.dns.dnssec.enabled() {
            true => Some(Arc::new(delivery::Dane::new(&config.dns)?)),
            false => None,
        };
        let max_memory = config.max_plugin_memory();
        let engine = PluginEngine::new(max_memory, cache_dir.as_deref())?;
        let pipelines = PipelineSet::build(&engine, &config, &spool, &dns).await?;
        let dkim = assets.dkim.clone();
        let authenticator = authenticator(&config, &spool)?;

        let mut certificates: Vec<Arc<ReloadableTls>> = Vec::new();
        let mut self_signed = None;
        let mut listeners = Vec::new();
        for (listener, socket) in config.listeners.iter().zip(sockets) {
            let tls = if listener.tls == TlsMode::None {
                None
            } else {
                let tls =
                    match assets.listener_certificate(&listener.name) {
                        Some(tls) => tls,
                        None => self_signed_certificate(&mut self_signed, &config).map_err(
                            |source| ServerError::Tls {
                                name: listener.name.clone(),
                                source,
                            },
                        )?,
                    };
                if !certificates.iter().any(|c| Arc::ptr_eq(c, &tls)) {
                    certificates.push(tls.clone());
                }
                Some(tls)
            };
            let socket = socket
                .listen(LISTEN_BACKLOG)
                .map_err(|source| ServerError::Bind {
                    name: listener.name.clone(),
                    address: listener.address,
                    source,
                })?;
            listeners.push(Listener {
                config: Arc::new(listener.clone()),
                socket,
                tls,
            });
        }
        // Bound after the spool (whose lock shows no other server uses this
        // data_dir, so a leftover socket is stale) and after the SMTP
        // listeners, so the socket appears only when the server is about to
        // serve.
        let admin =
            AdminListeners::bind(&data_dir, &config.admin, assets.admin_token.clone()).await?;
        Ok(Server {
            config: Arc::new(config),
            spool,
            dns,
            outbound_tls,
            dane,
            engine: Arc::new(engine),
            max_memory,
            pipelines: Arc::new(ArcSwap::from_pointee(pipelines)),
            config_path: None,
            listeners,
            certificates,
            admin,
            dkim,
            route_credentials: assets.route_credentials.clone(),
            authenticator,
        })
    }

    /// Names the file the configuration was loaded from: reloads read it
    /// again, and changes to it are watched (`[reload] watch`).
    pub fn with_config_path(mut self, path: std::path::PathBuf) -> Self {
        self.config_path = Some(path);
        self
    }

    /// The resolver the server delivers and checks mail with.
    pub fn dns(&self) -> &Dns {
        &self.dns
    }

    /// The addresses actually bound (useful with port 0).
    pub fn local_addrs(&self) -> Vec<std::net::SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.socket.local_addr().ok())
            .collect()
    }

    /// Serves until `stop` resolves, then shuts down gracefully.
    pub async fn run(self, stop: impl std::future::Future<Output = ()>) {
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let config = self.config.clone();
        crate::memory::return_large_buffers();
        let memory = MessageMemory::new(config.server.message_memory);
        let (delivery, delivery_task) = delivery::spawn(
            delivery_settings(
                &config,
                &self.local_addrs(),
                &self.route_credentials,
                self.dane.clone(),
            ),
            self.spool.clone(),
            self.dns.clone(),
            self.outbound_tls.clone(),
            shutdown_rx.clone(),
        );
        let dmarc_reports = crate::dmarc_reports::spawn(
            &config.dmarc_reports,
            &config.server.hostname,
            &self.spool,
            &self.dns,
            &delivery,
            shutdown_rx.clone(),
        );
        let reloader = Arc::new(Reloader::new(
            self.config_path.clone(),
            config.clone(),
            self.engine.clone(),
            self.max_memory,
            self.spool.clone(),
            self.dns.clone(),
            self.pipelines.clone(),
        ));
        METRICS
            .node_info
            .set(&[config.server.node_name.as_str()], 1);
        let admin_state = Arc::new(AdminState::new(
            self.spool.clone(),
            delivery.clone(),
            config.server.node_name.clone(),
        ));
        admin_state.set_reloader(reloader.clone());
        let admin = self.admin.spawn(admin_state.clone());
        let limits = Arc::new(
            ConnectionLimits::new(
                config.server.max_connections,
                config.server.max_connections_per_ip,
            )
            .with_ipv6_prefix(config.server.ipv6_prefix),
        );
        let ctx = Arc::new(SessionContext {
            config: config.clone(),
            pipelines: self.pipelines.clone(),
            spool: self.spool.clone(),
            delivery,
            shutdown: shutdown_rx.clone(),
            authenticator: self.authenticator.clone(),
            dkim: self.dkim.clone(),
            limits: limits.clone(),
            dns: self.dns.clone(),
            memory,
        });
        // Accept loops spawn sessions into this set themselves: handing each
        // one to this (main-thread) task instead would cost a cross-thread
        // wakeup per connection, and another per finished session.
        let sessions: Sessions = Arc::new(Mutex::new(JoinSet::new()));
        let mut accept_loops = JoinSet::new();
        for listener in self.listeners {
            tracing::info!(listener = %listener.config.name, address = ?listener.socket.local_addr().ok(), tls = ?listener.config.tls, "listening");
            accept_loops.spawn(accept_loop(
                listener,
                ctx.clone(),
                limits.clone(),
                sessions.clone(),
            ));
        }
        let on_sighup = tokio::spawn(reload_on_sighup(
            self.certificates.clone(),
            reloader.clone(),
        ));
        let watcher = (config.reload.watch && reloader.config_path().is_some()).then(|| {
            tokio::spawn(reload::watch_files(
                reloader.clone(),
                config.reload.debounce,
            ))
        });
        let sweeper = crate::state::spawn_sled_sweeper(self.spool.clone());
        let dkim_reloader = tokio::spawn(reload_dkim_keys_on_sighup(
            self.dkim.clone(),
            config.dkim.sign.clone(),
        ));
        admin_state.set_ready(true);

        stop.await;

        tracing::info!("shutting down: no new connections, finishing sessions");
        admin_state.set_ready(false);
        accept_loops.abort_all();
        while accept_loops.join_next().await.is_some() {}
        on_sighup.abort();
        if let Some(watcher) = watcher {
            watcher.abort();
        }
        sweeper.abort();
        dkim_reloader.abort();
        let _ = shutdown_tx.send(true);
        let grace = config.server.shutdown_grace;
        // No accept loop is left to spawn into the set.
        let mut sessions = std::mem::take(&mut *lock_sessions(&sessions));
        let drained = tokio::time::timeout(grace, async {
            while let Some(finished) = sessions.join_next().await {
                count_panic(finished);
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                remaining = sessions.len(),
                "sessions still open after the grace period; closing them"
            );
            sessions.abort_all();
        }
        if tokio::time::timeout(grace, delivery_task).await.is_err() {
            tracing::warn!("delivery did not stop within the grace period");
        }
        if let Some(reports) = dmarc_reports {
            // It stops at the shutdown signal; one in the middle of
            // queuing a report finishes it.
            let _ = tokio::time::timeout(grace, reports).await;
        }
        // Answers (503 for readiness) until here, then the socket goes.
        admin.stop().await;
        if let Err(e) = self.spool.flush().await {
            tracing::error!("final spool flush failed: {e}");
        }
        drop(reloader);
        drop(self.engine);
        tracing::info!("stopped");
    }
}

/// Logs and counts a session task that panicked: a bug, which cost that
/// one connection (the spool holds only what was acknowledged).
fn count_panic(finished: Result<(), tokio::task::JoinError>) {
    if let Err(e) = finished {
        if e.is_panic() {
            tracing::error!("session task panicked: {e}");
            METRICS.session_panics.inc(&[]);
        }
    }
}

/// The AUTH checker: users from the data dir, lockout counts in Redis when
/// `[state]` shares state through it (Redis is not contacted here).
fn authenticator(config: &Config, spool: &Spool) -> Result<Arc<Authenticator>, StateError> {
    let authenticator = Authenticator::new(
        Arc::new(UserStore::new(&config.server.data_dir)),
        config.auth.max_failures,
        config.auth.lockout,
    )
    .with_ipv6_prefix(config.server.ipv6_prefix);
    let state = StateBackend::open(&config.state, spool)?;
    Ok(Arc::new(match state.redis() {
        Some(redis) => authenticator.with_shared_lockout(redis),
        None => authenticator,
    }))
}

/// Creates the data directory (and its parents) mode 0750, so mail, the
/// spool and keys under it are out of other users' reach whatever the
/// umask; an existing one of ours that others may enter is closed to them.
fn private_data_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(dir)?;
    let meta = std::fs::metadata(dir)?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o007 != 0 {
        if meta.uid() == rustix::process::geteuid().as_raw() {
            tracing::warn!(path = %dir.display(), "data directory was mode {mode:04o}; removing others' access");
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & !0o007))?;
        } else {
            tracing::warn!(path = %dir.display(), "data directory (mode {mode:04o}, owned by uid {}) is open to other users", meta.uid());
        }
    }
    Ok(())
}

/// Pending connections the kernel may queue for accept (capped by
/// net.core.somaxconn). A burst of clients beyond the backlog has its SYNs
/// dropped and waits out TCP's retransmission backoff, seconds per client.
const LISTEN_BACKLOG: u32 = 4096;

/// A socket bound with SO_REUSEADDR (restarts do not wait for
/// TIME_WAIT), to listen on with `LISTEN_BACKLOG`.
fn bind(address: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpSocket> {
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    Ok(socket)
}

/// Every running session, for the shutdown's grace period and abort.
type Sessions = Arc<Mutex<JoinSet<()>>>;

/// The session set; a panic while it was held cannot leave it inconsistent
/// (spawn and reap are single calls), so a poisoned lock is taken as is.
fn lock_sessions(sessions: &Sessions) -> std::sync::MutexGuard<'_, JoinSet<()>> {
    sessions
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The self-signed certificate under `data_dir` (generated on first use),
/// loaded once and shared by every TLS listener without a configured one.
fn self_signed_certificate(
    loaded: &mut Option<Arc<ReloadableTls>>,
    config: &Config,
) -> Result<Arc<ReloadableTls>, TlsError> {
    if let Some(existing) = loaded {
        return Ok(existing.clone());
    }
    let files = crate::tls::self_signed(&config.server.data_dir, &config.server.hostname)?;
    let tls = Arc::new(ReloadableTls::load(files)?);
    *loaded = Some(tls.clone());
    Ok(tls)
}

/// On SIGHUP, re-reads every certificate and rebuilds the pipelines. New
/// handshakes use the new certificate, new sessions the new pipelines;
/// sessions already running are not touched; a certificate that does not
/// load, or pipelines that do not build, are reported and the previous ones
/// stay.
async fn reload_on_sighup(certificates: Vec<Arc<ReloadableTls>>, reloader: Arc<Reloader>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot listen for SIGHUP: {e}");
            return;
        }
    };
    while hangup.recv().await.is_some() {
        tracing::info!("SIGHUP received: reloading certificates and pipelines");
        for tls in &certificates {
            let certificate = tls.certificates().default.certificate.display().to_string();
            let reloaded = tokio::task::spawn_blocking({
                let tls = tls.clone();
                move || tls.reload()
            })
            .await;
            match reloaded {
                Ok(Ok(())) => tracing::info!(%certificate, "certificate reloaded"),
                Ok(Err(e)) => {
                    tracing::error!(%certificate, "certificate not reloaded, keeping the previous one: {e}")
                }
                Err(e) => tracing::error!(%certificate, "certificate reload failed: {e}"),
            }
        }
        // The outcome is logged and counted by reload().
        let _ = reloader.reload(Trigger::Signal).await;
    }
}

/// On SIGHUP, re-reads the `[[dkim.sign]]` key files, so a key can be
/// rotated under the same path (and selector) without a restart; when one
/// does not load, the previous keys all stay.
async fn reload_dkim_keys_on_sighup(signers: DkimSigners, entries: Vec<DkimKeyConfig>) {
    use tokio::signal::unix::{signal, SignalKind};
    if entries.is_empty() {
        return;
    }
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot listen for SIGHUP: {e}");
            return;
        }
    };
    while hangup.recv().await.is_some() {
        let reloaded = tokio::task::spawn_blocking({
            let signers = signers.clone();
            let entries = entries.clone();
            move || signers.reload(&entries)
        })
        .await;
        match reloaded {
            Ok(Ok(())) => tracing::info!(keys = entries.len(), "DKIM keys reloaded"),
            Ok(Err(e)) => tracing::error!("DKIM keys not reloaded, keeping the previous ones: {e}"),
            Err(e) => tracing::error!("DKIM key reload failed: {e}"),
        }
    }
}

async fn accept_loop(
    listener: Listener,
    ctx: Arc<SessionContext>,
    limits: Arc<ConnectionLimits>,
    sessions: Sessions,
) {
    static SESSION_COUNTER: AtomicU64 = AtomicU64::new(0);
    let Listener {
        config: listener,
        socket,
        tls,
    } = listener;
    loop {
        let (stream, peer) = match socket.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off, don't spin.
                tracing::warn!(listener = %listener.name, "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        if listener.proxy_protocol
            && !listener
                .proxy_trusted_networks
                .iter()
                .any(|net| net.contains(&peer.ip()))
        {
            // Anyone else could name any client: no header is read.
            tracing::warn!(client = %peer, listener = %listener.name, "connection refused: not a trusted PROXY protocol sender");
            METRICS.connections_refused.inc(&[&listener.name]);
            continue;
        }
        let n = SESSION_COUNTER.fetch_add(1, Ordering::Relaxed);
        let connection = Connection {
            stream,
            peer,
            session_id: format!("{:x}{:04x}", std::process::id(), n),
            listener: listener.clone(),
            tls: tls.clone(),
            ctx: ctx.clone(),
            limits: limits.clone(),
        };
        let mut running = lock_sessions(&sessions);
        // Reap finished sessions here, so the set stays as small as the
        // number of open connections without anyone awaiting it.
        while let Some(finished) = running.try_join_next() {
            count_panic(finished);
        }
        running.spawn(connection.serve());
    }
}

/// One accepted connection, from its PROXY header (where the listener
/// expects one) through the per-client limits to the end of its session.
struct Connection {
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    session_id: String,
    listener: Arc<ListenerConfig>,
    tls: Option<Arc<ReloadableTls>>,
    ctx: Arc<SessionContext>,
    limits: Arc<ConnectionLimits>,
}

impl Connection {
    async fn serve(mut self) {
        let listener = self.listener.clone();
        let mut peer = self.peer;
        if listener.proxy_protocol {
            // A preamble like a handshake, and bounded like one.
            let timeout = self.ctx.config.server.timeouts.tls_handshake;
            let header = tokio::time::timeout(timeout, proxy::read_header(&mut self.stream)).await;
            match header {
                Ok(Ok(ProxiedPeer::Client(client))) => peer = client,
                Ok(Ok(ProxiedPeer::Local)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(proxy = %peer, listener = %listener.name, "connection closed: {e}");
                    return;
                }
                Err(_) => {
                    tracing::warn!(proxy = %peer, listener = %listener.name, "connection closed: no PROXY header within {timeout:?}");
                    METRICS
                        .session_timeouts
                        .inc(&[&listener.name, "proxy_header"]);
                    return;
                }
            }
        }
        let Some(permit) = self.limits.admit(peer.ip()) else {
            tracing::warn!(client = %peer, listener = %listener.name, "connection refused: limit reached");
            METRICS.connections_refused.inc(&[&listener.name]);
            if listener.tls != TlsMode::Implicit {
                // A cleartext reply means nothing to a client expecting TLS.
                use tokio::io::AsyncWriteExt;
                let reply = Reply::too_many_connections().to_bytes();
                let write = self.stream.write_all(&reply);
                let _ = tokio::time::timeout(Duration::from_secs(5), write).await;
            }
            return;
        };
        let Some(session) = Session::new(
            self.stream,
            peer,
            self.session_id,
            listener.clone(),
            self.tls,
            self.ctx,
        ) else {
            tracing::error!(listener = %listener.name, "listener's pipeline is missing");
            return;
        };
        session.run().await;
        drop(permit);
    }
}

/// The delivery's view of the configuration, and what it needs to know
/// that is not configuration.
fn delivery_settings(
    config: &Config,
    own_addresses: &[std::net::SocketAddr],
    route_credentials: &BTreeMap<String, Arc<Credentials>>,
    dane: Option<Arc<delivery::Dane>>,
) -> DeliverySettings {
    DeliverySettings {
        hostname: config.server.hostname.clone(),
        domains: config.domains.clone(),
        delivery: config.delivery.clone(),
        queue: config.queue.clone(),
        maildir_root: config.server.data_dir.join("mail"),
        own_addresses: own_addresses.to_vec(),
        idle_timeout: Duration::from_secs(5),
        mta_sts_cache: config.server.data_dir.join("mta-sts"),
        route_credentials: route_credentials.clone(),
        dane,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn panics_counted() -> u64 {
        METRICS
            .render(&[])
            .lines()
            .find_map(|l| l.strip_prefix("sluice_session_panics_total "))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    #[tokio::test]
    async fn a_panicking_session_task_is_counted_and_a_cancelled_one_is_not() {
        let before = panics_counted();
        let mut sessions: JoinSet<()> = JoinSet::new();
        sessions.spawn(async { panic!("a bug in a session") });
        let finished = sessions.join_next().await.expect("one task");
        count_panic(finished);
        assert_eq!(panics_counted(), before + 1);
        sessions.spawn(std::future::pending());
        sessions.abort_all();
        let finished = sessions.join_next().await.expect("one task");
        count_panic(finished);
        count_panic(Ok(()));
        assert_eq!(panics_counted(), before + 1);
    }
}
