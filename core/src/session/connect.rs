//! The start of a session, before any command: the pregreet test
//! (postscreen's: a client that talks before the greeting is a bot), the
//! connect stage of the pipeline, and the 220 greeting or the refusal that
//! ends the connection.

use super::connection::Pregreet;
use super::{Session, SessionStream};
use crate::metrics::METRICS;
use crate::pipeline::{HookArg, Stage, StageOutcome};
use crate::smtp::reply::Reply;

impl<S: SessionStream> Session<S> {
    /// The pregreet test and the connect stage; true when the client got
    /// the 220 greeting and the dialogue goes on.
    pub(super) async fn greet(&mut self) -> std::io::Result<bool> {
        // Before the plugins run: a bot that talks first costs no more than
        // the wait.
        let wait = self.listener.greet_delay;
        let exempt = self
            .ctx
            .config
            .server
            .greet_exempt
            .iter()
            .any(|net| net.contains(&self.client.ip));
        if !wait.is_zero() && !exempt {
            match self.conn.pregreet(wait).await? {
                Pregreet::Silent => {}
                Pregreet::Closed => return Ok(false),
                Pregreet::Talked => {
                    tracing::warn!(session = %self.client.id, client = %self.client.ip, "client talked before the greeting: dropped");
                    METRICS.pregreet_drops.inc(&[&self.listener.name]);
                    self.conn.queue(&Reply::pregreet());
                    self.conn.flush().await?;
                    self.conn.drain().await;
                    return Ok(false);
                }
            }
        }
        match self.run_stage(Stage::Connect, HookArg::Connect, None).await {
            StageOutcome::Accept | StageOutcome::Discard | StageOutcome::Quarantine(_) => {
                self.conn.queue(&Reply::greeting(self.hostname()));
                self.conn.flush().await?;
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
                self.conn.flush().await?;
                Ok(false)
            }
        }
    }
}
