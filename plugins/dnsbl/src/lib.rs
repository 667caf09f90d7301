//! `builtin:dnsbl`: refuses clients that DNS block lists name (RFC 5782).
//!
//! IP zones are asked about the client address, domain zones about the
//! HELO name and the MAIL FROM domain. The weights of the listing zones add
//! up; at or above `threshold` the session gets 554 5.7.1 with the zone and
//! its TXT reason, either as soon as that is known (`reject_at =
//! "connect"`) or at each RCPT except to postmaster (`reject_at = "rcpt"`).
//! Lookups are made once per session and kept in statics, dropped when a
//! hook sees another session id (an instance serves sessions one after
//! another); a hook that runs before the others were called makes the
//! missing lookups itself, so the plugin works in any stage it is listed
//! in. The logic lives in [`policy`]; this file wires it to the host.

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

    use crate::policy::{
        self, domain_query, ip_query, Config, Findings, Listing, LookupError, RejectAt, ZoneType,
    };

    /// What this session's lookups found so far.
    #[derive(Default)]
    struct State {
        config: Config,
        /// The session the lookups below belong to.
        session_id: String,
        /// Whether the client address was looked up.
        ip_checked: bool,
        ip: Vec<Listing>,
        /// The HELO name looked up (a new EHLO after STARTTLS may change it).
        helo_checked: Option<String>,
        helo: Vec<Listing>,
        /// The reverse-path domain of the current transaction looked up.
        mail_checked: Option<String>,
        mail: Vec<Listing>,
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

    fn a(name: &str) -> Result<Vec<String>, LookupError> {
        dns::a(name).map_err(lookup_error)
    }

    fn txt(name: &str) -> Result<Vec<String>, LookupError> {
        dns::txt(name).map_err(lookup_error)
    }

    fn logged(findings: Findings) -> Vec<Listing> {
        for skipped in &findings.skipped {
            log::warn(skipped);
        }
        for listing in &findings.listings {
            log::info(&format!(
                "{} listed by {} (weight {})",
                listing.subject, listing.zone, listing.weight
            ));
        }
        findings.listings
    }

    fn domain_of(reverse_path: &str) -> Option<&str> {
        reverse_path
            .rsplit_once('@')
            .map(|(_, domain)| domain)
            .filter(|d| !d.is_empty())
    }

    impl State {
        /// Drops an earlier session's lookups: the instance is reused.
        fn enter(&mut self, session: &Session) -> &mut Self {
            if self.session_id != session.id {
                let config = std::mem::take(&mut self.config);
                *self = State {
                    config,
                    session_id: session.id.clone(),
                    ..State::default()
                };
            }
            self
        }

        fn allowed(&self, session: &Session) -> bool {
            self.config.allow.contains_client(&session.client_ip)
        }

        fn check_ip(&mut self, session: &Session) {
            if self.ip_checked {
                return;
            }
            self.ip_checked = true;
            let Some(ip) = parse_client_ip(&session.client_ip) else {
                log::warn(&format!(
                    "client address {:?} does not parse; not checked",
                    session.client_ip
                ));
                return;
            };
            let subject = format!("client host [{ip}]");
            self.ip = logged(policy::check(
                &self.config,
                ZoneType::Ip,
                &subject,
                |zone| Some(ip_query(ip, zone)),
                a,
                txt,
            ));
        }

        fn check_helo(&mut self, helo: Option<&str>) {
            let Some(helo) = helo else { return };
            if self.helo_checked.as_deref() == Some(helo) {
                return;
            }
            self.helo_checked = Some(helo.to_string());
            let subject = format!("HELO name {helo}");
            self.helo = logged(policy::check(
                &self.config,
                ZoneType::Domain,
                &subject,
                |zone| domain_query(helo, zone),
                a,
                txt,
            ));
        }

        fn check_mail(&mut self, domain: Option<&str>) {
            let domain = domain.unwrap_or("");
            if self.mail_checked.as_deref() == Some(domain) {
                return;
            }
            self.mail_checked = Some(domain.to_string());
            if domain.is_empty() {
                self.mail.clear();
                return;
            }
            let subject = format!("sender domain {domain}");
            self.mail = logged(policy::check(
                &self.config,
                ZoneType::Domain,
                &subject,
                |zone| domain_query(domain, zone),
                a,
                txt,
            ));
        }

        fn listings(&self) -> impl Iterator<Item = &Listing> + Clone {
            self.ip.iter().chain(&self.helo).chain(&self.mail)
        }

        /// 554 5.7.1 when the session's score reaches the threshold.
        fn verdict(&self) -> Verdict {
            let score = policy::score(self.listings());
            if !self.config.reached(score) {
                return Verdict::Next;
            }
            log::info(&format!(
                "score {score} reaches the threshold {}",
                self.config.threshold
            ));
            Verdict::reject_with(554, "5.7.1", &policy::reply_text(self.listings()))
        }

        /// The verdict of a stage before RCPT: a rejection only when
        /// rejecting as early as possible.
        fn early_verdict(&self) -> Verdict {
            match self.config.reject_at {
                RejectAt::Connect => self.verdict(),
                RejectAt::Rcpt => Verdict::Next,
            }
        }
    }

    struct Dnsbl;

    impl Filter for Dnsbl {
        fn init(config: &str) -> Result<(), String> {
            let config = Config::parse(config).map_err(|e| e.to_string())?;
            STATE.with_borrow_mut(|state| {
                *state = State {
                    config,
                    ..State::default()
                }
            });
            Ok(())
        }

        fn on_connect(session: &Session) -> Verdict {
            STATE.with_borrow_mut(|state| {
                let state = state.enter(session);
                if state.allowed(session) {
                    return Verdict::Next;
                }
                state.check_ip(session);
                state.early_verdict()
            })
        }

        fn on_helo(session: &Session, helo: &str) -> Verdict {
            STATE.with_borrow_mut(|state| {
                let state = state.enter(session);
                if state.allowed(session) {
                    return Verdict::Next;
                }
                state.check_ip(session);
                state.check_helo(Some(helo));
                state.early_verdict()
            })
        }

        fn on_mail(session: &Session, reverse_path: Option<&Address>) -> Verdict {
            STATE.with_borrow_mut(|state| {
                let state = state.enter(session);
                // Authenticated clients are the server's own users, whatever
                // network they send from.
                if state.allowed(session) || session.is_authenticated() {
                    return Verdict::Next;
                }
                state.check_ip(session);
                state.check_helo(session.helo.as_deref());
                state.check_mail(reverse_path.map(|a| a.domain.as_str()));
                state.early_verdict()
            })
        }

        fn on_rcpt(session: &Session, recipient: &Address) -> Verdict {
            STATE.with_borrow_mut(|state| {
                let state = state.enter(session);
                if state.allowed(session) || session.is_authenticated() {
                    return Verdict::Next;
                }
                // RFC 5321 §4.5.1: postmaster must be reachable, also by a
                // listed client that wants to ask about its listing.
                if recipient.local_part.eq_ignore_ascii_case("postmaster")
                    && (recipient.domain.is_empty() || host::is_local_domain(&recipient.domain))
                {
                    return Verdict::Next;
                }
                state.check_ip(session);
                state.check_helo(session.helo.as_deref());
                state.check_mail(session.reverse_path.as_deref().and_then(domain_of));
                state.verdict()
            })
        }
    }

    sluice_sdk::export!(Dnsbl);
}
