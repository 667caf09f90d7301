//! The recipient limit once the data stage has edited the envelope:
//! recipients a plugin added count toward `[server] max_recipients` like
//! those of RCPT, so no plugin fans one message out past what a client may
//! ask for. Over the limit the whole message is refused with a 4xx: the
//! fault is the configuration's, and the client keeps the message while
//! the operator fixes it.

use super::state::Transaction;
use super::{Session, SessionStream};
use crate::smtp::reply::Reply;

impl<S: SessionStream> Session<S> {
    /// The reply refusing a transaction the data stage took over the
    /// limit; None within it.
    pub(super) fn over_recipient_limit(&self, transaction: &Transaction) -> Option<Reply> {
        let limit = self.ctx.config.server.max_recipients;
        let count = transaction.recipients.len();
        if count <= limit {
            return None;
        }
        tracing::warn!(
            session = %self.client.id,
            recipients = count,
            max_recipients = limit,
            "message refused: the data stage added recipients over max_recipients"
        );
        Some(Reply::too_many_recipients())
    }
}
