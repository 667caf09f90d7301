//! The `sluice queue` commands' side of the admin endpoint: one blocking
//! HTTP/1.1 request per connection over the server's unix socket, and a
//! strict little parser for the answer (status line, headers, a body framed
//! by Content-Length, chunks, or the end of the connection).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long the CLI waits for the server; a flush waits for one disk commit.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Largest answer accepted (a long queue listing is a few MiB).
const MAX_RESPONSE: u64 = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    // The I/O errors are named `error`, not `source`: they are part of the
    // message, and anyhow would print a `source` a second time.
    /// Nothing listens on the socket: the usual "server not running".
    #[error("no sluice server is running: cannot connect to the admin endpoint at {}: {error}", path.display())]
    NotRunning {
        path: PathBuf,
        error: std::io::Error,
    },
    /// The socket exists but could not be used (permissions, for example).
    #[error("cannot connect to the admin endpoint at {}: {error}", path.display())]
    Connect {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("talking to the admin endpoint at {}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("the admin endpoint sent a malformed answer: {0}")]
    Malformed(String),
}

impl ClientError {
    /// Whether the server could not be reached at all (exit status 2).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            ClientError::NotRunning { .. } | ClientError::Connect { .. }
        )
    }
}

/// An answer from the admin API.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiReply {
    pub status: u16,
    pub body: serde_json::Value,
}

impl ApiReply {
    /// The `error` text of a failed request, or the whole body.
    pub fn error_text(&self) -> String {
        match self.body.get("error").and_then(|e| e.as_str()) {
            Some(text) => text.to_owned(),
            None => format!("HTTP {}: {}", self.status, self.body),
        }
    }
}

pub struct AdminClient {
    socket: PathBuf,
    timeout: Duration,
}

impl AdminClient {
    pub fn new(socket: &Path) -> Self {
        AdminClient {
            socket: socket.to_owned(),
            timeout: TIMEOUT,
        }
    }

    /// How long to wait for the answer (a reload compiles components).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends `METHOD path` and returns the decoded answer, whatever its status.
    pub fn request(&self, method: &str, path: &str) -> Result<ApiReply, ClientError> {
        let mut stream = UnixStream::connect(&self.socket).map_err(|error| {
            let path = self.socket.clone();
            match error.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                    ClientError::NotRunning { path, error }
                }
                _ => ClientError::Connect { path, error },
            }
        })?;
        let io = |error| ClientError::Io {
            path: self.socket.clone(),
            error,
        };
        stream.set_read_timeout(Some(self.timeout)).map_err(io)?;
        stream.set_write_timeout(Some(self.timeout)).map_err(io)?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: sluice\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).map_err(io)?;
        let mut raw = Vec::new();
        (&mut stream)
            .take(MAX_RESPONSE)
            .read_to_end(&mut raw)
            .map_err(io)?;
        parse_response(&raw)
    }
}

/// Parses a complete HTTP/1.1 response whose body is JSON.
pub fn parse_response(raw: &[u8]) -> Result<ApiReply, ClientError> {
    let malformed = |what: &str| ClientError::Malformed(what.to_owned());
    let head_end = find(raw, b"\r\n\r\n").ok_or_else(|| malformed("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..head_end]).map_err(|_| malformed("head not UTF-8"))?;
    let rest = &raw[head_end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(malformed(&format!("status line {status_line:?}")));
    }
    let status: u16 = parts
        .next()
        .and_then(|code| code.parse().ok())
        .filter(|code| (100..600).contains(code))
        .ok_or_else(|| malformed(&format!("status line {status_line:?}")))?;
    let mut length: Option<usize> = None;
    let mut chunked = false;
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| malformed(&format!("header line {line:?}")))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse()
                    .map_err(|_| malformed(&format!("Content-Length {value:?}")))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        }
    }
    let body = if chunked {
        decode_chunked(rest)?
    } else if let Some(length) = length {
        rest.get(..length)
            .ok_or_else(|| malformed("body shorter than its Content-Length"))?
            .to_vec()
    } else {
        rest.to_vec()
    };
    let body = serde_json::from_slice(&body)
        .map_err(|e| ClientError::Malformed(format!("body is not JSON: {e}")))?;
    Ok(ApiReply { status, body })
}

