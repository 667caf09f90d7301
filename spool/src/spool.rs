//! `Spool`: the durable queue itself. Accepted messages come in through
//! `enqueue` (from the SMTP session, or a DSN from delivery); the delivery
//! scheduler reads them back with `entries`/`entry`/`message` and reports each
//! attempt through `record_attempt`, which drops the message once every
//! recipient is final. Every mutation of the queue is made durable through the
//! committer (`commit.rs`) before it returns, except that final removal
//! (see `record_attempt`). Message bytes live in segment files
//! (`segment/`); the `messages` tree holds where.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::clock::unix_now;
use crate::commit::{Committer, Durability};
use crate::durable;
use crate::id::IdSequence;
use crate::kv::KvStore;
use crate::segment::{GoodRecords, Location, Segments, DEFAULT_SEGMENT_LIMIT};
use crate::space::{Free, FreeSpace};
use crate::{
    AttemptRecord, AttemptRecorded, MessageBytes, NewMessage, QueueEntry, QueueId, Recipient,
    RecipientOutcome, RecipientStatus, SpoolError,
};

/// Tree holding `QueueId` (big-endian) → JSON `QueueEntry`.
const ENTRIES_TREE: &str = "entries";
/// Tree holding `QueueId` (big-endian) → the message's [`Location`] in the
/// segment files.
const MESSAGES_TREE: &str = "messages";
/// sled's log file in the spool directory, synced by the committer.
const SLED_LOG: &str = "db";
/// sled's settings file, written once when the database is created.
const SLED_CONF: &str = "conf";

/// How a spool is opened.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Size at which a segment file rolls over to the next.
    pub segment_limit: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            segment_limit: DEFAULT_SEGMENT_LIMIT,
        }
    }
}

/// The durable mail queue. Cheap to clone; all clones share one database and
/// one committer thread, which stop when the last clone is dropped.
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

/// Written by hand: sled's own `Debug` dumps every tree's contents.
impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("entries", &self.len())
            .field("flushes", &self.flush_count())
            .finish_non_exhaustive()
    }
}

struct Inner {
    /// Declared first so it is dropped first: joining the committer thread
    /// releases its handle on the database before ours goes.
    committer: Committer,
    /// The database, for id generation and the kv trees.
    db: sled::Db,
    /// QueueId → JSON QueueEntry.
    entries: sled::Tree,
    /// QueueId → encoded [`Location`].
    messages: sled::Tree,
    /// The message bytes.
    segments: Arc<Segments>,
    /// Keeps ids increasing within this process.
    ids: IdSequence,
    /// Keys in `entries`, so `len()` does not walk the tree.
    count: AtomicUsize,
    /// Entries set aside at open because their bytes were missing or bad.
    damaged: usize,
    /// Free space of the filesystem holding the spool, measured at most
    /// once a second (asked on every MAIL FROM).
    space: FreeSpace,
}

