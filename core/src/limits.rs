//! The connection caps of the listeners: a global cap on open connections
//! and a per-client-IP cap, held by a permit for the whole session, and the
//! "under load" signal that makes sessions shorten idle timeouts.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;

/// The global connection cap and the per-client-IP cap.
pub struct ConnectionLimits {
    max_total: usize,
    total: Arc<Semaphore>,
    per_ip_max: usize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// Holds a connection's place under both caps until the session ends.
pub struct ConnectionPermit {
    limits: Arc<ConnectionLimits>,
    ip: IpAddr,
    _total: tokio::sync::OwnedSemaphorePermit,
}

impl ConnectionLimits {
    pub fn new(max_total: usize, per_ip_max: usize) -> Self {
        ConnectionLimits {
            max_total,
            total: Arc::new(Semaphore::new(max_total)),
            per_ip_max,
            per_ip: Mutex::new(HashMap::new()),
        }
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
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let count = per_ip.entry(ip).or_insert(0);
        if *count >= self.per_ip_max {
            return None;
        }
        *count += 1;
        Some(ConnectionPermit {
            limits: self.clone(),
            ip,
            _total: total,
        })
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut per_ip = self.limits.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = per_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                per_ip.remove(&self.ip);
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
}
