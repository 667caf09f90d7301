//! `KvStore`: the plugins' local key-value state (counters for rate limits,
//! greylisting triplets, caches). Each namespace (one per plugin) is its own
//! sled tree named `kv/<namespace>`; the host's kv imports call into it.
//!
//! A stored value is an 8-byte big-endian expiry (unix seconds, 0 = never)
//! followed by the value bytes. Counters are decimal ASCII so `get` returns
//! them readably. Writes are not group-committed: plugin state is best effort.

use std::fmt;
use std::sync::Arc;

use crate::clock::unix_now;
use crate::SpoolError;

/// Prefix of the kv trees, keeping them apart from the queue's trees.
const TREE_PREFIX: &str = "kv/";
/// Length of the expiry header in front of each value.
const HEADER: usize = 8;

/// Source of "now" in unix seconds; replaced in tests to step over TTLs.
type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// One namespace of key-value state.
#[derive(Clone)]
pub struct KvStore {
    /// The namespace's own tree.
    tree: sled::Tree,
    /// For error messages and logs.
    namespace: Arc<str>,
    /// Decides when a TTL has run out.
    clock: Clock,
}

impl fmt::Debug for KvStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvStore")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

/// A decoded record: expiry (0 = never) and the value bytes.
struct Record<'a> {
    expires_at: u64,
    value: &'a [u8],
}

impl KvStore {
    /// Opens (creates) the tree of `namespace` in `db`.
    pub(crate) fn open(db: &sled::Db, namespace: &str) -> Result<Self, SpoolError> {
        if namespace.is_empty() {
            return Err(SpoolError::EmptyNamespace);
        }
        Ok(KvStore {
            tree: db.open_tree(format!("{TREE_PREFIX}{namespace}"))?,
            namespace: namespace.into(),
            clock: Arc::new(unix_now),
        })
    }

    /// The same store, reading time from `clock`.
    #[cfg(test)]
    pub(crate) fn with_clock(mut self, clock: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The namespace a sled tree holds, if it is a kv tree.
    pub(crate) fn namespace_of_tree(tree_name: &[u8]) -> Option<String> {
        let name = std::str::from_utf8(tree_name).ok()?;
        let namespace = name.strip_prefix(TREE_PREFIX)?;
        (!namespace.is_empty()).then(|| namespace.to_owned())
    }

    /// The namespace this store belongs to.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The value of `key`, or None if it is missing or expired.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, SpoolError> {
        let Some(raw) = self.tree.get(key)? else {
            return Ok(None);
        };
        let record = self.decode(key, &raw)?;
        if self.is_expired(record.expires_at) {
            // Drop it now unless someone rewrote it meanwhile; sweep gets the rest.
            let _ = self.tree.compare_and_swap(key, Some(&raw), None::<&[u8]>)?;
            return Ok(None);
        }
        Ok(Some(record.value.to_vec()))
    }

    /// Stores `value` under `key`, expiring after `ttl_seconds` if given.
    pub fn set(&self, key: &str, value: &[u8], ttl_seconds: Option<u32>) -> Result<(), SpoolError> {
        self.tree
            .insert(key, encode(self.expiry(ttl_seconds), value))?;
        Ok(())
    }

    /// Atomically adds `delta` to the counter at `key` and returns the new
    /// value. A missing or expired counter counts as 0; the TTL applies when
    /// the counter is created (or re-created after expiry), not on each add.
    pub fn incr(&self, key: &str, delta: i64, ttl_seconds: Option<u32>) -> Result<i64, SpoolError> {
        loop {
            let old = self.tree.get(key)?;
            let (current, expires_at) = match &old {
                Some(raw) => {
                    let record = self.decode(key, raw)?;
                    if self.is_expired(record.expires_at) {
                        (0, self.expiry(ttl_seconds))
                    } else {
                        (self.parse_counter(key, record.value)?, record.expires_at)
                    }
                }
                None => (0, self.expiry(ttl_seconds)),
            };
            let new = current
                .checked_add(delta)
                .ok_or_else(|| SpoolError::Overflow {
                    namespace: self.namespace.to_string(),
                    key: key.to_string(),
                })?;
            let record = encode(expires_at, new.to_string().as_bytes());
            // Lost a race with another writer: read again and retry.
            if self.tree.compare_and_swap(key, old, Some(record))?.is_ok() {
                return Ok(new);
            }
        }
    }

    /// Every live key that starts with `prefix`, with its value, in key
    /// order.
    pub fn scan_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, SpoolError> {
        let mut found = Vec::new();
        for item in self.tree.scan_prefix(prefix) {
            let (key, raw) = item?;
            let key = String::from_utf8_lossy(&key).into_owned();
            let record = self.decode(&key, &raw)?;
            if !self.is_expired(record.expires_at) {
                found.push((key, record.value.to_vec()));
            }
        }
        Ok(found)
    }

    /// Removes `key`; removing a missing key is not an error.
    pub fn delete(&self, key: &str) -> Result<(), SpoolError> {
        self.tree.remove(key)?;
        Ok(())
    }

