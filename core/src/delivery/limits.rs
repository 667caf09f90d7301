//! Per-destination limits: how many deliveries run at once to one
//! destination (a domain's MX hosts, or a route's next hop), and how many
//! start per second. They keep sluice a polite client that large receivers
//! do not throttle, and protect a small next hop behind a route.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

struct Destination {
    connections: Arc<Semaphore>,
    /// The earliest start allowed for the next delivery.
    next_start: Mutex<Instant>,
}

pub struct DestinationLimits {
    max_connections: usize,
    /// Minimum spacing between starts; None: no rate limit.
    interval: Option<Duration>,
    destinations: Mutex<HashMap<String, Arc<Destination>>>,
}

impl DestinationLimits {
    pub fn new(max_connections: usize, per_second: Option<f64>) -> Self {
        DestinationLimits {
            max_connections: max_connections.max(1),
            interval: per_second
                .filter(|r| r.is_finite() && *r > 0.0)
                .map(|r| Duration::from_secs_f64(1.0 / r)),
            destinations: Mutex::new(HashMap::new()),
        }
    }

    /// Waits for a connection slot and a start time for `key`; the slot is
    /// held until the permit is dropped.
    pub async fn acquire(&self, key: &str) -> Option<OwnedSemaphorePermit> {
        let destination = {
            let mut map = self.destinations.lock().unwrap_or_else(|e| e.into_inner());
            // Drop entries nobody uses, so the map does not grow with every
            // domain ever seen.
            if map.len() > 10_000 {
                map.retain(|_, d| Arc::strong_count(d) > 1);
            }
            map.entry(key.to_owned())
                .or_insert_with(|| {
                    Arc::new(Destination {
                        connections: Arc::new(Semaphore::new(self.max_connections)),
                        next_start: Mutex::new(Instant::now()),
                    })
                })
                .clone()
        };
        let permit = destination.connections.clone().acquire_owned().await.ok()?;
        if let Some(interval) = self.interval {
            let start = {
                let mut next = destination
                    .next_start
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let start = (*next).max(Instant::now());
                *next = start + interval;
                start
            };
            tokio::time::sleep_until(start).await;
        }
        Some(permit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_are_capped_per_destination() {
        let limits = DestinationLimits::new(2, None);
        let a1 = limits.acquire("a").await.unwrap();
        let _a2 = limits.acquire("a").await.unwrap();
        // Another destination is not affected.
        let _b = limits.acquire("b").await.unwrap();
        let third = tokio::time::timeout(Duration::from_millis(50), limits.acquire("a")).await;
        assert!(third.is_err(), "a third slot for a must wait");
        drop(a1);
        let third = tokio::time::timeout(Duration::from_secs(5), limits.acquire("a")).await;
        assert!(third.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn starts_are_spaced_by_the_rate() {
        let limits = DestinationLimits::new(10, Some(4.0));
        let begin = Instant::now();
        for _ in 0..5 {
            let _permit = limits.acquire("a").await.unwrap();
        }
        // Five starts at 4/s: the fifth starts one second after the first.
        assert_eq!(begin.elapsed(), Duration::from_secs(1));
    }
}
