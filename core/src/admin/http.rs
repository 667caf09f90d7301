//! The admin endpoint's listeners and HTTP/1.1 framing (hyper): the unix
//! socket `<data_dir>/admin.sock` that every server has, and the optional
//! loopback TCP address from `[admin] address`. Each request is routed by
//! `api.rs`, let through or refused by `guard.rs` when it came over TCP,
//! and answered by `api.rs`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::api::{metrics_text, respond, route, AdminState, ApiResponse, Method, Route};
use super::guard::{Refusal, TcpPolicy};
use super::token::AdminToken;
use crate::config::AdminConfig;
use crate::metrics::METRICS;

/// Admin connections served at once; more are closed at accept.
const MAX_CONNECTIONS: usize = 32;
/// A request head must arrive within this time; it also closes idle
/// keep-alive connections.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request head accepted (hyper answers 431 beyond it).
const MAX_HEAD: usize = 16 * 1024;

/// Longest unix socket path Linux accepts (`sun_path` minus its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// The admin socket's file name inside the data directory.
pub const SOCKET_NAME: &str = "admin.sock";

/// The admin socket of a server whose data directory is `data_dir`.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_NAME)
}

/// The I/O errors are part of the message (named `error`, not `source`, so
/// that anyhow does not print them twice).
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin endpoint: cannot create the socket {}: {error}", path.display())]
    Socket {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("admin endpoint: cannot listen on {address}: {error}")]
    Bind {
        address: SocketAddr,
        error: std::io::Error,
    },
}

/// Removes the socket file when the endpoint goes away, so a CLI finds no
/// socket rather than a dead one.
#[derive(Debug)]
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.0) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %self.0.display(), "cannot remove the admin socket: {e}");
            }
        }
    }
}

/// The admin endpoint's bound listeners, not yet serving.
pub struct AdminListeners {
    unix: UnixListener,
    socket: SocketFile,
    /// The TCP listener and what it lets through.
    tcp: Option<(TcpListener, Arc<TcpPolicy>)>,
}

/// Which listener a connection came in on, which decides what it may do.
#[derive(Clone)]
pub enum Transport {
    /// The unix socket: only this user (or root) gets here; the whole API.
    Socket,
    /// TCP: metrics and health, the rest with the token (`guard`).
    Tcp {
        policy: Arc<TcpPolicy>,
        peer: SocketAddr,
    },
}

impl AdminListeners {
    /// Creates `<data_dir>/admin.sock` (mode 0600, replacing a stale socket
    /// left by a crashed server: the caller holds the spool's lock, so no
    /// live server owns it) and binds `config.address` if set; `token` (read
    /// from `config.token_file` by `assets`) unlocks the whole API there.
    pub async fn bind(
        data_dir: &Path,
        config: &AdminConfig,
        token: Option<AdminToken>,
    ) -> Result<Self, AdminError> {
        let path = socket_path(data_dir);
        let socket_error = |error| AdminError::Socket {
            path: path.clone(),
            error,
        };
        // Bound under a temporary name, restricted, then renamed into place:
        // the socket never exists under its public name with wider access,
        // and the rename replaces a stale socket atomically.
        let temporary = data_dir.join(format!(".{SOCKET_NAME}.{}", std::process::id()));
        // sockaddr_un holds 108 bytes with the terminating NUL; say so
        // rather than let bind fail with a cryptic message.
        if temporary.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(socket_error(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "the path is too long for a unix socket (at most {MAX_SOCKET_PATH} \
                     bytes); choose a shorter data_dir"
                ),
            )));
        }
        match std::fs::remove_file(&temporary) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(socket_error(e)),
            _ => {}
        }
        let unix = UnixListener::bind(&temporary).map_err(socket_error)?;
        let placed = std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o600))
            .and_then(|()| std::fs::rename(&temporary, &path));
        if let Err(e) = placed {
            let _ = std::fs::remove_file(&temporary);
            return Err(socket_error(e));
        }
        let socket = SocketFile(path);
        let tcp = match config.address {
            Some(address) => Some((
                TcpListener::bind(address)
                    .await
                    .map_err(|error| AdminError::Bind { address, error })?,
                Arc::new(TcpPolicy::new(token, config.allow_remote)),
            )),
            None => None,
        };
        Ok(AdminListeners { unix, socket, tcp })
    }

    pub fn socket_path(&self) -> &Path {
        &self.socket.0
    }

    /// The TCP address actually bound, if any (useful with port 0).
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// Starts serving the API on every listener.
    pub fn spawn(self, state: Arc<AdminState>) -> AdminServer {
        tracing::info!(socket = %self.socket.0.display(), address = ?self.tcp_addr(), "admin endpoint listening");
        let task = tokio::spawn(accept_loop(self.unix, self.tcp, state));
        AdminServer {
            task,
            _socket: self.socket,
        }
    }
}

