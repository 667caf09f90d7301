//! The greylisting policy of `builtin:greylist`, after Postgrey: its
//! configuration, the kv keys, and the decision for one recipient.
//!
//! A triplet is (client network, reverse-path, recipient): the /24 around
//! an IPv4 client, the /64 around an IPv6 one (a sender's retry often comes
//! from another host of the same pool). The first time a triplet is seen it
//! is stored with its time and refused for `delay`; a retry after that
//! passes and the triplet is kept for `retain`, refreshed on every pass. An
//! unretried triplet is forgotten after `expire`. Each triplet that passes
//! counts for its network; after `auto_allow_after` of them the network is
//! no longer greylisted (Postgrey's `--auto-whitelist-clients`). Nothing
//! here touches the host; the store is passed in, so this tests natively.

use serde::Deserialize;
use sluice_sdk::net::{parse_client_ip, parse_duration, Network, Networks};

/// Why the plugin's configuration was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// Malformed JSON, an unknown key (serde names it) or a wrong type.
    #[error("greylist: invalid config: {0}")]
    Json(String),
    #[error("greylist: {key}: {error}")]
    Duration {
        key: &'static str,
        error: sluice_sdk::net::ParseError,
    },
    #[error("greylist: {key} must be at most 366d")]
    TooLong { key: &'static str },
    #[error("greylist: allow_networks: {0}")]
    Network(sluice_sdk::net::ParseError),
    #[error("greylist: {key}: {value:?} is neither a domain nor an address")]
    Pattern { key: &'static str, value: String },
    #[error("greylist: {0}")]
    Prefix(sluice_sdk::net::PrefixTooLong),
}

/// Addresses (`user@example.org`) and domains (`example.org`, which also
/// covers its subdomains), case-insensitive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressList {
    addresses: Vec<String>,
    domains: Vec<String>,
}

impl AddressList {
    fn parse(key: &'static str, values: &[String]) -> Result<AddressList, ConfigError> {
        let mut list = AddressList::default();
        for value in values {
            let v = value.trim().to_lowercase();
            let bad = || ConfigError::Pattern {
                key,
                value: value.clone(),
            };
            match v.rsplit_once('@') {
                Some((local, domain)) => {
                    if local.is_empty() || domain.is_empty() {
                        return Err(bad());
                    }
                    list.addresses.push(v);
                }
                None => {
                    let domain = v.trim_start_matches('.');
                    if domain.is_empty() || domain.contains(char::is_whitespace) {
                        return Err(bad());
                    }
                    list.domains.push(domain.to_owned());
                }
            }
        }
        Ok(list)
    }

    /// Whether `address` (`local@domain`) is listed, by itself or by its
    /// domain or a parent domain.
    pub fn matches(&self, address: &str) -> bool {
        let address = address.to_lowercase();
        if self.addresses.contains(&address) {
            return true;
        }
        let Some((_, domain)) = address.rsplit_once('@') else {
            return false;
        };
        self.domains.iter().any(|d| {
            domain == d
                || domain
                    .strip_suffix(d.as_str())
                    .is_some_and(|rest| rest.ends_with('.'))
        })
    }
}

/// The operator's settings, as `[plugins.NAME.config]`; all in seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub delay: u64,
    pub expire: u64,
    pub retain: u64,
    /// Passed triplets after which a network is no longer greylisted; 0
    /// turns auto-allowing off.
    pub auto_allow_after: u64,
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    pub allow_networks: Networks,
    pub allow_senders: AddressList,
    pub allow_recipients: AddressList,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "default_delay")]
    delay: String,
    #[serde(default = "default_expire")]
    expire: String,
    #[serde(default = "default_retain")]
    retain: String,
    #[serde(default = "default_auto_allow")]
    auto_allow_after: u64,
    #[serde(default = "default_v4")]
    ipv4_prefix: u8,
    #[serde(default = "default_v6")]
    ipv6_prefix: u8,
    #[serde(default = "default_allow_networks")]
    allow_networks: Vec<String>,
    #[serde(default)]
    allow_senders: Vec<String>,
    #[serde(default)]
    allow_recipients: Vec<String>,
}

