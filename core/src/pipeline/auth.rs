//! Sender authentication as one session's plugins see it: the identities of
//! the current transaction (client IP, HELO, MAIL FROM, message), and the
//! SPF, DKIM, DMARC and ARC results computed from them by [`crate::authn`]
//! the first time a plugin asks, then shared by every plugin of the session
//! until the transaction ends (HELO, MAIL or a new connection).
//!
//! The chain calls [`SessionAuth::enter`] before each stage; the host's
//! `auth` imports call the getters, each bounded by the calling plugin's
//! remaining time. A computation cut short by that bound is not cached: the
//! next ask starts again, and finds the answers the resolver already cached.

use std::net::IpAddr;
use std::time::Duration;

use tokio::sync::Mutex;

use super::message::MessageResource;
use super::session::HookArg;
use super::session::SessionInfo;
use super::verdict::{DataOutcome, Modification, StageOutcome};
use crate::authn::{Authenticator, DkimCheck, DmarcCheck, MessageChecks, Outcome, SpfCheck};
use crate::dmarc_reports::{DmarcRecorder, Evaluated, Handling};

/// The header `builtin:auth` marks a delivered message with when DMARC
/// asked to quarantine it.
const DMARC_QUARANTINE_HEADER: &str = "X-Sluice-DMARC";

/// Why a check gave no result: it ran out of the caller's time.
const UNFINISHED: &str = "DNS lookups did not finish within the plugin's time";

/// One session's authentication state, shared by its plugin instances.
pub struct SessionAuth {
    authenticator: Authenticator,
    transaction: Mutex<Transaction>,
}

/// The identities of the current transaction and what was computed so far.
#[derive(Default)]
struct Transaction {
    client_ip: Option<IpAddr>,
    helo: Option<String>,
    /// `local@domain`; "" for the null reverse-path; None before MAIL.
    reverse_path: Option<String>,
    /// The received message, during the data stage.
    message: Option<MessageResource>,
    spf_helo: Option<SpfCheck>,
    spf_mail_from: Option<SpfCheck>,
    message_checks: Option<MessageChecks>,
}

impl SessionAuth {
    pub fn new(authenticator: Authenticator) -> Self {
        SessionAuth {
            authenticator,
            transaction: Mutex::new(Transaction::default()),
        }
    }

    /// Takes the identities a stage knows; HELO, MAIL and a new message
    /// start over what depends on them.
    pub async fn enter(&self, info: &SessionInfo, arg: &HookArg<'_>) {
        let mut tx = self.transaction.lock().await;
        if tx.client_ip != Some(info.client_ip) {
            *tx = Transaction {
                client_ip: Some(info.client_ip),
                ..Transaction::default()
            };
        }
        match arg {
            HookArg::Connect => {}
            HookArg::Helo(helo) => {
                *tx = Transaction {
                    client_ip: Some(info.client_ip),
                    helo: Some((*helo).to_owned()),
                    ..Transaction::default()
                };
            }
            HookArg::Mail(path) => {
                sync_helo(&mut tx, info);
                tx.reverse_path = Some(path.map_or_else(String::new, |m| {
                    if m.domain.is_empty() {
                        m.local_part.clone()
                    } else {
                        format!("{}@{}", m.local_part, m.domain)
                    }
                }));
                tx.spf_mail_from = None;
                tx.message = None;
                tx.message_checks = None;
            }
            HookArg::Rcpt(_) => sync_helo(&mut tx, info),
            HookArg::Data(message) => {
                sync_helo(&mut tx, info);
                let same = tx.message.as_ref().is_some_and(|m| m.same(message));
                if !same {
                    tx.message = Some(MessageResource::clone(message));
                    tx.message_checks = None;
                }
            }
        }
    }

    /// Counts the message just judged in its DMARC report, if its checks
    /// were made (a plugin asked for them); computes nothing.
    pub async fn report_dmarc(&self, recorder: &DmarcRecorder, decision: &DataOutcome) {
        let Some(handling) = dmarc_handling(decision) else {
            return;
        };
        let tx = self.transaction.lock().await;
        let (Some(client_ip), Some(spf), Some(checks)) =
            (tx.client_ip, &tx.spf_mail_from, &tx.message_checks)
        else {
            return;
        };
        recorder.record(
            &Evaluated {
                client_ip,
                reverse_path: tx.reverse_path.as_deref().unwrap_or_default(),
                spf,
                checks,
            },
            handling,
        );
    }

    /// SPF for the HELO identity; `none` before HELO.
    pub async fn spf_helo(&self, budget: Duration) -> SpfCheck {
        let mut tx = self.transaction.lock().await;
        self.spf_helo_locked(&mut tx, budget).await
    }

    /// SPF for the MAIL FROM identity (the HELO identity for `<>`); `none`
    /// before MAIL.
    pub async fn spf_mail_from(&self, budget: Duration) -> SpfCheck {
        let mut tx = self.transaction.lock().await;
        self.spf_mail_from_locked(&mut tx, budget).await
    }

    /// One result per DKIM signature; empty outside the data stage.
    pub async fn dkim(&self, budget: Duration) -> Vec<DkimCheck> {
        self.message_checks(budget)
            .await
            .map(|c| c.dkim)
            .unwrap_or_default()
    }

    /// DMARC for the RFC5322.From domain; `none` outside the data stage.
    pub async fn dmarc(&self, budget: Duration) -> DmarcCheck {
        self.message_checks(budget)
            .await
            .map(|c| c.dmarc)
            .unwrap_or_else(|| DmarcCheck::none("", None))
    }

