//! sluice's durable mail queue on sled. It knows nothing of SMTP or Wasm: the
//! SMTP session hands it accepted messages, the delivery scheduler reads them
//! back and reports outcomes, and the plugin host keeps plugins' key-value
//! state in it.
//!
//! # Layout
//! - `spool.rs`: [`Spool`] — enqueue, read, record attempts, operator actions,
//!   and the index check at open.
//! - `segment/`: message bytes in append-only, checksummed segment files
//!   (`record.rs` the record format, `location.rs` where a message's records
//!   are, `scan.rs` recovery of a segment at open).
//! - `staged.rs`: [`StagedMessage`], a message written to its segment as it
//!   arrives and queued by its commit, with a header prefix.
//! - `reader.rs`: [`MessageReader`], positioned reads of a message's bytes.
//! - `commit.rs`: the group-commit thread that makes writes durable.
//! - `durable.rs`: fsync helpers for directories (also used by Maildir
//!   delivery).
//! - `entry.rs`: the records ([`NewMessage`], [`QueueEntry`], outcomes) and
//!   [`MessageBytes`].
//! - `id.rs`: [`QueueId`].
//! - `kv.rs`: [`KvStore`], the plugins' key-value state.
//! - `clock.rs`: the wall clock in unix seconds (ids, kv expiries).
//! - `space.rs`: free space and inodes of the spool's filesystem, cached for
//!   a second.
//! - `error.rs`: [`SpoolError`].
//!
//! # Storage
//! - `segments/<n>.seg`: message bytes, as records of at most 1 MiB (256 KiB
//!   when received over SMTP), each with its queue id, length and CRC-32. Appended only; a segment rolls
//!   at 64 MiB and is deleted once no live message has a record in it.
//! - One sled database in the spool directory, with small values only:
//!   - `entries`: [`QueueId`] as 8 big-endian bytes → JSON [`QueueEntry`]
//!     (envelope and per-recipient state). Key order is id order, and ids
//!     begin with the enqueue second, so iteration is oldest first.
//!   - `messages`: the same key → where the message's records are
//!     (segment, offset, length and checksum of each, and how much of its
//!     start a record leaves out). A message received over SMTP is its
//!     header prefix's records (Received, signatures, an edited header
//!     section), then the received records, the first of them skipping the
//!     header section the prefix replaces.
//!   - `kv/<namespace>`: one tree per plugin namespace; each value is an
//!     8-byte big-endian expiry (unix seconds, 0 = never) and the value
//!     bytes.
//!
//! Bytes are written before their location, the location before the entry,
//! and the entry removed before the location: the only state a crash can
//! leave between those writes is bytes or a location without entry — never
//! acknowledged, or already delivered — which `Spool::open` deletes. The
//! writes are deliberately not a sled transaction or batch: those take
//! sled's process-wide write lock, which waits for any flush in progress,
//! so every enqueue would stall behind every fsync (measured: 2-3k instead
//! of 8-12k msg/s). Entry changes are compare-and-swap loops for the same
//! reason.
//!
//! # Recovery
//! At open every segment is scanned: records failing their checksum are
//! skipped, a torn tail (a write cut short) is truncated. An entry whose
//! records are not all intact is set aside — held, with the reason in
//! [`QueueEntry::damaged`], counted — and the spool opens anyway.
//!
//! # Durability
//! `enqueue`, `record_attempt` and the operator actions return only once
//! their writes are on disk, except `record_attempt` when it removes a
//! finished message: a removal lost in a crash means the message is
//! delivered again, never lost. A commit fdatasyncs every segment written
//! since the last one (and fsyncs the segment directory when a segment was
//! created or deleted), flushes sled, then fdatasyncs sled's log file —
//! sled's own flush ends in `sync_file_range`, which is not a sync. Commits
//! are grouped: a single committer thread syncs once for all writers waiting
//! at that moment, so concurrent sessions share each fsync. Key-value state
//! is not waited for.

mod clock;
mod commit;
pub mod durable;
mod entry;
mod error;
mod id;
mod kv;
mod reader;
mod segment;
mod space;
mod spool;
mod staged;

pub use clock::unix_now;
pub use entry::{
    AttemptRecord, AttemptRecorded, DsnEnvelope, Envelope, MessageBytes, NewMessage, Notify,
    OriginalRecipient, QueueEntry, Recipient, RecipientDsn, RecipientOutcome, RecipientStatus, Ret,
    HISTORY_LIMIT,
};
pub use error::{SpoolError, SyncError};
pub use id::{ParseQueueIdError, QueueId};
pub use kv::KvStore;
pub use reader::MessageReader;
pub use segment::DEFAULT_SEGMENT_LIMIT;
pub use space::Free;
pub use spool::{Options, Spool};
pub use staged::{StagedMessage, STAGE_RECORD};
