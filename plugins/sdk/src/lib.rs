//! The Rust guest SDK for sluice filter plugins.
//!
//! It owns the guest bindings of `wit/filter.wit` (world `filter`) and turns
//! them into a small API: implement [`Filter`] on a unit struct, call
//! [`export!`], and build the crate as a `cdylib` for `wasm32-wasip2`. The
//! result is a component that sluice loads and calls once per SMTP stage; the
//! verdicts a plugin returns go back to sluice's pipeline, which decides the
//! stage.
//!
//! sluice creates one instance per session by default, so a plugin may keep
//! per-session state in statics (`thread_local!`, `OnceLock`, `Cell`): they
//! start empty for every connection. With `instances = "reused"` (the
//! default of the bundled plugins) an instance serves later sessions too, so
//! such a plugin tags per-session statics with `Session::id` and starts over
//! when it changes. State that must outlive a session goes into [`kv`].
//!
//! ```ignore
//! use sluice_sdk::{Address, Filter, Session, Verdict};
//!
//! struct SpamTrap;
//!
//! impl Filter for SpamTrap {
//!     fn on_rcpt(_session: &Session, recipient: &Address) -> Verdict {
//!         if recipient.local_part.eq_ignore_ascii_case("spamtrap") {
//!             return Verdict::reject_with(550, "5.1.1", "no such user");
//!         }
//!         Verdict::Next
//!     }
//! }
//!
//! sluice_sdk::export!(SpamTrap);
//! ```

use std::fmt;

pub mod net;

/// The raw bindings generated from `wit/filter.wit`. Plugins normally use the
/// re-exports at the crate root and the modules below instead.
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "filter",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "__export_filter",
        default_bindings_module: "sluice_sdk::bindings",
        additional_derives: [PartialEq, Eq],
    });
}

pub use bindings::sluice::filter::mail::{Attachment, Message};
pub use bindings::sluice::filter::types::{
    Address, DataResult, Header, LogLevel, Modification, Reply, Session, TlsInfo, Verdict,
};

/// What a plugin implements: one associated function per SMTP stage.
///
/// Every hook has a default that has no opinion ([`Verdict::Next`]), so a
/// plugin only writes the stages it cares about. Hooks take no `self`: the
/// host creates a fresh instance per session (or reuses one, see the crate
/// docs), and a plugin keeps whatever state it needs in statics.
pub trait Filter: 'static {
    /// Called once per instance before any hook with the plugin's
    /// `[plugins.NAME.config]` table as JSON (`{}` when there is none). An
    /// error here fails the pipeline build, so say what is wrong.
    fn init(config: &str) -> Result<(), String> {
        let _ = config;
        Ok(())
    }

    /// A client connected; `session.client_ip` is known, nothing else yet.
    fn on_connect(session: &Session) -> Verdict {
        let _ = session;
        Verdict::Next
    }

    /// EHLO or HELO with its argument.
    fn on_helo(session: &Session, helo: &str) -> Verdict {
        let _ = (session, helo);
        Verdict::Next
    }

    /// MAIL FROM; `reverse_path` is `None` for the null reverse-path `<>`.
    fn on_mail(session: &Session, reverse_path: Option<&Address>) -> Verdict {
        let _ = (session, reverse_path);
        Verdict::Next
    }

    /// RCPT TO. A recipient is accepted only if some plugin of the chain
    /// answers [`Verdict::Allow`] or [`Verdict::Accept`].
    fn on_rcpt(session: &Session, recipient: &Address) -> Verdict {
        let _ = (session, recipient);
        Verdict::Next
    }

    /// The message after DATA; the returned modifications are applied only
    /// if the stage accepts it.
    fn on_data(session: &Session, message: &Message) -> DataResult {
        let _ = (session, message);
        DataResult::next()
    }
}