/// The running admin endpoint.
pub struct AdminServer {
    task: tokio::task::JoinHandle<()>,
    /// Dropped (socket file removed) after the task has stopped.
    _socket: SocketFile,
}

impl AdminServer {
    /// Closes the listeners and every admin connection, and removes the
    /// socket file.
    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

async fn accept_loop(
    unix: UnixListener,
    tcp: Option<(TcpListener, Arc<TcpPolicy>)>,
    state: Arc<AdminState>,
) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    // Dropping the set (when this task is aborted) ends every connection.
    let mut connections = JoinSet::new();
    let own_uid = rustix::process::geteuid().as_raw();
    loop {
        tokio::select! {
            accepted = unix.accept() => match accepted {
                Ok((stream, _)) => {
                    // The socket's mode already keeps others out; checking
                    // the peer also covers a data_dir with loose modes.
                    match stream.peer_cred() {
                        Ok(cred) if cred.uid() == own_uid || cred.uid() == 0 => {}
                        Ok(cred) => {
                            tracing::warn!(uid = cred.uid(), "admin connection from another user refused");
                            continue;
                        }
                        Err(e) => {
                            tracing::warn!("admin connection without peer credentials refused: {e}");
                            continue;
                        }
                    }
                    admit(&mut connections, &limit, stream, Transport::Socket, &state);
                }
                Err(e) => accept_failed(e).await,
            },
            accepted = accept_tcp(tcp.as_ref()) => match accepted {
                Ok((stream, transport)) => admit(&mut connections, &limit, stream, transport, &state),
                Err(e) => accept_failed(e).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn accept_tcp(
    listener: Option<&(TcpListener, Arc<TcpPolicy>)>,
) -> std::io::Result<(tokio::net::TcpStream, Transport)> {
    match listener {
        Some((listener, policy)) => listener.accept().await.map(|(stream, peer)| {
            let policy = policy.clone();
            (stream, Transport::Tcp { policy, peer })
        }),
        None => std::future::pending().await,
    }
}

async fn accept_failed(e: std::io::Error) {
    // Out of file descriptors and the like: back off, don't spin.
    tracing::warn!("admin endpoint: accept failed: {e}");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

fn admit<I>(
    connections: &mut JoinSet<()>,
    limit: &Arc<Semaphore>,
    io: I,
    transport: Transport,
    state: &Arc<AdminState>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Ok(permit) = limit.clone().try_acquire_owned() else {
        tracing::warn!("admin connection refused: {MAX_CONNECTIONS} already open");
        return;
    };
    let state = state.clone();
    connections.spawn(async move {
        serve_connection(io, transport, state).await;
        drop(permit);
    });
}

/// Serves HTTP/1.1 requests on one connection until the client closes it,
/// goes idle past `HEADER_TIMEOUT`, or sends something unparsable (hyper
/// answers 400/431 then).
pub async fn serve_connection<I>(io: I, transport: Transport, state: Arc<AdminState>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request: Request<hyper::body::Incoming>| {
        let state = state.clone();
        let transport = transport.clone();
        async move { Ok::<_, Infallible>(handle(&state, &transport, &request).await) }
    });
    let result = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .serve_connection(TokioIo::new(io), service)
        .await;
    if let Err(e) = result {
        tracing::debug!("admin connection ended: {e}");
    }
}

/// Answers one request. Request bodies are not read: no endpoint takes one.
async fn handle<B>(
    state: &AdminState,
    transport: &Transport,
    request: &Request<B>,
) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    let method = Method::parse(request.method().as_str());
    let routed = route(method, path);
    if let Transport::Tcp { policy, peer } = transport {
        if let Err(refusal) = policy.check(request, &routed) {
            METRICS.admin_refused.inc(&[refusal.reason()]);
            tracing::warn!(
                client = %peer,
                method = %request.method(),
                path,
                reason = refusal.reason(),
                "admin request refused"
            );
            return refused(refusal);
        }
    }
    let answer = match routed {
        Ok(Route::Metrics) => {
            let mut response = Response::new(Full::new(Bytes::from(metrics_text(state).await)));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            return response;
        }
        Ok(route) => respond(state, route).await,
        Err(e) => ApiResponse::for_route_error(&e, path),
    };
    tracing::debug!(method = %request.method(), path, status = answer.status, "admin request");
    to_http(answer)
}

fn refused(refusal: Refusal) -> Response<Full<Bytes>> {
    let mut response = to_http(ApiResponse::error(refusal.status(), refusal.message()));
    if refusal.status() == 401 {
        response.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"sluice admin\""),
        );
    }
    response
}

fn to_http(answer: ApiResponse) -> Response<Full<Bytes>> {
    let mut body = answer.body.to_string().into_bytes();
    body.push(b'\n');
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = hyper::StatusCode::from_u16(answer.status)
        .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(allow) = answer.allow {
        headers.insert(ALLOW, HeaderValue::from_static(allow));
    }
    response
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;
    use crate::delivery::{self, DeliverySettings};
    use sluice_spool::Spool;

    /// A spool in `dir` and a running scheduler that cannot deliver
    /// anywhere (no local domains, no routes, no DNS), so messages stay
    /// deferred.
    pub(crate) fn test_state(dir: &Path) -> (Arc<AdminState>, tokio::sync::watch::Sender<bool>) {
        let spool = Spool::open(&dir.join("spool")).unwrap();
        let base = delivery::tests::settings(&[]);
        let settings = DeliverySettings {
            domains: crate::config::DomainsConfig::default(),
            maildir_root: dir.join("mail"),
            queue: crate::config::QueueConfig {
                retry: vec![Duration::from_secs(3600)],
                max_age: Duration::from_secs(86400),
                ..base.queue.clone()
            },
            ..base
        };
        // A name server that is not there: every MX lookup fails temporarily.
        let dns = crate::dns::Dns::new(&crate::config::DnsConfig {
            nameservers: vec!["127.0.0.1:1".parse().unwrap()],
            timeout: Duration::from_millis(100),
            attempts: 1,
            dnssec: Default::default(),
        })
        .unwrap();
        let tls = delivery::OutboundTlsConfig::new(None).unwrap();
        let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
        let (handle, _task) = delivery::spawn(settings, spool.clone(), dns, tls, shutdown_rx);
        let state = Arc::new(AdminState::new(spool, handle, "mx1".into()));
        (state, shutdown_tx)
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::test_state;
    use super::*;
    use sluice_spool::NewMessage;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Sends raw bytes on a fresh in-memory connection, returns all it got.
    async fn exchange(state: &Arc<AdminState>, request: &[u8]) -> String {
        exchange_on(state, Transport::Socket, request).await
    }

    /// The same over a connection that came in on `transport`.
    async fn exchange_on(state: &Arc<AdminState>, transport: Transport, request: &[u8]) -> String {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let serving = tokio::spawn(serve_connection(server, transport, state.clone()));
        client.write_all(request).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut out))
            .await
            .unwrap()
            .unwrap();
        serving.await.unwrap();
        String::from_utf8(out).unwrap()
    }

