//! The session's side of the wire: the stream, the command-line buffer, the
//! replies waiting to be written, and the reads that fill the one and the
//! flushes that empty the other. Nothing here knows SMTP beyond "lines"
//! and "the DATA receiver decides where the message ends"; the verbs in
//! the sibling files decide what to read and what to answer.
//!
//! Replies to pipelined commands (RFC 2920) are queued and written in one
//! go when the client has no more complete commands waiting.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
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

    /// Writes every queued reply.
    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.output.is_empty() {
            self.stream.write_all(&self.output).await?;
            // TLS buffers records until flushed.
            self.stream.flush().await?;
            self.output.clear();
        }
        Ok(())
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

    /// One read of at most `timeout` into the line buffer.
    pub async fn read(&mut self, timeout: Duration) -> io::Result<Read> {
        match tokio::time::timeout(timeout, self.stream.read(&mut self.read_buf)).await {
            Ok(Ok(0)) => Ok(Read::Closed),
            Ok(Ok(n)) => {
                self.input.push(&self.read_buf[..n]);
                Ok(Read::Data)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Ok(Read::Idle),
        }
    }

    /// Feeds the message text to `receiver` until it finds the end of
    /// DATA: first what is already buffered, then reads of at most
    /// `timeout` each. Whatever follows the terminator goes back to the
    /// line buffer as the next commands. `Read::Data` means the receiver
    /// is done.
    pub async fn receive(
        &mut self,
        receiver: &mut DataReceiver,
        timeout: Duration,
    ) -> io::Result<Read> {
        let pending = self.input.take_remaining();
        if let DataProgress::Done { consumed } = receiver.feed(&pending) {
            self.input.push(&pending[consumed..]);
            return Ok(Read::Data);
        }
        loop {
            match tokio::time::timeout(timeout, self.stream.read(&mut self.read_buf)).await {
                Ok(Ok(0)) => return Ok(Read::Closed),
                // Fed straight from the read buffer: the receiver copies
                // only the message.
                Ok(Ok(n)) => {
                    if let DataProgress::Done { consumed } = receiver.feed(&self.read_buf[..n]) {
                        self.input.push(&self.read_buf[consumed..n]);
                        return Ok(Read::Data);
                    }
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(Read::Idle),
            }
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
