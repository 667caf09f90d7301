//! Free space and free inodes of the filesystem holding the spool, for
//! backpressure: the SMTP session asks before every transaction, so the
//! `statvfs` result is cached for a second rather than measured per MAIL
//! FROM.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::SpoolError;

/// How long a measurement is reused.
const CACHE_FOR: Duration = Duration::from_secs(1);

/// One measurement of the spool's filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Free {
    /// Bytes available to unprivileged writers (`f_bavail`: the blocks
    /// reserved for root are not the spool's to use).
    pub bytes: u64,
    /// Inodes available to unprivileged writers; `None` on filesystems
    /// that have no fixed inode table (they report a total of 0).
    pub inodes: Option<u64>,
}

pub(crate) struct FreeSpace {
    /// The spool directory; any path on the filesystem would do.
    path: PathBuf,
    /// The last measurement and when it was taken.
    cached: Mutex<Option<(Instant, Free)>>,
}

impl FreeSpace {
    pub(crate) fn new(path: PathBuf) -> Self {
        FreeSpace {
            path,
            cached: Mutex::new(None),
        }
    }

    pub(crate) fn get(&self) -> Result<Free, SpoolError> {
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, free)) = *cached {
            if at.elapsed() < CACHE_FOR {
                return Ok(free);
            }
        }
        let stat = rustix::fs::statvfs(&self.path).map_err(|e| SpoolError::FreeSpace {
            path: self.path.clone(),
            source: e.into(),
        })?;
        let free = Free {
            bytes: stat.f_bavail.saturating_mul(stat.f_frsize),
            inodes: (stat.f_files > 0).then_some(stat.f_favail),
        };
        *cached = Some((Instant::now(), free));
        Ok(free)
    }
}
