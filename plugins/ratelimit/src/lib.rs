//! `builtin:ratelimit`: limits connections (at connect), recipients (at
//! RCPT) and messages (at DATA) per client address, client network, sender
//! or authenticated user, in fixed windows counted in the plugin's kv
//! state, which several MX nodes share on Redis.
//!
//! Over a limit a connection gets `421 4.7.0` and is closed, a recipient or
//! message `451 4.7.1`, each with the seconds left in the window. When the
//! kv store fails the limit is not applied (fail open) and the error is
//! logged: a broken counter store must not stop the mail. The policy lives
//! in [`policy`]; this file wires it to the `sluice_sdk` hooks.

// On the host only the policy's unit tests run; the component glue needs
// the wasm host imports.
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

mod policy;

#[cfg(target_arch = "wasm32")]
mod component {
    use std::cell::RefCell;

    use sluice_sdk::{host, kv, log, Address, DataResult, Filter, Message, Session, Verdict};

    use crate::policy::{Client, Config, What};

    thread_local! {
        // Set by init, once per instance (that is, per session).
        static CONFIG: RefCell<Option<Config>> = const { RefCell::new(None) };
    }

    /// Counts one `what` for the session; Some(over) when a limit is hit.
    fn check(session: &Session, what: What) -> Option<crate::policy::Over> {
        CONFIG.with_borrow(|config| {
            let config = config.as_ref()?;
            if !config.counts(what) {
                return None;
            }
            let client = Client {
                ip: session.client_ip.clone(),
                sender: session.reverse_path.clone(),
                user: session.authenticated_user.clone(),
            };
            let checked = config.check(what, &client, host::now(), |key, ttl| {
                kv::incr(key, 1, Some(ttl))
            });
            for error in &checked.errors {
                log::warn(&format!("rate limit not applied (fail open): {error}"));
            }
            if let Some(over) = &checked.over {
                log::info(&over.text());
            }
            checked.over
        })
    }

    struct RateLimit;

    impl Filter for RateLimit {
        fn init(config: &str) -> Result<(), String> {
            let config = Config::parse(config).map_err(|e| e.to_string())?;
            CONFIG.with_borrow_mut(|slot| *slot = Some(config));
            Ok(())
        }

        fn on_connect(session: &Session) -> Verdict {
            match check(session, What::Connections) {
                Some(over) => Verdict::disconnect_with(421, "4.7.0", &over.text()),
                None => Verdict::Next,
            }
        }

        fn on_rcpt(session: &Session, _recipient: &Address) -> Verdict {
            match check(session, What::Recipients) {
                Some(over) => Verdict::tempfail_with(451, "4.7.1", &over.text()),
                None => Verdict::Next,
            }
        }

        fn on_data(session: &Session, _message: &Message) -> DataResult {
            match check(session, What::Messages) {
                Some(over) => Verdict::tempfail_with(451, "4.7.1", &over.text()).into(),
                None => DataResult::next(),
            }
        }
    }

    sluice_sdk::export!(RateLimit);
}
