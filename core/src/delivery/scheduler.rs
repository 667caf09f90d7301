//! The delivery scheduler: one task fed by a channel. New messages are
//! attempted at once, deferred ones when their retry time comes (the retry
//! schedule's last interval repeats until `max_age`), and everything the
//! spool holds is rescheduled at start.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sluice_spool::{QueueEntry, QueueId, RecipientOutcome, RecipientStatus, Spool};
use tokio::sync::{mpsc, watch, Semaphore};

use super::{maildir, smtp_client, split_address, DeliverySettings, RecipientResult};

/// Attempts running at once, over all destinations.
const MAX_PARALLEL_ATTEMPTS: usize = 100;

#[derive(Clone)]
pub struct DeliveryHandle {
    tx: mpsc::UnboundedSender<Event>,
}

impl DeliveryHandle {
    /// A message was just queued: attempt it now.
    pub fn enqueued(&self, id: QueueId) {
        let _ = self.tx.send(Event::Due(id));
    }

    /// The operator asked to attempt this message now (flush, release). A
    /// message whose attempt is running is not attempted a second time.
    pub fn retry_now(&self, id: QueueId) {
        let _ = self.tx.send(Event::RetryNow(id));
    }

    /// The operator asked to attempt every queued message now (held and
    /// quarantined ones excepted).
    pub fn retry_all(&self) {
        let _ = self.tx.send(Event::RetryAll);
    }
}

enum Event {
    Due(QueueId),
    Finished(QueueId, Option<u64>),
    /// Operator's flush or release of one message.
    RetryNow(QueueId),
    /// Operator's flush of the whole queue.
    RetryAll,
}