    /// Removes expired keys; returns how many.
    pub fn sweep_expired(&self) -> Result<usize, SpoolError> {
        let mut removed = 0;
        for item in self.tree.iter() {
            let (key, raw) = item?;
            let Some(expires_at) = expiry_of(&raw) else {
                tracing::warn!(
                    namespace = %self.namespace,
                    key = %String::from_utf8_lossy(&key),
                    "malformed key-value record left in place"
                );
                continue;
            };
            if !self.is_expired(expires_at) {
                continue;
            }
            // Only if unchanged: a concurrent set must not be swept away.
            if self
                .tree
                .compare_and_swap(&key, Some(&raw), None::<&[u8]>)?
                .is_ok()
            {
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn expiry(&self, ttl_seconds: Option<u32>) -> u64 {
        match ttl_seconds {
            // `max(1)` keeps a TTL from meaning "never" on a clock stuck at 0.
            Some(ttl) => (self.clock)().saturating_add(u64::from(ttl)).max(1),
            None => 0,
        }
    }

    fn is_expired(&self, expires_at: u64) -> bool {
        expires_at != 0 && expires_at <= (self.clock)()
    }

    fn decode<'a>(&self, key: &str, raw: &'a [u8]) -> Result<Record<'a>, SpoolError> {
        let expires_at = expiry_of(raw).ok_or_else(|| SpoolError::KvCorrupt {
            namespace: self.namespace.to_string(),
            key: key.to_string(),
        })?;
        Ok(Record {
            expires_at,
            value: &raw[HEADER..],
        })
    }

    fn parse_counter(&self, key: &str, value: &[u8]) -> Result<i64, SpoolError> {
        std::str::from_utf8(value)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| SpoolError::NotAnInteger {
                namespace: self.namespace.to_string(),
                key: key.to_string(),
            })
    }
}

/// The expiry header of a stored record; None if the record is too short.
fn expiry_of(raw: &[u8]) -> Option<u64> {
    let header: [u8; HEADER] = raw.get(..HEADER)?.try_into().ok()?;
    Some(u64::from_be_bytes(header))
}

