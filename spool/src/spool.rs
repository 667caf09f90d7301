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
    AttemptRecord, AttemptRecorded, Envelope, MessageBytes, MessageReader, NewMessage, QueueEntry,
    QueueId, Recipient, RecipientOutcome, RecipientStatus, SpoolError, StagedMessage,
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
        let location = self.inner.segments.append(id, &msg.message)?;
        self.store(id, msg.envelope(), location).await
    }

    /// Starts writing a message under an id from [`Spool::allocate_id`]: its
    /// bytes go to disk as they are written, and it is queued by
    /// [`StagedMessage::commit`].
    pub fn stage(&self, id: QueueId) -> StagedMessage {
        StagedMessage::new(self.clone(), id)
    }

    pub(crate) fn segments(&self) -> &Arc<Segments> {
        &self.inner.segments
    }

    /// Queues a message whose records are written: index, then entry, then
    /// the group commit. Takes over `location`'s records (released on error).
    pub(crate) async fn store(
        &self,
        id: QueueId,
        envelope: Envelope,
        location: Location,
    ) -> Result<QueueId, SpoolError> {
        let inner = &self.inner;
        if envelope.recipients.is_empty() {
            inner.segments.release(&location);
            return Err(SpoolError::NoRecipients);
        }
        let status = if envelope.quarantine.is_some() {
            RecipientStatus::Quarantined
        } else {
            RecipientStatus::Pending
        };
        let mut recipient_dsn = envelope.recipient_dsn.into_iter();
        let entry = QueueEntry {
            id,
            reverse_path: envelope.reverse_path,
            recipients: envelope
                .recipients
                .into_iter()
                .map(|address| Recipient {
                    address,
                    status,
                    last_reply: None,
                    attempts: 0,
                    history: Vec::new(),
                    dsn: recipient_dsn.next().unwrap_or_default(),
                })
                .collect(),
            received_at: envelope.received_at,
            client: envelope.client,
            size: location.len(),
            attempts: 0,
            next_attempt: 0,
            held: false,
            quarantine: envelope.quarantine,
            warned: false,
            damaged: None,
            dsn: envelope.dsn,
        };
        let json = match encode_entry(&entry) {
            Ok(json) => json,
            Err(e) => {
                inner.segments.release(&location);
                return Err(e);
            }
        };
        let key = id.to_key();
        // Bytes, then location, then entry, and no sled transaction or batch:
        // those take sled's global write lock, which waits for every running
        // flush and would serialize writers behind fsyncs. A crash in between
        // leaves bytes or a location without entry, never acknowledged, which
        // `open` deletes.
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

    /// A reader of the message's bytes by offset, loading one record at a
    /// time (see [`MessageReader`]).
    pub fn reader(&self, id: QueueId) -> Result<Option<MessageReader>, SpoolError> {
        let Some(raw) = self.inner.messages.get(id.to_key())? else {
            return Ok(None);
        };
        let location = decode_location(id, &raw)?;
        Ok(Some(MessageReader::new(
            Arc::clone(&self.inner.segments),
            id,
            location,
        )))
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

    /// Removes every quarantined message received before `received_before`
    /// (unix seconds) and returns the removed entries, for
    /// the caller to log. An entry released meanwhile is left alone (the
    /// removal is a compare-and-swap on what was read). Blocking (walks
    /// the entries tree); not waited for on disk: a removal lost to a
    /// crash is made again by the next sweep.
    pub fn expire_quarantined(&self, received_before: u64) -> Result<Vec<QueueEntry>, SpoolError> {
        let mut removed = Vec::new();
        for item in self.inner.entries.iter() {
            let (key, raw) = item?;
            let Some(entry) = self.usable_entry(&key, &raw).ok().flatten() else {
                continue;
            };
            if entry.quarantine.is_none() || entry.received_at >= received_before {
                continue;
            }
            let swapped = self
                .inner
                .entries
                .compare_and_swap(&key, Some(&raw), None::<&[u8]>)?;
            if swapped.is_err() {
                continue;
            }
            // Entry first, as in every removal: bytes left behind by a
            // crash here are deleted at open.
            self.remove_location(entry.id)?;
            self.decrement_count();
            removed.push(entry);
        }
        Ok(removed)
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
mod tests;
