//! What happens between the end of DATA and its reply: the Received-count
//! loop check, the submission checks (RFC 6409), the data stage of the
//! pipeline and its edits, the Received header, the DKIM signature, and
//! the spool. The `250` goes out only after the spool has the message on
//! disk; every refusal is answered with the stage's reply or a 4xx.
//!
//! The received bytes are already in the spool (see `data`); only the
//! header section is read back into memory. Every change is made to that
//! header section: the message is queued as a prefix (Received, the DKIM
//! signatures, the fields plugins prepended — or the whole edited header
//! section when fields were removed or appended) followed by the received
//! bytes (then past their own header section) — the body is never copied. Signing needs the message whole, within the server's
//! [`MessageMemory`](crate::memory::MessageMemory) budget.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use super::headers::apply_header_changes;
use super::state::Transaction;
use super::{Flow, Session, SessionStream};
use crate::metrics::METRICS;
use crate::pipeline::message::MessageResource;
use crate::pipeline::{Modification, SessionInfo, Stage, StageOutcome};
use crate::smtp::address::parse_reverse_path;
use crate::smtp::received::{count_received, received_header, rfc5322_date};
use crate::smtp::reply::Reply;
use crate::smtp::submission;
use sluice_spool::{Envelope, MessageReader, SpoolError, StagedMessage};

