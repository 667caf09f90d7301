//! Free space of the filesystem holding the spool, for backpressure: the
//! SMTP session asks before every transaction, so the `statvfs` result is
//! cached for a second rather than measured per MAIL FROM.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::SpoolError;

/// How long a measurement is reused.
const CACHE_FOR: Duration = Duration::from_secs(1);

pub(crate) struct FreeSpace {
    /// The spool directory; any path on the filesystem would do.
    path: PathBuf,
    /// The last measurement and when it was taken.
    cached: Mutex<Option<(Instant, u64)>>,
}

impl FreeSpace {
    pub(crate) fn new(path: PathBuf) -> Self {
        FreeSpace {
            path,
            cached: Mutex::new(None),
        }
    }

    /// Bytes available to unprivileged writers (`f_bavail`: the blocks
    /// reserved for root are not the spool's to use).
    pub(crate) fn get(&self) -> Result<u64, SpoolError> {
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, bytes)) = *cached {
            if at.elapsed() < CACHE_FOR {
                return Ok(bytes);
            }
        }
        let stat = rustix::fs::statvfs(&self.path).map_err(|e| SpoolError::FreeSpace {
            path: self.path.clone(),
            source: e.into(),
        })?;
        let bytes = stat.f_bavail.saturating_mul(stat.f_frsize);
        *cached = Some((Instant::now(), bytes));
        Ok(bytes)
    }
}
