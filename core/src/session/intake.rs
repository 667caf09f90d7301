//! What happens between the end of DATA and its reply: the Received-count
//! loop check, the submission checks (RFC 6409), the data stage of the
//! pipeline and its edits, the Received header, the DKIM signature, and
//! the spool. The `250` goes out only after the spool has the message on
//! disk; every refusal is answered with the stage's reply or a 4xx.

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

use super::headers::apply_header_changes;
use super::state::Transaction;
use super::{Flow, Session, SessionStream};
use crate::metrics::METRICS;
use crate::pipeline::{Modification, SessionInfo, Stage, StageOutcome};
use crate::smtp::received::{count_received, received_header, rfc5322_date};
use crate::smtp::reply::Reply;
use crate::smtp::submission;
use sluice_spool::NewMessage;

/// The header edits a data stage asked for, in the order they apply.
#[derive(Default)]
struct HeaderEdits {
    remove: Vec<String>,
    prepend: Vec<(String, String)>,
    append: Vec<(String, String)>,
}

impl HeaderEdits {
    fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.prepend.is_empty() && self.append.is_empty()
    }
}

impl<S: SessionStream> Session<S> {
    /// Runs the data stage on a complete message and, if it is accepted,
    /// stores it durably before answering.
    pub(super) async fn intake(
        &mut self,
        info: SessionInfo,
        mut transaction: Transaction,
        message: Vec<u8>,
    ) -> Flow {
        if count_received(&message) > self.ctx.config.server.max_received_headers {
            return self.reply(Reply::loop_detected());
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let message = if self.listener.submission {
            match self.submission_checks(message, now) {
                Ok(message) => message,
                Err(reply) => return self.reply(reply),
            }
        } else {
            message
        };
        let message: std::sync::Arc<[u8]> = std::sync::Arc::from(message);
        let decision = self.filters.run_data(&info, &message).await;
        let applied: &[Modification] = match decision.outcome {
            StageOutcome::Accept | StageOutcome::Quarantine(_) => &decision.modifications,
            _ => &[],
        };
        self.record(Stage::Data, None, &decision.outcome, applied);
        let quarantine = match decision.outcome {
            StageOutcome::Accept => None,
            StageOutcome::Quarantine(reason) => Some(reason),
            StageOutcome::Discard => {
                tracing::info!(session = %self.client.id, "message discarded by the data stage");
                count_message("discarded", message.len());
                return self.reply(Reply::ok());
            }
            refused => {
                let outcome = match refused {
                    StageOutcome::Reject(_) => "rejected",
                    _ => "tempfailed",
                };
                count_message(outcome, message.len());
                return self.refused(refused).unwrap_or(Flow::Continue);
            }
        };
        let edits = apply_envelope_changes(&mut transaction, decision.modifications);
        if let Some(reply) = self.over_recipient_limit(&transaction) {
            count_message("tempfailed", message.len());
            return self.reply(reply);
        }
        if transaction.recipients.is_empty() {
            // Plugins removed every recipient: nobody is left to deliver to.
            tracing::info!(session = %self.client.id, "every recipient removed by the data stage");
            return self.reply(Reply::ok());
        }
        let body: Cow<'_, [u8]> = if edits.is_empty() {
            Cow::Borrowed(&message[..])
        } else {
            Cow::Owned(apply_header_changes(
                &message,
                &edits.remove,
                &edits.prepend,
                &edits.append,
            ))
        };
        let reply = self
            .store(&transaction, &body, now, quarantine, message.len())
            .await;
        self.reply(reply)
    }

    /// Prepends the Received header and the DKIM signatures, spools the
    /// message and returns the reply for the client.
    async fn store(
        &mut self,
        transaction: &Transaction,
        body: &[u8],
        now: u64,
        quarantine: Option<String>,
        received_size: usize,
    ) -> Reply {
        let queue_id = match self.ctx.spool.allocate_id() {
            Ok(id) => id,
            Err(e) => {
                tracing::error!(session = %self.client.id, "spool id allocation failed: {e}");
                return Reply::local_error();
            }
        };
        let trace = self.received(transaction, &queue_id.to_string(), now);
        // Signed before spooling, so the signature is in the queue and
        // survives a restart; the Received field goes above it, unsigned.
        let signatures = match self.dkim_signatures(body) {
            Ok(signatures) => signatures,
            Err(e) => {
                tracing::error!(session = %self.client.id, "{e}");
                return Reply::local_error();
            }
        };
        let signatures_len: usize = signatures.iter().map(String::len).sum();
        let mut stored = Vec::with_capacity(trace.len() + signatures_len + body.len());
        stored.extend_from_slice(trace.as_bytes());
        for signature in &signatures {
            stored.extend_from_slice(signature.as_bytes());
        }
        stored.extend_from_slice(body);

        let sender = transaction.sender();
        let new_message = NewMessage {
            reverse_path: sender.clone(),
            recipients: transaction.recipients.clone(),
            message: stored,
            received_at: now,
            client: format!("{}:{}", self.client.ip, self.client.port),
            quarantine: quarantine.clone(),
        };
        match self.ctx.spool.enqueue_with_id(queue_id, new_message).await {
            Ok(id) => {
                tracing::info!(
                    session = %self.client.id,
                    queue_id = %id,
                    from = %sender,
                    recipients = transaction.recipients.len(),
                    size = received_size,
                    quarantine = quarantine.as_deref().unwrap_or(""),
                    "message queued"
                );
                self.queued += 1;
                if quarantine.is_none() {
                    self.ctx.delivery.enqueued(id);
                }
                let outcome = match quarantine {
                    None => "accepted",
                    Some(_) => "quarantined",
                };
                count_message(outcome, received_size);
                Reply::queued(&id.to_string())
            }
            Err(e) => {
                tracing::error!(session = %self.client.id, "spool write failed: {e}");
                count_message("tempfailed", received_size);
                Reply::local_error()
            }
        }
    }

