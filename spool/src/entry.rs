//! The queue's records: what a caller hands to `enqueue` (`NewMessage`), what
//! the spool keeps per message (`QueueEntry`, stored as JSON in `entries`) and
//! what a delivery attempt reports back (`RecipientOutcome`).

use serde::{Deserialize, Serialize};

use crate::QueueId;

/// A message accepted by the SMTP session, ready to be spooled.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// The envelope sender; "" for the null reverse-path `<>`.
    pub reverse_path: String,
    /// Envelope recipients, in RCPT order; outcomes refer to them by index.
    pub recipients: Vec<String>,
    /// Raw bytes, CRLF line ends, trace headers included.
    pub message: Vec<u8>,
    /// Unix seconds at which the message was accepted.
    pub received_at: u64,
    /// "ip:port" of the submitting client, for the operator.
    pub client: String,
    /// Some(reason): every recipient starts Quarantined.
    pub quarantine: Option<String>,
    /// MAIL's DSN parameters (RFC 3461).
    pub dsn: DsnEnvelope,
    /// Each recipient's DSN parameters, in the order of `recipients`; one
    /// missing from the end has none.
    pub recipient_dsn: Vec<RecipientDsn>,
}

impl NewMessage {
    /// Everything but the bytes.
    pub fn envelope(&self) -> Envelope {
        Envelope {
            reverse_path: self.reverse_path.clone(),
            recipients: self.recipients.clone(),
            received_at: self.received_at,
            client: self.client.clone(),
            quarantine: self.quarantine.clone(),
            dsn: self.dsn.clone(),
            recipient_dsn: self.recipient_dsn.clone(),
        }
    }
}

/// What a staged message is committed with: [`NewMessage`] without the
/// bytes, which are already in the spool.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// The envelope sender; "" for the null reverse-path `<>`.
    pub reverse_path: String,
    /// Envelope recipients, in RCPT order.
    pub recipients: Vec<String>,
    /// Unix seconds at which the message was accepted.
    pub received_at: u64,
    /// "ip:port" of the submitting client, for the operator.
    pub client: String,
    /// Some(reason): every recipient starts Quarantined.
    pub quarantine: Option<String>,
    /// MAIL's DSN parameters (RFC 3461).
    pub dsn: DsnEnvelope,
    /// Each recipient's DSN parameters, in the order of `recipients`; one
    /// missing from the end has none.
    pub recipient_dsn: Vec<RecipientDsn>,
}

/// One spooled message: envelope and delivery state, without the bytes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct QueueEntry {
    /// The key under which the entry and its message are stored.
    pub id: QueueId,
    /// The envelope sender; "" for `<>` (never sent a DSN).
    pub reverse_path: String,
    /// Per-recipient state, in RCPT order.
    pub recipients: Vec<Recipient>,
    /// Unix seconds at acceptance; the maximum queue age counts from here.
    pub received_at: u64,
    /// "ip:port" of the submitting client.
    pub client: String,
    /// Size of the stored message in bytes.
    pub size: u64,
    /// Delivery attempts made so far.
    pub attempts: u32,
    /// Unix seconds of the next attempt; 0 = as soon as possible.
    pub next_attempt: u64,
    /// Set by the operator: no delivery until released.
    pub held: bool,
    /// Why the pipeline quarantined the message, if it did.
    pub quarantine: Option<String>,
    /// Whether the sender was told that delivery is delayed (sent once).
    #[serde(default)]
    pub warned: bool,
    /// Set at open when the message's bytes were missing or failed their
    /// checksum: the entry is kept for the operator, held, and never
    /// delivered; removing it is the only way out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub damaged: Option<String>,
    /// MAIL's DSN parameters; entries written before they were kept load
    /// with none.
    #[serde(default, skip_serializing_if = "DsnEnvelope::is_empty")]
    pub dsn: DsnEnvelope,
}

impl QueueEntry {
    /// Whether every recipient has reached a final state.
    pub fn is_finished(&self) -> bool {
        self.recipients.iter().all(|r| r.status.is_final())
    }
}

/// One envelope recipient and how far its delivery got.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Recipient {
    /// The address as given in RCPT TO, without angle brackets.
    pub address: String,
    /// Where this recipient stands.
    pub status: RecipientStatus,
    /// The last reply seen for it (remote server's or local delivery's).
    pub last_reply: Option<String>,
    /// Attempts made for this recipient.
    pub attempts: u32,
    /// The last few attempts' replies, oldest first (at most
    /// [`HISTORY_LIMIT`]), for the operator's `queue show`. Entries written
    /// before the field existed load with an empty history.
    #[serde(default)]
    pub history: Vec<AttemptRecord>,
    /// RCPT's DSN parameters; entries written before they were kept load
    /// with none.
    #[serde(default, skip_serializing_if = "RecipientDsn::is_empty")]
    pub dsn: RecipientDsn,
}

