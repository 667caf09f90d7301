//! The rules of `builtin:antispoof`: its configuration, which clients are
//! exempt, the addresses of a From header (RFC 5322 §3.4), and whether a
//! sender address in a local domain is allowed.
//!
//! Nothing here touches the host: the local-domain question comes in as a
//! closure, so it tests natively. `lib.rs` runs it from the mail and data
//! hooks.

use serde::Deserialize;
use sluice_sdk::net::{Networks, ParseError};

/// Why the plugin's configuration was refused; shown to the operator when
/// the pipeline is built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// Malformed JSON, an unknown key (serde names it) or a wrong type.
    #[error("antispoof: invalid config: {0}")]
    Json(String),
    #[error("antispoof: trusted_networks: {0}")]
    Trusted(ParseError),
    #[error("antispoof: allow_senders: {0:?} is not an address or a domain")]
    Sender(String),
}

/// The operator's settings, as `[plugins.antispoof.config]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub check_reverse_path: bool,
    pub check_from_header: bool,
    /// Clients that may use local domains without authenticating.
    pub trusted_networks: Networks,
    /// Whole addresses (`list@example.org`), lower case.
    pub allow_addresses: Vec<String>,
    /// Domains (`lists.example.org`), lower case, exempt with every address.
    pub allow_domains: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            check_reverse_path: true,
            check_from_header: true,
            trusted_networks: Networks::default(),
            allow_addresses: Vec::new(),
            allow_domains: Vec::new(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "yes")]
    check_reverse_path: bool,
    #[serde(default = "yes")]
    check_from_header: bool,
    #[serde(default)]
    trusted_networks: Vec<String>,
    #[serde(default)]
    allow_senders: Vec<String>,
}

fn yes() -> bool {
    true
}

impl Config {
    /// Parses the JSON config; an empty string means all defaults.
    pub fn parse(json: &str) -> Result<Config, ConfigError> {
        if json.trim().is_empty() {
            return Ok(Config::default());
        }
        let raw: RawConfig =
            serde_json::from_str(json).map_err(|e| ConfigError::Json(e.to_string()))?;
        let mut config = Config {
            check_reverse_path: raw.check_reverse_path,
            check_from_header: raw.check_from_header,
            trusted_networks: Networks::parse(&raw.trusted_networks)
                .map_err(ConfigError::Trusted)?,
            ..Config::default()
        };
        for sender in raw.allow_senders {
            let lower = sender.trim().to_lowercase();
            let valid = |domain: &str| {
                !domain.is_empty()
                    && !domain.contains(['@', ' ', '<', '>'])
                    && !domain.split('.').any(str::is_empty)
            };
            match lower.rsplit_once('@') {
                _ if lower.contains(char::is_whitespace) => {
                    return Err(ConfigError::Sender(sender))
                }
                Some((local, domain)) if !local.is_empty() && valid(domain) => {
                    config.allow_addresses.push(lower)
                }
                None if valid(&lower) => config.allow_domains.push(lower),
                _ => return Err(ConfigError::Sender(sender)),
            }
        }
        Ok(config)
    }

    /// Whether the client is exempt from every check.
    pub fn client_exempt(&self, client_ip: &str, authenticated: bool) -> bool {
        authenticated || self.trusted_networks.contains_client(client_ip)
    }

    /// Whether `address` (`local@domain`) is a spoofed local sender: its
    /// domain is local and neither it nor its domain is allowed.
    pub fn spoofed(&self, address: &str, is_local_domain: impl Fn(&str) -> bool) -> bool {
        let address = address.trim().to_lowercase();
        let Some((_, domain)) = address.rsplit_once('@') else {
            return false;
        };
        let domain = domain.trim_end_matches('.');
        if domain.is_empty() || domain.starts_with('[') {
            return false;
        }
        if self.allow_addresses.contains(&address) || self.allow_domains.iter().any(|d| d == domain)
        {
            return false;
        }
        is_local_domain(domain)
    }
}

/// The reply text of a refusal.
pub const REFUSAL: &str = "sender address in a local domain from an unauthenticated client";

/// The addresses of a From header value (RFC 5322 §3.4): the `<...>` of
/// each mailbox, or the bare addr-spec; display names, quoted strings,
/// comments and group names are skipped. Folding is undone first.
pub fn from_addresses(value: &str) -> Vec<String> {
    // Split into mailboxes at commas outside quotes, comments and brackets,
    // dropping comments and noting group names (`name:`) and ends (`;`).
    let mut mailboxes = vec![String::new()];
    let mut quoted = false;
    let mut escaped = false;
    let mut comment = 0usize;
    let mut angle = false;
    for c in value.chars() {
        let current = mailboxes.last_mut();
        let Some(current) = current else { break };
        if escaped {
            escaped = false;
            if comment == 0 {
                current.push(c);
            }
            continue;
        }
        match c {
            '\\' if quoted || comment > 0 => escaped = true,
            '"' if comment == 0 => {
                quoted = !quoted;
                current.push(c);
            }
            '(' if !quoted => comment += 1,
            ')' if !quoted && comment > 0 => comment -= 1,
            _ if comment > 0 => {}
            '<' if !quoted => {
                angle = true;
                current.push(c);
            }
            '>' if !quoted => {
                angle = false;
                current.push(c);
            }
            // A group's display name ends at the colon; its mailboxes follow.
            ':' if !quoted && !angle => current.clear(),
            ',' | ';' if !quoted && !angle => mailboxes.push(String::new()),
            '\r' | '\n' => current.push(' '),
            _ => current.push(c),
        }
    }
    mailboxes
        .iter()
        .filter_map(|mailbox| address_of(mailbox))
        .collect()
}

