//! `builtin:recipients`: the rcpt-stage check that a recipient of a local
//! domain exists before sluice answers 250, so mail for unknown users is
//! refused in the session (550 5.1.1) instead of bounced later
//! (backscatter). Other domains get no opinion: the relay check decides.
//!
//! Recipients come from the `users` list, a recipients file the operator
//! granted the plugin (looked up through the host's `directory` interface,
//! which parses it once per change, so an edit counts at once), and a
//! callout to the mailbox server, whose answers are cached in the plugin's
//! key-value store. The decisions live in [`policy`].

// On the host only the policy's unit tests run; the component glue needs
// the wasm host imports.
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

mod policy;

#[cfg(target_arch = "wasm32")]
mod component {
    use std::cell::RefCell;

    use sluice_sdk::directory::{self, CalloutAnswer, CalloutProtocol};
    use sluice_sdk::{host, kv, log, Address, DataResult, Filter, Message, Session, Verdict};

    use crate::policy::{expand, lookup, Callout, Config, Lookup, Table};

    thread_local! {
        // Set by init, once per instance (that is, per session).
        static STATE: RefCell<Option<Config>> = const { RefCell::new(None) };
    }

    /// The recipients file, looked up by the host.
    struct HostFile<'a>(&'a str);

    impl Table for HostFile<'_> {
        fn get(&self, key: &str) -> Result<Option<String>, String> {
            directory::lookup(self.0, key)
        }
    }

    fn no_such_user() -> Verdict {
        Verdict::reject_with(550, "5.1.1", "no such user")
    }

    /// Asks the mailbox server, through the cache.
    fn callout(config: &Config, callout: &Callout, recipient: &Address) -> Verdict {
        let (protocol, target) = match callout {
            Callout::Lmtp(t) => (CalloutProtocol::Lmtp, t),
            Callout::Smtp(t) => (CalloutProtocol::Smtp, t),
        };
        let address = recipient.to_string();
        let key = format!("callout:{target}:{}", address.to_lowercase());
        match kv::get(&key) {
            Ok(Some(v)) if v == b"1" => return Verdict::Allow,
            Ok(Some(v)) if v == b"0" => return no_such_user(),
            Ok(_) => {}
            Err(e) => log::warn(&format!("callout cache: {e}")),
        }
        let remember = |value: &[u8], ttl: u32| {
            if let Err(e) = kv::set(&key, value, Some(ttl)) {
                log::warn(&format!("callout cache: {e}"));
            }
        };
        match directory::verify_recipient(protocol, target, &address) {
            CalloutAnswer::Exists => {
                remember(b"1", config.positive_ttl);
                Verdict::Allow
            }
            CalloutAnswer::Unknown(reply) => {
                log::info(&format!("{address} unknown to {target}: {reply}"));
                remember(b"0", config.negative_ttl);
                no_such_user()
            }
            CalloutAnswer::Unavailable(reason) => {
                log::warn(&format!("callout for {address}: {reason}"));
                if config.callout_fail_open {
                    Verdict::Next
                } else {
                    Verdict::tempfail_with(
                        450,
                        "4.1.1",
                        "recipient cannot be verified now, try again later",
                    )
                }
            }
        }
    }

    struct RecipientCheck;

    impl Filter for RecipientCheck {
        fn init(config: &str) -> Result<(), String> {
            let config = Config::parse(config).map_err(|e| e.to_string())?;
            if let Some(path) = &config.file {
                // Proves the grant and the file's syntax now: a bad line
                // fails the start, not the first recipient.
                HostFile(path)
                    .get("postmaster")
                    .map_err(|e| format!("recipients: file: {e}"))?;
            }
            if let Some(callout) = &config.callout {
                let (protocol, target, key) = match callout {
                    Callout::Lmtp(t) => (CalloutProtocol::Lmtp, t, "lmtp"),
                    Callout::Smtp(t) => (CalloutProtocol::Smtp, t, "smtp"),
                };
                if !directory::callout_granted(protocol, target) {
                    return Err(format!(
                        "recipients: callout {key}:{target} is not granted: add it to this \
                         plugin's [plugins.NAME] callouts"
                    ));
                }
            }
            STATE.with_borrow_mut(|slot| *slot = Some(config));
            Ok(())
        }

        fn on_rcpt(_session: &Session, recipient: &Address) -> Verdict {
            STATE.with_borrow(|state| {
                let Some(config) = state else {
                    // The host always calls init first.
                    return Verdict::tempfail_with(451, "4.3.0", "recipient check not ready");
                };
                if recipient.domain.is_empty() {
                    // `<postmaster>` alone (RFC 5321 4.5.1); others: not ours to judge.
                    return if recipient.local_part.eq_ignore_ascii_case("postmaster") {
                        Verdict::Allow
                    } else {
                        Verdict::Next
                    };
                }
                if !host::is_local_domain(&recipient.domain) {
                    return Verdict::Next;
                }
                let (local, domain) = config.mailbox(&recipient.local_part, &recipient.domain);
                let file = config.file.as_deref().map(HostFile);
                match lookup(
                    config,
                    file.as_ref().map(|f| f as &dyn Table),
                    &local,
                    &domain,
                ) {
                    Err(e) => {
                        log::error(&format!("recipients file: {e}"));
                        Verdict::tempfail_with(451, "4.3.0", "recipient directory unavailable")
                    }
                    Ok(Lookup::Known) => Verdict::Allow,
                    Ok(Lookup::Unknown) => {
                        log::debug(&format!("no such user: {recipient}"));
                        no_such_user()
                    }
                    Ok(Lookup::AskCallout) => match &config.callout {
                        Some(target) => callout(config, target, recipient),
                        None => no_such_user(),
                    },
                }
            })
        }

        /// In the data stage too, aliases from the file are delivered to
        /// their targets instead of to a mailbox of their own name.
        fn on_data(session: &Session, _message: &Message) -> DataResult {
            STATE.with_borrow(|state| {
                let mut result = DataResult::next();
                let Some(config) = state else {
                    return result;
                };
                let Some(path) = config.file.as_deref() else {
                    return result;
                };
                let file = HostFile(path);
                for recipient in &session.recipients {
                    let Some((local, domain)) = recipient.rsplit_once('@') else {
                        continue;
                    };
                    if !host::is_local_domain(domain) {
                        continue;
                    }
                    let (local, domain) = config.mailbox(local, domain);
                    let targets = match expand(&file, &local, &domain) {
                        Ok(targets) => targets,
                        Err(e) => {
                            log::error(&format!("recipients file: {e}"));
                            return DataResult::from(Verdict::tempfail_with(
                                451,
                                "4.3.0",
                                "recipient directory unavailable",
                            ));
                        }
                    };
                    if let Some(targets) = targets {
                        log::info(&format!("alias {recipient} -> {}", targets.join(", ")));
                        result = result.remove_recipient(recipient);
                        for target in &targets {
                            result = result.add_recipient(target);
                        }
                    }
                }
                result
            })
        }
    }

    sluice_sdk::export!(RecipientCheck);
}
