//! `builtin:relay`: the rcpt-stage plugin that keeps sluice from being an
//! open relay.
//!
//! It accepts (verdict allow) recipients in the server's local domains from
//! anyone, and any recipient from trusted networks or authenticated clients;
//! everything else gets 554 5.7.1. The decision itself lives in [`policy`],
//! which knows nothing of the host; this file only wires it to the
//! `sluice_sdk` hooks.

// On the host only the policy's unit tests run; the component glue needs
// the wasm host imports.
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

mod policy;

#[cfg(target_arch = "wasm32")]
mod component {
    use std::cell::RefCell;

    use sluice_sdk::{host, log, Address, Filter, Session, Verdict};

    use crate::policy::{Config, Decision};

    thread_local! {
        // Set by init, once per instance (that is, per session).
        static CONFIG: RefCell<Option<Config>> = const { RefCell::new(None) };
    }

    struct Relay;

    impl Filter for Relay {
        fn init(config: &str) -> Result<(), String> {
            let config = Config::parse(config).map_err(|e| e.to_string())?;
            CONFIG.with_borrow_mut(|slot| *slot = Some(config));
            Ok(())
        }

        fn on_rcpt(session: &Session, recipient: &Address) -> Verdict {
            let decision = CONFIG.with_borrow(|config| {
                // The host always calls init first; should it not, the
                // defaults trust nobody by address.
                let default = Config::default();
                config.as_ref().unwrap_or(&default).decide(
                    &session.client_ip,
                    session.is_authenticated(),
                    &recipient.local_part,
                    &recipient.domain,
                    host::is_local_domain,
                )
            });
            match decision {
                Decision::Allow => Verdict::Allow,
                Decision::Deny => {
                    log::debug(&format!(
                        "relay denied: {recipient} from {}",
                        session.client_ip
                    ));
                    Verdict::reject_with(554, "5.7.1", "Relay access denied")
                }
            }
        }
    }

    sluice_sdk::export!(Relay);
}
