//! The rate-limit policy of `builtin:ratelimit`: its configuration, the kv
//! counter keys, and whether a connection, recipient or message is over a
//! limit.
//!
//! Windows are fixed and aligned to the clock: a limit with `window = "1m"`
//! counts in the minute `now / 60`, under a key that names that window, so
//! the counter of the next window starts from zero and the retry hint is the
//! time left in the current one. The kv TTL only cleans up old windows.
//! Nothing here touches the host; the counter store is passed in, so this
//! tests natively.

use std::collections::HashMap;
use std::net::IpAddr;

use serde::Deserialize;
use sluice_sdk::net::{parse_client_ip, parse_duration, Network};

/// Why the plugin's configuration was refused; shown to the operator when
/// the pipeline is built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// Malformed JSON, an unknown key (serde names it) or a wrong type.
    #[error("ratelimit: invalid config: {0}")]
    Json(String),
    #[error("ratelimit: exempt_networks: {0}")]
    Network(sluice_sdk::net::ParseError),
    #[error("ratelimit: limit {index}: window: {error}")]
    Window {
        index: usize,
        error: sluice_sdk::net::ParseError,
    },
    #[error("ratelimit: limit {index}: window must be at least 1s and at most 366d")]
    WindowRange { index: usize },
    #[error("ratelimit: limit {index}: {what:?} are counted at connect, before the {key:?} is known; use key \"ip\" or \"network\"")]
    KeyNotKnown { index: usize, what: What, key: Key },
    #[error("ratelimit: {0}")]
    Prefix(sluice_sdk::net::PrefixTooLong),
}

/// What a limit keys its counter on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Key {
    /// The client's address.
    Ip,
    /// The client's network (`ipv4_prefix`, `ipv6_prefix`).
    Network,
    /// The reverse-path (MAIL FROM), `<>` for bounces.
    Sender,
    /// The authenticated user; unauthenticated sessions are not counted.
    User,
}

/// What a limit counts, and at which stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum What {
    /// Counted at connect; over the limit the client gets 421 and is closed.
    Connections,
    /// Counted at DATA (once the message is in); over the limit, 451.
    Messages,
    /// Counted at RCPT, one per recipient; over the limit, 451.
    Recipients,
}

impl What {
    fn as_str(self) -> &'static str {
        match self {
            What::Connections => "connections",
            What::Messages => "messages",
            What::Recipients => "recipients",
        }
    }
}

impl Key {
    fn as_str(self) -> &'static str {
        match self {
            Key::Ip => "ip",
            Key::Network => "network",
            Key::Sender => "sender",
            Key::User => "user",
        }
    }
}

/// One `[[plugins.NAME.config.limit]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    pub key: Key,
    pub what: What,
    pub max: u64,
    /// Window length in seconds.
    pub window: u64,
}

/// The operator's settings, as `[plugins.NAME.config]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub limits: Vec<Limit>,
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    /// Clients here are never limited (default: loopback).
    pub exempt_networks: Vec<Network>,
    /// Whether authenticated sessions are never limited.
    pub exempt_authenticated: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    limit: Vec<RawLimit>,
    #[serde(default = "default_v4")]
    ipv4_prefix: u8,
    #[serde(default = "default_v6")]
    ipv6_prefix: u8,
    #[serde(default = "default_exempt")]
    exempt_networks: Vec<String>,
    #[serde(default)]
    exempt_authenticated: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimit {
    key: Key,
    what: What,
    max: u64,
    window: String,
}

fn default_v4() -> u8 {
    24
}

fn default_v6() -> u8 {
    64
}

fn default_exempt() -> Vec<String> {
    vec!["127.0.0.0/8".into(), "::1/128".into()]
}

/// Longest window: a year, so window arithmetic and TTLs stay small.
const MAX_WINDOW: u64 = 366 * 86_400;