    /// The Received header field of this hop (RFC 5321 §4.4).
    fn received(&self, transaction: &Transaction, queue_id: &str, now: u64) -> String {
        let (helo, esmtp) = self
            .state
            .greeting()
            .map_or(("unknown", false), |g| (g.helo.as_str(), g.esmtp));
        // RFC 3848 / RFC 6531 §3.7.3: S for TLS, A for an authenticated client.
        let mut protocol = match (esmtp, transaction.smtputf8) {
            (true, true) => "UTF8SMTP",
            (true, false) => "ESMTP",
            (false, _) => "SMTP",
        }
        .to_owned();
        if esmtp {
            if self.tls_info.is_some() {
                protocol.push('S');
            }
            if self.user.is_some() {
                protocol.push('A');
            }
        }
        let tls_comment = self
            .tls_info
            .as_ref()
            .map(|t| format!("{} with cipher {}", t.version, t.cipher));
        let single_recipient = match transaction.recipients.as_slice() {
            [only] => Some(only.as_str()),
            _ => None,
        };
        received_header(
            helo,
            self.client.reverse_name.as_deref(),
            self.client.ip,
            self.hostname(),
            &protocol,
            tls_comment.as_deref(),
            queue_id,
            single_recipient,
            &rfc5322_date(now as i64),
        )
    }

    /// Submission (RFC 6409): every From and Sender address must be one
    /// the authenticated user may send as; a missing Date or Message-ID is
    /// added (§8.2, §8.3). Returns the message to go on with, or the reply
    /// refusing it.
    fn submission_checks(&self, message: Vec<u8>, now: u64) -> Result<Vec<u8>, Reply> {
        if let Some(user) = &self.user {
            let authors = submission::author_addresses(&message).map_err(|e| {
                tracing::warn!(session = %self.client.id, user = ?user, "message refused: {e}");
                Reply::bad_author(&e.to_string())
            })?;
            let submission_config = &self.ctx.config.submission;
            if let Some(foreign) = authors
                .iter()
                .find(|a| !submission_config.may_send_as(user, a))
            {
                tracing::warn!(session = %self.client.id, user = ?user, from = ?foreign, "message refused: From not owned by the user");
                return Err(Reply::author_not_owned(foreign));
            }
        }
        let (no_date, no_message_id) = submission::missing_fields(&message);
        if !no_date && !no_message_id {
            return Ok(message);
        }
        let mut append = Vec::new();
        if no_date {
            append.push(("Date".to_owned(), rfc5322_date(now as i64)));
        }
        if no_message_id {
            append.push((
                "Message-ID".to_owned(),
                submission::new_message_id(now, self.hostname()),
            ));
        }
        Ok(apply_header_changes(&message, &[], &[], &append))
    }

    /// The DKIM-Signature fields for a message whose From domain has a
    /// `[[dkim.sign]]` key, from a client in `[dkim] trusted_networks` or an
    /// authenticated user that may send as every author; none otherwise.
    fn dkim_signatures(&self, message: &[u8]) -> Result<Vec<String>, crate::dkim::SignError> {
        let signers = &self.ctx.dkim;
        if signers.is_empty() {
            return Ok(Vec::new());
        }
        let config = &self.ctx.config;
        let trusted = config
            .dkim
            .trusted_networks
            .iter()
            .any(|net| net.contains(&self.client.ip));
        // An authenticated user gets a signature only for authors it owns:
        // on a listener that is not a submission one nothing checked the
        // From, and the domain's key must not vouch for someone else's.
        let owned = self.user.as_ref().is_some_and(|user| {
            submission::author_addresses(message).is_ok_and(|authors| {
                authors
                    .iter()
                    .all(|a| config.submission.may_send_as(user, a))
            })
        });
        if !trusted && !owned {
            return Ok(Vec::new());
        }
        match submission::from_domain(message) {
            Some(domain) if signers.has_domain(&domain) => {
                let signatures = signers.sign(&domain, message)?;
                tracing::info!(session = %self.client.id, %domain, signatures = signatures.len(), "DKIM-signed");
                Ok(signatures)
            }
            _ => Ok(Vec::new()),
        }
    }
}

/// Applies the data stage's recipient changes to the envelope and returns
/// its header changes.
fn apply_envelope_changes(
    transaction: &mut Transaction,
    modifications: Vec<Modification>,
) -> HeaderEdits {
    let mut edits = HeaderEdits::default();
    for modification in modifications {
        match modification {
            Modification::PrependHeader { name, value } => edits.prepend.push((name, value)),
            Modification::AppendHeader { name, value } => edits.append.push((name, value)),
            Modification::RemoveHeader(name) => edits.remove.push(name),
            Modification::AddRecipient(rcpt) => {
                if !transaction.recipients.contains(&rcpt) {
                    transaction.recipients.push(rcpt)
                }
            }
            Modification::RemoveRecipient(rcpt) => transaction.recipients.retain(|r| *r != rcpt),
        }
    }
    edits
}

/// Counts one message received at DATA by its outcome.
fn count_message(outcome: &str, size: usize) {
    METRICS.messages.inc(&[outcome]);
    METRICS
        .message_bytes
        .add(&[outcome], u64::try_from(size).unwrap_or(u64::MAX));
}