/// RET (RFC 3461 §4.3): what of the message a failure DSN returns.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Ret {
    /// The whole message.
    Full,
    /// Only its header section.
    Hdrs,
}

/// The DSN parameters of MAIL (RFC 3461 §4.3, §4.4).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DsnEnvelope {
    /// RET; absent means the reporting MTA's choice (sluice: headers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ret: Option<Ret>,
    /// ENVID, xtext-decoded: quoted back as `Original-Envelope-Id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envid: Option<String>,
}

impl DsnEnvelope {
    /// Neither parameter was given.
    pub fn is_empty(&self) -> bool {
        self.ret.is_none() && self.envid.is_none()
    }
}

/// NOTIFY (RFC 3461 §4.1): the events the sender wants a DSN for. All
/// false is `NOTIFY=NEVER`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Notify {
    pub success: bool,
    pub failure: bool,
    pub delay: bool,
}

/// ORCPT (RFC 3461 §4.2): the recipient as the sender first addressed it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OriginalRecipient {
    /// The address type, e.g. `rfc822`.
    pub addr_type: String,
    /// The address, xtext-decoded.
    pub address: String,
}

/// The DSN parameters of one RCPT.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RecipientDsn {
    /// NOTIFY; absent means FAILURE and DELAY (RFC 3461 §4.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<Notify>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orcpt: Option<OriginalRecipient>,
}

impl RecipientDsn {
    /// Neither parameter was given.
    pub fn is_empty(&self) -> bool {
        self.notify.is_none() && self.orcpt.is_none()
    }

    /// A "failed" DSN is wanted: NOTIFY has FAILURE or is absent.
    pub fn wants_failure(&self) -> bool {
        self.notify.is_none_or(|n| n.failure)
    }

    /// A "delayed" DSN is wanted: NOTIFY has DELAY or is absent.
    pub fn wants_delay(&self) -> bool {
        self.notify.is_none_or(|n| n.delay)
    }

    /// A "delivered" or "relayed" DSN is wanted: only on NOTIFY=SUCCESS.
    pub fn wants_success(&self) -> bool {
        self.notify.is_some_and(|n| n.success)
    }
}

/// How many attempt records a recipient keeps; older ones are dropped.
pub const HISTORY_LIMIT: usize = 10;

/// One delivery attempt for one recipient, as the operator sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AttemptRecord {
    /// Unix seconds at which the attempt was recorded.
    pub at: u64,
    /// The reply that ended it (remote server's or local delivery's).
    pub reply: String,
}

impl Recipient {
    /// Appends an attempt to the history, dropping the oldest beyond
    /// [`HISTORY_LIMIT`].
    pub fn push_history(&mut self, record: AttemptRecord) {
        if self.history.len() >= HISTORY_LIMIT {
            let excess = self.history.len() + 1 - HISTORY_LIMIT;
            self.history.drain(..excess);
        }
        self.history.push(record);
    }
}

/// Delivery state of one recipient.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RecipientStatus {
    /// Not attempted yet.
    Pending,
    /// Delivered; final.
    Delivered,
    /// Failed temporarily; retried at `next_attempt`.
    Deferred,
    /// Failed permanently; final.
    Failed,
    /// Kept back for this recipient until released.
    Held,
    /// Kept back because the pipeline quarantined the message.
    Quarantined,
}

impl RecipientStatus {
    /// Delivered and Failed are final: nothing more will be attempted.
    pub fn is_final(self) -> bool {
        matches!(self, RecipientStatus::Delivered | RecipientStatus::Failed)
    }
}

/// The result of one delivery attempt for one recipient.
#[derive(Debug, Clone)]
pub struct RecipientOutcome {
    /// Index into `QueueEntry::recipients`.
    pub index: usize,
    /// The recipient's new status.
    pub status: RecipientStatus,
    /// The reply that led to it, kept as `last_reply`.
    pub reply: Option<String>,
}

/// What `Spool::record_attempt` did.
#[derive(Debug, PartialEq, Eq)]
pub enum AttemptRecorded {
    /// The entry was updated and stays queued.
    Updated,
    /// Every recipient is final: entry and message were removed.
    Removed,
    /// No such entry (removed by the operator meanwhile, for example).
    NotFound,
}

/// A spooled message's bytes, read back from its segment records (each
/// checked against its checksum) in one allocation. Cheap to clone, so a
/// delivery that hands the message to several transactions shares it.
#[derive(Clone, PartialEq, Eq)]
pub struct MessageBytes(pub(crate) std::sync::Arc<Vec<u8>>);

impl std::ops::Deref for MessageBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for MessageBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl PartialEq<[u8]> for MessageBytes {
    fn eq(&self, other: &[u8]) -> bool {
        self.0.as_slice() == other
    }
}

impl PartialEq<Vec<u8>> for MessageBytes {
    fn eq(&self, other: &Vec<u8>) -> bool {
        *self.0 == *other
    }
}

