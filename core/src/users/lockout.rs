//! Failed-AUTH accounting: failures are counted per client IP and per user
//! name in a window; a key with `max_failures` failures in the window is
//! locked out until the window (started by its first failure) has passed.
//! State is in memory only and bounded; the caller passes the clock, so the
//! rules are tested without waiting.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Keys remembered per table. When full, expired entries are swept; if
/// that is not enough the older half is dropped, so a flood of distinct
/// names cannot grow memory without bound.
const MAX_ENTRIES: usize = 10_000;

/// Why an attempt is refused before its password is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Locked {
    Client,
    User,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
}

pub struct FailureLimiter {
    max_failures: u32,
    window: Duration,
    clients: Mutex<HashMap<IpAddr, Window>>,
    users: Mutex<HashMap<String, Window>>,
}

impl FailureLimiter {
    pub fn new(max_failures: u32, window: Duration) -> Self {
        FailureLimiter {
            max_failures: max_failures.max(1),
            window,
            clients: Mutex::new(HashMap::new()),
            users: Mutex::new(HashMap::new()),
        }
    }

    /// Whether an attempt from `ip` for `user` must be refused now.
    pub fn check(&self, ip: IpAddr, user: &str, now: Instant) -> Option<Locked> {
        if self.locked(&self.clients, &ip, now) {
            return Some(Locked::Client);
        }
        if self.locked(&self.users, &user.to_lowercase(), now) {
            return Some(Locked::User);
        }
        None
    }

    pub fn record_failure(&self, ip: IpAddr, user: &str, now: Instant) {
        self.bump(&self.clients, ip, now);
        self.bump(&self.users, user.to_lowercase(), now);
    }

    /// A successful login clears the user's failures (not the client's: one
    /// valid account must not reset the count of a client guessing others).
    pub fn record_success(&self, user: &str) {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        users.remove(&user.to_lowercase());
    }

    fn locked<K: Eq + Hash>(
        &self,
        table: &Mutex<HashMap<K, Window>>,
        key: &K,
        now: Instant,
    ) -> bool {
        let table = table.lock().unwrap_or_else(|e| e.into_inner());
        table.get(key).is_some_and(|w| {
            now.saturating_duration_since(w.started) < self.window
                && w.failures >= self.max_failures
        })
    }

    fn bump<K: Eq + Hash + Clone>(&self, table: &Mutex<HashMap<K, Window>>, key: K, now: Instant) {
        let mut table = table.lock().unwrap_or_else(|e| e.into_inner());
        if table.len() >= MAX_ENTRIES {
            let window = self.window;
            table.retain(|_, w| now.saturating_duration_since(w.started) < window);
            if table.len() >= MAX_ENTRIES {
                // Still full of live entries: forget the oldest half.
                let mut starts: Vec<Instant> = table.values().map(|w| w.started).collect();
                starts.sort_unstable();
                let cutoff = starts[starts.len() / 2];
                table.retain(|_, w| w.started > cutoff);
            }
        }
        let entry = table.entry(key).or_insert(Window {
            started: now,
            failures: 0,
        });
        if now.saturating_duration_since(entry.started) >= self.window {
            *entry = Window {
                started: now,
                failures: 0,
            };
        }
        entry.failures = entry.failures.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn client_is_locked_after_max_failures_until_the_window_passes() {
        let limiter = FailureLimiter::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..3 {
            assert_eq!(limiter.check(ip(1), &format!("u{i}"), t0), None);
            limiter.record_failure(ip(1), &format!("u{i}"), t0);
        }
        assert_eq!(limiter.check(ip(1), "other", t0), Some(Locked::Client));
        assert_eq!(limiter.check(ip(2), "u0", t0), None);
        let later = t0 + Duration::from_secs(60);
        assert_eq!(limiter.check(ip(1), "other", later), None);
    }

    #[test]
    fn user_is_locked_whatever_the_client() {
        let limiter = FailureLimiter::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        limiter.record_failure(ip(1), "Alice", t0);
        limiter.record_failure(ip(2), "alice", t0);
        assert_eq!(limiter.check(ip(3), "ALICE", t0), Some(Locked::User));
        assert_eq!(limiter.check(ip(3), "bob", t0), None);
    }

    #[test]
    fn success_clears_the_user_but_not_the_client() {
        let limiter = FailureLimiter::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        limiter.record_failure(ip(1), "alice", t0);
        limiter.record_success("alice");
        limiter.record_failure(ip(2), "alice", t0);
        assert_eq!(limiter.check(ip(3), "alice", t0), None);
        limiter.record_failure(ip(1), "bob", t0);
        assert_eq!(limiter.check(ip(1), "carol", t0), Some(Locked::Client));
    }

    #[test]
    fn failures_outside_the_window_start_a_new_one() {
        let limiter = FailureLimiter::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        limiter.record_failure(ip(1), "a", t0);
        limiter.record_failure(ip(1), "b", t0 + Duration::from_secs(61));
        assert_eq!(
            limiter.check(ip(1), "c", t0 + Duration::from_secs(62)),
            None
        );
    }

    #[test]
    fn memory_stays_bounded() {
        let limiter = FailureLimiter::new(5, Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..(3 * MAX_ENTRIES) {
            limiter.record_failure(ip(1), &format!("user{i}"), t0);
        }
        let users = limiter.users.lock().unwrap().len();
        assert!(users <= MAX_ENTRIES, "{users}");
    }
}
