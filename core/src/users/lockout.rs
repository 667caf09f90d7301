//! Failed-AUTH accounting on this node: attempts are counted per client
//! ([`ClientKey`]: an IPv4 address or an IPv6 network) and per user name in
//! a window; a key with `max_failures` attempts counted in the window is
//! locked out until the window (started by its first attempt) has passed.
//!
//! An attempt counts as a failure from the moment it is reserved, before
//! its password is checked; a success gives its place back. So however many
//! attempts for one key arrive at once, at most `max_failures` of them are
//! verified (argon2) per window: the others are refused without hashing.
//!
//! State is in memory and bounded; the caller passes the clock, so the
//! rules are tested without waiting. [`super::shared_lockout`] keeps the
//! same counts in Redis for several nodes.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::client_key::ClientKey;

/// Keys remembered per table. When full, expired entries are swept; if
/// that is not enough, the older half of the entries that are neither
/// locked nor in flight is dropped. A locked entry is never dropped to make
/// room (a flood of new names must not unlock a client): the new key is
/// refused instead, with a temporary failure.
const MAX_ENTRIES: usize = 10_000;

/// Why an attempt is refused before its password is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Locked {
    Client,
    User,
}

/// Why an attempt could not be reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Locked(Locked),
    /// The table is full of locked or in-flight entries: try later.
    Full,
}

/// How a reserved attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Wrong credentials: the reservation stays counted.
    Failed,
    /// Right credentials: the client's place is given back and the user's
    /// earlier failures are forgotten (not the client's: one valid account
    /// must not reset the count of a client guessing others).
    Succeeded,
    /// The password was never checked (overload, internal error): the
    /// places are given back.
    Abandoned,
}

/// A reserved attempt; settle it with [`FailureLimiter::settle`]. One
/// never settled (its session was dropped mid-check) stays counted as a
/// failure until its window passes.
#[derive(Debug)]
#[must_use = "an attempt is counted as failed until it is settled"]
pub struct Attempt {
    client: ClientKey,
    /// Lower-cased.
    user: String,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    /// Failures plus attempts in flight.
    counted: u32,
    /// Attempts reserved and not yet settled.
    in_flight: u32,
}

pub struct FailureLimiter {
    max_failures: u32,
    window: Duration,
    /// Always locked before `users` when both are held.
    clients: Mutex<HashMap<ClientKey, Window>>,
    users: Mutex<HashMap<String, Window>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update is a few integer writes: a panic elsewhere cannot leave
    // a table half-changed, so a poisoned lock is used as is.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
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