    /// ARC chain validation; `none` outside the data stage.
    pub async fn arc(&self, budget: Duration) -> Outcome {
        self.message_checks(budget)
            .await
            .map_or(Outcome::None, |c| c.arc)
    }

    /// The newest ARC sealer of a validating chain; empty otherwise and
    /// outside the data stage.
    pub async fn arc_sealer(&self, budget: Duration) -> String {
        self.message_checks(budget)
            .await
            .map(|c| c.arc_sealer)
            .unwrap_or_default()
    }

    async fn spf_helo_locked(&self, tx: &mut Transaction, budget: Duration) -> SpfCheck {
        if let Some(done) = &tx.spf_helo {
            return done.clone();
        }
        let (Some(ip), Some(helo)) = (tx.client_ip, tx.helo.clone()) else {
            return SpfCheck::new(Outcome::None, "", Some("no HELO yet".to_owned()));
        };
        match tokio::time::timeout(budget, self.authenticator.spf_helo(ip, &helo)).await {
            Ok(check) => {
                tx.spf_helo = Some(check.clone());
                check
            }
            Err(_) => SpfCheck::new(Outcome::TempError, &helo, Some(UNFINISHED.to_owned())),
        }
    }

    async fn spf_mail_from_locked(&self, tx: &mut Transaction, budget: Duration) -> SpfCheck {
        if let Some(done) = &tx.spf_mail_from {
            return done.clone();
        }
        let Some(sender) = tx.reverse_path.clone() else {
            return SpfCheck::new(Outcome::None, "", Some("no MAIL FROM yet".to_owned()));
        };
        // RFC 7208 §2.4: for the null reverse-path the MAIL FROM identity is
        // postmaster@HELO, the very check of the HELO identity.
        if sender.is_empty() {
            let check = self.spf_helo_locked(tx, budget).await;
            if tx.spf_helo.is_some() {
                tx.spf_mail_from = Some(check.clone());
            }
            return check;
        }
        let (Some(ip), Some(helo)) = (tx.client_ip, tx.helo.clone()) else {
            return SpfCheck::new(Outcome::None, "", Some("no HELO yet".to_owned()));
        };
        let domain = sender.rsplit_once('@').map_or("", |(_, d)| d).to_owned();
        let check = self.authenticator.spf_mail_from(ip, &helo, &sender);
        match tokio::time::timeout(budget, check).await {
            Ok(check) => {
                tx.spf_mail_from = Some(check.clone());
                check
            }
            Err(_) => SpfCheck::new(Outcome::TempError, &domain, Some(UNFINISHED.to_owned())),
        }
    }

    /// DKIM, DMARC and ARC, computed together on the first ask: DMARC needs
    /// the DKIM results and the SPF one, and all of them one parse of the
    /// message. None outside the data stage.
    async fn message_checks(&self, budget: Duration) -> Option<MessageChecks> {
        let started = tokio::time::Instant::now();
        let mut tx = self.transaction.lock().await;
        if let Some(done) = &tx.message_checks {
            return Some(done.clone());
        }
        let message = tx.message.clone()?;
        let spf = self.spf_mail_from_locked(&mut tx, budget).await;
        // Held whole (within the server's memory budget) while checked.
        let message =
            match tokio::time::timeout(budget.saturating_sub(started.elapsed()), message.whole())
                .await
            {
                Ok(Ok(whole)) => whole,
                Ok(Err(e)) => {
                    tracing::error!("cannot read the message for DKIM/DMARC: {e}");
                    return Some(MessageChecks::unfinished(message.head()));
                }
                Err(_) => return Some(MessageChecks::unfinished(message.head())),
            };
        let message = &message[..];
        let left = budget.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, self.authenticator.message(message, &spf)).await {
            Ok(checks) if tx.spf_mail_from.is_some() => {
                tx.message_checks = Some(checks.clone());
                Some(checks)
            }
            // DMARC ran on an SPF result cut short: right for this caller,
            // not to be kept.
            Ok(checks) => Some(checks),
            Err(_) => Some(MessageChecks::unfinished(message)),
        }
    }
}

/// What a DMARC report says was done with the message, as the data stage
/// decided; None for an answer that leaves it to the client's retry
/// (counted then). `builtin:auth` marks what it did in the headers it adds.
fn dmarc_handling(decision: &DataOutcome) -> Option<Handling> {
    let added = |header: &str, says: &dyn Fn(&str) -> bool| {
        decision.modifications.iter().any(|m| match m {
            Modification::PrependHeader { name, value }
            | Modification::AppendHeader { name, value } => {
                name.eq_ignore_ascii_case(header) && says(value)
            }
            _ => false,
        })
    };
    match &decision.outcome {
        // A discarded message is not delivered: to its sender, a reject.
        StageOutcome::Reject(_) | StageOutcome::Discard => Some(Handling::Rejected),
        StageOutcome::Quarantine(_) => Some(Handling::Quarantined),
        StageOutcome::Accept => Some(Handling::Delivered {
            marked: added(DMARC_QUARANTINE_HEADER, &|v| {
                v.trim().eq_ignore_ascii_case("quarantine")
            }),
            // RFC 8601 `policy.arc-sealer`: a trusted sealer's override.
            forwarded: added("Authentication-Results", &|v| {
                v.contains("policy.arc-sealer=")
            }),
        }),
        StageOutcome::Tempfail(_) | StageOutcome::Disconnect(_) => None,
    }
}

/// Fills what the session record knows and no earlier hook of this
/// transaction told us.
fn sync_helo(tx: &mut Transaction, info: &SessionInfo) {
    if tx.helo.is_none() {
        tx.helo.clone_from(&info.helo);
    }
    if tx.reverse_path.is_none() {
        tx.reverse_path.clone_from(&info.reverse_path);
    }
}
