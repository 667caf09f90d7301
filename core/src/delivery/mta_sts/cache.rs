//! Policies kept across restarts (RFC 8461 §5.1: a sender caches a policy
//! for its `max_age` and keeps using it while the policy host cannot be
//! reached): one small JSON file per domain under
//! `<data_dir>/mta-sts/`, replaced atomically when a new policy is
//! fetched. Losing the directory only costs a fetch.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::policy::Policy;
use crate::config::valid_domain;

/// A policy as fetched: for which record id, when (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cached {
    pub id: String,
    pub fetched_at: u64,
    pub policy: Policy,
}

impl Cached {
    /// Within its `max_age` at `now`.
    pub fn fresh(&self, now: u64) -> bool {
        now < self.fetched_at.saturating_add(self.policy.max_age)
    }
}

#[derive(Serialize, Deserialize)]
struct Stored {
    id: String,
    fetched_at: u64,
    /// The policy text as served, parsed again on load.
    body: String,
}

pub struct PolicyCache {
    dir: PathBuf,
}

impl PolicyCache {
    pub fn new(dir: PathBuf) -> PolicyCache {
        PolicyCache { dir }
    }

    /// A domain's file; None for a name that is not a host name (a
    /// recipient's domain never becomes a path outside the directory).
    fn path(&self, domain: &str) -> Option<PathBuf> {
        let domain = domain.to_ascii_lowercase();
        valid_domain(&domain).then(|| self.dir.join(format!("{domain}.json")))
    }

    /// The stored policy of `domain`, if there is a readable one.
    pub fn load(&self, domain: &str) -> Option<Cached> {
        let text = std::fs::read(self.path(domain)?).ok()?;
        let stored: Stored = serde_json::from_slice(&text).ok()?;
        let policy = Policy::parse(stored.body.as_bytes()).ok()?;
        Some(Cached {
            id: stored.id,
            fetched_at: stored.fetched_at,
            policy,
        })
    }

    /// Keeps `body` (the policy text) fetched for record `id`.
    pub fn store(
        &self,
        domain: &str,
        id: &str,
        fetched_at: u64,
        body: &str,
    ) -> std::io::Result<()> {
        let path = self
            .path(domain)
            .ok_or_else(|| std::io::Error::other("not a domain name"))?;
        std::fs::create_dir_all(&self.dir)?;
        let stored = Stored {
            id: id.to_owned(),
            fetched_at,
            body: body.to_owned(),
        };
        let text = serde_json::to_vec(&stored).map_err(std::io::Error::other)?;
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = "version: STSv1\nmode: enforce\nmx: mx.example.org\nmax_age: 100\n";

    #[test]
    fn stored_policies_load_again_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let cache = PolicyCache::new(dir.path().join("mta-sts"));
        assert!(cache.load("example.org").is_none());
        cache.store("Example.ORG", "id1", 1000, BODY).unwrap();
        let cached = cache.load("example.org").unwrap();
        assert_eq!((cached.id.as_str(), cached.fetched_at), ("id1", 1000));
        assert!(cached.fresh(1099) && !cached.fresh(1100));
    }

    #[test]
    fn names_that_are_not_domains_never_become_paths() {
        let dir = tempfile::tempdir().unwrap();
        let cache = PolicyCache::new(dir.path().to_owned());
        for bad in ["../etc", "a/b", "", "x..y"] {
            assert!(cache.store(bad, "id", 0, BODY).is_err(), "{bad}");
            assert!(cache.load(bad).is_none());
        }
    }
}