    pub fn max_failures(&self) -> u32 {
        self.max_failures
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    /// Counts an attempt from `client` for `user` as a failure unless one
    /// of them is already locked out (or there is no room to count it).
    pub fn reserve(&self, client: ClientKey, user: &str, now: Instant) -> Result<Attempt, Refused> {
        let user = user.to_lowercase();
        let mut clients = lock(&self.clients);
        let mut users = lock(&self.users);
        if self.is_locked(clients.get(&client), now) {
            return Err(Refused::Locked(Locked::Client));
        }
        if self.is_locked(users.get(&user), now) {
            return Err(Refused::Locked(Locked::User));
        }
        if !self.make_room(&mut clients, &client, now) || !self.make_room(&mut users, &user, now) {
            return Err(Refused::Full);
        }
        self.count(&mut clients, client, now);
        self.count(&mut users, user.clone(), now);
        Ok(Attempt { client, user })
    }

    /// Ends a reserved attempt.
    pub fn settle(&self, attempt: Attempt, outcome: Outcome, now: Instant) {
        self.settle_one(&self.clients, &attempt.client, outcome, false, now);
        self.settle_one(&self.users, &attempt.user, outcome, true, now);
    }

    fn live(&self, window: &Window, now: Instant) -> bool {
        now.saturating_duration_since(window.started) < self.window
    }

    fn is_locked(&self, window: Option<&Window>, now: Instant) -> bool {
        window.is_some_and(|w| self.live(w, now) && w.counted >= self.max_failures)
    }

    /// Whether `key` has or can get an entry in `table`.
    fn make_room<K: Eq + Hash + Clone>(
        &self,
        table: &mut HashMap<K, Window>,
        key: &K,
        now: Instant,
    ) -> bool {
        if table.len() < MAX_ENTRIES || table.contains_key(key) {
            return true;
        }
        table.retain(|_, w| self.live(w, now));
        if table.len() < MAX_ENTRIES {
            return true;
        }
        let mut idle: Vec<(Instant, K)> = table
            .iter()
            .filter(|(_, w)| w.counted < self.max_failures && w.in_flight == 0)
            .map(|(k, w)| (w.started, k.clone()))
            .collect();
        idle.sort_unstable_by_key(|(started, _)| *started);
        let drop = idle.len().div_ceil(2);
        for (_, k) in idle.into_iter().take(drop) {
            table.remove(&k);
        }
        table.len() < MAX_ENTRIES
    }

    fn count<K: Eq + Hash>(&self, table: &mut HashMap<K, Window>, key: K, now: Instant) {
        let fresh = Window {
            started: now,
            counted: 0,
            in_flight: 0,
        };
        let entry = table.entry(key).or_insert(fresh);
        if !self.live(entry, now) {
            *entry = fresh;
        }
        entry.counted = entry.counted.saturating_add(1);
        entry.in_flight = entry.in_flight.saturating_add(1);
    }

    fn settle_one<K: Eq + Hash>(
        &self,
        table: &Mutex<HashMap<K, Window>>,
        key: &K,
        outcome: Outcome,
        is_user: bool,
        now: Instant,
    ) {
        let mut table = lock(table);
        let Some(entry) = table.get_mut(key) else {
            return;
        };
        if !self.live(entry, now) {
            // Its window is over: the next reservation starts a new one.
            return;
        }
        entry.in_flight = entry.in_flight.saturating_sub(1);
        match outcome {
            Outcome::Failed => {}
            // Keep only the other attempts still in flight for this user.
            Outcome::Succeeded if is_user => entry.counted = entry.in_flight,
            Outcome::Succeeded | Outcome::Abandoned => {
                entry.counted = entry.counted.saturating_sub(1);
            }
        }
        if entry.counted == 0 && entry.in_flight == 0 {
            table.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn ip(last: u8) -> ClientKey {
        ClientKey::new(IpAddr::from([127, 0, 0, last]), 64)
    }

    fn fail(limiter: &FailureLimiter, client: ClientKey, user: &str, now: Instant) {
        let attempt = limiter.reserve(client, user, now).unwrap();
        limiter.settle(attempt, Outcome::Failed, now);
    }

    #[test]
    fn client_is_locked_after_max_failures_until_the_window_passes() {
        let limiter = FailureLimiter::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..3 {
            fail(&limiter, ip(1), &format!("u{i}"), t0);
        }
        assert_eq!(
            limiter.reserve(ip(1), "other", t0).unwrap_err(),
            Refused::Locked(Locked::Client)
        );
        assert!(limiter.reserve(ip(2), "u9", t0).is_ok());
        let later = t0 + Duration::from_secs(60);
        assert!(limiter.reserve(ip(1), "other", later).is_ok());
    }

    #[test]
    fn user_is_locked_whatever_the_client() {
        let limiter = FailureLimiter::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        fail(&limiter, ip(1), "Alice", t0);
        fail(&limiter, ip(2), "alice", t0);
        assert_eq!(
            limiter.reserve(ip(3), "ALICE", t0).unwrap_err(),
            Refused::Locked(Locked::User)
        );
        assert!(limiter.reserve(ip(3), "bob", t0).is_ok());
    }

    #[test]
    fn attempts_in_flight_count_before_they_are_settled() {
        let limiter = FailureLimiter::new(5, Duration::from_secs(60));
        let t0 = Instant::now();
        let mut reserved = Vec::new();
        let mut refused = 0;
        // 40 attempts for one user from 40 clients, none settled yet: the
        // user's count refuses all but 5 before any password is checked.
        for i in 0..40 {
            match limiter.reserve(ip(i), "alice", t0) {
                Ok(attempt) => reserved.push(attempt),
                Err(Refused::Locked(Locked::User)) => refused += 1,
                Err(other) => panic!("{other:?}"),
            }
        }
        assert_eq!((reserved.len(), refused), (5, 35));
        for attempt in reserved {
            limiter.settle(attempt, Outcome::Failed, t0);
        }
        assert_eq!(
            limiter.reserve(ip(200), "alice", t0).unwrap_err(),
            Refused::Locked(Locked::User)
        );
    }

    #[test]
    fn success_clears_the_user_but_not_the_client() {
        let limiter = FailureLimiter::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        fail(&limiter, ip(1), "alice", t0);
        let ok = limiter.reserve(ip(2), "alice", t0).unwrap();
        limiter.settle(ok, Outcome::Succeeded, t0);
        fail(&limiter, ip(3), "alice", t0);
        // One failure since the success: not locked.
        assert!(limiter.reserve(ip(4), "alice", t0).is_ok());
        fail(&limiter, ip(1), "bob", t0);
        assert_eq!(
            limiter.reserve(ip(1), "carol", t0).unwrap_err(),
            Refused::Locked(Locked::Client)
        );
    }

    #[test]
    fn a_success_keeps_the_other_attempts_in_flight_counted() {
        let limiter = FailureLimiter::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        let a = limiter.reserve(ip(1), "alice", t0).unwrap();
        let b = limiter.reserve(ip(2), "alice", t0).unwrap();
        let ok = limiter.reserve(ip(3), "alice", t0).unwrap();
        limiter.settle(ok, Outcome::Succeeded, t0);
        // a and b are still being checked: one more place, not three.
        let c = limiter.reserve(ip(4), "alice", t0).unwrap();
        assert_eq!(
            limiter.reserve(ip(5), "alice", t0).unwrap_err(),
            Refused::Locked(Locked::User)
        );
        for attempt in [a, b, c] {
            limiter.settle(attempt, Outcome::Failed, t0);
        }
    }

    #[test]
    fn an_abandoned_attempt_gives_both_places_back() {
        let limiter = FailureLimiter::new(1, Duration::from_secs(60));
        let t0 = Instant::now();
        let attempt = limiter.reserve(ip(1), "alice", t0).unwrap();
        limiter.settle(attempt, Outcome::Abandoned, t0);
        assert!(limiter.clients.lock().unwrap().is_empty());
        assert!(limiter.users.lock().unwrap().is_empty());
        assert!(limiter.reserve(ip(1), "alice", t0).is_ok());
    }

    #[test]
    fn failures_outside_the_window_start_a_new_one() {
        let limiter = FailureLimiter::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        fail(&limiter, ip(1), "a", t0);
        fail(&limiter, ip(1), "b", t0 + Duration::from_secs(61));
        assert!(limiter
            .reserve(ip(1), "c", t0 + Duration::from_secs(62))
            .is_ok());
    }

    #[test]
    fn memory_stays_bounded() {
        let limiter = FailureLimiter::new(5, Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..(3 * MAX_ENTRIES) {
            // Spread over clients so the client table does not lock first.
            let client = ClientKey::new(IpAddr::from((i as u32).to_be_bytes()), 64);
            fail(&limiter, client, &format!("user{i}"), t0);
        }
        let users = limiter.users.lock().unwrap().len();
        let clients = limiter.clients.lock().unwrap().len();
        assert!(
            users <= MAX_ENTRIES && clients <= MAX_ENTRIES,
            "{users} {clients}"
        );
    }

    #[test]
    fn a_full_table_of_locked_keys_refuses_new_keys_and_keeps_the_locks() {
        let limiter = FailureLimiter::new(1, Duration::from_secs(60));
        let t0 = Instant::now();
        let client = |i: usize| ClientKey::new(IpAddr::from((i as u32).to_be_bytes()), 64);
        for i in 0..MAX_ENTRIES {
            fail(&limiter, client(i), &format!("user{i}"), t0);
        }
        assert_eq!(
            limiter
                .reserve(client(MAX_ENTRIES), "newcomer", t0)
                .unwrap_err(),
            Refused::Full
        );
        assert_eq!(
            limiter
                .reserve(client(MAX_ENTRIES), "user0", t0)
                .unwrap_err(),
            Refused::Locked(Locked::User)
        );
        assert_eq!(
            limiter.reserve(client(0), "someone", t0).unwrap_err(),
            Refused::Locked(Locked::Client)
        );
        // Once the window is over there is room again.
        let later = t0 + Duration::from_secs(60);
        assert!(limiter
            .reserve(client(MAX_ENTRIES), "newcomer", later)
            .is_ok());
    }
}
