//! The byte stream under a session: the client's connection as it was
//! accepted (TCP from the server, an in-memory pipe in tests and `sluice
//! pipeline test`), or that same connection wrapped in TLS after STARTTLS
//! or an implicit-TLS accept. The session reads and writes through this one
//! type whatever the state, and upgrades it in place.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::tls::TlsInfo;

/// What a session can run over: any async byte stream that can move to
/// another task. `TcpStream` in the server, `tokio::io::DuplexStream` in
/// tests and the offline replay.
pub trait SessionStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> SessionStream for S {}

pub enum Stream<S> {
    Plain(S),
    Tls(Box<TlsStream<S>>),
    /// After a failed upgrade: the connection is gone.
    Closed,
}

impl<S: SessionStream> Stream<S> {
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
        let Stream::Plain(plain) = std::mem::replace(self, Stream::Closed) else {
            return Err(io::Error::other(
                "TLS upgrade of a stream that is not plain",
            ));
        };
        let tls = tokio::time::timeout(timeout, acceptor.accept(plain))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        let info = crate::tls::negotiated(tls.get_ref().1);
        *self = Stream::Tls(Box::new(tls));
        Ok(info)
    }
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "connection closed")
}

impl<S: SessionStream> AsyncRead for Stream<S> {
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

impl<S: SessionStream> AsyncWrite for Stream<S> {
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