impl Config {
    /// Parses the JSON config; an empty string means all defaults (no
    /// limits at all).
    pub fn parse(json: &str) -> Result<Config, ConfigError> {
        let json = if json.trim().is_empty() { "{}" } else { json };
        let raw: RawConfig =
            serde_json::from_str(json).map_err(|e| ConfigError::Json(e.to_string()))?;
        sluice_sdk::net::check_prefixes(raw.ipv4_prefix, raw.ipv6_prefix)
            .map_err(ConfigError::Prefix)?;
        let exempt_networks = raw
            .exempt_networks
            .iter()
            .map(|v| v.parse().map_err(ConfigError::Network))
            .collect::<Result<_, _>>()?;
        let mut limits = Vec::with_capacity(raw.limit.len());
        for (i, l) in raw.limit.into_iter().enumerate() {
            let index = i + 1;
            let window =
                parse_duration(&l.window).map_err(|error| ConfigError::Window { index, error })?;
            if window == 0 || window > MAX_WINDOW {
                return Err(ConfigError::WindowRange { index });
            }
            if l.what == What::Connections && matches!(l.key, Key::Sender | Key::User) {
                return Err(ConfigError::KeyNotKnown {
                    index,
                    what: l.what,
                    key: l.key,
                });
            }
            limits.push(Limit {
                key: l.key,
                what: l.what,
                max: l.max,
                window,
            });
        }
        Ok(Config {
            limits,
            ipv4_prefix: raw.ipv4_prefix,
            ipv6_prefix: raw.ipv6_prefix,
            exempt_networks,
            exempt_authenticated: raw.exempt_authenticated,
        })
    }

    /// Whether any limit counts `what` (so a hook with nothing to count
    /// costs no kv call).
    pub fn counts(&self, what: What) -> bool {
        self.limits.iter().any(|l| l.what == what)
    }

    /// Counts one `what` for this client and reports the first limit it
    /// goes over. `incr(key, ttl)` adds one to a kv counter; a counter that
    /// fails is skipped (the limiter fails open) and reported in
    /// `Checked::errors`.
    pub fn check(
        &self,
        what: What,
        client: &Client,
        now: u64,
        mut incr: impl FnMut(&str, u32) -> Result<i64, String>,
    ) -> Checked {
        let mut checked = Checked::default();
        let Some(ip) = parse_client_ip(&client.ip) else {
            checked.errors.push(format!(
                "client address {:?} does not parse; not limited",
                client.ip
            ));
            return checked;
        };
        if self.exempt_networks.iter().any(|n| n.contains(ip))
            || (self.exempt_authenticated && client.user.is_some())
        {
            return checked;
        }
        // Two limits on the same counter (same key, what and window) count
        // it once.
        let mut counted: HashMap<String, i64> = HashMap::new();
        for limit in self.limits.iter().filter(|l| l.what == what) {
            let Some(subject) = self.subject(limit.key, ip, client) else {
                continue;
            };
            let window_index = now / limit.window;
            let key = format!(
                "{}:{}:{}:{}:{}",
                what.as_str(),
                limit.key.as_str(),
                subject,
                limit.window,
                window_index
            );
            let count = match counted.get(&key) {
                Some(&count) => count,
                None => {
                    // The window's counter lives until the window ends.
                    let ttl = u32::try_from(limit.window).unwrap_or(u32::MAX);
                    match incr(&key, ttl) {
                        Ok(count) => {
                            counted.insert(key.clone(), count);
                            count
                        }
                        Err(e) => {
                            checked.errors.push(format!("counter {key}: {e}"));
                            continue;
                        }
                    }
                }
            };
            if count > 0 && count as u64 > limit.max && checked.over.is_none() {
                let retry_in = (window_index + 1) * limit.window - now;
                checked.over = Some(Over {
                    what,
                    key: limit.key,
                    subject,
                    max: limit.max,
                    window: limit.window,
                    retry_in: retry_in.max(1),
                });
            }
        }
        checked
    }