/// Most of a header section read into memory. A longer one (no empty line
/// within it) is treated as ending at the last line break before this:
/// header checks and edits see that much, the rest is kept as received.
const HEAD_LIMIT: usize = 1 << 20;

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
        mut staged: StagedMessage,
    ) -> Flow {
        let (reader, received_head) = match staged.reader().and_then(read_head) {
            Ok(read) => read,
            Err(e) => {
                tracing::error!(session = %self.client.id, "cannot read the received message back: {e}");
                return self.reply(Reply::local_error());
            }
        };
        let received_size = usize::try_from(reader.len()).unwrap_or(usize::MAX);
        if count_received(&received_head) > self.ctx.config.server.max_received_headers {
            return self.reply(Reply::loop_detected());
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let head = if self.listener.submission {
            match self.submission_checks(&received_head, now) {
                Ok(head) => head,
                Err(reply) => return self.reply(reply),
            }
        } else {
            None
        };
        let head: Arc<[u8]> = Arc::from(head.unwrap_or_else(|| received_head.clone()));
        let skip = received_head.len() as u64;
        let message =
            MessageResource::spooled(Arc::clone(&head), reader, skip, self.ctx.memory.clone());
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
                count_message("discarded", received_size);
                return self.reply(Reply::ok());
            }
            refused => {
                let outcome = match refused {
                    StageOutcome::Reject(_) => "rejected",
                    _ => "tempfailed",
                };
                count_message(outcome, received_size);
                return self.refused(refused).unwrap_or(Flow::Continue);
            }
        };
        let edits = apply_envelope_changes(&mut transaction, decision.modifications);
        if let Some(reply) = self.over_recipient_limit(&transaction) {
            count_message("tempfailed", received_size);
            return self.reply(reply);
        }
        if transaction.recipients.is_empty() {
            // Plugins removed every recipient: nobody is left to deliver to.
            tracing::info!(session = %self.client.id, "every recipient removed by the data stage");
            return self.reply(Reply::ok());
        }
        let head: Arc<[u8]> = if edits.is_empty() {
            head
        } else {
            Arc::from(apply_header_changes(
                &head,
                &edits.remove,
                &edits.prepend,
                &edits.append,
            ))
        };
        let Some(reader) = message.fresh_reader() else {
            return self.reply(Reply::local_error());
        };
        drop(message);
        let body = Body {
            reader,
            head,
            received_head: &received_head,
        };
        let reply = self
            .store(&transaction, staged, body, now, quarantine, received_size)
            .await;
        self.reply(reply)
    }

    /// Prepends the Received header and the DKIM signatures, spools the
    /// message and returns the reply for the client.
    async fn store(
        &mut self,
        transaction: &Transaction,
        staged: StagedMessage,
        body: Body<'_>,
        now: u64,
        quarantine: Option<String>,
        received_size: usize,
    ) -> Reply {
        let queue_id = staged.id();
        let trace = self.received(transaction, &queue_id.to_string(), now);
        // Signed before spooling, so the signature is in the queue and
        // survives a restart; the Received field goes above it, unsigned.
        let signatures = match self.dkim_signatures(&body).await {
            Ok(signatures) => signatures,
            Err(e) => {
                tracing::error!(session = %self.client.id, "{e}");
                return Reply::local_error();
            }
        };
        // The prefix: trace, signatures, then what the header section gained
        // on top (prepended fields), or the whole new header section when
        // it changed otherwise (the received one is then skipped).
        let (added, skip) = match body.head.strip_suffix(body.received_head) {
            Some(on_top) => (on_top, 0),
            None => (&body.head[..], body.received_head.len() as u64),
        };
        let signatures_len: usize = signatures.iter().map(String::len).sum();
        let mut prefix = Vec::with_capacity(trace.len() + signatures_len + added.len());
        prefix.extend_from_slice(trace.as_bytes());
        for signature in &signatures {
            prefix.extend_from_slice(signature.as_bytes());
        }
        prefix.extend_from_slice(added);
        drop(body);

        let sender = transaction.sender();
        let envelope = Envelope {
            reverse_path: sender.clone(),
            recipients: transaction.recipients.clone(),
            received_at: now,
            client: format!("{}:{}", self.client.ip, self.client.port),
            quarantine: quarantine.clone(),
            dsn: transaction.dsn_envelope(),
            recipient_dsn: transaction.recipient_dsn(),
        };
        match staged.commit(envelope, &prefix, skip).await {
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
    /// added (§8.2, §8.3). Takes the header section; returns it completed
    /// (`None`: unchanged), or the reply refusing the message.
    fn submission_checks(&self, message: &[u8], now: u64) -> Result<Option<Vec<u8>>, Reply> {
        if let Some(user) = &self.user {
            let authors = submission::author_addresses(message).map_err(|e| {
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
        let (no_date, no_message_id) = submission::missing_fields(message);
        if !no_date && !no_message_id {
            return Ok(None);
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
        Ok(Some(apply_header_changes(message, &[], &[], &append)))
    }

    /// The DKIM-Signature fields for a message whose From domain has a
    /// `[[dkim.sign]]` key, from a client in `[dkim] trusted_networks` or an
    /// authenticated user that may send as every author; none otherwise.
    async fn dkim_signatures(&mut self, body: &Body<'_>) -> Result<Vec<String>, SigningFailed> {
        let Some(domain) = self.dkim_domain(&body.head) else {
            return Ok(Vec::new());
        };
        let memory = self.ctx.memory.clone();
        let _reserved = memory.reserve(body.len()).await;
        let whole = body.read_all()?;
        let signatures = self.ctx.dkim.sign(&domain, &whole)?;
        tracing::info!(session = %self.client.id, %domain, signatures = signatures.len(), "DKIM-signed");
        Ok(signatures)
    }

    /// The From domain to sign for, if the message gets a signature (see
    /// `dkim_signatures`); `message` is its header section.
    fn dkim_domain(&self, message: &[u8]) -> Option<String> {
        let signers = &self.ctx.dkim;
        if signers.is_empty() {
            return None;
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
            return None;
        }
        submission::from_domain(message).filter(|domain| signers.has_domain(domain))
    }
}

/// Why a message could not be signed.
#[derive(Debug, thiserror::Error)]
enum SigningFailed {
    #[error(transparent)]
    Sign(#[from] crate::dkim::SignError),
    #[error("cannot read the message to sign it: {0}")]
    Read(#[from] SpoolError),
}

/// The message as it will be queued, without its trace fields: `head`,
/// then the received bytes after their own header section.
struct Body<'a> {
    reader: MessageReader,
    head: Arc<[u8]>,
    received_head: &'a [u8],
}

impl Body<'_> {
    fn len(&self) -> u64 {
        self.head.len() as u64 + self.reader.len() - self.received_head.len() as u64
    }

    /// The message in one buffer (reserve its size first).
    fn read_all(&self) -> Result<Vec<u8>, SpoolError> {
        let mut out = vec![0u8; usize::try_from(self.len()).unwrap_or(usize::MAX)];
        out[..self.head.len()].copy_from_slice(&self.head);
        let mut reader = self.reader.fresh();
        let n = reader.read_at(self.received_head.len() as u64, &mut out[self.head.len()..])?;
        out.truncate(self.head.len() + n);
        Ok(out)
    }
}

/// Reads the received header section back (up to and with the empty line
/// that ends it, at most [`HEAD_LIMIT`] octets cut at a line break).
fn read_head(mut reader: MessageReader) -> Result<(MessageReader, Vec<u8>), SpoolError> {
    const STEP: usize = 16 << 10;
    let mut head = Vec::new();
    loop {
        let start = head.len();
        head.resize(start + STEP, 0);
        let n = reader.read_at(start as u64, &mut head[start..])?;
        head.truncate(start + n);
        if head.starts_with(b"\r\n") {
            head.truncate(2);
            break;
        }
        let from = start.saturating_sub(3);
        if let Some(at) = memchr::memmem::find(&head[from..], b"\r\n\r\n") {
            head.truncate(from + at + 4);
            break;
        }
        if n == 0 {
            break;
        }
        if head.len() >= HEAD_LIMIT {
            let cut = memchr::memrchr(b'\n', &head[..HEAD_LIMIT]).map_or(HEAD_LIMIT, |i| i + 1);
            head.truncate(cut);
            break;
        }
    }
    Ok((reader, head))
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
            // Checked by the chain; a sender that does not parse keeps the old.
            Modification::ChangeSender(sender) => {
                if let Ok(path) = parse_reverse_path(&format!("<{sender}>"), transaction.smtputf8) {
                    transaction.reverse_path = path;
                }
            }
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
