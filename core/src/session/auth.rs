//! AUTH (RFC 4954): the listener's AUTH rules, the SASL exchange of
//! `smtp::auth` (its lines arrive while the session is in the SASL state),
//! and the credential check with the lockout of [`Authenticator`].
//!
//! [`Authenticator`]: crate::users::Authenticator

use super::state::State;
use super::{Flow, Session, SessionStream};
use crate::config::AuthMode;
use crate::metrics::METRICS;
use crate::smtp::auth::{self, Credentials, Step};
use crate::smtp::reply::Reply;
use crate::users::{AuthOutcome, Locked};

impl<S: SessionStream> Session<S> {
    pub(super) async fn auth(&mut self, mechanism: &str, initial: Option<&str>) -> Flow {
        if self.listener.auth == AuthMode::None {
            return self.error(Reply::not_implemented());
        }
        if !self.listener.auth_offered(self.conn.is_tls()) {
            return self.error(Reply::encryption_required());
        }
        match self.state {
            State::Connected => self.error(Reply::need_helo()),
            _ if self.user.is_some() => self.error(Reply::already_authenticated()),
            State::Greeted(_) => {
                let step = auth::start(mechanism, initial);
                self.sasl_step(step).await
            }
            State::Mail(..) | State::Sasl(..) => self.error(Reply::bad_sequence()),
        }
    }

    /// The client's answer to a SASL challenge.
    pub(super) async fn sasl_response(&mut self, line: &[u8]) -> Flow {
        let Some(exchange) = self.state.take_sasl() else {
            return self.error(Reply::bad_sequence());
        };
        let step = exchange.respond(line);
        self.sasl_step(step).await
    }

    async fn sasl_step(&mut self, step: Step) -> Flow {
        match step {
            Step::Continue(exchange, challenge) => {
                // AUTH and SASL responses run only greeted (see `auth` and
                // `sasl_response`), so the exchange always finds its state.
                self.state.await_sasl(exchange);
                self.reply(challenge)
            }
            Step::Failed(reply) => self.error(reply),
            Step::Done(credentials) => self.check_credentials(credentials).await,
        }
    }

    async fn check_credentials(&mut self, credentials: Credentials) -> Flow {
        let outcome = self
            .ctx
            .authenticator
            .authenticate(self.client.ip, &credentials.username, &credentials.password)
            .await;
        let user = &credentials.username;
        let (session, client) = (&self.client.id, self.client.ip);
        match outcome {
            AuthOutcome::Success(user) => {
                tracing::info!(session = %session, user = ?user, "authenticated");
                METRICS.auth_attempts.inc(&["success"]);
                self.user = Some(user);
                self.reply(Reply::auth_success())
            }
            AuthOutcome::BadCredentials => {
                tracing::warn!(session = %session, client = %client, user = ?user, "authentication failed");
                METRICS.auth_attempts.inc(&["failure"]);
                self.error(Reply::auth_failed())
            }
            AuthOutcome::Locked(Locked::Client) => {
                // The lockout counts an IPv6 client by its network.
                let counted_as = self.ctx.authenticator.client_key(client);
                tracing::warn!(session = %session, client = %client, counted_as = %counted_as, user = ?user, "authentication refused: client locked out");
                METRICS.auth_attempts.inc(&["locked_out"]);
                self.error(Reply::auth_locked_out())
            }
            AuthOutcome::Locked(Locked::User) => {
                // Same reply as a wrong password: a lockout must not tell
                // a guesser that the name exists.
                tracing::warn!(session = %session, client = %client, user = ?user, "authentication refused: user locked out");
                METRICS.auth_attempts.inc(&["locked_out"]);
                self.error(Reply::auth_failed())
            }
            AuthOutcome::Unavailable => self.reply(Reply::auth_tempfail()),
        }
    }
}