    /// The value a limit keys on, or None when the session has none (no
    /// authenticated user, no MAIL FROM yet).
    fn subject(&self, key: Key, ip: IpAddr, client: &Client) -> Option<String> {
        match key {
            Key::Ip => Some(ip.to_string()),
            Key::Network => {
                let prefix = if ip.is_ipv4() {
                    self.ipv4_prefix
                } else {
                    self.ipv6_prefix
                };
                Some(Network::around(ip, prefix).to_string())
            }
            Key::Sender => client.sender.as_ref().map(|s| {
                if s.is_empty() {
                    "<>".to_owned()
                } else {
                    s.to_lowercase()
                }
            }),
            Key::User => client.user.clone(),
        }
    }
}

/// What the limits know of the session.
#[derive(Debug, Clone, Default)]
pub struct Client {
    pub ip: String,
    /// The reverse-path, `""` for `<>`; None before MAIL FROM.
    pub sender: Option<String>,
    pub user: Option<String>,
}

/// The result of one check.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Checked {
    /// The first limit exceeded, if any.
    pub over: Option<Over>,
    /// Counters that could not be read (kv failures); those limits were
    /// not applied.
    pub errors: Vec<String>,
}

/// A limit that was exceeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Over {
    pub what: What,
    pub key: Key,
    pub subject: String,
    pub max: u64,
    pub window: u64,
    /// Seconds until the window ends.
    pub retry_in: u64,
}

impl Over {
    /// The reply text, with the retry hint.
    pub fn text(&self) -> String {
        let whose = match self.key {
            Key::Ip => format!("from {}", self.subject),
            Key::Network => format!("from network {}", self.subject),
            Key::Sender => format!("from sender {}", self.subject),
            Key::User => format!("from user {}", self.subject),
        };
        format!(
            "Rate limit exceeded: too many {} {whose} (at most {} per {}s), try again in {} seconds",
            self.what.as_str(),
            self.max,
            self.window,
            self.retry_in
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> Config {
        Config::parse(json).unwrap()
    }

    /// An in-memory counter store recording the keys and TTLs it saw.
    #[derive(Default)]
    struct Counters {
        values: HashMap<String, i64>,
        ttls: HashMap<String, u32>,
    }

    impl Counters {
        fn incr(&mut self, key: &str, ttl: u32) -> Result<i64, String> {
            self.ttls.entry(key.to_owned()).or_insert(ttl);
            let v = self.values.entry(key.to_owned()).or_insert(0);
            *v += 1;
            Ok(*v)
        }
    }

    fn client(ip: &str) -> Client {
        Client {
            ip: ip.into(),
            ..Client::default()
        }
    }

    #[test]
    fn defaults_exempt_loopback_and_limit_nothing() {
        let cfg = config("{}");
        assert!(cfg.limits.is_empty());
        assert_eq!(cfg.ipv4_prefix, 24);
        assert_eq!(cfg.ipv6_prefix, 64);
        assert!(!cfg.exempt_authenticated);
        assert_eq!(cfg.exempt_networks.len(), 2);
        assert_eq!(config(""), cfg);
    }

    #[test]
    fn parses_limits() {
        let cfg = config(
            r#"{"limit": [{"key": "network", "what": "messages", "max": 100, "window": "1h"},
                          {"key": "user", "what": "recipients", "max": 5, "window": "2s"}],
                "exempt_networks": [], "ipv4_prefix": 16, "exempt_authenticated": true}"#,
        );
        assert_eq!(
            cfg.limits,
            vec![
                Limit {
                    key: Key::Network,
                    what: What::Messages,
                    max: 100,
                    window: 3600
                },
                Limit {
                    key: Key::User,
                    what: What::Recipients,
                    max: 5,
                    window: 2
                },
            ]
        );
        assert!(cfg.exempt_networks.is_empty());
        assert_eq!(cfg.ipv4_prefix, 16);
        assert!(cfg.exempt_authenticated);
    }