/// How long `open` waits for sled's lock on the directory to be released.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// Opens the sled database, waiting out a lock that is still being released.
///
/// sled drops its lock only when its last internal thread has finished (and
/// a killed process's lock goes when the kernel reaps it), so opening right
/// after a close can briefly fail; a lock that outlasts `LOCK_WAIT` belongs
/// to a running process and is reported as `Locked`.
fn open_db(dir: &Path) -> Result<sled::Db, SpoolError> {
    let deadline = Instant::now() + LOCK_WAIT;
    let mut pause = Duration::from_millis(5);
    loop {
        // No background flusher: every sled write is then made by a caller
        // (and synced by the commit after it) or by the committer itself,
        // which syncs what it writes before anything else.
        let config = sled::Config::new().path(dir).flush_every_ms(None);
        let source = match config.open() {
            Ok(db) => return Ok(db),
            Err(e) => e,
        };
        // sled reports lock contention only as text inside an io::Error.
        let locked = matches!(&source, sled::Error::Io(io)
            if io.to_string().contains("could not acquire lock"));
        if !locked {
            return Err(SpoolError::Open {
                path: dir.to_path_buf(),
                source,
            });
        }
        if Instant::now() >= deadline {
            return Err(SpoolError::Locked {
                path: dir.to_path_buf(),
                source,
            });
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Decodes a stored entry and checks it is filed under its own id.
fn decode_entry(id: QueueId, raw: &[u8]) -> Result<QueueEntry, SpoolError> {
    let entry: QueueEntry = serde_json::from_slice(raw).map_err(|e| SpoolError::Corrupt {
        id,
        reason: format!("undecodable entry: {e}"),
    })?;
    if entry.id != id {
        return Err(SpoolError::Corrupt {
            id,
            reason: format!("entry is stored under {id} but names itself {}", entry.id),
        });
    }
    Ok(entry)
}

fn encode_entry(entry: &QueueEntry) -> Result<Vec<u8>, SpoolError> {
    serde_json::to_vec(entry).map_err(|source| SpoolError::Encode {
        id: entry.id,
        source,
    })
}

impl Spool {
    /// Opens (creates) the sled database in `dir` and starts the committer thread.
    ///
    /// Blocking: it runs sled's recovery, checks the queue's consistency, and
    /// waits up to 2 s for the directory lock of a spool closed just before.
    pub fn open(dir: &Path) -> Result<Spool, SpoolError> {
        Spool::open_with(dir, Options::default())
    }

    /// [`Spool::open`] with non-default [`Options`].
    pub fn open_with(dir: &Path, options: Options) -> Result<Spool, SpoolError> {
        let started = Instant::now();
        let db = open_db(dir)?;
        // sled writes its `conf` without syncing it, nor the directory: the
        // files it created must outlive a power cut.
        let conf = dir.join(SLED_CONF);
        std::fs::File::open(&conf)
            .and_then(|f| f.sync_all())
            .map_err(SpoolError::io_at(&conf))?;
        let db_path = dir.join(SLED_LOG);
        let db_file = std::fs::File::open(&db_path).map_err(SpoolError::io_at(&db_path))?;
        db_file.sync_all().map_err(SpoolError::io_at(&db_path))?;
        durable::sync_dir(dir).map_err(SpoolError::io_at(dir))?;
        let entries = db.open_tree(ENTRIES_TREE)?;
        let messages = db.open_tree(MESSAGES_TREE)?;
        let (segments, good) = Segments::open(dir, options.segment_limit)?;
        let segments = Arc::new(segments);
        let checked = check_consistency(&entries, &messages, &segments, &good)?;
        segments.reclaim_unused();
        let committer = Committer::start(Durability {
            segments: Arc::clone(&segments),
            db: db.clone(),
            db_file,
            db_path,
        })?;
        tracing::info!(
            path = %dir.display(),
            entries = checked.count,
            damaged = checked.damaged,
            segments = segments.count(),
            torn_bytes = good.truncated,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "spool opened"
        );
        Ok(Spool {
            inner: Arc::new(Inner {
                committer,
                db,
                entries,
                messages,
                segments,
                ids: IdSequence::new(checked.highest),
                count: AtomicUsize::new(checked.count),
                damaged: checked.damaged,
                space: FreeSpace::new(PathBuf::from(dir)),
            }),
        })
    }

    /// Stores a new message; returns once it is durable on disk (group commit).
    ///
    /// If the returned future is dropped before it completes (the client went
    /// away), the message is removed again: nothing was acknowledged.
    pub async fn enqueue(&self, msg: NewMessage) -> Result<QueueId, SpoolError> {
        let id = self.allocate_id()?;
        self.enqueue_with_id(id, msg).await
    }

    /// A fresh queue id, for a message whose id must be known before it is
    /// stored (it goes into the message's own Received header).
    pub fn allocate_id(&self) -> Result<QueueId, SpoolError> {
        let inner = &self.inner;
        Ok(inner
            .ids
            .next(QueueId::compose(unix_now(), inner.db.generate_id()?)))
    }

    /// Like [`Spool::enqueue`], under an id from [`Spool::allocate_id`].
    pub async fn enqueue_with_id(
        &self,
        id: QueueId,
        msg: NewMessage,
    ) -> Result<QueueId, SpoolError> {
        if msg.recipients.is_empty() {
            return Err(SpoolError::NoRecipients);
        }
        let inner = &self.inner;
        let status = if msg.quarantine.is_some() {
            RecipientStatus::Quarantined
        } else {
            RecipientStatus::Pending
        };
        let entry = QueueEntry {
            id,
            reverse_path: msg.reverse_path,
            recipients: msg
                .recipients
                .into_iter()
                .map(|address| Recipient {
                    address,
                    status,
                    last_reply: None,
                    attempts: 0,
                    history: Vec::new(),
                })
                .collect(),
            received_at: msg.received_at,
            client: msg.client,
            size: msg.message.len() as u64,
            attempts: 0,
            next_attempt: 0,
            held: false,
            quarantine: msg.quarantine,
            warned: false,
            damaged: None,
        };
        let json = encode_entry(&entry)?;
        let key = id.to_key();
        // Bytes, then location, then entry, and no sled transaction or batch:
        // those take sled's global write lock, which waits for every running
        // flush and would serialize writers behind fsyncs. A crash in between
        // leaves bytes or a location without entry, never acknowledged, which
        // `open` deletes.
        let location = inner.segments.append(id, &msg.message)?;
        if let Err(e) = inner.messages.insert(key, location.encode()) {
            inner.segments.release(&location);
            return Err(e.into());
        }
        if let Err(e) = inner.entries.insert(key, json) {
            // Best effort: `open` would delete the orphan location anyway.
            let _ = inner.messages.remove(key);
            inner.segments.release(&location);
            return Err(e.into());
        }
        inner.count.fetch_add(1, Ordering::Relaxed);

        let mut guard = AbortOnDrop {
            spool: self,
            id,
            armed: true,
        };
        inner.committer.commit().await?;
        guard.armed = false;
        tracing::debug!(%id, size = entry.size, "message spooled");
        Ok(id)
    }

    /// One entry (envelope + per-recipient state), without the message bytes.
    pub fn entry(&self, id: QueueId) -> Result<Option<QueueEntry>, SpoolError> {
        match self.inner.entries.get(id.to_key())? {
            Some(raw) => decode_entry(id, &raw).map(Some),
            None => Ok(None),
        }
    }

    /// The raw message bytes, read from its segment records and checked
    /// against their checksums.
    pub fn message(&self, id: QueueId) -> Result<Option<MessageBytes>, SpoolError> {
        let Some(raw) = self.inner.messages.get(id.to_key())? else {
            return Ok(None);
        };
        let location = decode_location(id, &raw)?;
        let bytes = self.inner.segments.read(id, &location)?;
        Ok(Some(MessageBytes(Arc::new(bytes))))
    }

    /// Every entry in the queue, oldest first (used for recovery at start and
    /// for listing). Damaged entries (undecodable, or without message bytes)
    /// are logged and left out. An enqueue still waiting for its flush may
    /// already be listed.
    pub fn entries(&self) -> Result<Vec<QueueEntry>, SpoolError> {
        let mut out = Vec::new();
        for item in self.inner.entries.iter() {
            let (key, raw) = item?;
            match self.usable_entry(&key, &raw) {
                Ok(Some(entry)) => out.push(entry),
                Ok(None) => {}
                Err(e) => tracing::error!(error = %e, "skipping damaged queue entry"),
            }
        }
        Ok(out)
    }

    /// Decodes one `entries` record and checks its message exists; `Ok(None)`
    /// if the entry was removed while we looked.
    fn usable_entry(&self, key: &[u8], raw: &[u8]) -> Result<Option<QueueEntry>, SpoolError> {
        let id = QueueId::from_key(key).ok_or_else(|| SpoolError::Corrupt {
            id: QueueId::from_u64(0),
            reason: format!("key of {} bytes in the entries tree", key.len()),
        })?;
        let entry = decode_entry(id, raw)?;
        if entry.damaged.is_some() || self.inner.messages.contains_key(key)? {
            return Ok(Some(entry));
        }
        // Removal deletes the entry before the message, so a concurrent
        // removal is not damage: the entry is gone too by now.
        if !self.inner.entries.contains_key(key)? {
            return Ok(None);
        }
        Err(SpoolError::Corrupt {
            id,
            reason: "message bytes are missing".into(),
        })
    }

    /// Records outcomes of a delivery attempt and the time of the next one
    /// (None when no recipient is left pending/deferred; stored as 0). Durable
    /// when it returns (group commit). If every recipient is now final
    /// (Delivered or Failed), the entry and its message are removed instead,
    /// and Ok(Removed) is returned without waiting for disk: the removal
    /// becomes durable with the next commit or sled's background flush.
    ///
    /// An outcome for a recipient that is already final is ignored (and
    /// logged): a final recipient never goes back to being delivered.
    pub async fn record_attempt(
        &self,
        id: QueueId,
        outcomes: Vec<RecipientOutcome>,
        next_attempt: Option<u64>,
    ) -> Result<AttemptRecorded, SpoolError> {
        let at = unix_now();
        let changed = self.modify_entry(id, |entry| {
            apply_outcomes(entry, &outcomes, at)?;
            entry.attempts = entry.attempts.saturating_add(1);
            entry.next_attempt = next_attempt.unwrap_or(0);
            Ok(entry.is_finished())
        })?;
        match changed {
            None => Ok(AttemptRecorded::NotFound),
            // Not waited for: the entry goes before its bytes, so a crash
            // leaves the message whole (delivered once more, never lost) or
            // bytes without entry (deleted at open). Postfix does not fsync
            // its unlink after delivery either, and DSNs are committed before
            // the attempt is recorded. Spares each delivered message a flush.
            Some(Change::Removed) => Ok(AttemptRecorded::Removed),
            // Deferred state and history must survive: a lost one would
            // retry too early and forget the delay warning already sent.
            Some(Change::Updated) => {
                self.inner.committer.commit().await?;
                Ok(AttemptRecorded::Updated)
            }
        }
    }

    /// Holds (`true`) or releases (`false`) a message for the operator.
    /// Durable when it returns; `Ok(false)` if there is no such entry.
    pub async fn set_held(&self, id: QueueId, held: bool) -> Result<bool, SpoolError> {
        self.update(id, |entry| entry.held = held || entry.damaged.is_some())
            .await
    }

    /// Records that the sender got a delayed-delivery notice, so it is
    /// sent once. Durable when it returns; `Ok(false)` if not found.
    pub async fn mark_warned(&self, id: QueueId) -> Result<bool, SpoolError> {
        self.update(id, |entry| entry.warned = true).await
    }

    /// Releases a quarantined message: its quarantined recipients become
    /// pending and the next attempt is due at once. Durable when it returns;
    /// `Ok(false)` if there is no such entry.
    pub async fn release_quarantine(&self, id: QueueId) -> Result<bool, SpoolError> {
        self.update(id, |entry| {
            entry.quarantine = None;
            entry.next_attempt = 0;
            for rcpt in &mut entry.recipients {
                if rcpt.status == RecipientStatus::Quarantined {
                    rcpt.status = RecipientStatus::Pending;
                }
            }
        })
        .await
    }

    /// Releases a message for delivery (the operator's "release"): clears
    /// the hold and the quarantine, turns held and quarantined recipients
    /// back into pending ones and makes the next attempt due at once, in one
    /// durable change. `Ok(false)` if there is no such entry.
    pub async fn release(&self, id: QueueId) -> Result<bool, SpoolError> {
        self.update(id, |entry| {
            entry.held = entry.damaged.is_some();
            entry.quarantine = None;
            entry.next_attempt = 0;
            for rcpt in &mut entry.recipients {
                if matches!(
                    rcpt.status,
                    RecipientStatus::Held | RecipientStatus::Quarantined
                ) {
                    rcpt.status = RecipientStatus::Pending;
                }
            }
        })
        .await
    }

    /// Moves the next attempt to `next_attempt` (0 = now), for the operator's
    /// "retry now". Durable when it returns; `Ok(false)` if not found.
    pub async fn reschedule(&self, id: QueueId, next_attempt: u64) -> Result<bool, SpoolError> {
        self.update(id, |entry| entry.next_attempt = next_attempt)
            .await
    }

    /// Applies `change` to one entry and makes it durable.
    async fn update(
        &self,
        id: QueueId,
        change: impl Fn(&mut QueueEntry),
    ) -> Result<bool, SpoolError> {
        let changed = self.modify_entry(id, |entry| {
            change(entry);
            Ok(false)
        })?;
        if changed.is_none() {
            return Ok(false);
        }
        self.inner.committer.commit().await?;
        Ok(true)
    }

    /// Read-modify-write of one entry by compare-and-swap, retried when a
    /// concurrent change got in first. `change` returns whether the entry is
    /// done with; then entry and message are removed. `Ok(None)` when there
    /// is no such entry. Not durable until the caller commits.
    fn modify_entry(
        &self,
        id: QueueId,
        change: impl Fn(&mut QueueEntry) -> Result<bool, SpoolError>,
    ) -> Result<Option<Change>, SpoolError> {
        let inner = &self.inner;
        let key = id.to_key();
        loop {
            let Some(raw) = inner.entries.get(key)? else {
                return Ok(None);
            };
            let mut entry = decode_entry(id, &raw)?;
            let remove = change(&mut entry)?;
            let new = if remove {
                None
            } else {
                Some(encode_entry(&entry)?)
            };
            if inner
                .entries
                .compare_and_swap(key, Some(&raw), new)?
                .is_err()
            {
                continue;
            }
            if !remove {
                return Ok(Some(Change::Updated));
            }
            // Entry first: bytes left behind by a crash here are deleted at open.
            self.remove_location(id)?;
            self.decrement_count();
            return Ok(Some(Change::Removed));
        }
    }

    /// Removes an entry and its message (operator action). Durable when it
    /// returns; `Ok(false)` if neither existed.
    pub async fn remove(&self, id: QueueId) -> Result<bool, SpoolError> {
        let found = self.remove_now(id)?;
        if found {
            self.inner.committer.commit().await?;
        }
        Ok(found)
    }

    /// Deletes entry and message (entry first), without waiting for disk.
    fn remove_now(&self, id: QueueId) -> Result<bool, SpoolError> {
        let key = id.to_key();
        let had_entry = self.inner.entries.remove(key)?.is_some();
        let had_message = self.remove_location(id)?;
        if had_entry {
            self.decrement_count();
        }
        Ok(had_entry || had_message)
    }

    /// Drops a message's location and releases its records; whether it had
    /// one.
    fn remove_location(&self, id: QueueId) -> Result<bool, SpoolError> {
        let Some(raw) = self.inner.messages.remove(id.to_key())? else {
            return Ok(false);
        };
        match Location::decode(&raw) {
            Some(location) => self.inner.segments.release(&location),
            None => tracing::error!(%id, "removed an undecodable message location"),
        }
        Ok(true)
    }

    fn decrement_count(&self) {
        // Saturating: the count must never wrap even if bookkeeping slipped.
        let _ = self
            .inner
            .count
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// Key-value state of one plugin, in its own sled tree. Not
    /// group-committed: plugin state is best effort (sled flushes it in the
    /// background, and with any queue commit).
    pub fn kv(&self, namespace: &str) -> Result<KvStore, SpoolError> {
        KvStore::open(&self.inner.db, namespace)
    }

    /// Removes the expired keys of every plugin's kv namespace, including
    /// namespaces of plugins no longer configured; returns how many. Run
    /// periodically so counters and triplets that are never read again do
    /// not pile up.
    pub fn sweep_kv(&self) -> Result<usize, SpoolError> {
        let mut removed = 0;
        for name in self.inner.db.tree_names() {
            let Some(namespace) = KvStore::namespace_of_tree(&name) else {
                continue;
            };
            removed += KvStore::open(&self.inner.db, &namespace)?.sweep_expired()?;
        }
        Ok(removed)
    }

    /// Number of entries (damaged ones included).
    pub fn len(&self) -> usize {
        self.inner.count.load(Ordering::Relaxed)
    }

    /// Whether the queue holds no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits for everything written so far to be on disk (used at shutdown).
    pub async fn flush(&self) -> Result<(), SpoolError> {
        self.inner.committer.commit().await
    }

    /// Bytes available to unprivileged writers on the filesystem holding the
    /// spool. Measured at most once a second; the cached figure is returned
    /// in between, so it is cheap enough to ask per SMTP transaction.
    pub fn free_space(&self) -> Result<u64, SpoolError> {
        Ok(self.inner.space.get()?.bytes)
    }

    /// Free bytes and free inodes of the spool's filesystem (cached like
    /// [`Spool::free_space`]).
    pub fn free(&self) -> Result<Free, SpoolError> {
        self.inner.space.get()
    }

    /// Entries set aside at open because their bytes were missing or
    /// failed their checksum.
    pub fn damaged_at_open(&self) -> usize {
        self.inner.damaged
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.inner.segments.count()
    }

    /// How many times the committer has flushed, to observe group commit.
    pub fn flush_count(&self) -> u64 {
        self.inner.committer.flush_count()
    }
}

/// What `modify_entry` did to an entry.
enum Change {
    /// Rewritten with its new state.
    Updated,
    /// Removed, with its message.
    Removed,
}

/// Applies one attempt's outcomes to an entry; rejects unknown indexes.
/// `at` (unix seconds) dates the attempt in each recipient's history.
fn apply_outcomes(
    entry: &mut QueueEntry,
    outcomes: &[RecipientOutcome],
    at: u64,
) -> Result<(), SpoolError> {
    let count = entry.recipients.len();
    for outcome in outcomes {
        let rcpt = entry
            .recipients
            .get_mut(outcome.index)
            .ok_or(SpoolError::NoSuchRecipient {
                id: entry.id,
                index: outcome.index,
                count,
            })?;
        if rcpt.status.is_final() {
            tracing::warn!(
                id = %entry.id,
                index = outcome.index,
                status = ?rcpt.status,
                "ignoring outcome for a recipient that is already final"
            );
            continue;
        }
        rcpt.status = outcome.status;
        rcpt.attempts = rcpt.attempts.saturating_add(1);
        if let Some(reply) = &outcome.reply {
            rcpt.last_reply = Some(reply.clone());
            rcpt.push_history(AttemptRecord {
                at,
                reply: reply.clone(),
            });
        }
    }
    Ok(())
}

/// What `check_consistency` found.
struct Checked {
    /// Keys in `entries`.
    count: usize,
    /// Highest id seen in either tree.
    highest: u64,
    /// Entries set aside because their bytes are missing or damaged.
    damaged: usize,
}

fn decode_location(id: QueueId, raw: &[u8]) -> Result<Location, SpoolError> {
    Location::decode(raw).ok_or_else(|| SpoolError::Corrupt {
        id,
        reason: "undecodable message location".into(),
    })
}

/// Whether every record of `location` was found intact by the segment scan.
fn intact(id: QueueId, location: &Location, good: &GoodRecords) -> bool {
    location.extents.iter().all(|e| {
        good.records
            .get(&(e.segment, e.offset))
            .is_some_and(|h| h.id == id.as_u64() && h.len == e.len && h.crc == e.crc)
    })
}

/// Checks the index against the segments at open:
/// - a location without entry (an enqueue or removal cut short by a crash:
///   never acknowledged, or already delivered) is deleted;
/// - a location whose records are not all intact is deleted, and its entry
///   set aside: held, with the reason, counted, never delivered;
/// - an entry without location (only storage damage makes one) is set aside
///   the same way; an undecodable entry is logged and left out.
///
/// Intact locations' records are counted live in `segments`.
fn check_consistency(
    entries: &sled::Tree,
    messages: &sled::Tree,
    segments: &Segments,
    good: &GoodRecords,
) -> Result<Checked, SpoolError> {
    let mut checked = Checked {
        count: 0,
        highest: 0,
        damaged: 0,
    };
    for item in messages.iter() {
        let (key, raw) = item?;
        let Some(id) = QueueId::from_key(&key) else {
            tracing::error!(
                key_len = key.len(),
                "messages tree holds a malformed key; removed"
            );
            messages.remove(&key)?;
            continue;
        };
        checked.highest = checked.highest.max(id.as_u64());
        if !entries.contains_key(&key)? {
            tracing::warn!(%id, "deleting message bytes that have no queue entry");
            messages.remove(&key)?;
            continue;
        }
        match Location::decode(&raw).filter(|l| intact(id, l, good)) {
            Some(location) => segments.retain(&location),
            None => {
                // The entry, now without location, is set aside below.
                messages.remove(&key)?;
            }
        }
    }
    for item in entries.iter() {
        let (key, raw) = item?;
        checked.count += 1;
        let Some(id) = QueueId::from_key(&key) else {
            tracing::error!(
                key_len = key.len(),
                "entries tree holds a malformed key; ignored"
            );
            continue;
        };
        checked.highest = checked.highest.max(id.as_u64());
        let mut entry = match decode_entry(id, &raw) {
            Ok(entry) => entry,
            Err(e) => {
                tracing::error!(error = %e, "queue entry cannot be decoded; it will not be delivered");
                continue;
            }
        };
        if entry.damaged.is_some() {
            checked.damaged += 1;
            continue;
        }
        if messages.contains_key(&key)? {
            continue;
        }
        let reason = "message bytes missing or failing their checksum at open";
        tracing::error!(%id, reason, "queue entry set aside: held, will not be delivered");
        entry.damaged = Some(reason.into());
        entry.held = true;
        entries.insert(&key, encode_entry(&entry)?)?;
        checked.damaged += 1;
    }
    Ok(checked)
}

/// Removes a spooled message whose enqueue did not complete (commit failed,
/// or the caller stopped waiting), since no one acknowledged it.
struct AbortOnDrop<'a> {
    spool: &'a Spool,
    id: QueueId,
    armed: bool,
}

impl Drop for AbortOnDrop<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        match self.spool.remove_now(self.id) {
            Ok(_) => tracing::debug!(id = %self.id, "unacknowledged message removed"),
            Err(e) => {
                tracing::error!(id = %self.id, error = %e, "cannot remove unacknowledged message")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HISTORY_LIMIT;
    use std::collections::HashSet;
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    use std::time::Instant;

    fn new_message(n: usize, recipients: usize) -> NewMessage {
        let mut body = format!("Subject: test {n}\r\nX-Bin: \0\u{ff}\r\n\r\n").into_bytes();
        body.extend((0..=255u8).cycle().take(300 + n));
        body.extend_from_slice(b"\r\n");
        NewMessage {
            reverse_path: format!("sender{n}@example.org"),
            recipients: (0..recipients)
                .map(|i| format!("rcpt{i}@example.net"))
                .collect(),
            message: body,
            received_at: 1_700_000_000 + n as u64,
            client: "127.0.0.1:40000".into(),
            quarantine: None,
        }
    }

    fn outcome(index: usize, status: RecipientStatus, reply: &str) -> RecipientOutcome {
        RecipientOutcome {
            index,
            status,
            reply: Some(reply.into()),
        }
    }

    #[tokio::test]
    async fn enqueue_round_trips_byte_exact() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let msg = new_message(7, 2);
        let id = spool.enqueue(msg.clone()).await.unwrap();

        assert_eq!(spool.message(id).unwrap().unwrap(), msg.message);
        let entry = spool.entry(id).unwrap().unwrap();
        assert_eq!(entry.id, id);
        assert_eq!(entry.reverse_path, msg.reverse_path);
        assert_eq!(entry.received_at, msg.received_at);
        assert_eq!(entry.client, msg.client);
        assert_eq!(entry.size, msg.message.len() as u64);
        assert_eq!(
            (entry.attempts, entry.next_attempt, entry.held),
            (0, 0, false)
        );
        let addrs: Vec<_> = entry.recipients.iter().map(|r| r.address.clone()).collect();
        assert_eq!(addrs, msg.recipients);
        assert!(entry
            .recipients
            .iter()
            .all(|r| r.status == RecipientStatus::Pending && r.attempts == 0));
        assert_eq!(spool.len(), 1);
        assert_eq!(spool.entries().unwrap(), vec![entry]);
        let unknown = QueueId::from_u64(id.as_u64() + 1);
        assert_eq!(spool.entry(unknown).unwrap(), None);
        assert_eq!(spool.message(unknown).unwrap(), None);
    }

    #[tokio::test]
    async fn ids_are_unique_and_ordered() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let mut ids = Vec::new();
        for n in 0..50 {
            ids.push(spool.enqueue(new_message(n, 1)).await.unwrap());
        }
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        let listed: Vec<_> = spool.entries().unwrap().iter().map(|e| e.id).collect();
        assert_eq!(listed, ids);
        drop(spool);

        // After a restart new ids still come after the old ones.
        let spool = Spool::open(dir.path()).unwrap();
        let next = spool.enqueue(new_message(99, 1)).await.unwrap();
        assert!(next > ids[49]);
        assert_eq!(spool.len(), 51);
    }

    #[tokio::test]
    async fn quarantined_message_starts_quarantined_and_can_be_released() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let mut msg = new_message(1, 2);
        msg.quarantine = Some("virus found".into());
        let id = spool.enqueue(msg).await.unwrap();
        let entry = spool.entry(id).unwrap().unwrap();
        assert_eq!(entry.quarantine.as_deref(), Some("virus found"));
        assert!(entry
            .recipients
            .iter()
            .all(|r| r.status == RecipientStatus::Quarantined));

        assert!(spool.release_quarantine(id).await.unwrap());
        let entry = spool.entry(id).unwrap().unwrap();
        assert_eq!(entry.quarantine, None);
        assert!(entry
            .recipients
            .iter()
            .all(|r| r.status == RecipientStatus::Pending));
        assert!(!spool
            .release_quarantine(QueueId::from_u64(1))
            .await
            .unwrap());
    }

    #[test]
    fn debug_output_stays_small() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let text = format!("{spool:?}");
        assert!(text.starts_with("Spool { entries: 0,"), "{text}");
        assert!(text.len() < 100, "{text}");
    }

    #[test]
    fn second_open_of_a_live_spool_reports_locked() {
        let dir = tempfile::tempdir().unwrap();
        let _spool = Spool::open(dir.path()).unwrap();
        let err = Spool::open(dir.path()).unwrap_err();
        assert!(matches!(err, SpoolError::Locked { .. }), "{err}");
    }

    #[tokio::test]
    async fn enqueue_without_recipients_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let err = spool.enqueue(new_message(1, 0)).await.unwrap_err();
        assert!(matches!(err, SpoolError::NoRecipients), "{err}");
        assert_eq!(spool.len(), 0);
    }

    #[tokio::test]
    async fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let msg = new_message(3, 3);
        let id = spool.enqueue(msg.clone()).await.unwrap();
        let kept = spool.enqueue(new_message(4, 1)).await.unwrap();
        spool
            .record_attempt(
                id,
                vec![outcome(1, RecipientStatus::Deferred, "451 4.7.1 later")],
                Some(1_700_000_300),
            )
            .await
            .unwrap();
        let before = spool.entries().unwrap();
        drop(spool);

        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(spool.entries().unwrap(), before);
        assert_eq!(spool.message(id).unwrap().unwrap(), msg.message);
        assert_eq!(spool.len(), 2);
        assert!(spool.entry(kept).unwrap().is_some());
    }

    /// Environment variable telling the child role where its spool is.
    const CRASH_CHILD_DIR: &str = "SLUICE_SPOOL_CRASH_CHILD_DIR";
    /// Messages the parent reads before killing the child.
    const CRASH_ACKED: usize = 20;

    /// The child half of `kill9_after_enqueue_keeps_acknowledged_messages`:
    /// enqueues forever and prints each id once `enqueue` has returned.
    #[test]
    #[ignore = "run as a child process by kill9_after_enqueue_keeps_acknowledged_messages"]
    fn crash_child() {
        let dir = std::env::var(CRASH_CHILD_DIR)
            .expect("crash_child only runs as a child of the kill -9 test");
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let spool = Spool::open(Path::new(&dir)).unwrap();
            for n in 0.. {
                let id = spool.enqueue(new_message(n, 2)).await.unwrap();
                // stdout is line-buffered: the parent sees each line at once.
                println!("queued {id} {n}");
            }
        });
    }

    #[test]
    fn kill9_after_enqueue_keeps_acknowledged_messages() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = spawn_child("spool::tests::crash_child", CRASH_CHILD_DIR, dir.path());
        let stdout = child.0.stdout.take().unwrap();
        let mut acked = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let Some(rest) = line.strip_prefix("queued ") else {
                continue;
            };
            let (id, n) = rest.split_once(' ').unwrap();
            acked.push((id.parse::<QueueId>().unwrap(), n.parse::<usize>().unwrap()));
            if acked.len() == CRASH_ACKED {
                // Child::kill sends SIGKILL on unix: no destructor, no flush.
                child.0.kill().unwrap();
                break;
            }
        }
        let status = child.0.wait().unwrap();
        assert_eq!(acked.len(), CRASH_ACKED, "child exited early: {status}");

        let spool = Spool::open(dir.path()).unwrap();
        for (id, n) in &acked {
            let entry = spool.entry(*id).unwrap().expect("acknowledged entry lost");
            assert_eq!(entry.reverse_path, format!("sender{n}@example.org"));
            assert_eq!(
                spool.message(*id).unwrap().unwrap(),
                new_message(*n, 2).message
            );
        }
        // Whatever was mid-enqueue at the kill is either whole or absent.
        for entry in spool.entries().unwrap() {
            assert!(spool.message(entry.id).unwrap().is_some());
        }
        assert!(spool.len() >= CRASH_ACKED);
    }

    /// Environment variable telling the removal child where its spool is.
    const REMOVAL_CHILD_DIR: &str = "SLUICE_SPOOL_REMOVAL_CHILD_DIR";
    /// Messages the removal child delivers before and after its marker.
    const REMOVAL_BATCH: usize = 10;

    /// The child half of `kill9_after_unflushed_removal_redelivers_at_worst`:
    /// queues two batches, records each first batch message as delivered
    /// (removed, not flushed), queues a marker (whose commit carries those
    /// removals), removes the second batch, and waits to be killed.
    #[test]
    #[ignore = "run as a child process by kill9_after_unflushed_removal_redelivers_at_worst"]
    fn removal_crash_child() {
        let dir = std::env::var(REMOVAL_CHILD_DIR)
            .expect("removal_crash_child only runs as a child of the kill -9 test");
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let spool = Spool::open(Path::new(&dir)).unwrap();
            let mut ids = Vec::new();
            for n in 0..2 * REMOVAL_BATCH {
                let id = spool.enqueue(new_message(n, 1)).await.unwrap();
                println!("queued {id} {n}");
                ids.push(id);
            }
            let delivered = || vec![outcome(0, RecipientStatus::Delivered, "250 ok")];
            for id in &ids[..REMOVAL_BATCH] {
                let recorded = spool.record_attempt(*id, delivered(), None).await;
                assert_eq!(recorded.unwrap(), AttemptRecorded::Removed);
                println!("removed {id}");
            }
            let marker = spool.enqueue(new_message(99, 1)).await.unwrap();
            println!("marker {marker}");
            for id in &ids[REMOVAL_BATCH..] {
                let recorded = spool.record_attempt(*id, delivered(), None).await;
                assert_eq!(recorded.unwrap(), AttemptRecorded::Removed);
                println!("removed {id}");
            }
            println!("done");
            // Killed here, typically before sled's background flush.
            std::future::pending::<()>().await;
        });
    }

    #[test]
    fn kill9_after_unflushed_removal_redelivers_at_worst() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = spawn_child(
            "spool::tests::removal_crash_child",
            REMOVAL_CHILD_DIR,
            dir.path(),
        );
        let stdout = child.0.stdout.take().unwrap();
        let mut queued = Vec::new();
        let mut removed = Vec::new();
        let mut marker = None;
        let mut done = false;
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            if let Some(rest) = line.strip_prefix("queued ") {
                let (id, n) = rest.split_once(' ').unwrap();
                queued.push((id.parse::<QueueId>().unwrap(), n.parse::<usize>().unwrap()));
            } else if let Some(id) = line.strip_prefix("removed ") {
                removed.push(id.parse::<QueueId>().unwrap());
            } else if let Some(id) = line.strip_prefix("marker ") {
                marker = Some(id.parse::<QueueId>().unwrap());
            } else if line == "done" {
                done = true;
                // SIGKILL: no destructor, no flush.
                child.0.kill().unwrap();
                break;
            }
        }
        let status = child.0.wait().unwrap();
        assert!(done, "child exited early: {status}");
        assert_eq!(removed.len(), 2 * REMOVAL_BATCH);

        let spool = Spool::open(dir.path()).unwrap();
        let marker = marker.expect("marker line");
        assert!(
            spool.entry(marker).unwrap().is_some(),
            "acknowledged marker lost"
        );
        // Removals before the marker were made durable by its commit.
        for id in &removed[..REMOVAL_BATCH] {
            assert_eq!(spool.entry(*id).unwrap(), None);
            assert_eq!(spool.message(*id).unwrap(), None);
        }
        // Later ones are gone, or back whole and still to be delivered.
        let mut redelivered = 0;
        for (id, n) in &queued[REMOVAL_BATCH..] {
            match spool.entry(*id).unwrap() {
                None => assert_eq!(spool.message(*id).unwrap(), None),
                Some(entry) => {
                    redelivered += 1;
                    assert_eq!(entry.reverse_path, format!("sender{n}@example.org"));
                    assert!(attemptable_again(&entry), "{entry:?}");
                    assert_eq!(
                        spool.message(*id).unwrap().unwrap(),
                        new_message(*n, 1).message
                    );
                }
            }
        }
        println!("{redelivered} of {REMOVAL_BATCH} unflushed removals came back");
        let listed = spool.entries().unwrap();
        assert_eq!(listed.len(), spool.len());
        assert_eq!(spool.len(), 1 + redelivered);
    }

    /// Whether a recovered entry still has a recipient to deliver to.
    fn attemptable_again(entry: &QueueEntry) -> bool {
        entry
            .recipients
            .iter()
            .any(|r| r.status == RecipientStatus::Pending)
    }

    #[tokio::test]
    async fn removal_is_not_flushed_but_updates_are() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let id = spool.enqueue(new_message(1, 2)).await.unwrap();
        let before = spool.flush_count();
        let recorded = spool
            .record_attempt(
                id,
                vec![outcome(0, RecipientStatus::Deferred, "451 4.3.0 busy")],
                Some(1),
            )
            .await
            .unwrap();
        assert_eq!(recorded, AttemptRecorded::Updated);
        assert_eq!(spool.flush_count(), before + 1);
        let recorded = spool
            .record_attempt(
                id,
                vec![
                    outcome(0, RecipientStatus::Delivered, "250 ok"),
                    outcome(1, RecipientStatus::Failed, "550 no"),
                ],
                None,
            )
            .await
            .unwrap();
        assert_eq!(recorded, AttemptRecorded::Removed);
        assert_eq!(spool.flush_count(), before + 1);
        assert_eq!(spool.entry(id).unwrap(), None);
        assert!(spool.is_empty());
    }

    /// Runs the ignored test `name` of this binary as a child process, its
    /// spool directory in the environment variable `dir_var`, stdout piped.
    /// The child is killed when the guard drops, even if an assertion of
    /// the parent fails first.
    fn spawn_child(name: &str, dir_var: &str, dir: &Path) -> KillOnDrop {
        let child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", name, "--ignored", "--nocapture"])
            .env(dir_var, dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        KillOnDrop(child)
    }

    struct KillOnDrop(std::process::Child);

    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn group_commit_groups_concurrent_writers() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let before = spool.flush_count();
        // Released together, as 200 sessions finishing DATA at once.
        let start = Arc::new(tokio::sync::Barrier::new(200));
        let tasks: Vec<_> = (0..200)
            .map(|n| {
                let spool = spool.clone();
                let start = Arc::clone(&start);
                tokio::spawn(async move {
                    start.wait().await;
                    spool.enqueue(new_message(n, 1)).await
                })
            })
            .collect();
        let mut ids = HashSet::new();
        for task in tasks {
            ids.insert(task.await.unwrap().unwrap());
        }
        let flushes = spool.flush_count() - before;
        println!("200 concurrent enqueues: {flushes} flushes");
        assert_eq!(ids.len(), 200);
        assert_eq!(spool.len(), 200);
        assert!(flushes >= 1);
        assert!(flushes <= 50, "200 writes took {flushes} flushes");
    }

    #[tokio::test]
    async fn record_attempt_updates_then_removes() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let id = spool.enqueue(new_message(1, 3)).await.unwrap();
        let other = spool.enqueue(new_message(2, 1)).await.unwrap();

        let recorded = spool
            .record_attempt(
                id,
                vec![
                    outcome(0, RecipientStatus::Delivered, "250 2.0.0 ok"),
                    outcome(2, RecipientStatus::Deferred, "451 4.3.0 busy"),
                ],
                Some(1_700_000_600),
            )
            .await
            .unwrap();
        assert_eq!(recorded, AttemptRecorded::Updated);
        let entry = spool.entry(id).unwrap().unwrap();
        assert_eq!(entry.attempts, 1);
        assert_eq!(entry.next_attempt, 1_700_000_600);
        let states: Vec<_> = entry
            .recipients
            .iter()
            .map(|r| (r.status, r.last_reply.as_deref(), r.attempts))
            .collect();
        assert_eq!(
            states,
            vec![
                (RecipientStatus::Delivered, Some("250 2.0.0 ok"), 1),
                (RecipientStatus::Pending, None, 0),
                (RecipientStatus::Deferred, Some("451 4.3.0 busy"), 1),
            ]
        );
        let histories: Vec<Vec<&str>> = entry
            .recipients
            .iter()
            .map(|r| r.history.iter().map(|h| h.reply.as_str()).collect())
            .collect();
        assert_eq!(
            histories,
            vec![vec!["250 2.0.0 ok"], vec![], vec!["451 4.3.0 busy"]]
        );
        assert!(entry.recipients[0].history[0].at >= 1_700_000_000);

        // An outcome for an unknown recipient changes nothing.
        let err = spool
            .record_attempt(id, vec![outcome(3, RecipientStatus::Failed, "x")], None)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                SpoolError::NoSuchRecipient {
                    index: 3,
                    count: 3,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(spool.entry(id).unwrap().unwrap(), entry);

        // A final recipient stays final; the rest finish and the entry goes.
        let recorded = spool
            .record_attempt(
                id,
                vec![
                    outcome(0, RecipientStatus::Deferred, "should be ignored"),
                    outcome(1, RecipientStatus::Failed, "550 5.1.1 no such user"),
                    outcome(2, RecipientStatus::Delivered, "250 ok"),
                ],
                None,
            )
            .await
            .unwrap();
        assert_eq!(recorded, AttemptRecorded::Removed);
        assert_eq!(spool.entry(id).unwrap(), None);
        assert_eq!(spool.message(id).unwrap(), None);
        assert_eq!(spool.len(), 1);
        assert_eq!(
            spool.record_attempt(id, vec![], None).await.unwrap(),
            AttemptRecorded::NotFound
        );
        drop(spool);

        let spool = Spool::open(dir.path()).unwrap();
        let ids: Vec<_> = spool.entries().unwrap().iter().map(|e| e.id).collect();
        assert_eq!(ids, vec![other]);
    }

    #[tokio::test]
    async fn operator_actions_hold_reschedule_remove() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let id = spool.enqueue(new_message(1, 1)).await.unwrap();
        assert!(spool.set_held(id, true).await.unwrap());
        assert!(spool.entry(id).unwrap().unwrap().held);
        assert!(spool.reschedule(id, 42).await.unwrap());
        assert_eq!(spool.entry(id).unwrap().unwrap().next_attempt, 42);
        assert!(spool.set_held(id, false).await.unwrap());
        assert!(!spool.entry(id).unwrap().unwrap().held);

        assert!(spool.remove(id).await.unwrap());
        assert!(!spool.remove(id).await.unwrap());
        assert!(!spool.release(id).await.unwrap());
        assert!(!spool.set_held(id, true).await.unwrap());
        assert_eq!(spool.message(id).unwrap(), None);
        assert!(spool.is_empty());
    }

    #[tokio::test]
    async fn history_is_bounded_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let id = spool.enqueue(new_message(1, 1)).await.unwrap();
        for n in 0..(HISTORY_LIMIT + 3) {
            let reply = format!("451 4.4.1 attempt {n}");
            spool
                .record_attempt(
                    id,
                    vec![outcome(0, RecipientStatus::Deferred, &reply)],
                    Some(1),
                )
                .await
                .unwrap();
        }
        drop(spool);
        let spool = Spool::open(dir.path()).unwrap();
        let rcpt = &spool.entry(id).unwrap().unwrap().recipients[0];
        assert_eq!(rcpt.attempts as usize, HISTORY_LIMIT + 3);
        assert_eq!(rcpt.history.len(), HISTORY_LIMIT);
        assert_eq!(rcpt.history[0].reply, "451 4.4.1 attempt 3");
        assert_eq!(
            rcpt.history.last().map(|h| h.reply.as_str()),
            Some(format!("451 4.4.1 attempt {}", HISTORY_LIMIT + 2).as_str())
        );
    }

    #[tokio::test]
    async fn release_clears_hold_and_quarantine_and_makes_it_due() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let mut msg = new_message(1, 2);
        msg.quarantine = Some("suspicious".into());
        let id = spool.enqueue(msg).await.unwrap();
        assert!(spool.set_held(id, true).await.unwrap());
        assert!(spool.reschedule(id, 1_900_000_000).await.unwrap());

        assert!(spool.release(id).await.unwrap());
        let entry = spool.entry(id).unwrap().unwrap();
        assert!(!entry.held);
        assert_eq!(entry.quarantine, None);
        assert_eq!(entry.next_attempt, 0);
        assert!(entry
            .recipients
            .iter()
            .all(|r| r.status == RecipientStatus::Pending));
    }

    #[test]
    fn free_space_is_measured() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let first = spool.free_space().unwrap();
        assert!(first > 0);
        // Within the cache period the same figure comes back.
        assert_eq!(spool.free_space().unwrap(), first);
    }

    #[tokio::test]
    async fn damaged_records_are_set_aside_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let (good, orphan_entry) = {
            let spool = Spool::open(dir.path()).unwrap();
            let good = spool.enqueue(new_message(1, 1)).await.unwrap();
            let orphan_entry = spool.enqueue(new_message(2, 1)).await.unwrap();
            // Damage the store behind the spool's back.
            let inner = &spool.inner;
            inner.messages.remove(orphan_entry.to_key()).unwrap();
            inner
                .messages
                .insert(QueueId::from_u64(5).to_key(), &b"no entry"[..])
                .unwrap();
            inner
                .entries
                .insert(QueueId::from_u64(6).to_key(), &b"{not json"[..])
                .unwrap();
            spool.flush().await.unwrap();
            (good, orphan_entry)
        };

        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(spool.damaged_at_open(), 1);
        let listed = spool.entries().unwrap();
        let ids: Vec<_> = listed.iter().map(|e| e.id).collect();
        assert_eq!(ids, vec![good, orphan_entry]);
        let set_aside = &listed[1];
        assert!(
            set_aside.held && set_aside.damaged.is_some(),
            "{set_aside:?}"
        );
        // Releasing cannot send a message that has no bytes.
        assert!(spool.release(orphan_entry).await.unwrap());
        assert!(spool.entry(orphan_entry).unwrap().unwrap().held);
        let err = spool.entry(QueueId::from_u64(6)).unwrap_err();
        assert!(matches!(err, SpoolError::Corrupt { .. }), "{err}");
        assert_eq!(spool.message(QueueId::from_u64(5)).unwrap(), None);
        assert_eq!(spool.len(), 3);
        assert!(spool.remove(orphan_entry).await.unwrap());
        assert!(spool.remove(QueueId::from_u64(6)).await.unwrap());
        assert_eq!(spool.len(), 1);
        assert_eq!(
            spool.message(good).unwrap().unwrap(),
            new_message(1, 1).message
        );
    }

    /// The segment files of a spool directory, in order.
    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<_> = std::fs::read_dir(dir.join(crate::segment::SEGMENTS_DIR))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        files
    }

    #[tokio::test]
    async fn a_torn_tail_is_truncated_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let ids = {
            let spool = Spool::open(dir.path()).unwrap();
            let mut ids = Vec::new();
            for n in 0..5 {
                ids.push(spool.enqueue(new_message(n, 1)).await.unwrap());
            }
            ids
        };
        // A write cut short: half a record header and some payload.
        let segment = segment_files(dir.path()).pop().unwrap();
        let size = std::fs::metadata(&segment).unwrap().len();
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&segment)
            .unwrap();
        std::io::Write::write_all(&mut file, b"SLR1\0\0\0\0\0\0\0\x09\0\0\x10").unwrap();
        drop(file);

        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(std::fs::metadata(&segment).unwrap().len(), size);
        assert_eq!(spool.damaged_at_open(), 0);
        for (n, id) in ids.iter().enumerate() {
            assert_eq!(
                spool.message(*id).unwrap().unwrap(),
                new_message(n, 1).message
            );
        }
    }

    #[tokio::test]
    async fn a_record_failing_its_checksum_sets_its_message_aside() {
        let dir = tempfile::tempdir().unwrap();
        let (first, second) = {
            let spool = Spool::open(dir.path()).unwrap();
            let first = spool.enqueue(new_message(1, 1)).await.unwrap();
            let second = spool.enqueue(new_message(2, 1)).await.unwrap();
            (first, second)
        };
        // Flip one byte in the first message's payload.
        let segment = segment_files(dir.path()).pop().unwrap();
        let mut bytes = std::fs::read(&segment).unwrap();
        bytes[16 + 20 + 3] ^= 0x20;
        std::fs::write(&segment, bytes).unwrap();

        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(spool.damaged_at_open(), 1);
        let entry = spool.entry(first).unwrap().unwrap();
        assert!(entry.held, "{entry:?}");
        assert!(entry.damaged.unwrap().contains("checksum"));
        assert_eq!(spool.message(first).unwrap(), None);
        assert_eq!(
            spool.message(second).unwrap().unwrap(),
            new_message(2, 1).message
        );
        assert_eq!(spool.entries().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn large_messages_span_records_and_segments_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let options = Options {
            segment_limit: 2 << 20,
        };
        let spool = Spool::open_with(dir.path(), options).unwrap();
        let mut big = new_message(1, 1);
        big.message = (0..5 * 1024 * 1024 + 17).map(|i| (i % 251) as u8).collect();
        let id = spool.enqueue(big.clone()).await.unwrap();
        assert_eq!(spool.message(id).unwrap().unwrap(), big.message);
        assert!(spool.segment_count() >= 3, "{}", spool.segment_count());
        // sled holds no message bytes, so it writes no blob files.
        let blobs = dir.path().join("blobs");
        let blob_files = std::fs::read_dir(&blobs).map(|d| d.count()).unwrap_or(0);
        assert_eq!(blob_files, 0);
        drop(spool);
        let spool = Spool::open_with(dir.path(), options).unwrap();
        assert_eq!(spool.message(id).unwrap().unwrap(), big.message);
    }

    #[tokio::test]
    async fn segments_are_reclaimed_once_nothing_in_them_is_live() {
        let dir = tempfile::tempdir().unwrap();
        let options = Options {
            segment_limit: 2048,
        };
        let spool = Spool::open_with(dir.path(), options).unwrap();
        let mut ids = Vec::new();
        for n in 0..30 {
            ids.push(spool.enqueue(new_message(n, 1)).await.unwrap());
        }
        let written = segment_files(dir.path()).len();
        assert!(written >= 5, "{written} segments");
        let delivered = || vec![outcome(0, RecipientStatus::Delivered, "250 ok")];
        // Keep the last message: only the segments before it may go.
        for id in &ids[..29] {
            let recorded = spool.record_attempt(*id, delivered(), None).await.unwrap();
            assert_eq!(recorded, AttemptRecorded::Removed);
        }
        assert!(
            segment_files(dir.path()).len() <= 2,
            "{:?}",
            segment_files(dir.path())
        );
        assert_eq!(spool.segment_count(), segment_files(dir.path()).len());
        assert_eq!(
            spool.message(ids[29]).unwrap().unwrap(),
            new_message(29, 1).message
        );
        drop(spool);
        // At open, segments holding nothing live go too.
        let spool = Spool::open_with(dir.path(), options).unwrap();
        assert_eq!(
            spool.message(ids[29]).unwrap().unwrap(),
            new_message(29, 1).message
        );
        spool
            .record_attempt(ids[29], delivered(), None)
            .await
            .unwrap();
        drop(spool);
        let _spool = Spool::open_with(dir.path(), options).unwrap();
        assert_eq!(segment_files(dir.path()).len(), 1);
    }

    #[tokio::test]
    async fn cancelled_enqueue_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        // A fast disk may finish the flush before the first poll returns;
        // try until one enqueue is caught waiting for its flush.
        for n in 0..50 {
            let mut fut = Box::pin(spool.enqueue(new_message(n, 1)));
            if let Some(done) = poll_once(fut.as_mut()).await {
                let id = done.unwrap();
                assert!(spool.remove(id).await.unwrap());
                continue;
            }
            // Written, waiting for disk: dropping it must take it back.
            assert_eq!(spool.len(), 1);
            drop(fut);
            assert_eq!(spool.len(), 0);
            assert!(spool.entries().unwrap().is_empty());
            return;
        }
        panic!("never caught an enqueue waiting for its flush");
    }

    /// Polls a future exactly once.
    async fn poll_once<F: std::future::Future + Unpin>(fut: F) -> Option<F::Output> {
        let mut fut = fut;
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match std::pin::Pin::new(&mut fut).poll(cx) {
                std::task::Poll::Ready(v) => Some(v),
                std::task::Poll::Pending => None,
            })
        })
        .await
    }

    /// Not a benchmark: prints durable throughput for 20 concurrent writers
    /// of 5 KiB messages, and checks every write was acknowledged once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn throughput_report() {
        const WRITERS: usize = 20;
        const PER_WRITER: usize = 250;
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let body = vec![b'x'; 5 * 1024];
        let flushes_before = spool.flush_count();
        let start = Instant::now();
        let tasks: Vec<_> = (0..WRITERS)
            .map(|w| {
                let spool = spool.clone();
                let body = body.clone();
                tokio::spawn(async move {
                    let mut ids = Vec::with_capacity(PER_WRITER);
                    for _ in 0..PER_WRITER {
                        let msg = NewMessage {
                            reverse_path: format!("w{w}@example.org"),
                            recipients: vec!["r@example.net".into()],
                            message: body.clone(),
                            received_at: unix_now(),
                            client: "127.0.0.1:1".into(),
                            quarantine: None,
                        };
                        ids.push(spool.enqueue(msg).await.unwrap());
                    }
                    ids
                })
            })
            .collect();
        let mut all = HashSet::new();
        for task in tasks {
            all.extend(task.await.unwrap());
        }
        let elapsed = start.elapsed();
        let total = WRITERS * PER_WRITER;
        let flushes = spool.flush_count() - flushes_before;
        println!(
            "spool throughput: {total} durable 5 KiB messages from {WRITERS} writers in {:.2?} \
             = {:.0} msg/s, {flushes} flushes ({:.1} messages per flush)",
            elapsed,
            total as f64 / elapsed.as_secs_f64(),
            total as f64 / flushes.max(1) as f64
        );
        assert_eq!(all.len(), total);
        assert_eq!(spool.len(), total);
    }

    /// Fills a spool with 64 KiB messages and reopens it: every entry comes
    /// back, and the time `open` (segment scan and index check) takes is
    /// printed. 64 MiB in CI; for the 1 GiB figure run
    /// `SLUICE_RECOVERY_MIB=1024 cargo test --release -p sluice-spool
    /// recovery_time_report -- --nocapture`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn recovery_time_report() {
        const WRITERS: usize = 16;
        const SIZE: usize = 64 * 1024;
        let mib: usize = std::env::var("SLUICE_RECOVERY_MIB")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(64);
        let total = mib * (1 << 20) / SIZE;
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let fill = Instant::now();
        {
            let spool = Spool::open(dir.path()).unwrap();
            let tasks: Vec<_> = (0..WRITERS)
                .map(|w| {
                    let spool = spool.clone();
                    tokio::spawn(async move {
                        for n in (w..total).step_by(WRITERS) {
                            let mut msg = new_message(n, 1);
                            msg.message.resize(SIZE, b'x');
                            spool.enqueue(msg).await.unwrap();
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
        }
        let filled = fill.elapsed();
        let start = Instant::now();
        let spool = Spool::open(dir.path()).unwrap();
        let opened = start.elapsed();
        assert_eq!(spool.len(), total);
        println!(
            "recovery: {total} messages of {SIZE} bytes ({mib} MiB) in {} segments, written in \
             {filled:.2?}; open took {opened:.2?}",
            spool.segment_count()
        );
    }
}