fn decode_chunked(mut data: &[u8]) -> Result<Vec<u8>, ClientError> {
    let malformed = |what: &str| ClientError::Malformed(format!("chunked body: {what}"));
    let mut out = Vec::new();
    loop {
        let line_end = find(data, b"\r\n").ok_or_else(|| malformed("no chunk size"))?;
        let size_text = std::str::from_utf8(&data[..line_end]).map_err(|_| malformed("size"))?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size =
            usize::from_str_radix(size_text, 16).map_err(|_| malformed("chunk size not hex"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = data
            .get(..size)
            .ok_or_else(|| malformed("chunk cut short"))?;
        out.extend_from_slice(chunk);
        data = data
            .get(size..)
            .and_then(|d| d.strip_prefix(b"\r\n"))
            .ok_or_else(|| malformed("no CRLF after chunk"))?;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_length_bodies() {
        let raw = b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 16\r\n\r\n{\"error\":\"nope\"}trailing";
        let reply = parse_response(raw).unwrap();
        assert_eq!(reply.status, 404);
        assert_eq!(reply.error_text(), "nope");
    }

    #[test]
    fn parses_chunked_and_unframed_bodies() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3;x=y\r\n:1}\r\n0\r\n\r\n";
        let reply = parse_response(raw).unwrap();
        assert_eq!(reply.body["a"], 1);
        let raw = b"HTTP/1.0 200 OK\r\n\r\n[1,2]";
        assert_eq!(parse_response(raw).unwrap().body[1], 2);
        let reply = ApiReply {
            status: 500,
            body: serde_json::json!({"x": 1}),
        };
        assert_eq!(reply.error_text(), "HTTP 500: {\"x\":1}");
    }

    #[test]
    fn rejects_malformed_answers() {
        for raw in [
            &b"HTTP/1.1 200 OK\r\n"[..],
            b"SMTP/1.1 200 OK\r\n\r\n{}",
            b"HTTP/1.1 abc OK\r\n\r\n{}",
            b"HTTP/1.1 200 OK\r\nbroken header\r\n\r\n{}",
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}",
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n{}",
            b"HTTP/1.1 200 OK\r\n\r\nnot json",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nz\r\n{}\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\n{}\r\n",
        ] {
            let err = parse_response(raw).unwrap_err();
            assert!(
                matches!(err, ClientError::Malformed(_)),
                "{:?}: {err}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn missing_socket_means_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        let err = AdminClient::new(&path)
            .request("GET", "/queue")
            .unwrap_err();
        assert!(err.is_unreachable());
        let text = err.to_string();
        assert!(
            text.starts_with(
                "no sluice server is running: cannot connect to the admin endpoint at "
            ) && text.contains("admin.sock"),
            "{text}"
        );
        // A socket file nobody listens on (a crashed server's) is the same.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let err = AdminClient::new(&path)
            .request("GET", "/queue")
            .unwrap_err();
        assert!(matches!(err, ClientError::NotRunning { .. }), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn talks_to_a_real_endpoint_over_the_socket() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (state, _stop) = super::super::http::tests_support::test_state(dir.path());
        // A stale socket from a crashed server is replaced.
        let path = dir.path().join("admin.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let listeners = super::super::AdminListeners::bind(
            dir.path(),
            &crate::config::AdminConfig::default(),
            None,
        )
        .await
        .unwrap();
        assert_eq!(listeners.socket_path(), path);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let server = listeners.spawn(state);

        let client = AdminClient::new(&path);
        let reply = tokio::task::spawn_blocking(move || {
            (
                client.request("GET", "/queue").unwrap(),
                client
                    .request("POST", "/queue/0000000000000001/hold")
                    .unwrap(),
            )
        })
        .await
        .unwrap();
        assert_eq!(reply.0.status, 200);
        assert_eq!(reply.0.body["count"], 0);
        assert_eq!(reply.1.status, 404);
        assert_eq!(reply.1.error_text(), "no queue entry 0000000000000001");

        server.stop().await;
        assert!(!path.exists(), "socket file left behind");
    }
}
