//! Delivery: from the spool to the recipient's mailbox or the next hop.
//!
//! - `route`: where a domain's mail goes (route, MX hosts, or local)
//! - `ignore`: the networks MX-derived targets may not be in
//! - `smtp_client` over `transport`: SMTP/LMTP to the next hop, with
//!   STARTTLS, pipelining, pooled connections and a route's AUTH
//!   (`credentials`)
//! - `mta_sts`: MTA-STS records and policies (RFC 8461)
//! - `dane`: DNSSEC-validated MX, address and TLSA lookups, and the
//!   certificate check of DANE hosts (RFC 7672)
//! - `tls_policy`: which TLS policy (DANE, MTA-STS, configured) an attempt
//!   ran under
//! - `maildir`: local domains written to `<data_dir>/mail/<domain>/<local>/`
//! - `dsn`: the reports senders get about failed or delayed recipients,
//!   and about delivered or relayed ones when NOTIFY=SUCCESS asked
//! - `local_message`: queuing a message sluice wrote itself
//! - `limits`: per-destination connection and rate limits, taken before
//!   a global slot so a destination at its cap holds none
//! - `scheduler`: one task fed by a channel that decides when each queued
//!   message is attempted and records the outcome in the spool
//! - `quarantine`: removes quarantined mail older than its retention
//!
//! A recipient leaves the queue only after the next hop said 250 or the
//! Maildir file was fsynced.

mod credentials;
mod dane;
mod dsn;
mod ignore;
mod limits;
pub mod local_message;
mod maildir;
mod mta_sts;
mod quarantine;
mod route;
mod scheduler;
mod smtp_client;
mod tls_policy;
mod transport;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{DeliveryConfig, DomainsConfig, QueueConfig, Route};

pub use credentials::{Credentials, CredentialsError};
pub use dane::Dane;
pub use mta_sts::MtaSts;
pub use scheduler::{spawn, DeliveryHandle};
pub use transport::{OutboundTlsConfig, TlsSetupError};

/// What the scheduler works from: the resolved `[delivery]`, `[queue]` and
/// `[domains]` sections as they are, plus what is not configuration.
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// `server.hostname`: the EHLO/LHLO name and the DSNs' reporting MTA.
    pub hostname: String,
    /// Local domains are delivered locally unless they have a route.
    pub domains: DomainsConfig,
    /// Local delivery, routes, per-destination and global limits, STARTTLS
    /// policy, the port MX hosts are contacted on, target filter, timeouts.
    pub delivery: DeliveryConfig,
    /// Retry schedule, maximum age, delay warning.
    pub queue: QueueConfig,
    /// `<data_dir>/mail`.
    pub maildir_root: PathBuf,
    /// This server's listeners: an MX pointing here is a loop.
    pub own_addresses: Vec<SocketAddr>,
    pub idle_timeout: Duration,
    /// `<data_dir>/mta-sts`: fetched MTA-STS policies.
    pub mta_sts_cache: PathBuf,
    /// The credentials of routes with an `auth_file`, by route domain.
    pub route_credentials: BTreeMap<String, Arc<Credentials>>,
    /// DANE's validating lookups; None without `[dns]` DNSSEC settings.
    pub dane: Option<Arc<Dane>>,
}

impl DeliverySettings {
    /// The configured route for a domain: its own, else (for remote
    /// domains only) the "*" route. A local domain without its own route
    /// is delivered locally.
    fn route(&self, domain: &str) -> Option<&Route> {
        let domain = domain.to_ascii_lowercase();
        let routes = &self.delivery.routes;
        let own = routes.iter().find(|r| r.domain == domain);
        if own.is_some() || self.is_local(&domain) {
            return own;
        }
        routes.iter().find(|r| r.domain == "*")
    }

    fn is_local(&self, domain: &str) -> bool {
        let domain = domain.to_ascii_lowercase();
        self.domains.local.contains(&domain)
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::{DeliveryTimeouts, LocalDelivery, MaildirConfig, OutboundTls};

    pub(crate) fn settings(routes: &[(&str, &str)]) -> DeliverySettings {
        DeliverySettings {
            hostname: "mx.test".into(),
            domains: DomainsConfig {
                local: vec!["local.test".into()],
                recipient_delimiter: String::new(),
            },
            delivery: DeliveryConfig {
                local: LocalDelivery::Maildir,
                routes: routes
                    .iter()
                    .map(|(d, h)| Route {
                        domain: d.to_string(),
                        next_hop: h.to_string(),
                        tls: None,
                        auth_file: None,
                    })
                    .collect(),
                max_connections_per_domain: 1,
                messages_per_second_per_domain: None,
                smtp_port: 25,
                tls: OutboundTls::Opportunistic,
                ca_file: None,
                mta_sts: false,
                max_concurrent_deliveries: 100,
                max_mx_hosts: 5,
                max_addresses: 10,
                ignore_target_hosts: Vec::new(),
                timeouts: DeliveryTimeouts::default(),
                // The tests deliver to names nobody created a mailbox for.
                maildir: MaildirConfig {
                    catch_all: None,
                    create_mailboxes: true,
                },
            },
            queue: QueueConfig {
                retry: vec![Duration::from_secs(60)],
                max_age: Duration::from_secs(3600),
                warn_after: None,
                quarantine_retention: None,
                min_free_space: 0,
                min_free_inodes: 0,
            },
            maildir_root: "/nonexistent".into(),
            own_addresses: Vec::new(),
            idle_timeout: Duration::from_secs(1),
            mta_sts_cache: PathBuf::from("/nonexistent/mta-sts"),
            route_credentials: BTreeMap::new(),
            dane: None,
        }
    }

    #[test]
    fn routes_own_then_wildcard_but_never_wildcard_for_local_domains() {
        let s = settings(&[
            ("*", "smart:25"),
            ("a.test", "a:25"),
            ("local.test", "box:24"),
        ]);
        assert_eq!(s.route("A.TEST").unwrap().next_hop, "a:25");
        assert_eq!(s.route("other.test").unwrap().next_hop, "smart:25");
        assert_eq!(s.route("local.test").unwrap().next_hop, "box:24");
        let s = settings(&[("*", "smart:25")]);
        assert!(s.route("local.test").is_none());
    }
}
