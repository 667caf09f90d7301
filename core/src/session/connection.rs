//! The session's side of the wire: the stream, the command-line buffer, the
//! replies waiting to be written, and the reads that fill the one and the
//! flushes that empty the other. Nothing here knows SMTP beyond "lines"
//! and "the DATA receiver decides where the message ends"; the verbs in
//! the sibling files decide what to read and what to answer.
//!
//! Replies to pipelined commands (RFC 2920) are queued and written in one
//! go when the client has no more complete commands waiting.
//!
//! Reads and writes take the instant at which they give up: how long to
//! wait on the client is the session's decision (`wait`), and a write that
//! cannot finish in time leaves its rest queued for the session to judge.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use super::stream::{SessionStream, Stream};
use crate::smtp::data::{DataProgress, DataReceiver};
use crate::smtp::line::{Line, LineBuffer};
use crate::smtp::reply::Reply;
use crate::tls::TlsInfo;

/// RFC 4954 §4: AUTH lines (the command with an initial response, and the
/// responses to challenges) may be up to 12288 octets; the line buffer is
/// sized for them and other commands are held to 512 by the session.
const MAX_AUTH_LINE: usize = 12288;
const READ_CHUNK: usize = 16 * 1024;

/// What one read brought.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// Input arrived.
    Data,
    /// The client closed the connection.
    Closed,
    /// Nothing within the timeout.
    Idle,
}

/// What one step of receiving DATA brought.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// The receiver found the end of the message.
    Done,
    /// More of the message, not its end.
    More,
    /// The client closed the connection.
    Closed,
    /// Nothing in time.
    Idle,
}

/// How a flush ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    /// Every queued reply was written.
    Done,
    /// The client did not take them all in time; the rest stays queued.
    Stalled,
}

/// What a client did before the greeting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pregreet {
    /// Nothing: a well-behaved client waits for the greeting.
    Silent,
    /// It sent bytes (read and dropped: the session ends).
    Talked,
    /// It closed the connection.
    Closed,
}

pub struct Connection<S> {
    stream: Stream<S>,
    /// Command input not yet cut into lines.
    input: LineBuffer,
    /// Replies waiting to be written.
    output: Vec<u8>,
    /// How much of `output` a flush that stalled has written already.
    written: usize,
    /// Where reads land before they go to the line buffer or the DATA
    /// receiver; one allocation for the whole session.
    read_buf: Box<[u8]>,
}

impl<S: SessionStream> Connection<S> {
    pub fn new(stream: S) -> Self {
        Connection {
            stream: Stream::Plain(stream),
            input: LineBuffer::new(MAX_AUTH_LINE),
            output: Vec::with_capacity(1024),
            written: 0,
            read_buf: vec![0u8; READ_CHUNK].into_boxed_slice(),
        }
    }

    pub fn is_tls(&self) -> bool {
        self.stream.is_tls()
    }

    /// Queues a reply; it is written by the next [`Self::flush`].
    pub fn queue(&mut self, reply: &Reply) {
        reply.write_to(&mut self.output);
    }

    /// Writes the queued replies until they are all out or `until` comes;
    /// a client that stopped reading blocks the writes once the socket
    /// buffers are full, and must not block the session with them.
    pub async fn flush(&mut self, until: Instant) -> io::Result<Flush> {
        if self.output.is_empty() {
            return Ok(Flush::Done);
        }
        let write = async {
            while self.written < self.output.len() {
                let n = self.stream.write(&self.output[self.written..]).await?;
                if n == 0 {
                    return Err(io::Error::from(io::ErrorKind::WriteZero));
                }
                self.written += n;
            }
            // TLS buffers records until flushed.
            self.stream.flush().await
        };
        match tokio::time::timeout_at(until, write).await {
            Ok(Ok(())) => {
                self.output.clear();
                self.written = 0;
                Ok(Flush::Done)
            }
            Ok(Err(e)) => Err(e),
            Err(_elapsed) => Ok(Flush::Stalled),
        }
    }

    /// The next complete command line already received, if any.
    pub fn next_line(&mut self) -> Option<Line<'_>> {
        self.input.next_line()
    }

    /// Takes every received byte not yet consumed as a line (STARTTLS
    /// discards them, DATA feeds them to its receiver).
    pub fn take_pending(&mut self) -> Vec<u8> {
        self.input.take_remaining()
    }

    /// One read into the line buffer, giving up at `until`.
    pub async fn read(&mut self, until: Instant) -> io::Result<Read> {
        match tokio::time::timeout_at(until, self.stream.read(&mut self.read_buf)).await {
            Ok(Ok(0)) => Ok(Read::Closed),
            Ok(Ok(n)) => {
                self.input.push(&self.read_buf[..n]);
                Ok(Read::Data)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Ok(Read::Idle),
        }
    }

    /// One step of feeding the message text to `receiver`: what is already
    /// buffered if anything, else one read giving up at `until`. Whatever
    /// follows the end of DATA goes back to the line buffer as the next
    /// commands.
    pub async fn receive(
        &mut self,
        receiver: &mut DataReceiver,
        until: Instant,
    ) -> io::Result<Received> {
        if self.input.has_pending() {
            let pending = self.input.take_remaining();
            if let DataProgress::Done { consumed } = receiver.feed(&pending) {
                self.input.push(&pending[consumed..]);
                return Ok(Received::Done);
            }
            return Ok(Received::More);
        }
        match tokio::time::timeout_at(until, self.stream.read(&mut self.read_buf)).await {
            Ok(Ok(0)) => Ok(Received::Closed),
            // Fed straight from the read buffer: the receiver copies only
            // the message.
            Ok(Ok(n)) => match receiver.feed(&self.read_buf[..n]) {
                DataProgress::Done { consumed } => {
                    self.input.push(&self.read_buf[consumed..n]);
                    Ok(Received::Done)
                }
                DataProgress::NeedMore => Ok(Received::More),
            },
            Ok(Err(e)) => Err(e),
            Err(_) => Ok(Received::Idle),
        }
    }

    /// Waits up to `wait` for the client to send something before the
    /// greeting (postscreen's pregreet test). Only a plain connection is
    /// checked: under implicit TLS the client speaks first.
    pub async fn pregreet(&mut self, wait: Duration) -> io::Result<Pregreet> {
        if self.stream.is_tls() {
            return Ok(Pregreet::Silent);
        }
        match tokio::time::timeout(wait, self.stream.read(&mut self.read_buf)).await {
            Err(_elapsed) => Ok(Pregreet::Silent),
            Ok(Ok(0)) => Ok(Pregreet::Closed),
            Ok(Ok(_)) => Ok(Pregreet::Talked),
            Ok(Err(e)) => Err(e),
        }
    }

    /// Reads and discards what the client already sent (at most 64 KiB,
    /// for at most half a second): closing a socket with unread input
    /// resets the connection, and the client could lose the last reply.
    pub async fn drain(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
        let mut total = 0;
        while total < 64 * 1024 {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut self.read_buf)).await {
                Ok(Ok(n)) if n > 0 => total += n,
                _ => break,
            }
        }
    }

    /// The TLS handshake on the plain connection, bounded by `timeout`.
    pub async fn upgrade(
        &mut self,
        acceptor: TlsAcceptor,
        timeout: Duration,
    ) -> io::Result<TlsInfo> {
        self.stream.upgrade(acceptor, timeout).await
    }

    /// Closes the connection; bounded, since a TLS close_notify must not
    /// wait on a client that stopped reading.
    pub async fn close(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.stream.shutdown()).await;
    }
}
