//! Quarantine retention: a task that removes quarantined mail once it is
//! older than `[queue] quarantine_retention`, logging each message it
//! removes and counting it. Quarantined mail is never delivered, so it
//! leaves the queue only through the operator or this sweep.

use std::time::Duration;

use sluice_spool::Spool;
use tokio::sync::watch;

use crate::metrics::METRICS;

/// The longest pause between two sweeps, whatever the retention: an
/// expired message is gone at most this long after its time.
const MAX_SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Sweeps often enough that a message outlives its retention by at most a
/// tenth of it (at least a second apart, at most a minute).
fn sweep_interval(retention: Duration) -> Duration {
    (retention / 10).clamp(Duration::from_secs(1), MAX_SWEEP_INTERVAL)
}

/// Runs the sweep until the server stops.
pub(super) async fn run(spool: Spool, retention: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(sweep_interval(retention));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let now = sluice_spool::unix_now();
        // Whole seconds: a message received in the second this names is
        // kept to the next sweep, so none goes before its retention.
        let received_before = now.saturating_sub(retention.as_secs());
        let sweep = spool.clone();
        // Walks the whole entries tree: off the async workers.
        let removed =
            match tokio::task::spawn_blocking(move || sweep.expire_quarantined(received_before))
                .await
            {
                Ok(Ok(removed)) => removed,
                Ok(Err(e)) => {
                    tracing::warn!("sweeping expired quarantine: {e}");
                    continue;
                }
                Err(e) => {
                    tracing::warn!("sweeping expired quarantine: {e}");
                    continue;
                }
            };
        for entry in removed {
            let age = Duration::from_secs(now.saturating_sub(entry.received_at));
            tracing::info!(
                queue_id = %entry.id,
                age = %humantime::format_duration(age),
                reason = entry.quarantine.as_deref().unwrap_or(""),
                from = %entry.reverse_path,
                recipients = entry.recipients.len(),
                "quarantined message removed after its retention"
            );
            METRICS.quarantine_expired.inc(&[]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweeps_a_tenth_of_the_retention_apart_within_bounds() {
        let days = |n: u64| Duration::from_secs(n * 86400);
        assert_eq!(sweep_interval(days(30)), MAX_SWEEP_INTERVAL);
        assert_eq!(
            sweep_interval(Duration::from_secs(200)),
            Duration::from_secs(20)
        );
        assert_eq!(
            sweep_interval(Duration::from_secs(2)),
            Duration::from_secs(1)
        );
    }
}
