//! What one message whose DMARC was evaluated adds to its policy domain's
//! report: a row (RFC 7489 Appendix C `record`: source IP, identifiers,
//! the evaluated policy and the raw SPF and DKIM results). Messages with
//! equal rows are counted together.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::authn::{DmarcPolicy, MessageChecks, Outcome, SpfCheck};

/// The identities and results of one received message.
pub struct Evaluated<'a> {
    pub client_ip: IpAddr,
    /// MAIL FROM as `local@domain`; "" for the null reverse-path.
    pub reverse_path: &'a str,
    /// SPF of the MAIL FROM identity (of the HELO one for `<>`).
    pub spf: &'a SpfCheck,
    pub checks: &'a MessageChecks,
}

/// What became of the message, as the data stage decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handling {
    Rejected,
    Quarantined,
    /// Delivered; `marked` when it carries the DMARC quarantine mark,
    /// `forwarded` when a trusted ARC sealer's chain set a fail aside.
    Delivered {
        marked: bool,
        forwarded: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    pub source_ip: IpAddr,
    /// The RFC5321.MailFrom domain (the HELO name for `<>`).
    pub envelope_from: String,
    pub header_from: String,
    /// `none`, `quarantine` or `reject`: what was done to the message.
    pub disposition: String,
    /// DMARC-aligned DKIM and SPF (`policy_evaluated`).
    pub dkim_aligned: bool,
    pub spf_aligned: bool,
    pub reasons: Vec<Reason>,
    pub dkim: Vec<DkimAuth>,
    pub spf: SpfAuth,
}

