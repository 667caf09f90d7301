//! The client connection under a session: plain TCP, or TLS after
//! STARTTLS or an implicit-TLS accept. The session reads and writes through
//! this one type whatever the state, and upgrades it in place.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::pipeline::TlsInfo;

pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// After a failed upgrade: the connection is gone.
    Closed,
}

impl Stream {
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// Runs the server side of a TLS handshake on the plain connection,
    /// bounded by `timeout`. On failure the stream is closed: a half-done
    /// handshake cannot fall back to plaintext.
    pub async fn upgrade(
        &mut self,
        acceptor: TlsAcceptor,
        timeout: Duration,
    ) -> io::Result<TlsInfo> {
        let Stream::Plain(tcp) = std::mem::replace(self, Stream::Closed) else {
            return Err(io::Error::other(
                "TLS upgrade of a stream that is not plain TCP",
            ));
        };
        let tls = tokio::time::timeout(timeout, acceptor.accept(tcp))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        let info = crate::tls::negotiated(tls.get_ref().1);
        *self = Stream::Tls(Box::new(tls));
        Ok(info)
    }
}

/// What a client did before the greeting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pregreet {
    /// Nothing: a well-behaved client waits for the greeting.
    Silent,
    /// It sent bytes (which are left unread).
    Talked,
    /// It closed the connection.
    Closed,
}

impl Stream {
    /// Waits up to `wait` for the client to send something before the
    /// greeting (postscreen's pregreet test), without consuming it. Only
    /// plain TCP is checked: under implicit TLS the client speaks first.
    pub async fn pregreet(&self, wait: Duration) -> io::Result<Pregreet> {
        let Stream::Plain(tcp) = self else {
            return Ok(Pregreet::Silent);
        };
        let mut byte = [0u8; 1];
        match tokio::time::timeout(wait, tcp.peek(&mut byte)).await {
            Err(_elapsed) => Ok(Pregreet::Silent),
            Ok(Ok(0)) => Ok(Pregreet::Closed),
            Ok(Ok(_)) => Ok(Pregreet::Talked),
            Ok(Err(e)) => Err(e),
        }
    }
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "connection closed")
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Closed => Poll::Ready(Err(closed())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Closed => Poll::Ready(Err(closed())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Closed => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Closed => Poll::Ready(Ok(())),
        }
    }
}