    #[test]
    fn config_errors_name_the_problem() {
        let cases = [
            (r#"{"limits": []}"#, "limits"),
            (
                r#"{"limit": [{"key": "ip", "what": "messages", "max": 1}]}"#,
                "window",
            ),
            (
                r#"{"limit": [{"key": "host", "what": "messages", "max": 1, "window": "1m"}]}"#,
                "host",
            ),
            (
                r#"{"limit": [{"key": "ip", "what": "bytes", "max": 1, "window": "1m"}]}"#,
                "bytes",
            ),
            (
                r#"{"limit": [{"key": "ip", "what": "messages", "max": 1, "window": "1x"}]}"#,
                "limit 1: window",
            ),
            (
                r#"{"limit": [{"key": "ip", "what": "messages", "max": 1, "window": "0s"}]}"#,
                "at least 1s",
            ),
            (
                r#"{"limit": [{"key": "ip", "what": "messages", "max": -1, "window": "1m"}]}"#,
                "-1",
            ),
            (
                r#"{"limit": [{"key": "ip", "what": "messages", "max": 1, "window": "1m"}, {"key": "sender", "what": "connections", "max": 1, "window": "1m"}]}"#,
                "limit 2",
            ),
            (r#"{"exempt_networks": ["10.0.0.0/33"]}"#, "10.0.0.0/33"),
            (r#"{"ipv4_prefix": 33}"#, "ipv4_prefix"),
            (r#"{"ipv6_prefix": 129}"#, "ipv6_prefix"),
        ];
        for (json, needle) in cases {
            let err = Config::parse(json).unwrap_err().to_string();
            assert!(err.contains(needle), "{json}: {err}");
        }
    }

    #[test]
    fn keys_name_what_whom_and_window() {
        let cfg = config(
            r#"{"exempt_networks": [], "limit": [
                {"key": "ip", "what": "recipients", "max": 9, "window": "1m"},
                {"key": "network", "what": "recipients", "max": 9, "window": "1m"},
                {"key": "sender", "what": "recipients", "max": 9, "window": "1h"},
                {"key": "user", "what": "recipients", "max": 9, "window": "1m"},
                {"key": "ip", "what": "messages", "max": 9, "window": "1m"}]}"#,
        );
        let mut counters = Counters::default();
        let c = Client {
            ip: "::ffff:192.0.2.77".into(),
            sender: Some("Alice@Example.ORG".into()),
            user: Some("bob".into()),
        };
        let checked = cfg.check(What::Recipients, &c, 120, |k, t| counters.incr(k, t));
        assert_eq!(checked, Checked::default());
        let mut keys: Vec<_> = counters.ttls.into_iter().collect();
        keys.sort();
        assert_eq!(
            keys,
            vec![
                ("recipients:ip:192.0.2.77:60:2".to_owned(), 60),
                ("recipients:network:192.0.2.0/24:60:2".to_owned(), 60),
                (
                    "recipients:sender:alice@example.org:3600:0".to_owned(),
                    3600
                ),
                ("recipients:user:bob:60:2".to_owned(), 60),
            ]
        );

        // IPv6 clients are grouped by /64; the null sender is "<>"; no
        // user, no user counter.
        let mut counters = Counters::default();
        let c = Client {
            ip: "2001:db8:0:1::5".into(),
            sender: Some(String::new()),
            user: None,
        };
        cfg.check(What::Recipients, &c, 0, |k, t| counters.incr(k, t));
        let mut keys: Vec<_> = counters.values.into_keys().collect();
        keys.sort();
        assert_eq!(
            keys,
            vec![
                "recipients:ip:2001:db8:0:1::5:60:0",
                "recipients:network:2001:db8:0:1::/64:60:0",
                "recipients:sender:<>:3600:0",
            ]
        );
    }

    #[test]
    fn over_the_limit_with_the_time_left() {
        let cfg = config(
            r#"{"exempt_networks": [], "limit": [
                {"key": "ip", "what": "connections", "max": 2, "window": "1m"}]}"#,
        );
        let mut counters = Counters::default();
        let c = client("192.0.2.1");
        for _ in 0..2 {
            let checked = cfg.check(What::Connections, &c, 65, |k, t| counters.incr(k, t));
            assert_eq!(checked.over, None);
        }
        let over = cfg
            .check(What::Connections, &c, 70, |k, t| counters.incr(k, t))
            .over
            .unwrap();
        assert_eq!(over.retry_in, 50);
        assert_eq!(
            over.text(),
            "Rate limit exceeded: too many connections from 192.0.2.1 (at most 2 per 60s), try again in 50 seconds"
        );
        // Another client and the next window are counted apart.
        let other = cfg.check(What::Connections, &client("192.0.2.2"), 70, |k, t| {
            counters.incr(k, t)
        });
        assert_eq!(other.over, None);
        let next = cfg.check(What::Connections, &c, 120, |k, t| counters.incr(k, t));
        assert_eq!(next.over, None);
        // Messages are not connections.
        assert!(!cfg.counts(What::Messages));
        assert!(cfg.counts(What::Connections));
    }

