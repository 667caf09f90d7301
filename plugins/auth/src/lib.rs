//! `builtin:auth`: sender authentication for sluice's mail and data stages.
//!
//! At data it asks the host for SPF (MAIL FROM identity), DKIM, DMARC and
//! ARC — the host computes them once per transaction, DNS included — and
//! prepends one `Authentication-Results` header (RFC 8601) naming the
//! server's hostname, after removing any that claim that name already. By
//! configuration it also refuses SPF failures at MAIL, honors DMARC
//! `p=reject`/`p=quarantine` (quarantine: delivered marked
//! `X-Sluice-DMARC: quarantine`, or held), and tempfails when DNS failed. The decisions
//! live in [`policy`]; this file wires them to the `sluice_sdk` hooks.

// On the host only the policy's unit tests run; the component glue needs
// the wasm host imports.
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

mod policy;

#[cfg(target_arch = "wasm32")]
mod component {
    use std::cell::RefCell;

    use sluice_sdk::{auth, host, log, Address, DataResult, Filter, Message, Session, Verdict};

    use crate::policy::{self, Config, Identity, Results};

    thread_local! {
        // Set by init, once per instance (that is, per session).
        static CONFIG: RefCell<Config> = RefCell::new(Config::default());
    }

    fn config() -> Config {
        CONFIG.with_borrow(Clone::clone)
    }

    struct Auth;

    impl Filter for Auth {
        fn init(config: &str) -> Result<(), String> {
            let config = Config::parse(config).map_err(|e| e.to_string())?;
            CONFIG.with_borrow_mut(|slot| *slot = config);
            Ok(())
        }

        fn on_mail(session: &Session, _reverse_path: Option<&Address>) -> Verdict {
            let config = config();
            // Authenticated submission is not judged by the sender's DNS.
            if !config.checks_at_mail() || session.is_authenticated() {
                return Verdict::Next;
            }
            let spf = auth::spf_mail_from();
            let verdict = config.mail_verdict(&spf, &session.client_ip);
            if verdict != Verdict::Next {
                log::info(&format!(
                    "spf={} for {} from {}: {verdict:?}",
                    policy::result_name(spf.outcome),
                    spf.domain,
                    session.client_ip
                ));
            }
            verdict
        }

        fn on_data(session: &Session, message: &Message) -> DataResult {
            let results = Results {
                spf: auth::spf_mail_from(),
                dkim: auth::dkim(),
                dmarc: auth::dmarc(),
                arc: auth::arc(),
                arc_sealer: auth::arc_sealer(),
            };
            let config = config();
            let authserv_id = host::hostname();
            let identity = Identity {
                reverse_path: session.reverse_path.as_deref().unwrap_or(""),
                helo: session.helo.as_deref(),
            };
            let overridden_by = config.arc_override(&results);
            let value = policy::header_value(&authserv_id, &results, &identity, overridden_by);
            log::debug(&format!("{}: {value}", policy::HEADER));

            let judged = !session.is_authenticated();
            let verdict = if judged {
                config.data_verdict(&results, &session.client_ip)
            } else {
                Verdict::Next
            };
            let mark = judged && verdict == Verdict::Next && config.marks_quarantine(&results);
            if verdict != Verdict::Next {
                log::info(&format!("{value}: {verdict:?}"));
            }

            let headers: Vec<(String, String)> = message
                .headers()
                .into_iter()
                .map(|h| (h.name, h.value))
                .collect();
            let (remove, keep) = policy::forged_header_changes(&authserv_id, &headers);
            if !remove.is_empty() {
                log::info(&format!(
                    "removed an {} header claiming {authserv_id}",
                    policy::HEADER
                ));
            }
            let mut result = DataResult::from(verdict);
            for name in &remove {
                result = result.remove_header(name);
            }
            // Only we may say DMARC asked for quarantine.
            if headers
                .iter()
                .any(|(name, _)| name.eq_ignore_ascii_case(policy::QUARANTINE_HEADER))
            {
                result = result.remove_header(policy::QUARANTINE_HEADER);
            }
            if mark {
                log::info(&format!(
                    "{value}: delivered marked {}",
                    policy::QUARANTINE_HEADER
                ));
                result = result.prepend_header(policy::QUARANTINE_HEADER, policy::QUARANTINE_MARK);
            }
            result = result.prepend_header(policy::HEADER, &value);
            for kept in &keep {
                result = result.prepend_header(policy::HEADER, kept);
            }
            result
        }
    }

    sluice_sdk::export!(Auth);
}