/// Why the disposition is not the one the record asks for
/// (`PolicyOverrideReason`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reason {
    /// A `PolicyOverrideType`: `sampled_out`, `trusted_forwarder`,
    /// `local_policy`.
    pub kind: String,
    pub comment: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DkimAuth {
    pub domain: String,
    pub selector: String,
    pub result: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpfAuth {
    pub domain: String,
    /// `mfrom` or `helo`.
    pub scope: String,
    pub result: String,
}

/// The policy domain, its record and the row of a message, or None when
/// no DMARC record was found for it.
pub fn row(evaluated: &Evaluated<'_>, handling: Handling) -> Option<(String, String, Row)> {
    let dmarc = &evaluated.checks.dmarc;
    let published = dmarc.published.as_ref()?;
    let disposition = match handling {
        Handling::Rejected => DmarcPolicy::Reject,
        Handling::Quarantined | Handling::Delivered { marked: true, .. } => DmarcPolicy::Quarantine,
        Handling::Delivered { marked: false, .. } => DmarcPolicy::None,
    };
    // What the record asks for this message (pct sampling applied).
    let asked = if dmarc.outcome == Outcome::Fail {
        dmarc.policy
    } else {
        DmarcPolicy::None
    };
    let mut reasons = Vec::new();
    if !dmarc.sampled {
        reasons.push(Reason {
            kind: "sampled_out".to_owned(),
            comment: dmarc.reason.clone(),
        });
    }
    if disposition != asked {
        let forwarded = matches!(
            handling,
            Handling::Delivered {
                forwarded: true,
                ..
            }
        );
        reasons.push(if forwarded {
            Reason {
                kind: "trusted_forwarder".to_owned(),
                comment: Some(format!("arc=pass sealer={}", evaluated.checks.arc_sealer)),
            }
        } else {
            Reason {
                kind: "local_policy".to_owned(),
                comment: None,
            }
        });
    }
    let (envelope_from, scope) = match evaluated.reverse_path.rsplit_once('@') {
        Some((_, domain)) => (domain.to_ascii_lowercase(), "mfrom"),
        None => (evaluated.spf.domain.to_ascii_lowercase(), "helo"),
    };
    let dkim = evaluated
        .checks
        .dkim
        .iter()
        .filter(|check| !check.domain.is_empty())
        .map(|check| DkimAuth {
            domain: check.domain.to_ascii_lowercase(),
            selector: check.selector.clone(),
            result: check.outcome.name().to_owned(),
        })
        .collect();
    let row = Row {
        source_ip: evaluated.client_ip,
        envelope_from,
        header_from: dmarc.header_from.clone(),
        disposition: policy_name(disposition).to_owned(),
        dkim_aligned: dmarc.dkim_aligned,
        spf_aligned: dmarc.spf_aligned,
        reasons,
        dkim,
        spf: SpfAuth {
            domain: evaluated.spf.domain.to_ascii_lowercase(),
            scope: scope.to_owned(),
            result: evaluated.spf.outcome.name().to_owned(),
        },
    };
    Some((published.domain.clone(), published.record.clone(), row))
}

/// The `DispositionType` name.
pub fn policy_name(policy: DmarcPolicy) -> &'static str {
    match policy {
        DmarcPolicy::None => "none",
        DmarcPolicy::Quarantine => "quarantine",
        DmarcPolicy::Reject => "reject",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authn::{DkimCheck, DmarcCheck, PublishedPolicy};

    fn checks(outcome: Outcome, policy: DmarcPolicy) -> MessageChecks {
        MessageChecks {
            dkim: vec![DkimCheck {
                outcome: Outcome::Fail,
                domain: "Example.ORG".into(),
                selector: "sel".into(),
                identity: String::new(),
                reason: None,
            }],
            dmarc: DmarcCheck {
                outcome,
                policy,
                published: Some(PublishedPolicy {
                    domain: "example.org".into(),
                    record: "v=DMARC1; p=reject".into(),
                }),
                ..DmarcCheck::none("example.org", None)
            },
            arc: Outcome::None,
            arc_sealer: String::new(),
        }
    }

    fn row_of(checks: &MessageChecks, handling: Handling) -> Row {
        let spf = SpfCheck::new(Outcome::Fail, "example.org", None);
        let evaluated = Evaluated {
            client_ip: "127.0.0.2".parse().unwrap(),
            reverse_path: "alice@Example.org",
            spf: &spf,
            checks,
        };
        row(&evaluated, handling).unwrap().2
    }

    #[test]
    fn a_rejected_fail_is_a_reject_without_override() {
        let row = row_of(
            &checks(Outcome::Fail, DmarcPolicy::Reject),
            Handling::Rejected,
        );
        assert_eq!(row.disposition, "reject");
        assert!(row.reasons.is_empty());
        assert_eq!(row.envelope_from, "example.org");
        assert_eq!(row.spf.scope, "mfrom");
        assert_eq!(row.dkim[0].domain, "example.org");
        assert_eq!(row.dkim[0].result, "fail");
    }

    #[test]
    fn a_fail_let_through_by_a_trusted_sealer_says_so() {
        let mut checks = checks(Outcome::Fail, DmarcPolicy::Reject);
        checks.arc = Outcome::Pass;
        checks.arc_sealer = "forwarder.test".into();
        let row = row_of(
            &checks,
            Handling::Delivered {
                marked: false,
                forwarded: true,
            },
        );
        assert_eq!(row.disposition, "none");
        assert_eq!(row.reasons[0].kind, "trusted_forwarder");
        // Let through for another reason (no DMARC policy applied).
        let row = row_of(
            &checks,
            Handling::Delivered {
                marked: false,
                forwarded: false,
            },
        );
        assert_eq!(row.reasons[0].kind, "local_policy");
    }

    #[test]
    fn an_unsampled_fail_is_sampled_out() {
        let mut checks = checks(Outcome::Fail, DmarcPolicy::Quarantine);
        checks.dmarc.sampled = false;
        let row = row_of(
            &checks,
            Handling::Delivered {
                marked: true,
                forwarded: false,
            },
        );
        assert_eq!(row.disposition, "quarantine");
        assert_eq!(row.reasons.len(), 1);
        assert_eq!(row.reasons[0].kind, "sampled_out");
    }

    #[test]
    fn a_pass_refused_anyway_is_local_policy() {
        let row = row_of(
            &checks(Outcome::Pass, DmarcPolicy::Reject),
            Handling::Rejected,
        );
        assert_eq!(row.reasons[0].kind, "local_policy");
    }

    #[test]
    fn no_record_no_row() {
        let mut checks = checks(Outcome::None, DmarcPolicy::None);
        checks.dmarc.published = None;
        let spf = SpfCheck::new(Outcome::None, "example.org", None);
        let evaluated = Evaluated {
            client_ip: "127.0.0.2".parse().unwrap(),
            reverse_path: "",
            spf: &spf,
            checks: &checks,
        };
        assert!(row(&evaluated, Handling::Rejected).is_none());
    }
}
