//! DATA (RFC 5321 §4.1.1.4): the 354 go-ahead, then the message text until
//! the lone dot, under the size and line limits of `smtp::data`. DATA
//! consumes the transaction: whatever happens next (a reply from `intake`,
//! a size error, a timeout) the session is greeted again.
//!
//! The message goes to the spool as it arrives (`Spool::stage`): a session
//! holds one read and one spool record of it, whatever its size. A refused
//! or abandoned message leaves only dead records, reclaimed with their
//! segment. A write error in the middle is answered 451 once the client
//! has sent the end of data.
//!
//! The message text has a deadline as a whole (`timeouts.data`) besides
//! the wait for each chunk (`timeouts.data_block`, shorter under load): a
//! client that trickles a byte now and then is cut at the deadline with
//! 421, and nothing of its message is kept.

use sluice_spool::{SpoolError, StagedMessage};

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
        // The id names the message's records, and goes into its Received.
        let mut staged = match self.ctx.spool.allocate_id() {
            Ok(id) => Ok(self.ctx.spool.stage(id)),
            Err(e) => {
                tracing::error!(session = %self.client.id, "spool id allocation failed: {e}");
                return Ok(self.reply(Reply::local_error()));
            }
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
            let received = self.conn.receive(&mut receiver, wait.step_end()).await?;
            spool_output(&mut staged, &mut receiver);
            let stalled = match received {
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
        match (receiver.finish(), staged) {
            (Ok(_), Ok(staged)) => Ok(self.intake(info, transaction, staged).await),
            (Err(DataError::TooBig), _) => Ok(self.reply(Reply::message_too_big())),
            (Err(e @ (DataError::LineTooLong | DataError::Incomplete)), _) => {
                Ok(self.error(e.reply()))
            }
            (Ok(_), Err(e)) => {
                tracing::error!(session = %self.client.id, "spool write failed: {e}");
                Ok(self.reply(Reply::local_error()))
            }
        }
    }
}

/// Writes what the receiver produced to the staged message; after a write
/// error the rest is only consumed (the message is answered 451).
fn spool_output(staged: &mut Result<StagedMessage, SpoolError>, receiver: &mut DataReceiver) {
    let output = receiver.take_output();
    if let Ok(message) = staged {
        if let Err(e) = message.write(output) {
            // Dropping the staging releases what it wrote.
            *staged = Err(e);
        }
    }
}
