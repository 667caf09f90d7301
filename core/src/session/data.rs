//! DATA (RFC 5321 §4.1.1.4): the 354 go-ahead, then the message text until
//! the lone dot, under the size and line limits of `smtp::data`. DATA
//! consumes the transaction: whatever happens next (a reply from `intake`,
//! a size error, a timeout) the session is greeted again.
//!
//! The message text has a deadline as a whole (`timeouts.data`) besides
//! the wait for each chunk (`timeouts.data_block`, shorter under load): a
//! client that trickles a byte now and then is cut at the deadline with
//! 421, and nothing of its message is kept.

use super::connection::Received;
use super::wait::{Stall, Wait};
use super::{Flow, Session, SessionStream};
use crate::smtp::data::{DataError, DataLimits, DataReceiver};
use crate::smtp::reply::Reply;

/// RFC 5321 §4.5.3.1.6: a text line is at most 1000 octets with CRLF.
const MAX_TEXT_LINE: usize = 1000;

impl<S: SessionStream> Session<S> {
    /// DATA in a transaction with at least one recipient (the dispatch
    /// answers the rest).
    pub(super) async fn data(&mut self) -> std::io::Result<Flow> {
        // Seen by the data stage as it was when DATA arrived.
        let info = self.plugin_view();
        let Some(transaction) = self.state.take_transaction() else {
            return Ok(self.error(Reply::bad_sequence()));
        };
        self.conn.queue(&Reply::start_data());
        self.flush().await?;

        let mut receiver = DataReceiver::new(DataLimits {
            max_size: self.ctx.config.server.max_message_size,
            max_line: MAX_TEXT_LINE,
        });
        let timeouts = &self.ctx.config.server.timeouts;
        let mut wait = Wait::new(timeouts.data_block, timeouts.command_under_load)
            .until(tokio::time::Instant::now() + timeouts.data);
        loop {
            let stalled = match self.conn.receive(&mut receiver, wait.step_end()).await? {
                Received::Done => break,
                Received::Closed => return Ok(Flow::Close),
                Received::More => {
                    wait.progressed();
                    wait.overdue()
                }
                Received::Idle => wait.expired(self.ctx.limits.under_load()),
            };
            if stalled {
                self.stalled(Stall::Data);
                self.conn.queue(&Reply::timeout(self.hostname()));
                return Ok(Flow::Close);
            }
        }
        match receiver.finish() {
            Ok(message) => Ok(self.intake(info, transaction, message).await),
            Err(DataError::TooBig) => Ok(self.reply(Reply::message_too_big())),
            Err(e @ (DataError::LineTooLong | DataError::Incomplete)) => Ok(self.error(e.reply())),
        }
    }
}
