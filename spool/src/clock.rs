//! The wall clock in unix seconds: queue ids begin with it and key-value
//! expiries are measured against it. A module of its own so `spool.rs` and
//! `kv.rs` both read it without importing each other; delivery reads the
//! spool's times against it too.

use std::time::{SystemTime, UNIX_EPOCH};

/// Current wall-clock time in unix seconds.
pub fn unix_now() -> u64 {
    // A clock before 1970 is a broken host; 0 keeps ids valid regardless.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
