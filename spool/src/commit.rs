//! Group commit: the one OS thread that calls the blocking `db.flush()`.
//!
//! Writers insert into sled without flushing, then `commit()` registers a
//! oneshot waiter on a channel and awaits it. The committer thread takes every
//! waiter registered so far, flushes once, and completes them all with the
//! result; writers that register during a flush wait for the next one. Many
//! sessions thus share one fsync, and the async runtime never blocks on disk.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use crate::SpoolError;

/// Completed with the outcome of the flush that covered the waiter's writes.
type Waiter = oneshot::Sender<Result<(), sled::Error>>;

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
    /// Starts the committer thread for `db`.
    pub(crate) fn start(db: sled::Db) -> Result<Self, SpoolError> {
        let (tx, rx) = mpsc::channel::<Waiter>();
        let flushes = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&flushes);
        let thread = std::thread::Builder::new()
            .name("spool-commit".into())
            .spawn(move || run(&db, &rx, &counter))
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

/// The committer loop: block for one waiter, gather the rest, flush once.
fn run(db: &sled::Db, rx: &mpsc::Receiver<Waiter>, flushes: &AtomicU64) {
    let mut batch = Vec::new();
    while let Ok(first) = rx.recv() {
        batch.push(first);
        batch.extend(rx.try_iter());
        let result = db.flush().map(|_| ());
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
