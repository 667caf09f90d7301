//! MAIL (RFC 5321 §4.1.1.2): opens a transaction once the listener's AUTH
//! rule, the spool's free space, the declared SIZE, the submission sender
//! rule and the mail stage of the pipeline all let it.

use super::state::{Transaction, TransactionDsn};
use super::{Flow, Session, SessionStream};
use crate::config::AuthMode;
use crate::pipeline::HookArg;
use crate::smtp::address::ReversePath;
use crate::smtp::command::{Body, MailParams};
use crate::smtp::reply::Reply;

impl<S: SessionStream> Session<S> {
    /// MAIL in the greeted state (the dispatch answers the others).
    pub(super) async fn mail(&mut self, reverse_path: ReversePath, params: MailParams) -> Flow {
        if self.listener.auth == AuthMode::Required && self.user.is_none() {
            // Both 530 5.7.0; the text says which step is missing.
            let reply = if self.listener.auth_offered(self.conn.is_tls()) {
                Reply::auth_required()
            } else {
                Reply::must_starttls()
            };
            return self.error(reply);
        }
        if params.body == Some(Body::BinaryMime) {
            // RFC 3030 §3: BINARYMIME needs CHUNKING, which sluice does not
            // offer; a parameter of an extension not advertised is 555.
            return self.error(Reply::unknown_parameter());
        }
        if let Some(reply) = self.spool_full() {
            return self.reply(reply);
        }
        if params
            .size
            .is_some_and(|size| size > self.ctx.config.server.max_message_size)
        {
            return self.reply(Reply::size_exceeds_limit());
        }
        if let Some(reply) = self.foreign_sender(&reverse_path) {
            return self.reply(reply);
        }
        let argument = match &reverse_path {
            ReversePath::Null => None,
            ReversePath::Mailbox(mailbox) => Some(self.mailbox_arg(mailbox)),
        };
        let outcome = self.run_stage(HookArg::Mail(argument.as_ref()), None).await;
        if let Some(flow) = self.refused(outcome) {
            return flow;
        }
        let transaction = Transaction {
            reverse_path,
            recipients: Vec::new(),
            smtputf8: params.smtputf8,
            dsn: (!params.dsn.is_empty()).then(|| {
                Box::new(TransactionDsn {
                    envelope: params.dsn,
                    recipients: Vec::new(),
                })
            }),
        };
        if self.state.open_transaction(transaction).is_err() {
            // The dispatch calls this only when greeted; the mail stage
            // cannot change the state.
            return self.error(Reply::bad_sequence());
        }
        self.reply(Reply::sender_ok())
    }

    /// Backpressure: with the spool's filesystem nearly out of space or
    /// inodes, new transactions are refused (the client retries later);
    /// mail already accepted is unaffected. The measurement is cached by
    /// the spool for a second.
    fn spool_full(&self) -> Option<Reply> {
        let queue = &self.ctx.config.queue;
        if queue.min_free_space == 0 && queue.min_free_inodes == 0 {
            return None;
        }
        let free = match self.ctx.spool.free() {
            Ok(free) => free,
            // Not knowing is no reason to refuse mail: a write that then
            // fails is still answered with a 4xx.
            Err(e) => {
                tracing::warn!(session = %self.client.id, "{e}");
                return None;
            }
        };
        let short_of_space = free.bytes < queue.min_free_space;
        let short_of_inodes = free.inodes.is_some_and(|n| n < queue.min_free_inodes);
        if !short_of_space && !short_of_inodes {
            return None;
        }
        tracing::warn!(
            session = %self.client.id,
            free_bytes = free.bytes,
            free_inodes = free.inodes,
            min_free_space = queue.min_free_space,
            min_free_inodes = queue.min_free_inodes,
            "MAIL refused: the spool's filesystem is nearly full"
        );
        Some(Reply::storage())
    }

    /// RFC 6409 §6.1: on a submission listener the envelope sender must be
    /// the user's own (<> stays allowed, e.g. for MDNs).
    fn foreign_sender(&self, reverse_path: &ReversePath) -> Option<Reply> {
        if !self.listener.submission {
            return None;
        }
        let (Some(user), ReversePath::Mailbox(mailbox)) = (&self.user, reverse_path) else {
            return None;
        };
        if self
            .ctx
            .config
            .submission
            .may_send_as(user, &mailbox.to_string())
        {
            return None;
        }
        tracing::warn!(session = %self.client.id, user = ?user, sender = %mailbox, "sender refused: not owned by the user");
        Some(Reply::sender_not_owned(user))
    }
}
