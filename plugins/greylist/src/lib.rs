//! `builtin:greylist`: Postgrey-style greylisting at RCPT. An unknown
//! (client network, reverse-path, recipient) triplet gets `451 4.7.1
//! Greylisted, try again in N seconds`; a retry after the delay passes, and
//! the triplet, kept in the plugin's kv state (shared between MX nodes on
//! Redis), passes from then on. When the kv store fails the recipient
//! passes (fail open) and the error is logged. The policy lives in
//! [`policy`]; this file wires it to the `sluice_sdk` hooks.

// On the host only the policy's unit tests run; the component glue needs
// the wasm host imports.
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

mod policy;

#[cfg(target_arch = "wasm32")]
mod component {
    use std::cell::RefCell;

    use sluice_sdk::{host, kv, log, Address, Filter, Session, Verdict};

    use crate::policy::{Attempt, Config, Decision, Store};

    thread_local! {
        // Set by init, once per instance (that is, per session).
        static CONFIG: RefCell<Option<Config>> = const { RefCell::new(None) };
    }

    /// The plugin's kv namespace.
    struct HostKv;

    impl Store for HostKv {
        fn get(&mut self, key: &str) -> Result<Option<String>, String> {
            kv::get_string(key)
        }
        fn set(&mut self, key: &str, value: &str, ttl: u32) -> Result<(), String> {
            kv::set(key, value.as_bytes(), Some(ttl))
        }
        fn incr(&mut self, key: &str, ttl: u32) -> Result<i64, String> {
            kv::incr(key, 1, Some(ttl))
        }
    }

    struct Greylist;

    impl Filter for Greylist {
        fn init(config: &str) -> Result<(), String> {
            let config = Config::parse(config).map_err(|e| e.to_string())?;
            CONFIG.with_borrow_mut(|slot| *slot = Some(config));
            Ok(())
        }

        fn on_rcpt(session: &Session, recipient: &Address) -> Verdict {
            CONFIG.with_borrow(|config| {
                let Some(config) = config.as_ref() else {
                    return Verdict::Next;
                };
                let attempt = Attempt {
                    client_ip: session.client_ip.clone(),
                    sender: session.reverse_path.clone().unwrap_or_default(),
                    recipient: format!("{}@{}", recipient.local_part, recipient.domain),
                    authenticated: session.authenticated_user.is_some(),
                };
                let (decision, errors) = config.decide(&attempt, host::now(), &mut HostKv);
                for error in &errors {
                    log::warn(&format!("greylist state (fail open): {error}"));
                }
                match decision {
                    Decision::Pass(why) => {
                        log::debug(&format!("not greylisted: {why}"));
                        Verdict::Next
                    }
                    Decision::Greylist { retry_in } => {
                        log::info(&format!(
                            "greylisted {} <{}> -> <{}>",
                            attempt.client_ip, attempt.sender, attempt.recipient
                        ));
                        Verdict::tempfail_with(451, "4.7.1", &Decision::text(retry_in))
                    }
                }
            })
        }
    }

    sluice_sdk::export!(Greylist);
}
