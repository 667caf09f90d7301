//! The connection caps of the listeners: a global cap on open connections
//! and a per-client cap (per IPv4 address, per IPv6 network: see
//! [`ClientKey`]), held by a permit for the whole session, and the
//! "under load" signal that makes sessions shorten idle timeouts.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;

use crate::client_key::ClientKey;
use crate::config::DEFAULT_IPV6_PREFIX;

/// The global connection cap and the per-client cap.
pub struct ConnectionLimits {
    max_total: usize,
    total: Arc<Semaphore>,
    per_ip_max: usize,
    /// How IPv6 clients are grouped into one client (`[server] ipv6_prefix`).
    ipv6_prefix: u8,
    per_ip: Mutex<HashMap<ClientKey, usize>>,
}

/// Holds a connection's place under both caps until the session ends.
pub struct ConnectionPermit {
    limits: Arc<ConnectionLimits>,
    client: ClientKey,
    _total: tokio::sync::OwnedSemaphorePermit,
}

impl ConnectionLimits {
    pub fn new(max_total: usize, per_ip_max: usize) -> Self {
        ConnectionLimits {
            max_total,
            total: Arc::new(Semaphore::new(max_total)),
            per_ip_max,
            ipv6_prefix: DEFAULT_IPV6_PREFIX,
            per_ip: Mutex::new(HashMap::new()),
        }
    }

    /// Groups IPv6 clients by networks of `bits` bits instead of /64.
    pub fn with_ipv6_prefix(mut self, bits: u8) -> Self {
        self.ipv6_prefix = bits;
        self
    }

    /// True while open connections are at 80% of the global cap or more:
    /// sessions then give idle clients a shorter timeout (Postfix's stress
    /// mode), so a flood of idle connections cannot hold every slot for
    /// the whole command timeout.
    pub fn under_load(&self) -> bool {
        let open = self.max_total - self.total.available_permits();
        open * 5 >= self.max_total * 4
    }

    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<ConnectionPermit> {
        let total = self.total.clone().try_acquire_owned().ok()?;
        let client = ClientKey::new(ip, self.ipv6_prefix);
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let count = per_ip.entry(client).or_insert(0);
        if *count >= self.per_ip_max {
            return None;
        }
        *count += 1;
        Some(ConnectionPermit {
            limits: self.clone(),
            client,
            _total: total,
        })
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut per_ip = self.limits.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = per_ip.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                per_ip.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_starts_at_80_percent_of_the_global_cap() {
        let limits = Arc::new(ConnectionLimits::new(10, 100));
        let mut permits = Vec::new();
        for i in 0..7u8 {
            permits.push(limits.admit(IpAddr::from([127, 0, 0, i])).unwrap());
        }
        assert!(!limits.under_load());
        permits.push(limits.admit(IpAddr::from([127, 0, 0, 8])).unwrap());
        assert!(limits.under_load());
        permits.pop();
        assert!(!limits.under_load());
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn ipv6_clients_in_one_64_share_the_per_client_cap() {
        let limits = Arc::new(ConnectionLimits::new(100, 2));
        let a = limits.admit(ip("2001:db8:1:2::1")).unwrap();
        let _b = limits.admit(ip("2001:db8:1:2::2")).unwrap();
        assert!(limits.admit(ip("2001:db8:1:2:abcd::9")).is_none());
        // Another /64, and IPv4, have their own places.
        let _c = limits.admit(ip("2001:db8:1:3::1")).unwrap();
        let _d = limits.admit(ip("192.0.2.1")).unwrap();
        drop(a);
        assert!(limits.admit(ip("2001:db8:1:2::3")).is_some());
    }

    #[test]
    fn prefix_128_caps_each_ipv6_address() {
        let limits = Arc::new(ConnectionLimits::new(100, 1).with_ipv6_prefix(128));
        let _a = limits.admit(ip("2001:db8::1")).unwrap();
        let _b = limits.admit(ip("2001:db8::2")).unwrap();
        assert!(limits.admit(ip("2001:db8::1")).is_none());
    }

    #[test]
    fn mapped_ipv4_counts_as_the_ipv4_client() {
        let limits = Arc::new(ConnectionLimits::new(100, 2));
        let _a = limits.admit(ip("192.0.2.7")).unwrap();
        let _b = limits.admit(ip("::ffff:192.0.2.7")).unwrap();
        assert!(limits.admit(ip("192.0.2.7")).is_none());
        assert!(limits.admit(ip("::ffff:192.0.2.7")).is_none());
        let _c = limits.admit(ip("192.0.2.8")).unwrap();
    }
}