/// The address of one mailbox: inside the last `<...>` outside quotes, or
/// the whole text when there are no brackets.
fn address_of(mailbox: &str) -> Option<String> {
    let mut quoted = false;
    let mut open = None;
    let mut inner = None;
    for (i, c) in mailbox.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '<' if !quoted => open = Some(i + 1),
            '>' if !quoted => {
                if let Some(start) = open.take() {
                    inner = Some(&mailbox[start..i]);
                }
            }
            _ => {}
        }
    }
    let address = inner.unwrap_or(mailbox).trim();
    // A source route (`<@a,@b:x@y>`, obsolete) ends at its colon.
    let address = address.rsplit_once(':').map_or(address, |(_, a)| a).trim();
    (address.contains('@') && !address.contains(char::is_whitespace) || address.contains('"'))
        .then(|| address.to_string())
        .filter(|a| a.rsplit_once('@').is_some_and(|(_, d)| !d.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> Config {
        Config::parse(json).unwrap()
    }

    fn local(domain: &str) -> bool {
        domain == "example.org" || domain == "lists.example.org"
    }

    #[test]
    fn defaults() {
        let cfg = config("{}");
        assert_eq!(cfg, Config::default());
        assert!(cfg.check_reverse_path && cfg.check_from_header);
        assert!(cfg.trusted_networks.is_empty());
        assert_eq!(config(""), Config::default());
    }

    #[test]
    fn parses_allow_senders() {
        let cfg = config(
            r#"{"allow_senders": ["List@Example.org", "lists.example.org"],
                "trusted_networks": ["10.0.0.0/8"], "check_from_header": false}"#,
        );
        assert_eq!(cfg.allow_addresses, vec!["list@example.org"]);
        assert_eq!(cfg.allow_domains, vec!["lists.example.org"]);
        assert!(!cfg.check_from_header && cfg.check_reverse_path);
        assert!(cfg.client_exempt("10.1.1.1", false));
        assert!(!cfg.client_exempt("192.0.2.1", false));
        assert!(cfg.client_exempt("192.0.2.1", true));
    }

    #[test]
    fn bad_configs_name_the_key() {
        let err = |json: &str| Config::parse(json).unwrap_err().to_string();
        assert!(err(r#"{"check_from": true}"#).contains("unknown field `check_from`"));
        assert!(
            err(r#"{"trusted_networks": ["x"]}"#).starts_with("antispoof: trusted_networks: \"x\"")
        );
        for bad in ["@example.org", "a@", "a b@example.org", "", "a..b"] {
            assert_eq!(
                err(&format!(r#"{{"allow_senders": ["{bad}"]}}"#)),
                format!("antispoof: allow_senders: {bad:?} is not an address or a domain")
            );
        }
    }

    #[test]
    fn spoofed_local_senders() {
        let cfg = config(r#"{"allow_senders": ["list@example.org"]}"#);
        assert!(cfg.spoofed("alice@example.org", local));
        assert!(cfg.spoofed("Alice@EXAMPLE.org.", local));
        assert!(!cfg.spoofed("LIST@example.org", local));
        assert!(!cfg.spoofed("alice@example.net", local));
        assert!(!cfg.spoofed("alice@[192.0.2.1]", local));
        assert!(!cfg.spoofed("postmaster", local));
        assert!(!cfg.spoofed("", local));
        let by_domain = config(r#"{"allow_senders": ["lists.example.org"]}"#);
        assert!(!by_domain.spoofed("any@lists.example.org", local));
        assert!(by_domain.spoofed("any@example.org", local));
    }

    #[test]
    fn from_header_addresses() {
        let cases: &[(&str, &[&str])] = &[
            ("alice@example.org", &["alice@example.org"]),
            ("Alice <alice@example.org>", &["alice@example.org"]),
            (
                "\"Doe, John <x@y>\" <john@example.org>",
                &["john@example.org"],
            ),
            (
                "a@example.net, \"B\" <b@example.org>",
                &["a@example.net", "b@example.org"],
            ),
            (
                "alice@example.org (Alice <alice@evil.test>)",
                &["alice@example.org"],
            ),
            (
                "Friends: a@x.test, b@example.org;",
                &["a@x.test", "b@example.org"],
            ),
            ("Undisclosed:;", &[]),
            (
                "=?utf-8?q?B=C3=A9a?= <bea@example.org>",
                &["bea@example.org"],
            ),
            ("Alice\r\n <alice@example.org>", &["alice@example.org"]),
            ("<@relay.test:alice@example.org>", &["alice@example.org"]),
            ("\"odd@local\"@example.org", &["\"odd@local\"@example.org"]),
            ("no address here", &[]),
            ("", &[]),
        ];
        for (value, expected) in cases {
            assert_eq!(from_addresses(value), *expected, "{value:?}");
        }
        let cfg = config("{}");
        assert!(cfg.spoofed(&from_addresses("\"odd@local\"@example.org")[0], local));
    }
}
