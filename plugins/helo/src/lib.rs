//! `builtin:helo`: refuses clients by their HELO/EHLO argument and their
//! reverse DNS.
//!
//! Each check is a switch: RFC 5321 syntax (501 5.5.2), a fully-qualified
//! name (504 5.5.2), the server's own name or address given by someone else
//! (550 5.7.1), and the client's reverse DNS — a PTR record at all, or
//! forward-confirmed (550 5.7.25; 450 4.7.25 when DNS fails). Trusted
//! networks and authenticated clients skip them all. The checks run in the
//! helo hook, and again in the mail hook when the plugin is listed there:
//! a submission pipeline lists it at mail only, so that clients that
//! authenticate after EHLO are exempt. The reverse DNS is looked up once per
//! session. The logic lives in [`policy`]; this file wires it to the host.

// On the host only the policy's unit tests run; the component glue needs
// the wasm host imports.
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

mod policy;

#[cfg(target_arch = "wasm32")]
mod component {
    use std::cell::RefCell;

    use sluice_sdk::dns::{self, DnsError};
    use sluice_sdk::net::parse_client_ip;
    use sluice_sdk::{host, log, Address, Filter, Session, Verdict};

    use crate::policy::{self, Config, LookupError, Rdns, Refusal};

    #[derive(Default)]
    struct State {
        config: Config,
        /// The client's reverse DNS, once looked up, and the session it
        /// belongs to (an instance serves sessions one after another).
        rdns: Option<(String, Rdns)>,
    }

    thread_local! {
        static STATE: RefCell<State> = RefCell::new(State::default());
    }

    fn lookup_error(e: DnsError) -> LookupError {
        match e {
            DnsError::Nxdomain => LookupError::NxDomain,
            DnsError::Temporary(e) => LookupError::Temporary(e),
            DnsError::Invalid(e) => LookupError::Invalid(e),
        }
    }

    fn verdict(refusal: Refusal) -> Verdict {
        log::info(&format!(
            "refused: {} {} {}",
            refusal.code, refusal.enhanced, refusal.text
        ));
        if refusal.is_temporary() {
            Verdict::tempfail_with(refusal.code, refusal.enhanced, &refusal.text)
        } else {
            Verdict::reject_with(refusal.code, refusal.enhanced, &refusal.text)
        }
    }

    impl State {
        fn check(&mut self, session: &Session, helo: Option<&str>) -> Verdict {
            if session.is_authenticated()
                || self
                    .config
                    .trusted_networks
                    .contains_client(&session.client_ip)
            {
                return Verdict::Next;
            }
            if let Some(helo) = helo {
                let refusal = policy::check_name(&self.config, helo, &host::hostname(), |domain| {
                    host::is_local_domain(domain)
                });
                if let Some(refusal) = refusal {
                    return verdict(refusal);
                }
            }
            if !self.config.needs_rdns() {
                return Verdict::Next;
            }
            let Some(ip) = parse_client_ip(&session.client_ip) else {
                log::warn(&format!(
                    "client address {:?} does not parse; reverse DNS not checked",
                    session.client_ip
                ));
                return Verdict::Next;
            };
            let confirm = self.config.check_fcrdns;
            if self.rdns.as_ref().is_some_and(|(id, _)| *id != session.id) {
                self.rdns = None;
            }
            let (_, rdns) = self.rdns.get_or_insert_with(|| {
                let rdns = policy::reverse_dns(
                    ip,
                    confirm,
                    |ip| dns::ptr(ip).map_err(lookup_error),
                    |name, v6| {
                        if v6 { dns::aaaa(name) } else { dns::a(name) }.map_err(lookup_error)
                    },
                );
                (session.id.clone(), rdns)
            });
            if let Rdns::Temporary(e) = rdns {
                log::warn(&format!("reverse DNS of {ip} failed: {e}"));
            }
            match policy::check_rdns(&self.config, ip, rdns) {
                Some(refusal) => verdict(refusal),
                None => Verdict::Next,
            }
        }
    }

    struct Helo;

    impl Filter for Helo {
        fn init(config: &str) -> Result<(), String> {
            let config = Config::parse(config).map_err(|e| e.to_string())?;
            STATE.with_borrow_mut(|state| *state = State { config, rdns: None });
            Ok(())
        }

        fn on_helo(session: &Session, helo: &str) -> Verdict {
            STATE.with_borrow_mut(|state| state.check(session, Some(helo)))
        }

        fn on_mail(session: &Session, _reverse_path: Option<&Address>) -> Verdict {
            STATE.with_borrow_mut(|state| state.check(session, session.helo.as_deref()))
        }
    }

    sluice_sdk::export!(Helo);
}