pub fn spawn(
    settings: DeliverySettings,
    spool: Spool,
    shutdown: watch::Receiver<bool>,
) -> (DeliveryHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let handle = DeliveryHandle { tx: tx.clone() };
    let task = tokio::spawn(run(Arc::new(settings), spool, tx, rx, shutdown));
    (handle, task)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn run(
    settings: Arc<DeliverySettings>,
    spool: Spool,
    tx: mpsc::UnboundedSender<Event>,
    mut rx: mpsc::UnboundedReceiver<Event>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut timers: BinaryHeap<Reverse<(u64, QueueId)>> = BinaryHeap::new();
    let mut running: HashSet<QueueId> = HashSet::new();
    let permits = Arc::new(Semaphore::new(MAX_PARALLEL_ATTEMPTS));
    let pool = Arc::new(smtp_client::ConnectionPool::new(settings.idle_timeout));
    match spool.entries() {
        Ok(entries) => {
            for entry in entries.iter().filter(|e| attemptable(e)) {
                timers.push(Reverse((entry.next_attempt, entry.id)));
            }
            tracing::info!(queued = timers.len(), "delivery started");
        }
        Err(e) => tracing::error!("cannot read the queue at start: {e}"),
    }
    loop {
        let due = timers.peek().map(|Reverse((at, _))| *at);
        let sleep = match due {
            Some(at) => Duration::from_secs(at.saturating_sub(now())),
            None => Duration::from_secs(3600),
        };
        let event = tokio::select! {
            event = rx.recv() => event,
            _ = tokio::time::sleep(sleep) => {
                let mut ready = Vec::new();
                while let Some(Reverse((at, id))) = timers.peek().copied() {
                    if at > now() { break; }
                    timers.pop();
                    ready.push(id);
                }
                for id in ready { let _ = tx.send(Event::Due(id)); }
                continue;
            }
            _ = shutdown.changed() => None,
        };
        match event {
            None => break,
            Some(Event::Due(id)) => {
                if !running.insert(id) {
                    continue;
                }
                let (settings, spool, tx, permits, pool) = (
                    settings.clone(),
                    spool.clone(),
                    tx.clone(),
                    permits.clone(),
                    pool.clone(),
                );
                tokio::spawn(async move {
                    let _permit = permits.acquire_owned().await;
                    let next = attempt(&settings, &pool, &spool, id).await;
                    let _ = tx.send(Event::Finished(id, next));
                });
            }
            Some(Event::RetryNow(id)) => {
                tracing::info!(queue_id = %id, "attempt requested by the operator");
                // Through `Due`, which skips a message already running.
                let _ = tx.send(Event::Due(id));
            }
            Some(Event::RetryAll) => match spool.entries() {
                Ok(entries) => {
                    let due: Vec<QueueId> = entries
                        .iter()
                        .filter(|e| attemptable(e))
                        .map(|e| e.id)
                        .collect();
                    tracing::info!(
                        messages = due.len(),
                        "queue flush requested by the operator"
                    );
                    for id in due {
                        let _ = tx.send(Event::Due(id));
                    }
                }
                Err(e) => tracing::error!("cannot read the queue for a flush: {e}"),
            },
            Some(Event::Finished(id, next)) => {
                running.remove(&id);
                if let Some(at) = next {
                    timers.push(Reverse((at, id)));
                }
            }
        }
    }
    // Let attempts in flight record their results.
    let _ = permits.acquire_many(MAX_PARALLEL_ATTEMPTS as u32).await;
}

fn attemptable(entry: &QueueEntry) -> bool {
    !entry.held
        && entry.recipients.iter().any(|r| {
            matches!(
                r.status,
                RecipientStatus::Pending | RecipientStatus::Deferred
            )
        })
}

/// One delivery attempt of a queued message; returns when to try again.
async fn attempt(
    settings: &DeliverySettings,
    pool: &smtp_client::ConnectionPool,
    spool: &Spool,
    id: QueueId,
) -> Option<u64> {
    let entry = match spool.entry(id) {
        Ok(Some(entry)) if attemptable(&entry) => entry,
        Ok(_) => return None,
        Err(e) => {
            tracing::error!(queue_id = %id, "cannot read queue entry: {e}");
            return Some(now() + 60);
        }
    };
    let message = match spool.message(id) {
        Ok(Some(message)) => message,
        Ok(None) => return None,
        Err(e) => {
            tracing::error!(queue_id = %id, "cannot read message: {e}");
            return Some(now() + 60);
        }
    };
    let id_text = id.to_string();
    let mut results: Vec<(usize, RecipientResult)> = Vec::new();
    // Group remote recipients by next hop: one transaction per destination.
    let mut remote: Vec<(String, Vec<(usize, String)>)> = Vec::new();
    for (index, rcpt) in entry.recipients.iter().enumerate() {
        if !matches!(
            rcpt.status,
            RecipientStatus::Pending | RecipientStatus::Deferred
        ) {
            continue;
        }
        let (local, domain) = split_address(&rcpt.address);
        if settings.is_local(domain) {
            let result = maildir::deliver(
                &settings.maildir_root,
                &settings.hostname,
                &id_text,
                &entry.reverse_path,
                local,
                domain,
                &message,
            );
            results.push((index, result));
        } else if let Some(hop) = settings.next_hop(domain) {
            match remote.iter_mut().find(|(h, _)| h == hop) {
                Some((_, list)) => list.push((index, rcpt.address.clone())),
                None => remote.push((hop.to_owned(), vec![(index, rcpt.address.clone())])),
            }
        } else {
            // MX lookup is not part of this server yet: without a route the
            // recipient waits for one to be configured.
            results.push((
                index,
                RecipientResult::Deferred(format!("451 4.4.4 no route for domain {domain}")),
            ));
        }
    }
    for (hop, list) in remote {
        let addresses: Vec<String> = list.iter().map(|(_, a)| a.clone()).collect();
        let outcomes = smtp_client::relay(
            pool,
            &hop,
            &settings.hostname,
            &settings.client_timeouts,
            &entry.reverse_path,
            &addresses,
            &message,
        )
        .await;
        for ((index, address), result) in list.into_iter().zip(outcomes) {
            tracing::info!(queue_id = %id, recipient = %address, next_hop = %hop, result = ?result, "delivery attempt");
            results.push((index, result));
        }
    }

    let age = Duration::from_secs(now().saturating_sub(entry.received_at));
    let expired = age >= settings.max_age;
    let mut deferred = false;
    let outcomes: Vec<RecipientOutcome> = results
        .into_iter()
        .map(|(index, result)| {
            let (status, reply) = match result {
                RecipientResult::Delivered(r) => (RecipientStatus::Delivered, r),
                RecipientResult::Failed(r) => (RecipientStatus::Failed, r),
                // Past max_age a deferral becomes final. (Bounce DSNs for
                // failed recipients are generated by a later stage.)
                RecipientResult::Deferred(r) if expired => (RecipientStatus::Failed, r),
                RecipientResult::Deferred(r) => {
                    deferred = true;
                    (RecipientStatus::Deferred, r)
                }
            };
            RecipientOutcome {
                index,
                status,
                reply: Some(reply),
            }
        })
        .collect();
    let next = deferred.then(|| {
        let step = (entry.attempts as usize).min(settings.retry.len().saturating_sub(1));
        now()
            + settings
                .retry
                .get(step)
                .map(|d| d.as_secs().max(1))
                .unwrap_or(300)
    });
    if let Err(e) = spool.record_attempt(id, outcomes, next).await {
        tracing::error!(queue_id = %id, "cannot record delivery attempt: {e}");
        return Some(now() + 60);
    }
    next
}
