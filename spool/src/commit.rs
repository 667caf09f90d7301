//! Group commit: the one OS thread that makes the spool durable.
//!
//! Writers append to segments and insert into sled without syncing, then
//! `commit()` registers a oneshot waiter on a channel and awaits it. The
//! committer thread takes every waiter registered so far, syncs once (see
//! [`Durability::sync`]), and completes them all with the result; writers
//! that register during a sync wait for the next one. Many sessions thus
//! share one fsync, and the async runtime never blocks on disk.

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::error::SyncError;
use crate::segment::Segments;
use crate::SpoolError;

/// With no commit for this long, the committer syncs anyway.
const IDLE_SYNC: Duration = Duration::from_secs(1);

/// Completed with the outcome of the sync that covered the waiter's writes.
type Waiter = oneshot::Sender<Result<(), SyncError>>;

/// Everything one commit makes durable.
pub(crate) struct Durability {
    pub(crate) segments: Arc<Segments>,
    pub(crate) db: sled::Db,
    /// sled's log file, opened by us: sled's own flush ends in
    /// `sync_file_range`, which persists neither the file's size nor the
    /// device's write cache, so the commit fdatasyncs the file after it.
    pub(crate) db_file: File,
    pub(crate) db_path: PathBuf,
}

impl Durability {
    /// Message bytes first, then the index that points at them: a crash in
    /// between leaves bytes without index (garbage), never the reverse.
    fn sync(&self) -> Result<(), SyncError> {
        self.segments.sync_pending()?;
        self.db.flush().map_err(SyncError::Sled)?;
        self.db_file
            .sync_data()
            .map_err(|e| SyncError::file(self.db_path.clone(), e))
    }
}

/// Owns the committer thread; dropping it stops and joins the thread.
#[derive(Debug)]
pub(crate) struct Committer {
    /// Registers waiters; `None` once the committer is shutting down.
    tx: Option<mpsc::Sender<Waiter>>,
    /// Joined on drop so the database is closed when the spool is gone.
    thread: Option<JoinHandle<()>>,
    /// Number of flushes done, to show that commits are grouped.
    flushes: Arc<AtomicU64>,
}

impl Committer {
    /// Starts the committer thread.
    pub(crate) fn start(targets: Durability) -> Result<Self, SpoolError> {
        let (tx, rx) = mpsc::channel::<Waiter>();
        let flushes = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&flushes);
        let thread = std::thread::Builder::new()
            .name("spool-commit".into())
            .spawn(move || run(&targets, &rx, &counter))
            .map_err(SpoolError::Thread)?;
        Ok(Committer {
            tx: Some(tx),
            thread: Some(thread),
            flushes,
        })
    }

    /// Waits until everything written before this call is on disk.
    pub(crate) async fn commit(&self) -> Result<(), SpoolError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .as_ref()
            .ok_or(SpoolError::CommitterGone)?
            .send(done)
            .map_err(|_| SpoolError::CommitterGone)?;
        match wait.await {
            Ok(result) => result.map_err(SpoolError::Flush),
            // The thread dropped our waiter without answering: it died.
            Err(_) => Err(SpoolError::CommitterGone),
        }
    }

    /// How many flushes the committer has done.
    pub(crate) fn flush_count(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        // Closing the channel ends the loop once the pending waiters are served.
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("spool commit thread panicked");
            }
        }
    }
}

/// The committer loop: block for one waiter, gather the rest, sync once.
/// Waiters are gathered before the sync starts, and each registered after
/// its writes, so the sync covers every write of every waiter it answers.
fn run(targets: &Durability, rx: &mpsc::Receiver<Waiter>, flushes: &AtomicU64) {
    let mut batch = Vec::new();
    loop {
        let first = match rx.recv_timeout(IDLE_SYNC) {
            Ok(first) => first,
            // Nothing to answer: sync what plugins' key-value writes left
            // behind (sled's own background flusher is off).
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Err(e) = targets.sync() {
                    tracing::error!(error = %e, "idle spool sync failed");
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        batch.push(first);
        batch.extend(rx.try_iter());
        let result = targets.sync();
        flushes.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = &result {
            tracing::error!(error = %e, waiters = batch.len(), "spool flush failed");
        }
        for waiter in batch.drain(..) {
            // A writer that gave up (its task was cancelled) is not an error.
            let _ = waiter.send(result.clone());
        }
    }
}
