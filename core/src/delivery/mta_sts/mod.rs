//! MTA-STS (RFC 8461): a domain's published promise that its MX hosts
//! take mail over TLS with certificates valid for their names. Before an
//! attempt to a domain's MX hosts, delivery asks [`MtaSts::policy`]; under
//! `enforce` only the MX hosts the policy lists are tried, each with
//! verified TLS (`required`), and mail waits rather than go elsewhere.
//!
//! - `record`: the `_mta-sts.<domain>` TXT record that announces a policy
//! - `fetch`: the policy over HTTPS from `mta-sts.<domain>`
//! - `policy`: the policy text, and which MX host names it allows
//! - `cache`: policies kept across restarts for their `max_age`

mod cache;
mod fetch;
mod policy;
mod record;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::ClientConfig;

use crate::dns::Dns;
use cache::{Cached, PolicyCache};
pub use policy::{Mode, Policy};
use record::Record;
use sluice_spool::unix_now;

/// Where policy hosts listen (§3.3: HTTPS).
const HTTPS_PORT: u16 = 443;

pub struct MtaSts {
    dns: Dns,
    /// Verifies policy hosts' certificates: the delivery's CA bundle.
    tls: Option<Arc<ClientConfig>>,
    timeout: Duration,
    cache: PolicyCache,
    /// Each domain's policy, behind its own lock: one fetch at a time per
    /// domain, and a slow policy host holds up only its own domain.
    domains: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Cached>>>>>,
}

impl MtaSts {
    pub fn new(
        dns: Dns,
        tls: Option<Arc<ClientConfig>>,
        cache_dir: PathBuf,
        timeout: Duration,
    ) -> MtaSts {
        MtaSts {
            dns,
            tls,
            timeout,
            cache: PolicyCache::new(cache_dir),
            domains: Mutex::new(HashMap::new()),
        }
    }

    /// The policy that applies to mail for `domain` now, None without one
    /// (or with `mode: none`). A new record id fetches the policy again; a
    /// fetch that fails, or a record that went away, keeps a cached policy
    /// until its `max_age` ends (§5.1), so an attacker who blocks the
    /// policy host or the TXT lookup cannot turn it off.
    pub async fn policy(&self, domain: &str) -> Option<Policy> {
        let domain = domain.to_ascii_lowercase();
        let slot = {
            let mut domains = self.domains.lock().unwrap_or_else(|e| e.into_inner());
            domains.entry(domain.clone()).or_default().clone()
        };
        let mut cached = slot.lock().await;
        if cached.is_none() {
            *cached = self.cache.load(&domain);
        }
        let now = unix_now();
        let fresh = cached.clone().filter(|c| c.fresh(now));
        let record = match self.dns.txt(&format!("_mta-sts.{domain}")).await {
            Ok(txt) => Record::find(txt.iter().map(String::as_str)),
            Err(_) => Ok(None),
        };
        let usable = |c: Option<Cached>| c.map(|c| c.policy).filter(|p| p.mode != Mode::None);
        let record = match record {
            Ok(Some(record)) => record,
            Ok(None) => return usable(fresh),
            Err(e) => {
                tracing::info!(%domain, "MTA-STS record ignored: {e}");
                return usable(fresh);
            }
        };
        if let Some(current) = fresh.as_ref().filter(|c| c.id == record.id) {
            return usable(Some(current.clone()));
        }
        let body = match fetch::fetch(
            &self.dns,
            self.tls.as_ref(),
            HTTPS_PORT,
            &domain,
            self.timeout,
        )
        .await
        {
            Ok(body) => body,
            Err(e) => {
                tracing::warn!(%domain, "MTA-STS policy not fetched: {e}");
                return usable(fresh);
            }
        };
        let policy = match Policy::parse(&body) {
            Ok(policy) => policy,
            Err(e) => {
                tracing::warn!(%domain, "MTA-STS policy refused: {e}");
                return usable(fresh);
            }
        };
        tracing::info!(%domain, id = %record.id, mode = ?policy.mode, max_age = policy.max_age, "MTA-STS policy fetched");
        let text = String::from_utf8_lossy(&body);
        if let Err(e) = self.cache.store(&domain, &record.id, now, &text) {
            tracing::warn!(%domain, "MTA-STS policy not cached: {e}");
        }
        let fetched = Cached {
            id: record.id,
            fetched_at: now,
            policy,
        };
        *cached = Some(fetched.clone());
        usable(Some(fetched))
    }
}