fn default_delay() -> String {
    "5m".into()
}
fn default_expire() -> String {
    "4h".into()
}
fn default_retain() -> String {
    "36d".into()
}
fn default_auto_allow() -> u64 {
    5
}
fn default_v4() -> u8 {
    24
}
fn default_v6() -> u8 {
    64
}
fn default_allow_networks() -> Vec<String> {
    vec!["127.0.0.0/8".into(), "::1/128".into()]
}

/// Longest duration: a year, so TTLs fit the kv's u32 seconds.
const MAX_SECONDS: u64 = 366 * 86_400;

fn seconds(key: &'static str, value: &str) -> Result<u64, ConfigError> {
    let s = parse_duration(value).map_err(|error| ConfigError::Duration { key, error })?;
    if s > MAX_SECONDS {
        return Err(ConfigError::TooLong { key });
    }
    Ok(s)
}

/// Seconds as a kv TTL; at least 1 so a zero never means "now".
fn ttl(seconds: u64) -> u32 {
    u32::try_from(seconds.max(1)).unwrap_or(u32::MAX)
}

/// The kv store as the policy uses it.
pub trait Store {
    fn get(&mut self, key: &str) -> Result<Option<String>, String>;
    fn set(&mut self, key: &str, value: &str, ttl: u32) -> Result<(), String>;
    fn incr(&mut self, key: &str, ttl: u32) -> Result<i64, String>;
}

/// What the policy knows of a recipient's transaction.
#[derive(Debug, Clone, Default)]
pub struct Attempt {
    pub client_ip: String,
    /// The reverse-path, `""` for `<>`.
    pub sender: String,
    /// `local@domain`.
    pub recipient: String,
    pub authenticated: bool,
}

/// The decision for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Not greylisted, and why (for the debug log).
    Pass(&'static str),
    /// Refused for now; retry after this many seconds.
    Greylist { retry_in: u64 },
}

impl Decision {
    /// The reply text of a greylisted recipient.
    pub fn text(retry_in: u64) -> String {
        format!("Greylisted, try again in {retry_in} seconds")
    }
}

/// A stored triplet: when it was first seen, or that it has passed.
const PASSED: &str = "passed";

impl Config {
    /// Parses the JSON config; an empty string means all defaults.
    pub fn parse(json: &str) -> Result<Config, ConfigError> {
        let json = if json.trim().is_empty() { "{}" } else { json };
        let raw: RawConfig =
            serde_json::from_str(json).map_err(|e| ConfigError::Json(e.to_string()))?;
        sluice_sdk::net::check_prefixes(raw.ipv4_prefix, raw.ipv6_prefix)
            .map_err(ConfigError::Prefix)?;
        Ok(Config {
            delay: seconds("delay", &raw.delay)?,
            expire: seconds("expire", &raw.expire)?,
            retain: seconds("retain", &raw.retain)?,
            auto_allow_after: raw.auto_allow_after,
            ipv4_prefix: raw.ipv4_prefix,
            ipv6_prefix: raw.ipv6_prefix,
            allow_networks: Networks::parse(&raw.allow_networks).map_err(ConfigError::Network)?,
            allow_senders: AddressList::parse("allow_senders", &raw.allow_senders)?,
            allow_recipients: AddressList::parse("allow_recipients", &raw.allow_recipients)?,
        })
    }

    /// The kv keys of an attempt: the triplet and its network's counter.
    /// None when the client address does not parse.
    pub fn keys(&self, attempt: &Attempt) -> Option<(String, String)> {
        let ip = parse_client_ip(&attempt.client_ip)?;
        let prefix = if ip.is_ipv4() {
            self.ipv4_prefix
        } else {
            self.ipv6_prefix
        };
        let network = Network::around(ip, prefix);
        let sender = if attempt.sender.is_empty() {
            "<>".to_owned()
        } else {
            attempt.sender.to_lowercase()
        };
        Some((
            format!(
                "triplet:{network}|{sender}|{}",
                attempt.recipient.to_lowercase()
            ),
            format!("passed:{network}"),
        ))
    }

