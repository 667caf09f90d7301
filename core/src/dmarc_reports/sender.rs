//! The task that sends the reports of ended periods: a few times a period
//! (at most a minute apart) it takes every period that ended, writes its
//! report, queues one message per accepted destination, and forgets the
//! period. A period that ended while the server was down is sent at start.

use std::time::Duration;

use sluice_spool::{unix_now, NewMessage, Spool};
use tokio::sync::watch;

use super::destinations::{self, Destination};
use super::feedback::{self, Metadata};
use super::message::{self, Envelope};
use super::store::{self, Period, Store};
use super::ReportError;
use crate::config::DmarcReportsConfig;
use crate::delivery::{local_message, DeliveryHandle};
use crate::dns::Dns;
use crate::metrics::METRICS;

struct Sender {
    config: DmarcReportsConfig,
    hostname: String,
    store: Store,
    spool: Spool,
    dns: Dns,
    delivery: DeliveryHandle,
}

/// Starts the task when reports are enabled; it ends at shutdown.
pub fn spawn(
    config: &DmarcReportsConfig,
    hostname: &str,
    spool: &Spool,
    dns: &Dns,
    delivery: &DeliveryHandle,
    shutdown: watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    if !config.enabled {
        return None;
    }
    let sender = Sender {
        config: config.clone(),
        hostname: hostname.to_owned(),
        store: store::open_or_log(spool)?,
        spool: spool.clone(),
        dns: dns.clone(),
        delivery: delivery.clone(),
    };
    Some(tokio::spawn(sender.run(shutdown)))
}

impl Sender {
    async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let tick =
            (self.config.interval / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
        loop {
            self.send_due().await;
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    async fn send_due(&self) {
        let due = match self.store.due(unix_now()) {
            Ok(due) => due,
            Err(e) => {
                METRICS.dmarc_reports.inc(&["error"]);
                tracing::error!("cannot read the DMARC reports due: {e}");
                return;
            }
        };
        for period in due {
            if let Err(e) = self.send(&period).await {
                METRICS.dmarc_reports.inc(&["error"]);
                tracing::error!(domain = %period.domain, "cannot send the DMARC report: {e}");
            }
            // Sent or not, a period is reported once: a report that cannot
            // be written now would not be written later either.
            if let Err(e) = self.store.remove(&period) {
                METRICS.dmarc_reports.inc(&["error"]);
                tracing::error!(domain = %period.domain, "cannot forget a sent DMARC report: {e}");
            }
        }
    }

    async fn send(&self, period: &Period) -> Result<(), ReportError> {
        let requested = destinations::requested(&period.record);
        if requested.is_empty() {
            return Ok(());
        }
        let rows = self.store.rows(period)?;
        if rows.is_empty() {
            return Ok(());
        }
        let submitter = self
            .config
            .email
            .rsplit_once('@')
            .map_or(self.hostname.as_str(), |(_, d)| d);
        let report_id = format!("{}.{}.{}", period.domain, period.begin, submitter);
        let xml = feedback::document(
            &Metadata {
                org_name: &self.config.org_name,
                email: &self.config.email,
                extra_contact: self.config.extra_contact.as_deref(),
                report_id: &report_id,
                begin: period.begin,
                end: period.end,
            },
            &period.domain,
            &period.record,
            &rows,
        );
        let gzipped = message::gzipped(&xml).map_err(ReportError::Compress)?;
        for destination in requested {
            if !self.accepted(period, &destination).await {
                continue;
            }
            let envelope = Envelope {
                from: &self.config.email,
                to: &destination.address,
                submitter,
                policy_domain: &period.domain,
                report_id: &report_id,
                begin: period.begin,
                end: period.end,
                now: unix_now(),
                hostname: &self.hostname,
            };
            let mail = message::compose(&envelope, &gzipped);
            if let Some(limit) = destination.max_size {
                if mail.len() as u64 > limit {
                    METRICS.dmarc_reports.inc(&["too_large"]);
                    tracing::warn!(domain = %period.domain, to = %destination.address, size = mail.len(), limit, "DMARC report larger than its destination takes: not sent");
                    continue;
                }
            }
            self.queue(period, &destination, mail).await;
        }
        Ok(())
    }

    /// §7.1 for one destination, logged and counted when refused.
    async fn accepted(&self, period: &Period, destination: &Destination) -> bool {
        match destinations::accepts(&self.dns, &period.domain, destination).await {
            Ok(true) => true,
            Ok(false) => {
                METRICS.dmarc_reports.inc(&["unverified_destination"]);
                tracing::warn!(domain = %period.domain, to = %destination.address, "DMARC report destination did not agree to receive reports for the domain (no {}._report._dmarc.{} record): not sent", period.domain, destination.domain());
                false
            }
            Err(e) => {
                METRICS.dmarc_reports.inc(&["error"]);
                tracing::warn!(domain = %period.domain, to = %destination.address, "cannot verify the DMARC report destination: {e}");
                false
            }
        }
    }

    async fn queue(&self, period: &Period, destination: &Destination, mail: Vec<u8>) {
        let message = NewMessage {
            reverse_path: self.config.email.clone(),
            recipients: vec![destination.address.clone()],
            message: mail,
            received_at: unix_now(),
            client: "local DMARC aggregate report".to_owned(),
            quarantine: None,
            dsn: Default::default(),
            recipient_dsn: Vec::new(),
        };
        match local_message::enqueue(&self.spool, &self.delivery, message).await {
            Ok(id) => {
                METRICS.dmarc_reports.inc(&["queued"]);
                tracing::info!(queue_id = %id, domain = %period.domain, to = %destination.address, begin = period.begin, end = period.end, "DMARC aggregate report queued");
            }
            Err(e) => {
                METRICS.dmarc_reports.inc(&["error"]);
                tracing::error!(domain = %period.domain, to = %destination.address, "cannot queue the DMARC report: {e}");
            }
        }
    }
}
