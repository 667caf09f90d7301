//! DMARC aggregate reports (RFC 7489 §7.2): every received message whose
//! author domain publishes a DMARC record is counted in that domain's
//! report for the current period; at the end of the period the report goes
//! to the record's `rua` destinations through sluice's own queue.
//!
//! - `row`: what one message adds to a report
//! - `store`: the counts, in the spool's sled store (they survive restarts)
//! - `feedback`: the Appendix C XML document
//! - `message`: the report message, gzipped attachment (§7.2.1.1)
//! - `destinations`: `rua` URIs and their verification (§7.1)
//! - `sender`: the task that sends the reports of ended periods
//!
//! Reporting never changes what happens to a message: an error is logged
//! and counted (`sluice_dmarc_reports_total{outcome="error"}`), nothing
//! else.

mod destinations;
mod feedback;
mod message;
mod row;
mod sender;
mod store;

use sluice_spool::{unix_now, Spool, SpoolError};

use crate::config::DmarcReportsConfig;
use crate::metrics::METRICS;

pub use row::{Evaluated, Handling};
pub use sender::spawn;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("DMARC report store: {0}")]
    Store(#[from] SpoolError),
    #[error("DMARC report store: cannot encode a row: {0}")]
    Encode(serde_json::Error),
    #[error("DMARC report store: malformed entry {key}: {source}")]
    Malformed {
        key: String,
        source: serde_json::Error,
    },
    #[error("cannot compress the DMARC report: {0}")]
    Compress(std::io::Error),
}

/// Counts evaluated messages into the reports of their policy domains.
#[derive(Clone)]
pub struct DmarcRecorder {
    store: store::Store,
    /// The period, in seconds.
    interval: u64,
}

impl DmarcRecorder {
    /// The recorder when reports are enabled and their store opens.
    pub fn open(config: &DmarcReportsConfig, spool: &Spool) -> Option<Self> {
        if !config.enabled {
            return None;
        }
        let store = store::open_or_log(spool)?;
        Some(DmarcRecorder {
            store,
            interval: config.interval.as_secs().max(1),
        })
    }

    /// Counts one message; a message without a DMARC record is not
    /// reported.
    pub fn record(&self, evaluated: &Evaluated<'_>, handling: Handling) {
        let Some((domain, record, row)) = row::row(evaluated, handling) else {
            return;
        };
        if !plain_domain(&domain) {
            return;
        }
        let now = unix_now();
        let begin = now - now % self.interval;
        let period = store::Period {
            domain,
            begin,
            end: begin + self.interval,
            record,
        };
        if let Err(e) = self.store.add(&period, &row) {
            METRICS.dmarc_reports.inc(&["error"]);
            tracing::error!(domain = %period.domain, "cannot count a message for its DMARC report: {e}");
        }
    }
}

/// Letters, digits, hyphens and dots: a name that can be part of a store
/// key and of a file name.
fn plain_domain(domain: &str) -> bool {
    !domain.is_empty()
        && domain
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}
