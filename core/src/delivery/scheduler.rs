//! The delivery scheduler: one task fed by a channel. New messages are
//! attempted at once, deferred ones when their retry time comes (the retry
//! schedule's last interval repeats until `max_age`), and everything the
//! spool holds is rescheduled at start.
//!
//! An attempt waits for its destination's slot first and only then for one
//! of the `max_concurrent_deliveries` global slots, so messages queued to a
//! destination at its cap (a tarpit, a slow next hop) wait without holding
//! anything the other destinations need. Message bytes are read from the
//! spool only once both slots are held.
//!
//! Each attempt's results decide the reports the sender gets, as each
//! recipient's NOTIFY asked (RFC 3461): failed, delayed (once, after
//! `warn_after`), delivered at Maildir or LMTP delivery, relayed to a next
//! hop that did not take the DSN request. They are queued before the
//! attempt is recorded.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use sluice_spool::{
    unix_now, MessageReader, NewMessage, QueueEntry, QueueId, RecipientDsn, RecipientOutcome,
    RecipientStatus, Ret, Spool,
};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::dsn::{self, RecipientReport, ReportKind};
use super::limits::DestinationLimits;
use super::mta_sts::MtaSts;
use super::route::{self, Destination, RouteFailure};
use super::smtp_client::{
    self, ClientContext, Content, DsnRequest, Envelope, HopPolicy, Protocol, Target, TargetAddress,
};
use super::tls_policy::AppliedTls;
use super::transport::OutboundTlsConfig;
use super::{maildir, split_address, DeliverySettings, RecipientResult};
use crate::config::{LmtpTarget, LocalDelivery, OutboundTls};
use crate::dns::Dns;
use crate::metrics::METRICS;

/// Most of a message a DSN reads: to quote its header section, or to
/// return it whole under RET=FULL when it is no larger.
const DSN_QUOTE_LIMIT: usize = 256 << 10;

#[derive(Clone)]
pub struct DeliveryHandle {
    tx: mpsc::UnboundedSender<Event>,
}

