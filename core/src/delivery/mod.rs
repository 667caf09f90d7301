//! Delivery: from the spool to the recipient's mailbox or the next hop.
//!
//! - `maildir`: local domains, written to `<data_dir>/mail/<domain>/<local>/`
//! - `smtp_client`: other domains, relayed to the route's next hop
//! - `scheduler`: one task fed by a channel that decides when each queued
//!   message is attempted and records the outcome in the spool
//!
//! A recipient leaves the queue only after the next hop said 250 or the
//! Maildir file was fsynced.

mod maildir;
mod scheduler;
mod smtp_client;

use std::path::PathBuf;
use std::time::Duration;

pub use scheduler::{spawn, DeliveryHandle};
pub use smtp_client::ClientTimeouts;

#[derive(Debug, Clone)]
pub struct RouteSetting {
    /// Lower-cased domain, or "*" for every domain without its own route.
    pub domain: String,
    /// "host:port".
    pub next_hop: String,
}

#[derive(Debug, Clone)]
pub struct DeliverySettings {
    pub hostname: String,
    pub local_domains: Vec<String>,
    pub maildir_root: PathBuf,
    pub routes: Vec<RouteSetting>,
    pub retry: Vec<Duration>,
    pub max_age: Duration,
    pub max_connections_per_destination: usize,
    pub client_timeouts: ClientTimeouts,
    pub idle_timeout: Duration,
}

impl DeliverySettings {
    /// The next hop for a domain: its own route, else the "*" route.
    fn next_hop(&self, domain: &str) -> Option<&str> {
        let domain = domain.to_ascii_lowercase();
        self.routes
            .iter()
            .find(|r| r.domain == domain)
            .or_else(|| self.routes.iter().find(|r| r.domain == "*"))
            .map(|r| r.next_hop.as_str())
    }

    fn is_local(&self, domain: &str) -> bool {
        let domain = domain.to_ascii_lowercase();
        self.local_domains.contains(&domain)
    }
}

/// The result of delivering to one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecipientResult {
    Delivered(String),
    Deferred(String),
    Failed(String),
}

/// Splits an address at its last `@`.
fn split_address(address: &str) -> (&str, &str) {
    match address.rfind('@') {
        Some(at) => (&address[..at], &address[at + 1..]),
        None => (address, ""),
    }
}
