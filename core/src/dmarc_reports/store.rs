//! The counts of the reports being gathered, in a tree of the spool's sled
//! store (so they survive a restart with the queue): per policy domain and
//! period, the period's last seen record (`policy/<domain>/<begin>`) and
//! one counter per distinct row (`row/<domain>/<begin>/<row as JSON>`).

use serde::{Deserialize, Serialize};
use sluice_spool::{KvStore, Spool};

use super::row::Row;
use super::ReportError;
use crate::metrics::METRICS;

/// The store's tree; `@` keeps it apart from every plugin's namespace.
const NAMESPACE: &str = "@dmarc-reports";

/// One policy domain's reporting period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Period {
    pub domain: String,
    /// Unix seconds: the period is `begin..end`.
    pub begin: u64,
    pub end: u64,
    /// The domain's DMARC record as last seen in the period.
    pub record: String,
}

#[derive(Clone)]
pub struct Store {
    kv: KvStore,
}

impl Store {
    pub fn open(spool: &Spool) -> Result<Store, ReportError> {
        Ok(Store {
            kv: spool.kv(NAMESPACE)?,
        })
    }

    /// Counts one message's row in its domain's period.
    pub fn add(&self, period: &Period, row: &Row) -> Result<(), ReportError> {
        let row = serde_json::to_string(row).map_err(ReportError::Encode)?;
        let policy = serde_json::to_vec(period).map_err(ReportError::Encode)?;
        self.kv
            .set(&policy_key(&period.domain, period.begin), &policy, None)?;
        self.kv.incr(
            &format!("{}{row}", rows_prefix(&period.domain, period.begin)),
            1,
            None,
        )?;
        Ok(())
    }

    /// Every period that ended by `now`.
    pub fn due(&self, now: u64) -> Result<Vec<Period>, ReportError> {
        let mut due = Vec::new();
        for (key, value) in self.kv.scan_prefix("policy/")? {
            let period: Period = serde_json::from_slice(&value)
                .map_err(|source| ReportError::Malformed { key, source })?;
            if period.end <= now {
                due.push(period);
            }
        }
        Ok(due)
    }

    /// A period's rows with their counts.
    pub fn rows(&self, period: &Period) -> Result<Vec<(Row, u64)>, ReportError> {
        let prefix = rows_prefix(&period.domain, period.begin);
        let mut rows = Vec::new();
        for (key, value) in self.kv.scan_prefix(&prefix)? {
            let row: Row = serde_json::from_str(&key[prefix.len()..]).map_err(|source| {
                ReportError::Malformed {
                    key: key.clone(),
                    source,
                }
            })?;
            let count = std::str::from_utf8(&value)
                .ok()
                .and_then(|count| count.parse::<u64>().ok())
                .unwrap_or(0);
            rows.push((row, count));
        }
        Ok(rows)
    }

    /// Forgets a period once its report is out.
    pub fn remove(&self, period: &Period) -> Result<(), ReportError> {
        for (key, _) in self
            .kv
            .scan_prefix(&rows_prefix(&period.domain, period.begin))?
        {
            self.kv.delete(&key)?;
        }
        self.kv.delete(&policy_key(&period.domain, period.begin))?;
        Ok(())
    }
}

/// The store, or None (logged and counted) when it cannot be opened:
/// reports must not stop the server or its mail.
pub fn open_or_log(spool: &Spool) -> Option<Store> {
    match Store::open(spool) {
        Ok(store) => Some(store),
        Err(e) => {
            METRICS.dmarc_reports.inc(&["error"]);
            tracing::error!("DMARC aggregate reports are off: {e}");
            None
        }
    }
}

fn policy_key(domain: &str, begin: u64) -> String {
    format!("policy/{domain}/{begin:020}")
}

fn rows_prefix(domain: &str, begin: u64) -> String {
    format!("row/{domain}/{begin:020}/")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dmarc_reports::row::SpfAuth;

    fn row(ip: &str) -> Row {
        Row {
            source_ip: ip.parse().unwrap(),
            envelope_from: "example.org".into(),
            header_from: "example.org".into(),
            disposition: "none".into(),
            dkim_aligned: true,
            spf_aligned: false,
            reasons: Vec::new(),
            dkim: Vec::new(),
            spf: SpfAuth {
                domain: "example.org".into(),
                scope: "mfrom".into(),
                result: "fail".into(),
            },
        }
    }

    fn period(domain: &str, begin: u64) -> Period {
        Period {
            domain: domain.into(),
            begin,
            end: begin + 100,
            record: "v=DMARC1; p=none".into(),
        }
    }

    #[test]
    fn counts_survive_reopening_and_are_forgotten_once_sent() {
        let dir = tempfile::tempdir().unwrap();
        {
            let spool = Spool::open(dir.path()).unwrap();
            let store = Store::open(&spool).unwrap();
            store
                .add(&period("example.org", 100), &row("127.0.0.2"))
                .unwrap();
            store
                .add(&period("example.org", 100), &row("127.0.0.2"))
                .unwrap();
            store
                .add(&period("example.org", 100), &row("127.0.0.3"))
                .unwrap();
            store
                .add(&period("example.org", 200), &row("127.0.0.3"))
                .unwrap();
            store
                .add(&period("other.test", 100), &row("127.0.0.3"))
                .unwrap();
        }
        let spool = Spool::open(dir.path()).unwrap();
        let store = Store::open(&spool).unwrap();
        let due = store.due(200).unwrap();
        assert_eq!(
            due,
            vec![period("example.org", 100), period("other.test", 100)]
        );
        let rows = store.rows(&due[0]).unwrap();
        assert_eq!(rows, vec![(row("127.0.0.2"), 2), (row("127.0.0.3"), 1)]);
        store.remove(&due[0]).unwrap();
        assert_eq!(store.due(200).unwrap(), vec![period("other.test", 100)]);
        assert_eq!(store.rows(&period("example.org", 200)).unwrap().len(), 1);
    }
}