/// Only the length: messages are large and may hold anything.
impl std::fmt::Debug for MessageBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MessageBytes({} octets)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_delivered_and_failed_are_final() {
        use RecipientStatus::*;
        let finals: Vec<_> = [Pending, Delivered, Deferred, Failed, Held, Quarantined]
            .into_iter()
            .filter(|s| s.is_final())
            .collect();
        assert_eq!(finals, vec![Delivered, Failed]);
    }

    #[test]
    fn entry_json_uses_hex_id_and_lowercase_status() {
        let entry = QueueEntry {
            id: QueueId::from_u64(0xabc),
            reverse_path: String::new(),
            recipients: vec![Recipient {
                address: "a@example.org".into(),
                status: RecipientStatus::Quarantined,
                last_reply: None,
                attempts: 0,
                history: vec![AttemptRecord {
                    at: 5,
                    reply: "451 4.4.1 try later".into(),
                }],
                dsn: RecipientDsn::default(),
            }],
            received_at: 1,
            client: "127.0.0.1:2525".into(),
            size: 3,
            attempts: 0,
            next_attempt: 0,
            held: false,
            quarantine: Some("spam".into()),
            warned: false,
            damaged: None,
            dsn: DsnEnvelope::default(),
        };
        let json = serde_json::to_value(&entry).unwrap();
        assert_eq!(json["id"], "0000000000000abc");
        assert_eq!(json["recipients"][0]["status"], "quarantined");
        let back: QueueEntry = serde_json::from_value(json).unwrap();
        assert_eq!(back, entry);
        assert!(!back.is_finished());
    }

    #[test]
    fn entry_without_history_still_loads() {
        // An entry as stored before recipients had a history.
        let old = r#"{"id":"0000000000000abc","reverse_path":"","recipients":[
            {"address":"a@example.org","status":"deferred","last_reply":"451 x","attempts":2}],
            "received_at":1,"client":"127.0.0.1:1","size":3,"attempts":2,
            "next_attempt":9,"held":false,"quarantine":null}"#;
        let entry: QueueEntry = serde_json::from_str(old).unwrap();
        assert!(entry.recipients[0].history.is_empty());
        assert_eq!(entry.recipients[0].attempts, 2);
        assert_eq!(entry.dsn, DsnEnvelope::default());
        assert_eq!(entry.recipients[0].dsn, RecipientDsn::default());
        // No DSN parameters: the defaults of RFC 3461 §4.1.
        assert!(entry.recipients[0].dsn.wants_failure());
        assert!(entry.recipients[0].dsn.wants_delay());
        assert!(!entry.recipients[0].dsn.wants_success());
    }

    #[test]
    fn dsn_parameters_round_trip_and_are_left_out_when_absent() {
        let old = r#"{"id":"0000000000000abd","reverse_path":"s@example.org","recipients":[
            {"address":"a@example.org","status":"pending","last_reply":null,"attempts":0},
            {"address":"b@example.org","status":"pending","last_reply":null,"attempts":0}],
            "received_at":1,"client":"127.0.0.1:1","size":3,"attempts":0,
            "next_attempt":0,"held":false,"quarantine":null,"warned":false}"#;
        let mut entry: QueueEntry = serde_json::from_str(old).unwrap();
        let plain = serde_json::to_value(&entry).unwrap();
        assert!(plain.get("dsn").is_none());
        assert!(plain["recipients"][0].get("dsn").is_none());
        entry.dsn = DsnEnvelope {
            ret: Some(Ret::Hdrs),
            envid: Some("QQ314159".into()),
        };
        entry.recipients[0].dsn = RecipientDsn {
            notify: Some(Notify::default()),
            orcpt: Some(OriginalRecipient {
                addr_type: "rfc822".into(),
                address: "A+B@example.org".into(),
            }),
        };
        let json = serde_json::to_string(&entry).unwrap();
        let back: QueueEntry = serde_json::from_str(&json).unwrap();
        assert_eq!(back, entry);
        let never = &back.recipients[0].dsn;
        assert!(!never.wants_failure() && !never.wants_delay() && !never.wants_success());
        assert!(back.recipients[1].dsn.is_empty());
    }

    #[test]
    fn history_keeps_the_most_recent_records() {
        let mut rcpt = Recipient {
            address: "a@example.org".into(),
            status: RecipientStatus::Deferred,
            last_reply: None,
            attempts: 0,
            history: Vec::new(),
            dsn: RecipientDsn::default(),
        };
        for at in 0..25 {
            rcpt.push_history(AttemptRecord {
                at,
                reply: format!("451 attempt {at}"),
            });
        }
        assert_eq!(rcpt.history.len(), HISTORY_LIMIT);
        let times: Vec<u64> = rcpt.history.iter().map(|r| r.at).collect();
        assert_eq!(times, (15..25).collect::<Vec<u64>>());
    }
}