    fn get(path: &str) -> Vec<u8> {
        format!("GET {path} HTTP/1.1\r\nHost: sluice\r\nConnection: close\r\n\r\n").into_bytes()
    }

    fn request(method: &str, path: &str) -> Vec<u8> {
        format!("{method} {path} HTTP/1.1\r\nHost: sluice\r\nConnection: close\r\n\r\n")
            .into_bytes()
    }

    fn body(response: &str) -> serde_json::Value {
        let (_, body) = response.split_once("\r\n\r\n").unwrap();
        serde_json::from_str(body).unwrap()
    }

    #[tokio::test]
    async fn health_and_error_shapes() {
        let dir = tempfile::tempdir().unwrap();
        let (state, _stop) = test_state(dir.path());

        let r = exchange(&state, &get("/health/live")).await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("content-type: application/json\r\n"), "{r}");
        assert_eq!(body(&r)["status"], "live");

        let r = exchange(&state, &get("/health/ready")).await;
        assert!(r.starts_with("HTTP/1.1 503 "), "{r}");
        state.set_ready(true);
        let r = exchange(&state, &get("/health/ready")).await;
        assert!(r.starts_with("HTTP/1.1 200 "), "{r}");

        let r = exchange(&state, &get("/queue/0000000000000001")).await;
        assert!(r.starts_with("HTTP/1.1 404 "), "{r}");
        assert_eq!(body(&r)["error"], "no queue entry 0000000000000001");

