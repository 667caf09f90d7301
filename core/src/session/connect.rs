//! The start of a session, before any command: the pregreet test
//! (postscreen's: a client that talks before the greeting is a bot) and,
//! during its wait, the client's forward-confirmed reverse name; then the
//! connect stage of the pipeline, and the 220 greeting or the refusal that
//! ends the connection.

use std::pin::pin;

use super::connection::Pregreet;
use super::{Session, SessionStream};
use crate::dns::REVERSE_LOOKUP_TIMEOUT;
use crate::metrics::METRICS;
use crate::pipeline::{HookArg, StageOutcome};
use crate::smtp::reply::Reply;

impl<S: SessionStream> Session<S> {
    /// The pregreet test, the reverse lookup and the connect stage; true
    /// when the client got the 220 greeting and the dialogue goes on.
    pub(super) async fn greet(&mut self) -> std::io::Result<bool> {
        match self.pregreet_and_lookup().await? {
            Pregreet::Silent => {}
            Pregreet::Closed => return Ok(false),
            Pregreet::Talked => {
                tracing::warn!(session = %self.client.id, client = %self.client.ip, "client talked before the greeting: dropped");
                METRICS.pregreet_drops.inc(&[&self.listener.name]);
                self.conn.queue(&Reply::pregreet());
                self.flush().await?;
                self.conn.drain().await;
                return Ok(false);
            }
        }
        match self.run_stage(HookArg::Connect, None).await {
            StageOutcome::Accept | StageOutcome::Discard | StageOutcome::Quarantine(_) => {
                self.conn.queue(&Reply::greeting(self.hostname()));
                self.flush().await?;
                Ok(true)
            }
            StageOutcome::Reject(reply)
            | StageOutcome::Tempfail(reply)
            | StageOutcome::Disconnect(reply) => {
                // A refused connection is closed at once; a 4xx refusal at
                // connect is 421 by RFC 5321 §3.1.
                let reply = if reply.is_transient() && reply.code != 421 {
                    Reply::new(421, reply.enhanced.as_deref(), reply.lines.join(" "))
                } else {
                    reply
                };
                self.conn.queue(&reply);
                self.flush().await?;
                Ok(false)
            }
        }
    }

    /// Waits out the greeting delay (before the plugins run: a bot that
    /// talks first costs no more than the wait) while the reverse name is
    /// looked up, so a slow resolver costs a patient client at most the
    /// longer of the two. A client that talks or leaves ends the wait, and
    /// the lookup with it.
    async fn pregreet_and_lookup(&mut self) -> std::io::Result<Pregreet> {
        let server = &self.ctx.config.server;
        let wait = self.listener.greet_delay;
        let exempt = server
            .greet_exempt
            .iter()
            .any(|net| net.contains(&self.client.ip));
        let dns = self.ctx.dns.clone();
        let (ip, enabled) = (self.client.ip, server.reverse_lookup);
        let lookup = async move {
            if enabled {
                dns.confirmed_reverse_name(ip, REVERSE_LOOKUP_TIMEOUT).await
            } else {
                None
            }
        };
        let conn = &mut self.conn;
        let pregreet = async move {
            if wait.is_zero() || exempt {
                Ok(Pregreet::Silent)
            } else {
                conn.pregreet(wait).await
            }
        };
        let (mut lookup, mut pregreet) = (pin!(lookup), pin!(pregreet));
        let mut name = None;
        let mut looked_up = false;
        let outcome = loop {
            tokio::select! {
                outcome = &mut pregreet => break outcome?,
                found = &mut lookup, if !looked_up => {
                    name = found;
                    looked_up = true;
                }
            }
        };
        if outcome == Pregreet::Silent && !looked_up {
            name = lookup.await;
        }
        self.client.reverse_name = name;
        Ok(outcome)
    }
}