    #[test]
    fn max_zero_blocks_everything() {
        let cfg = config(
            r#"{"exempt_networks": [], "limit": [
                {"key": "network", "what": "messages", "max": 0, "window": "1s"}]}"#,
        );
        let mut counters = Counters::default();
        let over = cfg
            .check(What::Messages, &client("10.1.2.3"), 5, |k, t| {
                counters.incr(k, t)
            })
            .over
            .unwrap();
        assert_eq!(over.retry_in, 1);
        assert!(
            over.text().contains("from network 10.1.2.0/24"),
            "{}",
            over.text()
        );
    }

    #[test]
    fn exemptions() {
        let cfg = config(
            r#"{"exempt_networks": ["10.0.0.0/8"], "exempt_authenticated": true, "limit": [
                {"key": "ip", "what": "messages", "max": 0, "window": "1m"}]}"#,
        );
        let mut calls = 0;
        let mut incr = |_: &str, _: u32| {
            calls += 1;
            Ok(1)
        };
        assert_eq!(
            cfg.check(What::Messages, &client("10.9.9.9"), 0, &mut incr),
            Checked::default()
        );
        let authed = Client {
            ip: "192.0.2.1".into(),
            sender: None,
            user: Some("u".into()),
        };
        assert_eq!(
            cfg.check(What::Messages, &authed, 0, &mut incr),
            Checked::default()
        );
        assert!(cfg
            .check(What::Messages, &client("192.0.2.1"), 0, &mut incr)
            .over
            .is_some());
        assert_eq!(calls, 1);
        // Loopback is exempt by default, and only by default.
        let default =
            config(r#"{"limit": [{"key": "ip", "what": "messages", "max": 0, "window": "1m"}]}"#);
        assert!(default
            .check(What::Messages, &client("127.0.0.1"), 0, |_, _| Ok(1))
            .over
            .is_none());
    }

    #[test]
    fn kv_failure_fails_open() {
        let cfg = config(
            r#"{"exempt_networks": [], "limit": [
                {"key": "ip", "what": "messages", "max": 0, "window": "1m"},
                {"key": "network", "what": "messages", "max": 5, "window": "1m"}]}"#,
        );
        let checked = cfg.check(What::Messages, &client("192.0.2.1"), 0, |_, _| {
            Err("connection refused".to_owned())
        });
        assert_eq!(checked.over, None);
        assert_eq!(checked.errors.len(), 2);
        assert!(checked.errors[0].contains("connection refused"));
        let bad = cfg.check(What::Messages, &client("nonsense"), 0, |_, _| Ok(1));
        assert_eq!(bad.over, None);
        assert_eq!(bad.errors.len(), 1);
    }

    #[test]
    fn same_counter_counts_once() {
        let cfg = config(
            r#"{"exempt_networks": [], "limit": [
                {"key": "ip", "what": "messages", "max": 10, "window": "1m"},
                {"key": "ip", "what": "messages", "max": 1, "window": "1m"}]}"#,
        );
        let mut counters = Counters::default();
        let c = client("192.0.2.1");
        assert_eq!(
            cfg.check(What::Messages, &c, 0, |k, t| counters.incr(k, t))
                .over,
            None
        );
        let over = cfg
            .check(What::Messages, &c, 0, |k, t| counters.incr(k, t))
            .over
            .unwrap();
        assert_eq!(over.max, 1);
        assert_eq!(
            counters.values.values().copied().collect::<Vec<_>>(),
            vec![2]
        );
    }
}
