//! STARTTLS (RFC 3207) and the TLS handshake it shares with implicit-TLS
//! listeners: the same session goes on over the protected stream, and
//! forgets everything said before it.

use super::state::State;
use super::wait::Stall;
use super::{Flow, Session, SessionStream};
use crate::config::TlsMode;
use crate::metrics::METRICS;
use crate::smtp::reply::Reply;

impl<S: SessionStream> Session<S> {
    pub(super) async fn starttls(&mut self) -> std::io::Result<Flow> {
        if self.conn.is_tls() {
            return Ok(self.error(Reply::tls_already_active()));
        }
        if self.listener.tls != TlsMode::Starttls || self.tls.is_none() {
            return Ok(self.error(Reply::tls_not_available()));
        }
        // RFC 3207 §4.2, CVE-2011-0411: whatever the client pipelined
        // after STARTTLS was sent in cleartext and must never be read as a
        // command of the protected session.
        let injected = self.conn.take_pending();
        if !injected.is_empty() {
            tracing::info!(session = %self.client.id, bytes = injected.len(), "discarded cleartext sent after STARTTLS");
        }
        self.conn.queue(&Reply::starttls_ready());
        self.flush().await?;
        if let Err(e) = self.handshake().await {
            tracing::info!(session = %self.client.id, "TLS handshake failed: {e}");
            return Err(e);
        }
        // RFC 3207 §4.2: start over as if the connection had just opened.
        self.state = State::Connected;
        self.user = None;
        Ok(Flow::Continue)
    }

    /// The TLS handshake, bounded by `timeouts.tls_handshake`: a client
    /// that connects and never finishes it costs its session that long.
    /// Records what was negotiated for plugins and the Received header.
    pub(super) async fn handshake(&mut self) -> std::io::Result<()> {
        let Some(tls) = &self.tls else {
            return Err(std::io::Error::other("the listener has no certificate"));
        };
        let timeout = self.ctx.config.server.timeouts.tls_handshake;
        let info = match self.conn.upgrade(tls.acceptor(), timeout).await {
            Ok(info) => info,
            Err(e) => {
                METRICS.tls_handshakes.inc(&["failed", ""]);
                if e.kind() == std::io::ErrorKind::TimedOut {
                    self.stalled(Stall::TlsHandshake);
                }
                return Err(e);
            }
        };
        METRICS.tls_handshakes.inc(&["ok", &info.version]);
        tracing::info!(session = %self.client.id, version = %info.version, cipher = %info.cipher, "TLS established");
        self.tls_info = Some(info);
        Ok(())
    }
}