impl DeliveryHandle {
    /// A handle that attempts nothing: for sessions whose messages stay in
    /// their spool (`sluice pipeline test`, tests of the session).
    pub fn detached() -> DeliveryHandle {
        let (tx, _) = mpsc::unbounded_channel();
        DeliveryHandle { tx }
    }

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

/// What every delivery attempt shares.
struct Deliverer {
    settings: DeliverySettings,
    spool: Spool,
    dns: Dns,
    /// Present when `[delivery] mta_sts` is on.
    mta_sts: Option<MtaSts>,
    client: ClientContext,
    limits: DestinationLimits,
    /// The global slots (`max_concurrent_deliveries`): Maildir writes and
    /// transactions running at once.
    slots: Arc<Semaphore>,
    /// Set at shutdown: attempts waiting for a slot give up.
    stopping: watch::Receiver<bool>,
}

/// Starts the scheduler.
pub fn spawn(
    settings: DeliverySettings,
    spool: Spool,
    dns: Dns,
    tls: OutboundTlsConfig,
    shutdown: watch::Receiver<bool>,
) -> (DeliveryHandle, tokio::task::JoinHandle<()>) {
    let client = ClientContext {
        hostname: settings.hostname.clone(),
        timeouts: settings.delivery.timeouts.clone(),
        tls,
        pool: smtp_client::ConnectionPool::new(settings.idle_timeout),
    };
    let limits = DestinationLimits::new(
        settings.delivery.max_connections_per_domain,
        settings.delivery.messages_per_second_per_domain,
    );
    if let Some(retention) = settings.queue.quarantine_retention {
        // Ends by itself at shutdown, like the scheduler.
        tokio::spawn(super::quarantine::run(
            spool.clone(),
            retention,
            shutdown.clone(),
        ));
    }
    let slots = Arc::new(Semaphore::new(settings.delivery.max_concurrent_deliveries));
    let mta_sts = settings.delivery.mta_sts.then(|| {
        MtaSts::new(
            dns.clone(),
            client.tls.verified.clone(),
            settings.mta_sts_cache.clone(),
            settings.delivery.timeouts.connect,
        )
    });
    let deliverer = Arc::new(Deliverer {
        settings,
        spool,
        dns,
        mta_sts,
        client,
        limits,
        slots,
        stopping: shutdown.clone(),
    });
    let (tx, rx) = mpsc::unbounded_channel();
    let handle = DeliveryHandle { tx: tx.clone() };
    let task = tokio::spawn(run(deliverer, tx, rx, shutdown));
    (handle, task)
}

async fn run(
    deliverer: Arc<Deliverer>,
    tx: mpsc::UnboundedSender<Event>,
    mut rx: mpsc::UnboundedReceiver<Event>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut timers: BinaryHeap<Reverse<(u64, QueueId)>> = BinaryHeap::new();
    // The latest retry time per message: an older timer still in the heap
    // (the operator flushed the message meanwhile) is stale and ignored.
    let mut scheduled: HashMap<QueueId, u64> = HashMap::new();
    let mut running: HashSet<QueueId> = HashSet::new();
    let mut attempts: JoinSet<()> = JoinSet::new();
    match deliverer.spool.entries() {
        Ok(entries) => {
            for entry in entries.iter().filter(|e| attemptable(e)) {
                timers.push(Reverse((entry.next_attempt, entry.id)));
                scheduled.insert(entry.id, entry.next_attempt);
            }
            tracing::info!(queued = timers.len(), "delivery started");
        }
        Err(e) => tracing::error!("cannot read the queue at start: {e}"),
    }
    loop {
        let due = timers.peek().map(|Reverse((at, _))| *at);
        let sleep = match due {
            Some(at) => Duration::from_secs(at.saturating_sub(unix_now())),
            None => Duration::from_secs(3600),
        };
        let event = tokio::select! {
            event = rx.recv() => event,
            _ = tokio::time::sleep(sleep) => {
                let mut ready = Vec::new();
                while let Some(Reverse((at, id))) = timers.peek().copied() {
                    if at > unix_now() { break; }
                    timers.pop();
                    if scheduled.get(&id) == Some(&at) {
                        scheduled.remove(&id);
                        ready.push(id);
                    }
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
                let (deliverer, tx) = (deliverer.clone(), tx.clone());
                attempts.spawn(async move {
                    let next = deliverer.attempt(id, &tx).await;
                    let _ = tx.send(Event::Finished(id, next));
                });
            }
            Some(Event::RetryNow(id)) => {
                tracing::info!(queue_id = %id, "attempt requested by the operator");
                // Through `Due`, which skips a message already running.
                let _ = tx.send(Event::Due(id));
            }
            Some(Event::RetryAll) => match deliverer.spool.entries() {
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
                while attempts.try_join_next().is_some() {}
                match next {
                    Some(at) => {
                        timers.push(Reverse((at, id)));
                        scheduled.insert(id, at);
                    }
                    None => {
                        scheduled.remove(&id);
                    }
                }
            }
        }
    }
    // Let attempts in flight record their results; those still waiting
    // for a slot see the shutdown and end at once.
    while attempts.join_next().await.is_some() {}
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

/// One recipient's result, and the host that gave it.
struct Result1 {
    index: usize,
    result: RecipientResult,
    host: Option<String>,
    /// The report a NOTIFY=SUCCESS recipient gets once delivered:
    /// "delivered" at final delivery, "relayed" to a next hop that took no
    /// DSN request, none when the next hop took it (it reports then).
    success: Option<ReportKind>,
}

/// Why an attempt stopped before every recipient was tried.
enum Halt {
    /// The message left the queue meanwhile (deleted by the operator).
    Gone,
    /// The spool could not be read; tried again in a minute.
    Unreadable,
    /// The server is shutting down.
    Stopping,
}

impl Deliverer {
    /// One delivery attempt of a queued message; returns when to try again.
    async fn attempt(
        self: &Arc<Self>,
        id: QueueId,
        tx: &mpsc::UnboundedSender<Event>,
    ) -> Option<u64> {
        let entry = match self.spool.entry(id) {
            Ok(Some(entry)) if attemptable(&entry) => Arc::new(entry),
            Ok(_) => return None,
            Err(e) => {
                tracing::error!(queue_id = %id, "cannot read queue entry: {e}");
                return Some(unix_now() + 60);
            }
        };
        let (results, halt) = self.deliver_all(&entry).await;
        if results.is_empty() {
            return match halt {
                Some(Halt::Gone) => None,
                _ => Some(unix_now() + 60),
            };
        }
        self.record(&entry, results, tx).await
    }

    /// Waits for the destination's slot (none for local delivery), then a
    /// global one, in that order; None once the server is stopping.
    async fn slots(
        &self,
        destination: Option<&str>,
    ) -> Option<(Option<OwnedSemaphorePermit>, OwnedSemaphorePermit)> {
        let mut stopping = self.stopping.clone();
        let stopped = async move {
            // A dropped sender is no shutdown signal: wait forever then.
            if stopping.wait_for(|stop| *stop).await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        let wait = async {
            let own = match destination {
                Some(key) => Some(self.limits.acquire(key).await?),
                None => None,
            };
            let global = self.slots.clone().acquire_owned().await.ok()?;
            Some((own, global))
        };
        tokio::select! {
            slots = wait => slots,
            () = stopped => None,
        }
    }

    /// The message for an SMTP or LMTP transaction, opened once the slots
    /// for it are held: a reader of the spool, and whether it needs
    /// 8BITMIME (found by reading it through once, a record at a time).
    fn spooled(&self, id: QueueId) -> Result<(MessageReader, bool), Halt> {
        let mut reader = self.reader(id)?;
        let mut piece = vec![0u8; 64 << 10];
        let mut offset = 0;
        loop {
            let n = reader.read_at(offset, &mut piece).map_err(|e| {
                tracing::error!(queue_id = %id, "cannot read message: {e}");
                Halt::Unreadable
            })?;
            if n == 0 {
                return Ok((reader, false));
            }
            if smtp_client::has_eight_bit(&piece[..n]) {
                return Ok((reader, true));
            }
            offset += n as u64;
        }
    }

    /// A reader of the message's bytes, for copying it out a record at a
    /// time.
    fn reader(&self, id: QueueId) -> Result<MessageReader, Halt> {
        match self.spool.reader(id) {
            Ok(Some(message)) => Ok(message),
            Ok(None) => Err(Halt::Gone),
            Err(e) => {
                tracing::error!(queue_id = %id, "cannot read message: {e}");
                Err(Halt::Unreadable)
            }
        }
    }

    /// Delivers to every recipient still due, grouped so each destination
    /// gets one transaction, the destinations concurrently; a group stops
    /// early when the message is gone or the server stops, and what the
    /// others did is kept.
    async fn deliver_all(
        self: &Arc<Self>,
        entry: &Arc<QueueEntry>,
    ) -> (Vec<Result1>, Option<Halt>) {
        let id_text = entry.id.to_string();
        let mut results = Vec::new();
        let mut maildir: Vec<(usize, String)> = Vec::new();
        let mut lmtp: Vec<(usize, String)> = Vec::new();
        let mut remote: Vec<(Destination, Vec<(usize, String)>)> = Vec::new();
        for (index, rcpt) in entry.recipients.iter().enumerate() {
            if !matches!(
                rcpt.status,
                RecipientStatus::Pending | RecipientStatus::Deferred
            ) {
                continue;
            }
            let (_, domain) = split_address(&rcpt.address);
            if self.settings.is_local(domain) && self.settings.route(domain).is_none() {
                match &self.settings.delivery.local {
                    LocalDelivery::Maildir => maildir.push((index, rcpt.address.clone())),
                    LocalDelivery::Lmtp(_) => lmtp.push((index, rcpt.address.clone())),
                }
                continue;
            }
            let destination = route::destination(&self.settings, domain);
            match remote.iter_mut().find(|(d, _)| *d == destination) {
                Some((_, list)) => list.push((index, rcpt.address.clone())),
                None => remote.push((destination, vec![(index, rcpt.address.clone())])),
            }
        }
        if !maildir.is_empty() || !lmtp.is_empty() {
            let Some(_slots) = self.slots(None).await else {
                return (results, Some(Halt::Stopping));
            };
            let reader = match self.reader(entry.id) {
                Ok(reader) => reader,
                Err(halt) => return (results, Some(halt)),
            };
            for (index, address) in &maildir {
                let (local, domain) = split_address(address);
                let result = self
                    .maildir(&id_text, &entry.reverse_path, local, domain, reader.fresh())
                    .await;
                results.push(Result1 {
                    index: *index,
                    result,
                    host: None,
                    success: Some(ReportKind::Delivered),
                });
            }
            if let (LocalDelivery::Lmtp(target), false) =
                (&self.settings.delivery.local, lmtp.is_empty())
            {
                let group = match lmtp_target(target).await {
                    Ok(targets) => {
                        let (reader, eight_bit) = match self.spooled(entry.id) {
                            Ok(message) => message,
                            Err(halt) => return (results, Some(halt)),
                        };
                        self.transaction(
                            entry,
                            Content::Spooled {
                                reader: &reader,
                                eight_bit,
                            },
                            &lmtp,
                            &targets,
                            HopPolicy {
                                protocol: Protocol::Lmtp,
                                tls: OutboundTls::None,
                                auth: None,
                            },
                            None,
                        )
                        .await
                    }
                    Err(reply) => failed_group(&lmtp, RouteFailure::Temporary(reply)),
                };
                results.extend(group);
            }
        }
        // Destinations run side by side: a slow one delays only its own
        // recipients.
        let mut groups = JoinSet::new();
        let mut lists = HashMap::new();
        for (destination, list) in remote {
            let (this, entry, recipients) = (Arc::clone(self), Arc::clone(entry), list.clone());
            let task = groups
                .spawn(async move { this.deliver_remote(&entry, &destination, &recipients).await });
            lists.insert(task.id(), list);
        }
        let mut halt = None;
        while let Some(joined) = groups.join_next_with_id().await {
            match joined {
                Ok((_, Ok(group))) => results.extend(group),
                Ok((_, Err(stop))) => {
                    if halt.is_none() || matches!(stop, Halt::Gone) {
                        halt = Some(stop);
                    }
                }
                // A bug, not the destination's doing: retried like a
                // deferral so the recipients are not forgotten.
                Err(e) => {
                    tracing::error!(queue_id = %entry.id, "delivery to a destination failed: {e}");
                    let list = lists.remove(&e.id()).unwrap_or_default();
                    results.extend(failed_group(
                        &list,
                        RouteFailure::Temporary("451 4.3.0 internal error in delivery".to_owned()),
                    ));
                }
            }
        }
        (results, halt)
    }

    /// One destination's recipients: its slot, a global slot, its targets,
    /// one transaction.
    async fn deliver_remote(
        &self,
        entry: &QueueEntry,
        destination: &Destination,
        list: &[(usize, String)],
    ) -> Result<Vec<Result1>, Halt> {
        let Some(_slots) = self.slots(Some(destination.key())).await else {
            return Err(Halt::Stopping);
        };
        // Only a policy that may apply is fetched.
        let sts = match (&self.mta_sts, destination) {
            (
                Some(mta_sts),
                Destination::Mx {
                    domain,
                    tls: OutboundTls::Auto | OutboundTls::MtaSts,
                },
            ) => mta_sts.policy(domain).await,
            _ => None,
        };
        Ok(
            match route::targets(&self.settings, &self.dns, destination, sts.as_ref()).await {
                Ok(routed) => {
                    let (reader, eight_bit) = self.spooled(entry.id)?;
                    self.transaction(
                        entry,
                        Content::Spooled {
                            reader: &reader,
                            eight_bit,
                        },
                        list,
                        &routed.targets,
                        HopPolicy {
                            protocol: Protocol::Smtp,
                            tls: routed.policy.client_tls(),
                            auth: destination.auth(),
                        },
                        Some(routed.policy),
                    )
                    .await
                }
                Err(failure) => {
                    tracing::info!(queue_id = %entry.id, destination = destination.key(), failure = ?failure, "no route");
                    failed_group(list, failure)
                }
            },
        )
    }

    async fn maildir(
        &self,
        queue_id: &str,
        reverse_path: &str,
        local: &str,
        domain: &str,
        mut message: MessageReader,
    ) -> RecipientResult {
        let (root, mailboxes, domains, hostname, queue_id, reverse_path, local, domain) = (
            self.settings.maildir_root.clone(),
            self.settings.delivery.maildir.clone(),
            self.settings.domains.clone(),
            self.settings.hostname.clone(),
            queue_id.to_owned(),
            reverse_path.to_owned(),
            local.to_owned(),
            domain.to_owned(),
        );
        // File writes and fsyncs block: keep them off the async workers.
        tokio::task::spawn_blocking(move || {
            let maildirs = maildir::Maildirs {
                root: &root,
                mailboxes: &mailboxes,
                domains: &domains,
                hostname: &hostname,
            };
            maildirs.deliver(&queue_id, &reverse_path, &local, &domain, &mut message)
        })
        .await
        .unwrap_or_else(|e| {
            RecipientResult::Deferred(format!("451 4.3.0 maildir writer failed: {e}"))
        })
    }

    async fn transaction(
        &self,
        entry: &QueueEntry,
        message: Content<'_>,
        list: &[(usize, String)],
        targets: &[Target],
        policy: HopPolicy<'_>,
        applied: Option<AppliedTls>,
    ) -> Vec<Result1> {
        let addresses: Vec<String> = list.iter().map(|(_, a)| a.clone()).collect();
        let wanted: Vec<RecipientDsn> = list
            .iter()
            .map(|(index, _)| entry.recipients[*index].dsn.clone())
            .collect();
        // Over LMTP delivery is final: sluice reports it itself.
        let lmtp = policy.protocol == Protocol::Lmtp;
        let envelope = Envelope {
            reverse_path: &entry.reverse_path,
            recipients: &addresses,
            message,
            dsn: (!lmtp).then_some(DsnRequest {
                envelope: &entry.dsn,
                recipients: &wanted,
            }),
        };
        let outcome = smtp_client::deliver(&self.client, targets, policy, &envelope).await;
        let success = match (lmtp, outcome.dsn_passed) {
            (true, _) => Some(ReportKind::Delivered),
            (false, false) => Some(ReportKind::Relayed),
            (false, true) => None,
        };
        list.iter()
            .zip(outcome.results)
            .map(|((index, address), result)| {
                // The queue view shows a deferral's reply: it says under
                // which TLS policy the attempt failed.
                let result = match (result, applied) {
                    (RecipientResult::Deferred(reply), Some(applied))
                        if applied.is_authenticating() =>
                    {
                        RecipientResult::Deferred(format!("{reply} (TLS policy: {applied})"))
                    }
                    (result, _) => result,
                };
                tracing::info!(
                    queue_id = %entry.id,
                    recipient = %address,
                    host = outcome.host.as_deref().unwrap_or("-"),
                    tls = outcome.tls.as_deref().unwrap_or("none"),
                    tls_policy = %applied.map_or_else(|| "-".to_owned(), |a| a.to_string()),
                    result = ?result,
                    "delivery attempt"
                );
                Result1 {
                    index: *index,
                    result,
                    host: outcome.host.clone(),
                    success,
                }
            })
            .collect()
    }

    /// Records the attempt, sends the DSNs it calls for, and returns when
    /// to try again.
    async fn record(
        &self,
        entry: &QueueEntry,
        results: Vec<Result1>,
        tx: &mpsc::UnboundedSender<Event>,
    ) -> Option<u64> {
        let queue = &self.settings.queue;
        let age = Duration::from_secs(unix_now().saturating_sub(entry.received_at));
        let expired = age >= queue.max_age;
        let mut outcomes = Vec::with_capacity(results.len());
        // The reports NOTIFY asks for (FAILURE and DELAY when absent).
        let mut failed = Vec::new();
        let mut delayed = Vec::new();
        let mut delivered = Vec::new();
        let mut relayed = Vec::new();
        let mut any_deferred = false;
        for Result1 {
            index,
            result,
            host,
            success,
        } in results
        {
            let rcpt = &entry.recipients[index];
            let address = rcpt.address.clone();
            let (status, reply) = match result {
                RecipientResult::Delivered(r) => (RecipientStatus::Delivered, r),
                RecipientResult::Failed(r) => (RecipientStatus::Failed, r),
                // Past max_age a deferral becomes final.
                RecipientResult::Deferred(r) if expired => (
                    RecipientStatus::Failed,
                    format!(
                        "554 5.4.7 delivery time expired after {}; last reply: {r}",
                        humantime::format_duration(queue.max_age)
                    ),
                ),
                RecipientResult::Deferred(r) => (RecipientStatus::Deferred, r),
            };
            METRICS.delivery_attempts.inc(&[match status {
                RecipientStatus::Delivered => "delivered",
                RecipientStatus::Failed => "failed",
                _ => "deferred",
            }]);
            let report = RecipientReport {
                address,
                reply: reply.clone(),
                remote_mta: host,
                original: rcpt.dsn.orcpt.clone(),
            };
            let wanted = &rcpt.dsn;
            any_deferred |= status == RecipientStatus::Deferred;
            match (status, success) {
                (RecipientStatus::Failed, _) if wanted.wants_failure() => failed.push(report),
                (RecipientStatus::Deferred, _) if wanted.wants_delay() => delayed.push(report),
                (RecipientStatus::Delivered, Some(ReportKind::Delivered))
                    if wanted.wants_success() =>
                {
                    delivered.push(report)
                }
                (RecipientStatus::Delivered, Some(ReportKind::Relayed))
                    if wanted.wants_success() =>
                {
                    relayed.push(report)
                }
                _ => {}
            }
            outcomes.push(RecipientOutcome {
                index,
                status,
                reply: Some(reply),
            });
        }
        let next = any_deferred.then(|| {
            let step = (entry.attempts as usize).min(queue.retry.len().saturating_sub(1));
            unix_now()
                + queue
                    .retry
                    .get(step)
                    .map(|d| d.as_secs().max(1))
                    .unwrap_or(300)
        });
        let warn = queue
            .warn_after
            .is_some_and(|after| age >= after && !entry.warned && !delayed.is_empty());
        // A DSN quotes the message's headers; without them nothing is
        // recorded, so the attempt (and its DSN) comes again.
        let reporting = !failed.is_empty() || warn || !delivered.is_empty() || !relayed.is_empty();
        let message = if reporting {
            match self.reader(entry.id).and_then(|mut reader| {
                let mut head = vec![0u8; DSN_QUOTE_LIMIT.min(entry.size as usize)];
                let n = reader.read_at(0, &mut head).map_err(|e| {
                    tracing::error!(queue_id = %entry.id, "cannot read message: {e}");
                    Halt::Unreadable
                })?;
                head.truncate(n);
                Ok(head)
            }) {
                Ok(message) => Some(message),
                Err(Halt::Gone) => return None,
                Err(_) => return Some(unix_now() + 60),
            }
        } else {
            None
        };
        let message = message.as_deref().unwrap_or_default();
        // RET=FULL returns the whole message with a failure, if it is
        // small enough to have been read whole.
        let whole = entry.dsn.ret == Some(Ret::Full) && entry.size as usize <= DSN_QUOTE_LIMIT;
        // The DSN is queued before the attempt is recorded: a crash in
        // between repeats the attempt (and maybe the DSN), never loses it.
        let head = Quoted {
            message,
            whole: false,
        };
        if !failed.is_empty() {
            let quoted = Quoted { message, whole };
            self.notify(entry, &quoted, ReportKind::Failed, &failed, tx)
                .await;
        }
        for (kind, list) in [
            (ReportKind::Delivered, &delivered),
            (ReportKind::Relayed, &relayed),
        ] {
            if !list.is_empty() {
                self.notify(entry, &head, kind, list, tx).await;
            }
        }
        if warn
            && self
                .notify(entry, &head, ReportKind::Delayed, &delayed, tx)
                .await
        {
            if let Err(e) = self.spool.mark_warned(entry.id).await {
                tracing::error!(queue_id = %entry.id, "cannot record the delay notice: {e}");
            }
        }
        if let Err(e) = self.spool.record_attempt(entry.id, outcomes, next).await {
            tracing::error!(queue_id = %entry.id, "cannot record delivery attempt: {e}");
            return Some(unix_now() + 60);
        }
        next
    }

    /// Queues a DSN to the sender; never for the null reverse-path, which
    /// is how bounces of bounces are avoided (RFC 5321 §6.1, RFC 3464).
    /// Returns whether one was queued.
    async fn notify(
        &self,
        entry: &QueueEntry,
        message: &Quoted<'_>,
        kind: ReportKind,
        recipients: &[RecipientReport],
        tx: &mpsc::UnboundedSender<Event>,
    ) -> bool {
        if entry.reverse_path.is_empty() {
            return false;
        }
        let queue_id = entry.id.to_string();
        let original = dsn::Original {
            queue_id: &queue_id,
            reverse_path: &entry.reverse_path,
            received_at: entry.received_at,
            envid: entry.dsn.envid.as_deref(),
            message: message.message,
            whole: message.whole,
        };
        let retry_until = entry.received_at + self.settings.queue.max_age.as_secs();
        let report = dsn::report(
            &self.settings.hostname,
            kind,
            &original,
            recipients,
            unix_now(),
            Some(retry_until),
        );
        let dsn = NewMessage {
            reverse_path: String::new(),
            recipients: vec![entry.reverse_path.clone()],
            message: report,
            received_at: unix_now(),
            client: "local delivery status notification".to_owned(),
            quarantine: None,
            dsn: Default::default(),
            recipient_dsn: Vec::new(),
        };
        match self.spool.enqueue(dsn).await {
            Ok(dsn_id) => {
                tracing::info!(queue_id = %entry.id, dsn_id = %dsn_id, kind = ?kind, to = %entry.reverse_path, "delivery status notification queued");
                let _ = tx.send(Event::Due(dsn_id));
                true
            }
            Err(e) => {
                tracing::error!(queue_id = %entry.id, "cannot queue a delivery status notification: {e}");
                false
            }
        }
    }
}

/// What of the original message a DSN gets.
struct Quoted<'a> {
    /// Its first [`DSN_QUOTE_LIMIT`] octets.
    message: &'a [u8],
    /// That is the whole message, returned whole (RET=FULL).
    whole: bool,
}

/// Every recipient of a group gets the routing failure.
fn failed_group(list: &[(usize, String)], failure: RouteFailure) -> Vec<Result1> {
    list.iter()
        .map(|(index, _)| Result1 {
            index: *index,
            result: match &failure {
                RouteFailure::Permanent(r) => RecipientResult::Failed(r.clone()),
                RouteFailure::Temporary(r) => RecipientResult::Deferred(r.clone()),
            },
            host: None,
            success: None,
        })
        .collect()
}

/// The LMTP server's address: a unix socket, or a host:port resolved by
/// the system.
async fn lmtp_target(target: &LmtpTarget) -> Result<Vec<Target>, String> {
    match target {
        LmtpTarget::Unix(path) => Ok(vec![Target {
            host: "localhost".to_owned(),
            address: TargetAddress::Unix(path.clone()),
            dane: None,
        }]),
        LmtpTarget::Tcp(hop) => {
            let host = hop.rsplit_once(':').map(|(h, _)| h).unwrap_or(hop);
            let addresses = tokio::net::lookup_host(hop)
                .await
                .map_err(|e| format!("451 4.4.3 cannot resolve LMTP server {hop}: {e}"))?;
            Ok(addresses
                .map(|address| Target {
                    host: host.to_owned(),
                    address: TargetAddress::Tcp(address),
                    dane: None,
                })
                .collect())
        }
    }
}
