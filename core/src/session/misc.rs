//! The verbs that change nothing or only end things: NOOP, RSET, VRFY and
//! EXPN, HELP, QUIT (RFC 5321 §4.1.1.5–§4.1.1.10). They are valid in every
//! state.

use super::{Flow, Session, SessionStream};
use crate::smtp::reply::Reply;

impl<S: SessionStream> Session<S> {
    /// RSET drops the transaction; a greeted session stays greeted.
    pub(super) fn rset(&mut self) -> Flow {
        self.state.reset();
        self.filters.end_transaction();
        self.reply(Reply::ok())
    }

    pub(super) fn noop(&mut self) -> Flow {
        self.reply(Reply::ok())
    }

    pub(super) fn help(&mut self) -> Flow {
        self.reply(Reply::help())
    }

    /// Never discloses whether a mailbox exists (RFC 5321 §3.5.3).
    pub(super) fn vrfy(&mut self) -> Flow {
        self.reply(Reply::vrfy())
    }

    pub(super) fn quit(&mut self) -> Flow {
        self.reply(Reply::closing(self.hostname()));
        Flow::Close
    }
}
