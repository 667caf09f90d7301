//! `builtin:antispoof`: refuses mail that claims one of the server's local
//! domains as its sender from a client that is neither authenticated nor
//! in `trusted_networks`.
//!
//! At MAIL it checks the reverse-path, at DATA every address of every From
//! header; both refusals are 550 5.7.1. Addresses and domains in
//! `allow_senders` (a mailing list that sends as us) are exempt. The logic
//! lives in [`policy`]; this file wires it to the host.

// On the host only the policy's unit tests run; the component glue needs
// the wasm host imports.
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

mod policy;

#[cfg(target_arch = "wasm32")]
mod component {
    use std::cell::RefCell;

    use sluice_sdk::{host, log, Address, DataResult, Filter, Message, Session, Verdict};

    use crate::policy::{self, Config, REFUSAL};

    thread_local! {
        // Set by init, once per instance (that is, per session).
        static CONFIG: RefCell<Config> = RefCell::new(Config::default());
    }

    fn is_local_domain(domain: &str) -> bool {
        host::is_local_domain(domain)
    }

    fn refuse(what: &str, address: &str, session: &Session) -> Verdict {
        log::info(&format!(
            "refused: {what} {address} from unauthenticated client {}",
            session.client_ip
        ));
        Verdict::reject_with(550, "5.7.1", REFUSAL)
    }

    struct Antispoof;

    impl Filter for Antispoof {
        fn init(config: &str) -> Result<(), String> {
            let config = Config::parse(config).map_err(|e| e.to_string())?;
            CONFIG.with_borrow_mut(|slot| *slot = config);
            Ok(())
        }

        fn on_mail(session: &Session, reverse_path: Option<&Address>) -> Verdict {
            CONFIG.with_borrow(|config| {
                let Some(address) = reverse_path else {
                    return Verdict::Next;
                };
                if !config.check_reverse_path
                    || config.client_exempt(&session.client_ip, session.is_authenticated())
                {
                    return Verdict::Next;
                }
                let address = address.to_string();
                if config.spoofed(&address, is_local_domain) {
                    return refuse("reverse-path", &address, session);
                }
                Verdict::Next
            })
        }

        fn on_data(session: &Session, message: &Message) -> DataResult {
            CONFIG.with_borrow(|config| {
                if !config.check_from_header
                    || config.client_exempt(&session.client_ip, session.is_authenticated())
                {
                    return DataResult::next();
                }
                for header in message.headers() {
                    if !header.name.eq_ignore_ascii_case("from") {
                        continue;
                    }
                    for address in policy::from_addresses(&header.value) {
                        if config.spoofed(&address, is_local_domain) {
                            return refuse("From header address", &address, session).into();
                        }
                    }
                }
                DataResult::next()
            })
        }
    }

    sluice_sdk::export!(Antispoof);
}