    /// Decides one recipient at `now`. A kv failure passes it (greylisting
    /// fails open) and is returned in the errors for the log.
    pub fn decide(
        &self,
        attempt: &Attempt,
        now: u64,
        store: &mut impl Store,
    ) -> (Decision, Vec<String>) {
        let mut errors = Vec::new();
        if attempt.authenticated {
            return (Decision::Pass("authenticated client"), errors);
        }
        if self.allow_networks.contains_client(&attempt.client_ip) {
            return (Decision::Pass("allowed network"), errors);
        }
        if !attempt.sender.is_empty() && self.allow_senders.matches(&attempt.sender) {
            return (Decision::Pass("allowed sender"), errors);
        }
        if self.allow_recipients.matches(&attempt.recipient) {
            return (Decision::Pass("allowed recipient"), errors);
        }
        let Some((triplet, network)) = self.keys(attempt) else {
            errors.push(format!(
                "client address {:?} does not parse; not greylisted",
                attempt.client_ip
            ));
            return (Decision::Pass("unknown client address"), errors);
        };
        if self.auto_allow_after > 0 {
            match store.get(&network) {
                Ok(Some(n)) if n.parse::<u64>().is_ok_and(|n| n >= self.auto_allow_after) => {
                    return (Decision::Pass("auto-allowed network"), errors);
                }
                Ok(_) => {}
                Err(e) => errors.push(format!("{network}: {e}")),
            }
        }
        let seen = match store.get(&triplet) {
            Ok(seen) => seen,
            Err(e) => {
                errors.push(format!("{triplet}: {e}"));
                return (Decision::Pass("kv failure (fail open)"), errors);
            }
        };
        match seen.as_deref() {
            Some(PASSED) => {
                // Keep an active triplet for another `retain`.
                if let Err(e) = store.set(&triplet, PASSED, ttl(self.retain)) {
                    errors.push(format!("{triplet}: {e}"));
                }
                (Decision::Pass("known triplet"), errors)
            }
            Some(first) if first.parse::<u64>().is_ok() => {
                let first: u64 = first.parse().unwrap_or(now);
                let waited = now.saturating_sub(first);
                if waited < self.delay {
                    // Too early: the first-seen time stays (as in Postgrey).
                    return (
                        Decision::Greylist {
                            retry_in: self.delay - waited,
                        },
                        errors,
                    );
                }
                if let Err(e) = store.set(&triplet, PASSED, ttl(self.retain)) {
                    errors.push(format!("{triplet}: {e}"));
                }
                if self.auto_allow_after > 0 {
                    if let Err(e) = store.incr(&network, ttl(self.retain)) {
                        errors.push(format!("{network}: {e}"));
                    }
                }
                (Decision::Pass("retried after the delay"), errors)
            }
            _ => {
                // New (or unreadable): remember it for `expire`.
                if let Err(e) = store.set(&triplet, &now.to_string(), ttl(self.expire)) {
                    errors.push(format!("{triplet}: {e}"));
                    return (Decision::Pass("kv failure (fail open)"), errors);
                }
                if self.delay == 0 {
                    return (Decision::Pass("no delay"), errors);
                }
                (
                    Decision::Greylist {
                        retry_in: self.delay,
                    },
                    errors,
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// An in-memory store with expiry on a clock the test moves.
    #[derive(Default)]
    struct Mem {
        now: u64,
        values: HashMap<String, (String, u64)>,
        fail: bool,
    }

    impl Store for Mem {
        fn get(&mut self, key: &str) -> Result<Option<String>, String> {
            if self.fail {
                return Err("connection refused".into());
            }
            Ok(self
                .values
                .get(key)
                .filter(|(_, until)| *until > self.now)
                .map(|(v, _)| v.clone()))
        }
        fn set(&mut self, key: &str, value: &str, ttl: u32) -> Result<(), String> {
            if self.fail {
                return Err("connection refused".into());
            }
            self.values
                .insert(key.into(), (value.into(), self.now + u64::from(ttl)));
            Ok(())
        }
        fn incr(&mut self, key: &str, ttl: u32) -> Result<i64, String> {
            let current = self.get(key)?;
            let until = match (current.is_some(), self.values.get(key)) {
                (true, Some((_, until))) => *until,
                _ => self.now + u64::from(ttl),
            };
            let n = current.and_then(|v| v.parse::<i64>().ok()).unwrap_or(0) + 1;
            self.values.insert(key.into(), (n.to_string(), until));
            Ok(n)
        }
    }

    fn config(json: &str) -> Config {
        Config::parse(json).unwrap()
    }

    fn attempt(ip: &str, sender: &str, rcpt: &str) -> Attempt {
        Attempt {
            client_ip: ip.into(),
            sender: sender.into(),
            recipient: rcpt.into(),
            authenticated: false,
        }
    }

    #[test]
    fn defaults_follow_postgrey() {
        let cfg = config("{}");
        assert_eq!(cfg.delay, 300);
        assert_eq!(cfg.expire, 4 * 3600);
        assert_eq!(cfg.retain, 36 * 86400);
        assert_eq!(cfg.auto_allow_after, 5);
        assert!(cfg.allow_networks.contains_client("127.0.0.1"));
        assert_eq!(config(""), cfg);
    }

    #[test]
    fn config_errors_name_the_key() {
        let cases = [
            (r#"{"dealy": "1s"}"#, "dealy"),
            (r#"{"delay": "5x"}"#, "delay"),
            (r#"{"expire": 5}"#, "invalid config"),
            (r#"{"retain": "400d"}"#, "retain must be at most"),
            (r#"{"allow_networks": ["10.0.0.0/40"]}"#, "allow_networks"),
            (r#"{"allow_senders": ["@example.org"]}"#, "allow_senders"),
            (r#"{"allow_recipients": [""]}"#, "allow_recipients"),
            (r#"{"ipv6_prefix": 200}"#, "ipv6_prefix"),
        ];
        for (json, needle) in cases {
            let err = Config::parse(json).unwrap_err().to_string();
            assert!(err.contains(needle), "{json}: {err}");
        }
    }

    #[test]
    fn keys_group_by_network_and_ignore_case() {
        let cfg = config("{}");
        let (t, n) = cfg
            .keys(&attempt(
                "::ffff:192.0.2.77",
                "Alice@Example.ORG",
                "Bob@Example.net",
            ))
            .unwrap();
        assert_eq!(t, "triplet:192.0.2.0/24|alice@example.org|bob@example.net");
        assert_eq!(n, "passed:192.0.2.0/24");
        let (t, _) = cfg.keys(&attempt("2001:db8:1:2:3::9", "", "x@y")).unwrap();
        assert_eq!(t, "triplet:2001:db8:1:2::/64|<>|x@y");
        assert_eq!(cfg.keys(&attempt("junk", "a@b", "c@d")), None);
    }

    #[test]
    fn first_attempt_waits_then_passes_and_is_retained() {
        let cfg =
            config(r#"{"delay": "5m", "expire": "4h", "retain": "36d", "allow_networks": []}"#);
        let mut store = Mem {
            now: 1000,
            ..Mem::default()
        };
        let a = attempt("192.0.2.1", "a@example.org", "b@example.net");
        assert_eq!(
            cfg.decide(&a, 1000, &mut store).0,
            Decision::Greylist { retry_in: 300 }
        );
        store.now = 1100;
        // Early retry: told the time left, first-seen kept.
        assert_eq!(
            cfg.decide(&a, 1100, &mut store).0,
            Decision::Greylist { retry_in: 200 }
        );
        // Another host of the same /24 retries after the delay: passes.
        store.now = 1300;
        let b = attempt("192.0.2.200", "A@example.org", "b@example.net");
        assert_eq!(
            cfg.decide(&b, 1300, &mut store).0,
            Decision::Pass("retried after the delay")
        );
        store.now = 1300 + 30 * 86400;
        assert_eq!(
            cfg.decide(&a, store.now, &mut store).0,
            Decision::Pass("known triplet")
        );
        // Refreshed: still known 30 days later, forgotten after 36 idle days.
        store.now += 30 * 86400;
        assert_eq!(
            cfg.decide(&a, store.now, &mut store).0,
            Decision::Pass("known triplet")
        );
        store.now += 37 * 86400;
        assert!(matches!(
            cfg.decide(&a, store.now, &mut store).0,
            Decision::Greylist { .. }
        ));
    }

    #[test]
    fn unretried_triplet_expires() {
        let cfg = config(r#"{"delay": "1m", "expire": "10m", "allow_networks": []}"#);
        let mut store = Mem::default();
        let a = attempt("192.0.2.1", "a@example.org", "b@example.net");
        assert!(matches!(
            cfg.decide(&a, 0, &mut store).0,
            Decision::Greylist { .. }
        ));
        store.now = 600;
        assert_eq!(
            cfg.decide(&a, 600, &mut store).0,
            Decision::Greylist { retry_in: 60 }
        );
    }

    #[test]
    fn auto_allow_after_passed_triplets() {
        let cfg = config(r#"{"delay": "1s", "auto_allow_after": 2, "allow_networks": []}"#);
        let mut store = Mem::default();
        for i in 0..2 {
            let a = attempt("192.0.2.1", "a@example.org", &format!("r{i}@example.net"));
            assert!(matches!(
                cfg.decide(&a, 0, &mut store).0,
                Decision::Greylist { .. }
            ));
            store.now = 5;
            assert_eq!(
                cfg.decide(&a, 5, &mut store).0,
                Decision::Pass("retried after the delay")
            );
            store.now = 0;
        }
        store.now = 5;
        let fresh = attempt("192.0.2.9", "new@example.com", "other@example.net");
        assert_eq!(
            cfg.decide(&fresh, 5, &mut store).0,
            Decision::Pass("auto-allowed network")
        );
        // Other networks are still greylisted; 0 turns the feature off.
        let elsewhere = attempt("198.51.100.1", "new@example.com", "other@example.net");
        assert!(matches!(
            cfg.decide(&elsewhere, 5, &mut store).0,
            Decision::Greylist { .. }
        ));
        let off = config(r#"{"auto_allow_after": 0, "allow_networks": []}"#);
        assert!(matches!(
            off.decide(&fresh, 5, &mut store).0,
            Decision::Greylist { .. }
        ));
    }

    #[test]
    fn allow_lists_and_authenticated() {
        let cfg = config(
            r#"{"allow_networks": ["10.0.0.0/8"], "allow_senders": ["example.org", "bob@friend.test"],
                "allow_recipients": ["postmaster@example.net"]}"#,
        );
        let mut store = Mem::default();
        let pass = |a: &Attempt, store: &mut Mem| cfg.decide(a, 0, store).0;
        assert_eq!(
            pass(
                &attempt("10.1.1.1", "x@y.test", "u@example.net"),
                &mut store
            ),
            Decision::Pass("allowed network")
        );
        assert_eq!(
            pass(
                &attempt("192.0.2.1", "x@Mail.Example.org", "u@example.net"),
                &mut store
            ),
            Decision::Pass("allowed sender")
        );
        assert_eq!(
            pass(
                &attempt("192.0.2.1", "BOB@friend.test", "u@example.net"),
                &mut store
            ),
            Decision::Pass("allowed sender")
        );
        assert!(matches!(
            pass(
                &attempt("192.0.2.1", "eve@friend.test", "u@example.net"),
                &mut store
            ),
            Decision::Greylist { .. }
        ));
        assert!(matches!(
            pass(
                &attempt("192.0.2.1", "x@notexample.org", "u@example.net"),
                &mut store
            ),
            Decision::Greylist { .. }
        ));
        assert_eq!(
            pass(
                &attempt("192.0.2.1", "", "Postmaster@example.net"),
                &mut store
            ),
            Decision::Pass("allowed recipient")
        );
        let mut authed = attempt("192.0.2.1", "x@y.test", "u@example.net");
        authed.authenticated = true;
        assert_eq!(
            pass(&authed, &mut store),
            Decision::Pass("authenticated client")
        );
        // Loopback is allowed by default only.
        let default = config("{}");
        assert_eq!(
            default
                .decide(&attempt("127.0.0.1", "a@b.c", "d@e.f"), 0, &mut store)
                .0,
            Decision::Pass("allowed network")
        );
    }

    #[test]
    fn kv_failure_fails_open() {
        let cfg = config(r#"{"allow_networks": []}"#);
        let mut store = Mem {
            fail: true,
            ..Mem::default()
        };
        let (decision, errors) = cfg.decide(&attempt("192.0.2.1", "a@b.c", "d@e.f"), 0, &mut store);
        assert!(matches!(decision, Decision::Pass(_)));
        assert!(
            errors.iter().any(|e| e.contains("connection refused")),
            "{errors:?}"
        );
        assert_eq!(Decision::text(42), "Greylisted, try again in 42 seconds");
    }
}
