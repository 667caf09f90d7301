//! Fetching a policy (RFC 8461 §3.3): `GET /.well-known/mta-sts.txt` from
//! `mta-sts.<domain>` over HTTPS, the certificate verified for that name
//! against the delivery's CA bundle. Only a 200 with a `text/plain` body
//! counts; a redirect is refused (§3.3: "MUST NOT follow"), the body is
//! cut off beyond 64 KiB, and the whole exchange is bounded in time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use tokio::net::TcpStream;

use crate::delivery::transport::server_name;
use crate::dns::Dns;

/// The largest policy accepted (§3.3 suggests senders bound it; 64 KiB is
/// far beyond any real policy).
const MAX_POLICY: usize = 64 * 1024;
const POLICY_PATH: &str = "/.well-known/mta-sts.txt";

/// Why no policy came from `host` (`mta-sts.<domain>`).
#[derive(Debug, thiserror::Error)]
#[error("policy host {host}: {failure}")]
pub struct FetchError {
    pub host: String,
    pub failure: FetchFailure,
}

#[derive(Debug, thiserror::Error)]
pub enum FetchFailure {
    #[error("no CA bundle to verify its certificate with")]
    NoCaBundle,
    #[error("cannot resolve it: {0}")]
    Resolve(String),
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("TLS failed: {0}")]
    Tls(String),
    #[error("HTTP failed: {0}")]
    Http(String),
    #[error("answered {0} (only 200 is a policy; redirects are not followed)")]
    Status(u16),
    #[error("served {0:?}, not text/plain")]
    ContentType(String),
    #[error("served more than 64 KiB")]
    TooLarge,
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// The policy body of `domain`, within `timeout`.
pub async fn fetch(
    dns: &Dns,
    tls: Option<&Arc<ClientConfig>>,
    port: u16,
    domain: &str,
    timeout: Duration,
) -> Result<Vec<u8>, FetchError> {
    let host = format!("mta-sts.{domain}");
    let fetched = match tls {
        None => Err(FetchFailure::NoCaBundle),
        Some(tls) => tokio::time::timeout(timeout, get(dns, tls, port, &host))
            .await
            .unwrap_or(Err(FetchFailure::Timeout(timeout))),
    };
    fetched.map_err(|failure| FetchError { host, failure })
}

async fn get(
    dns: &Dns,
    tls: &Arc<ClientConfig>,
    port: u16,
    host: &str,
) -> Result<Vec<u8>, FetchFailure> {
    let ips = dns
        .ips(host)
        .await
        .map_err(|e| FetchFailure::Resolve(e.to_string()))?;
    let mut last = String::from("no address");
    let mut tcp = None;
    for ip in ips {
        match TcpStream::connect(SocketAddr::new(ip, port)).await {
            Ok(stream) => {
                tcp = Some(stream);
                break;
            }
            Err(e) => last = format!("{ip}: {e}"),
        }
    }
    let tcp = tcp.ok_or(FetchFailure::Connect(last))?;
    let name =
        server_name(host).ok_or_else(|| FetchFailure::Tls("not a server name".to_owned()))?;
    let stream = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| FetchFailure::Tls(e.to_string()))?;
    let http = |e: hyper::Error| FetchFailure::Http(e.to_string());
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http)?;
    // Driven beside the request; aborted when this fetch ends, however.
    let driver = AbortOnDrop(tokio::spawn(connection));
    let request = hyper::Request::get(POLICY_PATH)
        .header(hyper::header::HOST, host)
        .header(hyper::header::USER_AGENT, "sluice")
        .body(Empty::<Bytes>::new())
        .map_err(|e| FetchFailure::Http(e.to_string()))?;
    let response = sender.send_request(request).await.map_err(http)?;
    let status = response.status().as_u16();
    if status != 200 {
        return Err(FetchFailure::Status(status));
    }
    let content_type = response
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let media_type = content_type.split(';').next().unwrap_or("").trim();
    if !media_type.eq_ignore_ascii_case("text/plain") {
        return Err(FetchFailure::ContentType(content_type));
    }
    let mut body = response.into_body();
    let mut policy = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(http)?;
        if let Some(data) = frame.data_ref() {
            if policy.len() + data.len() > MAX_POLICY {
                return Err(FetchFailure::TooLarge);
            }
            policy.extend_from_slice(data);
        }
    }
    drop(driver);
    Ok(policy)
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
