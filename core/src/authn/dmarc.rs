//! What RFC 7489 asks of DMARC policy discovery and mail-auth 0.13.3 does
//! not do (it follows RFC 9989, which dropped both): several records at
//! one name mean no policy (§6.6.3 step 5, where mail-auth takes the
//! first), and `pct=` samples the failing messages the policy applies to
//! (§6.6.4, where mail-auth applies it to all).

use rand_core::RngCore;

use super::DmarcPolicy;
use crate::dns::{Dns, LookupError};

/// The DMARC records published at the name policy discovery stopped at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Published {
    /// `_dmarc.<domain>`.
    pub name: String,
    pub records: Vec<String>,
}

impl Published {
    /// RFC 7489 §6.3: `pct` is 0 to 100, 100 when absent or invalid.
    pub fn pct(&self) -> u32 {
        self.records
            .first()
            .and_then(|record| tag_value(record, "pct"))
            .and_then(|value| value.parse::<u32>().ok())
            .filter(|pct| *pct <= 100)
            .unwrap_or(100)
    }
}

/// The records at the first name from the author domain up (the
/// organizational domain's included, the top-level domain's not) that
/// publishes any; None when none does.
pub(super) async fn discover(
    dns: &Dns,
    author_domain: &str,
) -> Result<Option<Published>, LookupError> {
    let labels: Vec<&str> = author_domain.split('.').filter(|l| !l.is_empty()).collect();
    for start in 0..labels.len().saturating_sub(1) {
        let name = format!("_dmarc.{}", labels[start..].join("."));
        let records = match dns.txt(&name).await {
            Ok(records) => records,
            Err(LookupError::NxDomain(_) | LookupError::InvalidName(_)) => continue,
            Err(e @ LookupError::Temporary { .. }) => return Err(e),
        };
        // §6.6.3 step 4: only records that begin with "v=DMARC1" count.
        let records: Vec<String> = records.into_iter().filter(|r| is_dmarc_record(r)).collect();
        if !records.is_empty() {
            return Ok(Some(Published { name, records }));
        }
    }
    Ok(None)
}

pub(crate) fn is_dmarc_record(txt: &str) -> bool {
    let txt = txt.trim_start();
    txt.strip_prefix("v=DMARC1")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([';', ' ', '\t']))
}

/// Whether a failing message falls in the `pct` sample (§6.6.4).
pub(super) fn sampled(pct: u32) -> bool {
    match pct {
        0 => false,
        100.. => true,
        pct => rand_core::OsRng.next_u32() % 100 < pct,
    }
}

/// §6.6.4: a failing message outside the sample gets the next lower
/// policy — quarantine for reject, none for quarantine.
pub(super) fn next_lower(policy: DmarcPolicy) -> DmarcPolicy {
    match policy {
        DmarcPolicy::Reject => DmarcPolicy::Quarantine,
        DmarcPolicy::Quarantine | DmarcPolicy::None => DmarcPolicy::None,
    }
}

/// A tag's value in a DMARC record (RFC 7489 §6.4: `tag=value` pairs
/// separated by semicolons, white space around them ignored).
pub(crate) fn tag_value<'a>(record: &'a str, name: &str) -> Option<&'a str> {
    record.split(';').find_map(|spec| {
        let (tag, value) = spec.split_once('=')?;
        (tag.trim() == name).then(|| value.trim())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn published(records: &[&str]) -> Published {
        Published {
            name: "_dmarc.example.org".into(),
            records: records.iter().map(|r| (*r).to_owned()).collect(),
        }
    }

    #[test]
    fn pct_defaults_to_100_and_ignores_nonsense() {
        // RFC 7489 §6.3.
        assert_eq!(published(&["v=DMARC1; p=reject"]).pct(), 100);
        assert_eq!(published(&["v=DMARC1; p=reject; pct=0"]).pct(), 0);
        assert_eq!(published(&["v=DMARC1;p=reject;pct = 25 "]).pct(), 25);
        assert_eq!(published(&["v=DMARC1; p=reject; pct=250"]).pct(), 100);
        assert_eq!(published(&["v=DMARC1; p=reject; pct=x"]).pct(), 100);
    }

    #[test]
    fn pct_0_never_samples_and_100_always_does() {
        // RFC 7489 §6.6.4.
        assert!((0..100).all(|_| !sampled(0)));
        assert!((0..100).all(|_| sampled(100)));
    }

    #[test]
    fn unsampled_mail_gets_the_next_lower_policy() {
        // RFC 7489 §6.6.4.
        assert_eq!(next_lower(DmarcPolicy::Reject), DmarcPolicy::Quarantine);
        assert_eq!(next_lower(DmarcPolicy::Quarantine), DmarcPolicy::None);
        assert_eq!(next_lower(DmarcPolicy::None), DmarcPolicy::None);
    }

    #[test]
    fn only_v_dmarc1_records_count() {
        // RFC 7489 §6.6.3 step 4.
        assert!(is_dmarc_record("v=DMARC1; p=none"));
        assert!(is_dmarc_record("v=DMARC1"));
        assert!(!is_dmarc_record("v=DMARC10; p=none"));
        assert!(!is_dmarc_record("v=spf1 -all"));
    }
}
