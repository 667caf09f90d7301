//! The spool's error type. Every variant is a reason to answer the SMTP
//! client with a temporary failure (4xx) or to retry a queue operation later;
//! none of them is the client's fault.

use std::path::PathBuf;
use std::sync::Arc;

use crate::QueueId;

/// Everything that can go wrong in the spool.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpoolError {
    /// The directory cannot be created or read, or sled's recovery failed.
    #[error("cannot open the spool at {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    /// Another process (or another `Spool` in this one) has the directory.
    #[error("the spool at {} is in use by another process: {source}", path.display())]
    Locked {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    /// A read or write in sled failed (I/O error, or corruption sled found).
    #[error("spool storage error: {0}")]
    Sled(#[from] sled::Error),
    /// A commit failed: what was written since the last one may not be on
    /// disk.
    #[error("flushing the spool to disk failed: {0}")]
    Flush(#[source] SyncError),
    /// Reading or writing a segment file failed.
    #[error("segment file {}: {source}", path.display())]
    Segment {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The committer thread is gone (it panicked or the spool is closing).
    #[error("the spool's commit thread has stopped")]
    CommitterGone,
    /// The committer thread could not be started.
    #[error("cannot start the spool's commit thread: {0}")]
    Thread(#[source] std::io::Error),
    /// A stored entry cannot be decoded, or its message bytes are missing.
    #[error("queue entry {id} is corrupt: {reason}")]
    Corrupt { id: QueueId, reason: String },
    /// An entry could not be encoded (should not happen with valid UTF-8).
    #[error("cannot encode queue entry {id}: {source}")]
    Encode {
        id: QueueId,
        #[source]
        source: serde_json::Error,
    },
    /// `enqueue` was given a message without recipients.
    #[error("refusing to spool a message without recipients")]
    NoRecipients,
    /// A delivery outcome names a recipient the entry does not have.
    #[error("queue entry {id} has {count} recipients, no recipient #{index}")]
    NoSuchRecipient {
        id: QueueId,
        index: usize,
        count: usize,
    },
    /// The free space of the spool's filesystem cannot be measured.
    #[error("cannot measure free space at {}: {source}", path.display())]
    FreeSpace {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Key-value namespaces must be named.
    #[error("key-value namespace must not be empty")]
    EmptyNamespace,
    /// A stored key-value record is shorter than its header.
    #[error("key-value record {namespace}/{key} is malformed")]
    KvCorrupt { namespace: String, key: String },
    /// `incr` found a value that is not a decimal integer.
    #[error("key-value value {namespace}/{key} is not an integer")]
    NotAnInteger { namespace: String, key: String },
    /// `incr` would leave the i64 range.
    #[error("key-value counter {namespace}/{key} would overflow")]
    Overflow { namespace: String, key: String },
}

/// Why a commit did not make the spool durable. Cloned to every writer the
/// commit served.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SyncError {
    /// sled's flush failed.
    #[error("sled flush: {0}")]
    Sled(#[source] sled::Error),
    /// An fsync/fdatasync of a file or directory failed.
    #[error("syncing {}: {source}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
}

impl SpoolError {
    /// Maps an I/O error on `path` (a segment, one of sled's files, the
    /// spool directory) into [`SpoolError::Segment`].
    pub(crate) fn io_at(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> SpoolError {
        let path = path.to_path_buf();
        move |source| SpoolError::Segment { path, source }
    }
}

impl SyncError {
    pub(crate) fn file(path: PathBuf, source: std::io::Error) -> SyncError {
        SyncError::File {
            path,
            source: Arc::new(source),
        }
    }
}