        let r = exchange(&state, &request("PUT", "/queue")).await;
        assert!(r.starts_with("HTTP/1.1 405 "), "{r}");
        assert!(r.contains("allow: GET\r\n"), "{r}");
        assert!(body(&r)["error"].as_str().unwrap().contains("GET"));
    }

    #[tokio::test]
    async fn malformed_and_oversized_requests() {
        let dir = tempfile::tempdir().unwrap();
        let (state, _stop) = test_state(dir.path());
        let r = exchange(&state, b"HELLO\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 400 "), "{r}");

        let mut big = b"GET /queue HTTP/1.1\r\nHost: sluice\r\nX-Pad: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_HEAD * 2));
        big.extend_from_slice(b"\r\n\r\n");
        let r = exchange(&state, &big).await;
        assert!(r.starts_with("HTTP/1.1 431 "), "{r}");
    }

    #[tokio::test]
    async fn overlong_socket_path_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("d".repeat(120));
        std::fs::create_dir_all(&deep).unwrap();
        let config = AdminConfig::default();
        let err = AdminListeners::bind(&deep, &config, None)
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("too long for a unix socket"), "{err}");
    }

    #[tokio::test]
    async fn tcp_connections_are_guarded_and_refusals_counted() {
        let dir = tempfile::tempdir().unwrap();
        let (state, _stop) = test_state(dir.path());
        let token = AdminToken::new(b"0123456789abcdef-secret").unwrap();
        let tcp = Transport::Tcp {
            policy: Arc::new(TcpPolicy::new(Some(token), false)),
            peer: "127.0.0.1:40000".parse().unwrap(),
        };
        let refused = |reason: &str| {
            let series = format!("sluice_admin_requests_refused_total{{reason=\"{reason}\"}} ");
            METRICS
                .render(&[])
                .lines()
                .find_map(|l| l.strip_prefix(series.as_str()).map(str::to_owned))
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let before = refused("missing_token");
        let no_token =
            b"POST /queue/flush HTTP/1.1\r\nHost: [::1]:8025\r\nConnection: close\r\n\r\n";
        let r = exchange_on(&state, tcp.clone(), no_token).await;
        assert!(r.starts_with("HTTP/1.1 401 "), "{r}");
        assert!(r.contains("www-authenticate: Bearer"), "{r}");
        assert_eq!(refused("missing_token"), before + 1);
        // The same request on the socket is served.
        let r = exchange(&state, &request("POST", "/queue/flush")).await;
        assert!(r.starts_with("HTTP/1.1 200 "), "{r}");

        let with_token = b"POST /queue/flush HTTP/1.1\r\nHost: 127.0.0.1:8025\r\n\
            Authorization: Bearer 0123456789abcdef-secret\r\nConnection: close\r\n\r\n";
        let r = exchange_on(&state, tcp.clone(), with_token).await;
        assert!(r.starts_with("HTTP/1.1 200 "), "{r}");
        // `Host: sluice` is what the CLI sends on the socket; over TCP it is
        // not a loopback name.
        let r = exchange_on(&state, tcp.clone(), &get("/metrics")).await;
        assert!(r.starts_with("HTTP/1.1 403 "), "{r}");
        let r = exchange_on(
            &state,
            tcp,
            b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 200 "), "{r}");
    }

    #[tokio::test]
    async fn keep_alive_serves_several_requests() {
        let dir = tempfile::tempdir().unwrap();
        let (state, _stop) = test_state(dir.path());
        let mut two = b"GET /health/live HTTP/1.1\r\nHost: sluice\r\n\r\n".to_vec();
        two.extend(get("/queue"));
        let r = exchange(&state, &two).await;
        assert_eq!(r.matches("HTTP/1.1 200 OK").count(), 2, "{r}");
        assert!(r.contains("\"count\":0"), "{r}");
    }

    #[tokio::test]
    async fn queue_operations() {
        let dir = tempfile::tempdir().unwrap();
        let (state, _stop) = test_state(dir.path());
        let id = state
            .spool
            .enqueue(NewMessage {
                reverse_path: "a@example.org".into(),
                recipients: vec!["b@nowhere.test".into()],
                message: b"Subject: hello\r\n\r\nbody\r\n".to_vec(),
                // Recent: older than max_age, a deferral would be final.
                received_at: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs(),
                client: "127.0.0.1:1".into(),
                quarantine: None,
                dsn: Default::default(),
                recipient_dsn: Vec::new(),
            })
            .await
            .unwrap();
        let path = format!("/queue/{id}");

        // Attempted at once: the MX lookup fails, so deferred for an hour.
        state.delivery.retry_now(id);
        let mut deferred = false;
        for _ in 0..200 {
            let r = exchange(&state, &get(&path)).await;
            if body(&r)["entry"]["state"] == "deferred" {
                deferred = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(deferred, "message was not deferred");
        let shown = body(&exchange(&state, &get(&path)).await);
        assert_eq!(shown["headers"][0]["name"], "Subject");
        let history = &shown["entry"]["recipients"][0]["history"];
        let reply = history[0]["reply"].as_str().unwrap();
        assert!(reply.starts_with("451 4.4.3"), "{reply}");

        let r = exchange(&state, &request("POST", &format!("{path}/hold"))).await;
        assert!(r.starts_with("HTTP/1.1 200 "), "{r}");
        let listed = body(&exchange(&state, &get("/queue")).await);
        assert_eq!(listed["count"], 1);
        assert_eq!(listed["entries"][0]["state"], "held");

        let r = exchange(&state, &request("POST", &format!("{path}/flush"))).await;
        assert!(r.starts_with("HTTP/1.1 409 "), "{r}");
        assert!(body(&r)["error"].as_str().unwrap().contains("held"));
        let r = exchange(&state, &request("POST", "/queue/flush")).await;
        assert_eq!(body(&r)["skipped_held"], 1);

        let r = exchange(&state, &request("POST", &format!("{path}/release"))).await;
        assert!(r.starts_with("HTTP/1.1 200 "), "{r}");
        assert!(!state.spool.entry(id).unwrap().unwrap().held);
        let r = exchange(&state, &request("POST", &format!("{path}/flush"))).await;
        assert!(r.starts_with("HTTP/1.1 200 "), "{r}");

        let r = exchange(&state, &request("DELETE", &path)).await;
        assert!(r.starts_with("HTTP/1.1 200 "), "{r}");
        assert_eq!(state.spool.entry(id).unwrap(), None);
        for method in ["DELETE", "GET"] {
            let r = exchange(&state, &request(method, &path)).await;
            assert!(r.starts_with("HTTP/1.1 404 "), "{r}");
        }
        for action in ["hold", "release", "flush"] {
            let r = exchange(&state, &request("POST", &format!("{path}/{action}"))).await;
            assert!(r.starts_with("HTTP/1.1 404 "), "{action}: {r}");
        }
    }
}