/// Exports a type implementing [`Filter`] as the plugin's component exports.
///
/// Use it once per plugin crate, at the crate root:
/// `sluice_sdk::export!(MyFilter);`
#[macro_export]
macro_rules! export {
    ($ty:ident) => {
        impl $crate::bindings::Guest for $ty {
            fn init(
                config: ::std::string::String,
            ) -> ::core::result::Result<(), ::std::string::String> {
                <$ty as $crate::Filter>::init(&config)
            }

            fn on_connect(session: $crate::Session) -> $crate::Verdict {
                <$ty as $crate::Filter>::on_connect(&session)
            }

            fn on_helo(session: $crate::Session, helo: ::std::string::String) -> $crate::Verdict {
                <$ty as $crate::Filter>::on_helo(&session, &helo)
            }

            fn on_mail(
                session: $crate::Session,
                reverse_path: ::core::option::Option<$crate::Address>,
            ) -> $crate::Verdict {
                <$ty as $crate::Filter>::on_mail(&session, reverse_path.as_ref())
            }

            fn on_rcpt(session: $crate::Session, recipient: $crate::Address) -> $crate::Verdict {
                <$ty as $crate::Filter>::on_rcpt(&session, &recipient)
            }

            fn on_data(session: $crate::Session, message: &$crate::Message) -> $crate::DataResult {
                <$ty as $crate::Filter>::on_data(&session, message)
            }
        }

        $crate::bindings::__export_filter!($ty with_types_in $crate::bindings);
    };
}

impl Reply {
    /// A reply with an enhanced status code (`"5.7.1"`); pass `""` for none.
    pub fn new(code: u16, enhanced: &str, text: &str) -> Self {
        Reply {
            code,
            enhanced: (!enhanced.is_empty()).then(|| enhanced.to_string()),
            text: text.to_string(),
        }
    }
}

impl Verdict {
    /// A permanent failure with this reply, e.g.
    /// `Verdict::reject_with(550, "5.7.1", "relaying denied")`.
    pub fn reject_with(code: u16, enhanced: &str, text: &str) -> Self {
        Verdict::Reject(Some(Reply::new(code, enhanced, text)))
    }

    /// A temporary failure with this reply, e.g.
    /// `Verdict::tempfail_with(451, "4.7.1", "try again later")`.
    pub fn tempfail_with(code: u16, enhanced: &str, text: &str) -> Self {
        Verdict::Tempfail(Some(Reply::new(code, enhanced, text)))
    }

    /// Closes the session after this reply (a 421, normally).
    pub fn disconnect_with(code: u16, enhanced: &str, text: &str) -> Self {
        Verdict::Disconnect(Some(Reply::new(code, enhanced, text)))
    }

    /// Whether this verdict ends the stage (everything but next and allow).
    pub fn is_terminal(&self) -> bool {
        !matches!(self, Verdict::Next | Verdict::Allow)
    }
}

impl DataResult {
    /// No opinion and no changes.
    pub fn next() -> Self {
        Self::from(Verdict::Next)
    }

    /// Queues a header to put above the existing ones.
    pub fn prepend_header(mut self, name: &str, value: &str) -> Self {
        self.modifications.push(Modification::PrependHeader(Header {
            name: name.to_string(),
            value: value.to_string(),
        }));
        self
    }

    /// Queues a header to put after the existing ones.
    pub fn append_header(mut self, name: &str, value: &str) -> Self {
        self.modifications.push(Modification::AppendHeader(Header {
            name: name.to_string(),
            value: value.to_string(),
        }));
        self
    }

    /// Queues the removal of every header of this name.
    pub fn remove_header(mut self, name: &str) -> Self {
        self.modifications
            .push(Modification::RemoveHeader(name.to_string()));
        self
    }

    /// Queues an extra envelope recipient.
    pub fn add_recipient(mut self, recipient: &str) -> Self {
        self.modifications
            .push(Modification::AddRecipient(recipient.to_string()));
        self
    }

    /// Queues the removal of an envelope recipient.
    pub fn remove_recipient(mut self, recipient: &str) -> Self {
        self.modifications
            .push(Modification::RemoveRecipient(recipient.to_string()));
        self
    }
}

impl From<Verdict> for DataResult {
    fn from(verdict: Verdict) -> Self {
        DataResult {
            verdict,
            modifications: Vec::new(),
        }
    }
}

impl Address {
    pub fn new(local_part: &str, domain: &str) -> Self {
        Address {
            local_part: local_part.to_string(),
            domain: domain.to_string(),
        }
    }
}

/// `local@domain`, or just the local part when there is no domain
/// (`<postmaster>`). The local part is written as received, unquoted.
impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.domain.is_empty() {
            f.write_str(&self.local_part)
        } else {
            write!(f, "{}@{}", self.local_part, self.domain)
        }
    }
}

impl Session {
    /// Whether the client authenticated (SMTP AUTH) in this session.
    pub fn is_authenticated(&self) -> bool {
        self.authenticated_user.is_some()
    }
}

/// The host's log, tagged with the plugin name and the session id.
pub mod log {
    pub use crate::bindings::sluice::filter::host::log;
    use crate::LogLevel;

