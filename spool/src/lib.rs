//! sluice's durable mail queue on sled. It knows nothing of SMTP or Wasm: the
//! SMTP session hands it accepted messages, the delivery scheduler reads them
//! back and reports outcomes, and the plugin host keeps plugins' key-value
//! state in it.
//!
//! # Layout
//! - `spool.rs`: [`Spool`] — enqueue, read, record attempts, operator actions.
//! - `commit.rs`: the group-commit thread that owns `db.flush()`.
//! - `entry.rs`: the records ([`NewMessage`], [`QueueEntry`], outcomes) and
//!   [`MessageBytes`].
//! - `id.rs`: [`QueueId`].
//! - `kv.rs`: [`KvStore`], the plugins' key-value state.
//! - `clock.rs`: the wall clock in unix seconds (ids, kv expiries).
//! - `space.rs`: free space of the spool's filesystem, cached for a second.
//! - `error.rs`: [`SpoolError`].
//!
//! # Storage
//! One sled database in the spool directory, with these trees:
//! - `entries`: [`QueueId`] as 8 big-endian bytes → JSON [`QueueEntry`]
//!   (envelope and per-recipient state). Key order is id order, and ids
//!   begin with the enqueue second, so iteration is oldest first.
//! - `messages`: the same key → the raw message bytes.
//! - `kv/<namespace>`: one tree per plugin namespace; each value is an
//!   8-byte big-endian expiry (unix seconds, 0 = never) and the value bytes.
//!
//! An entry is written after its message and removed before it, so the
//! only state a crash can leave between the two writes is message bytes
//! without entry — never acknowledged, or already delivered — which
//! `Spool::open` deletes. The two writes are deliberately not a sled
//! transaction or batch: those take sled's process-wide write lock, which
//! waits for any flush in progress, so every enqueue would stall behind
//! every fsync (measured: 2-3k instead of 8-12k msg/s). Entry changes are
//! compare-and-swap loops for the same reason. An entry without message
//! (only storage damage makes one) is logged at open and left out by
//! `entries()` rather than failing.
//!
//! # Durability
//! `enqueue`, `record_attempt` and the operator actions return only once
//! their writes are flushed to disk, except `record_attempt` when it removes
//! a finished message: a removal lost in a crash means the message is
//! delivered again, never lost. Flushes are group-committed: a single
//! committer thread flushes once for all writers waiting at that moment, so
//! concurrent sessions share each fsync. Key-value state is not waited for.

mod clock;
mod commit;
mod entry;
mod error;
mod id;
mod kv;
mod space;
mod spool;

pub use entry::{
    AttemptRecord, AttemptRecorded, MessageBytes, NewMessage, QueueEntry, Recipient,
    RecipientOutcome, RecipientStatus, HISTORY_LIMIT,
};
pub use error::SpoolError;
pub use id::{ParseQueueIdError, QueueId};
pub use kv::KvStore;
pub use spool::Spool;
