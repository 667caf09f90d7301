//! EHLO and HELO (RFC 5321 §4.1.1.1): the helo stage of the pipeline, then
//! the greeting, with the ESMTP extensions this listener offers now.

use super::state::{Greeting, State};
use super::{Flow, Session, SessionStream};
use crate::config::TlsMode;
use crate::pipeline::HookArg;
use crate::smtp::auth::MECHANISMS;
use crate::smtp::reply::Reply;

impl<S: SessionStream> Session<S> {
    /// HELO/EHLO in any state drops the transaction (RFC 5321 §4.1.4) and,
    /// once the helo stage accepts, starts over as greeted.
    pub(super) async fn ehlo(&mut self, name: String, esmtp: bool) -> Flow {
        self.state.reset();
        self.filters.end_transaction();
        let outcome = self.run_stage(HookArg::Helo(&name), None).await;
        if let Some(flow) = self.refused(outcome) {
            return flow;
        }
        let reply = if esmtp {
            Reply::ehlo(self.hostname(), &name, &self.extensions())
        } else {
            Reply::helo(self.hostname(), &name)
        };
        self.state = State::Greeted(Greeting { helo: name, esmtp });
        self.reply(reply)
    }

    /// The EHLO keywords: STARTTLS only before TLS on a STARTTLS listener
    /// with a certificate, AUTH only where this listener offers it now.
    fn extensions(&self) -> Vec<String> {
        let mut lines = vec![
            "PIPELINING".to_owned(),
            format!("SIZE {}", self.ctx.config.server.max_message_size),
            "8BITMIME".to_owned(),
            "ENHANCEDSTATUSCODES".to_owned(),
            "SMTPUTF8".to_owned(),
            "DSN".to_owned(),
        ];
        let tls_active = self.conn.is_tls();
        if self.listener.tls == TlsMode::Starttls && self.tls.is_some() && !tls_active {
            lines.push("STARTTLS".to_owned());
        }
        if self.listener.auth_offered(tls_active) {
            lines.push(format!("AUTH {MECHANISMS}"));
        }
        lines.push("HELP".to_owned());
        lines
    }
}