fn encode(expires_at: u64, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + value.len());
    out.extend_from_slice(&expires_at.to_be_bytes());
    out.extend_from_slice(value);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Spool;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A store with a hand-driven clock starting at t=1000.
    fn store_with_clock(spool: &Spool, ns: &str) -> (KvStore, Arc<AtomicU64>) {
        let now = Arc::new(AtomicU64::new(1000));
        let clock = Arc::clone(&now);
        let kv = spool
            .kv(ns)
            .unwrap()
            .with_clock(move || clock.load(Ordering::SeqCst));
        (kv, now)
    }

    #[test]
    fn get_set_delete() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let kv = spool.kv("greylist").unwrap();
        assert_eq!(kv.get("k").unwrap(), None);
        kv.set("k", b"\x00binary\xff", None).unwrap();
        assert_eq!(kv.get("k").unwrap().unwrap(), b"\x00binary\xff");
        kv.set("k", b"", None).unwrap();
        assert_eq!(kv.get("k").unwrap().unwrap(), b"");
        kv.delete("k").unwrap();
        assert_eq!(kv.get("k").unwrap(), None);
        kv.delete("k").unwrap();
        assert!(matches!(
            spool.kv("").unwrap_err(),
            SpoolError::EmptyNamespace
        ));
    }

    #[test]
    fn scan_prefix_lists_live_keys_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let (kv, now) = store_with_clock(&spool, "reports");
        kv.incr("row/b", 2, None).unwrap();
        kv.set("row/a", b"x", None).unwrap();
        kv.set("row/gone", b"y", Some(5)).unwrap();
        kv.set("policy/a", b"z", None).unwrap();
        now.store(1005, Ordering::SeqCst);
        let rows = kv.scan_prefix("row/").unwrap();
        assert_eq!(
            rows,
            vec![
                ("row/a".to_owned(), b"x".to_vec()),
                ("row/b".to_owned(), b"2".to_vec())
            ]
        );
        assert!(kv.scan_prefix("none/").unwrap().is_empty());
    }

    #[test]
    fn ttl_expires_values() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let (kv, now) = store_with_clock(&spool, "ratelimit");
        kv.set("short", b"1", Some(10)).unwrap();
        kv.set("forever", b"2", None).unwrap();
        now.store(1009, Ordering::SeqCst);
        assert_eq!(kv.get("short").unwrap().unwrap(), b"1");
        now.store(1010, Ordering::SeqCst);
        assert_eq!(kv.get("short").unwrap(), None);
        assert_eq!(kv.get("forever").unwrap().unwrap(), b"2");
        // Re-setting gives a fresh TTL from the current time.
        kv.set("short", b"3", Some(5)).unwrap();
        now.store(1014, Ordering::SeqCst);
        assert_eq!(kv.get("short").unwrap().unwrap(), b"3");
    }

    #[test]
    fn ttl_expires_with_the_real_clock() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let kv = spool.kv("real").unwrap();
        kv.set("k", b"v", Some(1)).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        while kv.get("k").unwrap().is_some() {
            assert!(
                std::time::Instant::now() < deadline,
                "1 s TTL still alive after 3 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    #[test]
    fn sweep_removes_only_expired() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let (kv, now) = store_with_clock(&spool, "sweep");
        for i in 0..5 {
            kv.set(&format!("old{i}"), b"x", Some(1)).unwrap();
        }
        kv.set("young", b"y", Some(100)).unwrap();
        kv.set("forever", b"z", None).unwrap();
        assert_eq!(kv.sweep_expired().unwrap(), 0);
        now.store(1001, Ordering::SeqCst);
        assert_eq!(kv.sweep_expired().unwrap(), 5);
        assert_eq!(kv.sweep_expired().unwrap(), 0);
        assert_eq!(kv.tree.len(), 2);
        assert!(kv.get("young").unwrap().is_some());
    }

    #[test]
    fn spool_sweep_covers_every_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        for ns in ["a", "b"] {
            let kv = spool.kv(ns).unwrap();
            kv.set("gone", b"x", Some(0)).unwrap();
            kv.set("kept", b"y", Some(3600)).unwrap();
        }
        assert_eq!(spool.sweep_kv().unwrap(), 2);
        assert_eq!(spool.kv("a").unwrap().tree.len(), 1);
        assert_eq!(spool.kv("b").unwrap().get("kept").unwrap().unwrap(), b"y");
        assert_eq!(spool.sweep_kv().unwrap(), 0);
    }

    #[test]
    fn incr_counts_and_keeps_its_first_ttl() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let (kv, now) = store_with_clock(&spool, "counters");
        assert_eq!(kv.incr("c", 5, Some(60)).unwrap(), 5);
        now.store(1050, Ordering::SeqCst);
        // A later TTL does not extend the window.
        assert_eq!(kv.incr("c", -2, Some(60)).unwrap(), 3);
        assert_eq!(kv.get("c").unwrap().unwrap(), b"3");
        now.store(1060, Ordering::SeqCst);
        assert_eq!(kv.get("c").unwrap(), None);
        // Expired: starts again from 0 with a new TTL.
        assert_eq!(kv.incr("c", 1, Some(60)).unwrap(), 1);
        now.store(1119, Ordering::SeqCst);
        assert_eq!(kv.incr("c", 1, None).unwrap(), 2);

        kv.set("text", b"abc", None).unwrap();
        assert!(matches!(
            kv.incr("text", 1, None).unwrap_err(),
            SpoolError::NotAnInteger { .. }
        ));
        kv.set("max", i64::MAX.to_string().as_bytes(), None)
            .unwrap();
        assert!(matches!(
            kv.incr("max", 1, None).unwrap_err(),
            SpoolError::Overflow { .. }
        ));
        assert_eq!(
            kv.get("max").unwrap().unwrap(),
            i64::MAX.to_string().as_bytes()
        );
    }

    #[test]
    fn incr_is_atomic_across_threads() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let kv = spool.kv("atomic").unwrap();
        std::thread::scope(|s| {
            for _ in 0..8 {
                let kv = kv.clone();
                s.spawn(move || {
                    for _ in 0..1000 {
                        kv.incr("hits", 1, Some(3600)).unwrap();
                    }
                });
            }
        });
        assert_eq!(kv.get("hits").unwrap().unwrap(), b"8000");
        assert_eq!(kv.incr("hits", 0, None).unwrap(), 8000);
    }

    #[test]
    fn namespaces_are_isolated_and_persist() {
        let dir = tempfile::tempdir().unwrap();
        {
            let spool = Spool::open(dir.path()).unwrap();
            let a = spool.kv("plugin-a").unwrap();
            let b = spool.kv("plugin-b").unwrap();
            a.set("shared", b"from a", None).unwrap();
            assert_eq!(b.get("shared").unwrap(), None);
            b.set("shared", b"from b", None).unwrap();
            a.incr("n", 2, None).unwrap();
            assert_eq!(a.get("shared").unwrap().unwrap(), b"from a");
            assert_eq!(b.get("n").unwrap(), None);
            b.delete("shared").unwrap();
            assert_eq!(a.get("shared").unwrap().unwrap(), b"from a");
            // A namespace named like a queue tree stays apart from the queue.
            let tricky = spool.kv("entries").unwrap();
            tricky.set("x", b"y", None).unwrap();
            assert!(spool.entries().unwrap().is_empty());
        }
        // Dropping the spool flushes sled; the state is still there.
        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(
            spool.kv("plugin-a").unwrap().get("n").unwrap().unwrap(),
            b"2"
        );
        assert_eq!(spool.kv("plugin-b").unwrap().get("shared").unwrap(), None);
    }

    #[test]
    fn malformed_record_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let kv = spool.kv("broken").unwrap();
        kv.tree.insert("k", &b"abc"[..]).unwrap();
        assert!(matches!(
            kv.get("k").unwrap_err(),
            SpoolError::KvCorrupt { .. }
        ));
        assert!(matches!(
            kv.incr("k", 1, None).unwrap_err(),
            SpoolError::KvCorrupt { .. }
        ));
        assert_eq!(kv.sweep_expired().unwrap(), 0);
    }
}