    pub fn trace(message: &str) {
        log(LogLevel::Trace, message);
    }

    pub fn debug(message: &str) {
        log(LogLevel::Debug, message);
    }

    pub fn info(message: &str) {
        log(LogLevel::Info, message);
    }

    pub fn warn(message: &str) {
        log(LogLevel::Warn, message);
    }

    pub fn error(message: &str) {
        log(LogLevel::Error, message);
    }
}

/// General services of the host: time, local domains, the server's name.
pub mod host {
    pub use crate::bindings::sluice::filter::host::{hostname, is_local_domain, now};
}

/// Key-value state private to this plugin, kept across sessions (and nodes,
/// with a shared backend). Errors are the backend's, as text.
pub mod kv {
    pub use crate::bindings::sluice::filter::kv::{delete, get, incr, set};

    /// Reads a value stored as UTF-8 text; a value that is not UTF-8 is an
    /// error rather than garbage.
    pub fn get_string(key: &str) -> Result<Option<String>, String> {
        match get(key)? {
            None => Ok(None),
            Some(bytes) => String::from_utf8(bytes)
                .map(Some)
                .map_err(|_| format!("kv value of {key:?} is not UTF-8")),
        }
    }
}

/// DNS lookups through the server's resolver and cache.
pub mod dns {
    pub use crate::bindings::sluice::filter::dns::{a, aaaa, mx, ptr, txt, DnsError, MxRecord};
}

/// SPF, DKIM, DMARC and ARC results, computed by the host once per
/// transaction.
pub mod auth {
    pub use crate::bindings::sluice::filter::auth::{
        arc, arc_sealer, dkim, dmarc, spf_helo, spf_mail_from, AuthResult, DkimResult, DmarcPolicy,
        DmarcResult, SpfResult,
    };
}

/// Files and mailbox servers the operator granted this plugin
/// (`[plugins.NAME] files` and `callouts`); anything else is refused.
pub mod directory {
    pub use crate::bindings::sluice::filter::directory::{
        callout_granted, lookup, verify_recipient, CalloutAnswer, CalloutProtocol,
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reject_with_builds_a_full_reply() {
        let verdict = Verdict::reject_with(554, "5.7.1", "Relay access denied");
        assert_eq!(
            verdict,
            Verdict::Reject(Some(Reply {
                code: 554,
                enhanced: Some("5.7.1".into()),
                text: "Relay access denied".into(),
            }))
        );
        assert!(verdict.is_terminal());
    }

    #[test]
    fn empty_enhanced_code_is_none() {
        assert_eq!(Reply::new(451, "", "later").enhanced, None);
        assert_eq!(
            Verdict::tempfail_with(451, "", "later"),
            Verdict::Tempfail(Some(Reply {
                code: 451,
                enhanced: None,
                text: "later".into()
            }))
        );
    }

    #[test]
    fn next_and_allow_are_not_terminal() {
        assert!(!Verdict::Next.is_terminal());
        assert!(!Verdict::Allow.is_terminal());
        assert!(Verdict::Accept.is_terminal());
        assert!(Verdict::Discard.is_terminal());
        assert!(Verdict::Quarantine("spam".into()).is_terminal());
        assert!(Verdict::disconnect_with(421, "4.3.2", "bye").is_terminal());
    }

    #[test]
    fn data_result_builder_keeps_order() {
        let result = DataResult::from(Verdict::Accept)
            .prepend_header("X-A", "1")
            .remove_header("X-B")
            .append_header("X-C", "3")
            .add_recipient("hold@example.org")
            .remove_recipient("bob@example.org");
        assert_eq!(result.verdict, Verdict::Accept);
        assert_eq!(
            result.modifications,
            vec![
                Modification::PrependHeader(Header {
                    name: "X-A".into(),
                    value: "1".into()
                }),
                Modification::RemoveHeader("X-B".into()),
                Modification::AppendHeader(Header {
                    name: "X-C".into(),
                    value: "3".into()
                }),
                Modification::AddRecipient("hold@example.org".into()),
                Modification::RemoveRecipient("bob@example.org".into()),
            ]
        );
        assert_eq!(DataResult::next().verdict, Verdict::Next);
        assert!(DataResult::next().modifications.is_empty());
    }

    #[test]
    fn address_display() {
        assert_eq!(
            Address::new("alice", "example.org").to_string(),
            "alice@example.org"
        );
        assert_eq!(Address::new("postmaster", "").to_string(), "postmaster");
    }
}
