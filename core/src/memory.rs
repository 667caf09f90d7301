//! The server-wide budget of message bytes held whole in memory.
//!
//! A message arrives and is kept in the spool's segment files, and most
//! readers take it by positioned reads (see `pipeline::message`, and
//! delivery, which copies it to a Maildir or a next hop a piece at a time).
//! A few steps need it whole in one buffer: DKIM/ARC/DMARC verification
//! (mail-auth), DKIM signing, and the MIME parse behind a plugin's
//! `body-text` and `attachments`. Each of them first reserves the message's size here
//! (`[server] message_memory`, 64 MiB by default), so many large messages
//! at once wait for each other instead of all being resident: 30 sessions of
//! 20 MiB hold at most the budget, not 600 MiB. A message larger than the
//! whole budget takes all of it and runs alone.
//!
//! The budget bounds resident memory only if a freed buffer goes back to
//! the system: [`return_large_buffers`] makes glibc map every allocation of
//! 1 MiB or more on its own and unmap it when freed. By default glibc
//! raises that threshold after the first such free (up to 32 MiB) and keeps
//! later message buffers in its arenas: with 30 sessions of 20 MiB checked
//! by builtin:auth, RSS grew by 70 MiB that way, by 39 MiB with this.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The budget; cheap to clone, clones share it.
#[derive(Clone, Debug)]
pub struct MessageMemory {
    permits: Arc<Semaphore>,
    /// The whole budget in octets (at most `u32::MAX`: one reservation is
    /// one semaphore acquisition).
    total: u32,
}

/// Octets reserved until dropped.
#[derive(Debug)]
pub struct MemoryPermit {
    _permit: Option<OwnedSemaphorePermit>,
}

impl MessageMemory {
    pub fn new(bytes: u64) -> Self {
        let total = u32::try_from(bytes).unwrap_or(u32::MAX).max(1);
        MessageMemory {
            permits: Arc::new(Semaphore::new(total as usize)),
            total,
        }
    }

    /// Waits until `len` octets (or the whole budget, for a message larger
    /// than it) are free, and holds them.
    pub async fn reserve(&self, len: u64) -> MemoryPermit {
        let wanted = u32::try_from(len).unwrap_or(u32::MAX).min(self.total);
        if wanted == 0 {
            return MemoryPermit { _permit: None };
        }
        // The semaphore is never closed, so acquiring only fails if it were.
        let permit = Arc::clone(&self.permits)
            .acquire_many_owned(wanted)
            .await
            .ok();
        MemoryPermit { _permit: permit }
    }

    /// Octets not reserved right now.
    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }
}

/// Where allocations start being mapped on their own (see the module docs).
const MMAP_THRESHOLD: i32 = 1 << 20;

/// Makes large allocations go back to the system when freed (glibc; a
/// no-op elsewhere). Called once at start.
pub fn return_large_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter, under glibc's own
    // locks; it touches no memory of ours.
    unsafe {
        if libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1 {
            tracing::warn!("cannot set the allocator's mmap threshold");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reservations_wait_for_each_other() {
        let memory = MessageMemory::new(100);
        let first = memory.reserve(60).await;
        assert_eq!(memory.available(), 40);
        let second = memory.reserve(60);
        tokio::pin!(second);
        assert!(futures_poll_once(&mut second).await.is_none());
        drop(first);
        let _second = second.await;
        assert_eq!(memory.available(), 40);
    }

    #[tokio::test]
    async fn a_message_larger_than_the_budget_takes_all_of_it() {
        let memory = MessageMemory::new(100);
        let all = memory.reserve(1 << 30).await;
        assert_eq!(memory.available(), 0);
        drop(all);
        assert_eq!(memory.available(), 100);
    }

    /// Polls a future once: `Some` if it completed.
    async fn futures_poll_once<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
        tokio::time::timeout(std::time::Duration::from_millis(20), f)
            .await
            .ok()
    }
}
