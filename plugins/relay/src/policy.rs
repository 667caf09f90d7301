//! The relay decision of `builtin:relay`: its configuration, the client
//! networks it trusts, and whether one recipient may be accepted.
//!
//! Nothing here touches the host, so it tests natively; `lib.rs` feeds it the
//! session and the host's local-domain answer and turns the [`Decision`] into
//! a verdict for sluice's rcpt stage.

use serde::Deserialize;
use sluice_sdk::net::{Networks, ParseError};

/// Why the plugin's configuration was refused; shown to the operator when
/// the pipeline is built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// Malformed JSON, an unknown key (serde names it) or a wrong type.
    #[error("relay: invalid config: {0}")]
    Json(String),
    #[error("relay: trusted_networks: {value:?} is not a network ({reason})")]
    Network { value: String, reason: &'static str },
}

/// The operator's settings, as `[plugins.relay.config]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Clients in these networks may relay to any domain.
    pub trusted_networks: Networks,
    /// Whether an authenticated client may relay to any domain.
    pub allow_authenticated: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            trusted_networks: Networks::default(),
            allow_authenticated: true,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    trusted_networks: Vec<String>,
    #[serde(default = "default_allow_authenticated")]
    allow_authenticated: bool,
}

fn default_allow_authenticated() -> bool {
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
        let trusted_networks = Networks::parse(&raw.trusted_networks)
            .map_err(|ParseError { value, reason }| ConfigError::Network { value, reason })?;
        Ok(Config {
            trusted_networks,
            allow_authenticated: raw.allow_authenticated,
        })
    }

    /// Whether this client may relay: its address is in a trusted network,
    /// or it authenticated and that is allowed. An address that does not
    /// parse is trusted by nothing.
    pub fn client_trusted(&self, client_ip: &str, authenticated: bool) -> bool {
        if authenticated && self.allow_authenticated {
            return true;
        }
        self.trusted_networks.contains_client(client_ip)
    }

    /// Decides one recipient. `is_local_domain` is asked (with a lower-cased
    /// domain) only for domains that could be local at all.
    pub fn decide(
        &self,
        client_ip: &str,
        authenticated: bool,
        local_part: &str,
        domain: &str,
        is_local_domain: impl FnOnce(&str) -> bool,
    ) -> Decision {
        let trusted = self.client_trusted(client_ip, authenticated);
        // Source routes hidden in the local part (`a%b@us`, `b!a@us`,
        // `"a@b"@us`) would make us relay for strangers even to a local
        // domain, so only trusted clients may use them.
        if has_routing(local_part) {
            return if trusted {
                Decision::Allow
            } else {
                Decision::Deny
            };
        }
        if domain.is_empty() {
            // RFC 5321 4.5.1: `<postmaster>` without a domain is ours.
            if local_part.eq_ignore_ascii_case("postmaster") || trusted {
                return Decision::Allow;
            }
            return Decision::Deny;
        }
        if let Some(domain) = local_candidate(domain) {
            if is_local_domain(&domain) {
                return Decision::Allow;
            }
        }
        if trusted {
            Decision::Allow
        } else {
            Decision::Deny
        }
    }
}

/// The answer for one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Ours, or the client may relay.
    Allow,
    /// 554 5.7.1 Relay access denied.
    Deny,
}

fn has_routing(local_part: &str) -> bool {
    local_part.is_empty() || local_part.contains(['%', '!', '@'])
}

/// The lower-cased domain to ask the host about, or `None` when the domain
/// can never be local: address literals and names with a trailing dot.
fn local_candidate(domain: &str) -> Option<String> {
    if domain.starts_with('[') || domain.ends_with('.') {
        return None;
    }
    Some(domain.to_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> Config {
        Config::parse(json).unwrap()
    }

    fn local(domain: &str) -> bool {
        domain == "example.org" || domain == "bücher.example"
    }

    /// Decides for an unauthenticated client.
    fn decide(cfg: &Config, ip: &str, local_part: &str, domain: &str) -> Decision {
        cfg.decide(ip, false, local_part, domain, local)
    }

    #[test]
    fn defaults() {
        let cfg = config("{}");
        assert_eq!(cfg, Config::default());
        assert!(cfg.trusted_networks.is_empty());
        assert!(cfg.allow_authenticated);
        assert_eq!(config("  "), Config::default());
    }

    #[test]
    fn parses_the_documented_example() {
        let cfg = config(
            r#"{"trusted_networks": ["127.0.0.0/8", "::1/128"], "allow_authenticated": false}"#,
        );
        assert_eq!(
            cfg.trusted_networks,
            Networks::parse(&["127.0.0.0/8", "::1/128"]).unwrap()
        );
        assert!(!cfg.allow_authenticated);
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::parse(r#"{"trusted_network": []}"#).unwrap_err();
        assert!(err.to_string().contains("trusted_network"), "{err}");
    }

    #[test]
    fn bad_cidr_is_named() {
        for value in [
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "example.org",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0.0/ 8",
            "",
        ] {
            let json = format!(r#"{{"trusted_networks": ["10.0.0.0/8", "{value}"]}}"#);
            match Config::parse(&json) {
                Err(ConfigError::Network { value: v, .. }) => assert_eq!(v, value),
                other => panic!("{value:?} gave {other:?}"),
            }
            let err = Config::parse(&json).unwrap_err().to_string();
            assert!(err.contains(&format!("{value:?}")), "{err}");
        }
    }

    #[test]
    fn wrong_types_are_refused() {
        assert!(matches!(
            Config::parse(r#"{"trusted_networks": "127.0.0.0/8"}"#),
            Err(ConfigError::Json(_))
        ));
        assert!(matches!(
            Config::parse(r#"{"allow_authenticated": "yes"}"#),
            Err(ConfigError::Json(_))
        ));
        assert!(matches!(Config::parse("["), Err(ConfigError::Json(_))));
    }

    #[test]
    fn mapped_networks_become_ipv4() {
        let cfg = config(r#"{"trusted_networks": ["::ffff:10.0.0.0/104"]}"#);
        assert!(cfg.client_trusted("10.9.9.9", false));
        assert!(cfg.client_trusted("::ffff:10.9.9.9", false));
        assert!(!cfg.client_trusted("11.0.0.1", false));
    }

    #[test]
    fn local_domains_are_accepted_from_anyone() {
        let cfg = Config::default();
        assert_eq!(
            decide(&cfg, "203.0.113.9", "alice", "example.org"),
            Decision::Allow
        );
        assert_eq!(
            decide(&cfg, "not an ip", "alice", "example.org"),
            Decision::Allow
        );
        assert_eq!(
            decide(&cfg, "203.0.113.9", "alice", "bücher.example"),
            Decision::Allow
        );
    }

    #[test]
    fn domains_compare_case_insensitively() {
        let cfg = Config::default();
        assert_eq!(
            decide(&cfg, "203.0.113.9", "alice", "Example.ORG"),
            Decision::Allow
        );
        assert_eq!(
            decide(&cfg, "203.0.113.9", "alice", "BÜCHER.example"),
            Decision::Allow
        );
    }

    #[test]
    fn foreign_domains_are_denied_to_strangers() {
        let cfg = config(r#"{"trusted_networks": ["127.0.0.0/8"]}"#);
        assert_eq!(
            decide(&cfg, "203.0.113.9", "bob", "example.net"),
            Decision::Deny
        );
        assert_eq!(
            decide(&cfg, "garbage", "bob", "example.net"),
            Decision::Deny
        );
        assert_eq!(decide(&cfg, "", "bob", "example.net"), Decision::Deny);
    }

    #[test]
    fn trusted_networks_may_relay() {
        let cfg = config(r#"{"trusted_networks": ["127.0.0.0/8", "::1/128"]}"#);
        for ip in ["127.0.0.1", "127.255.0.3", "::1", "::ffff:127.0.0.1"] {
            assert_eq!(
                decide(&cfg, ip, "bob", "example.net"),
                Decision::Allow,
                "{ip}"
            );
        }
        assert_eq!(decide(&cfg, "::2", "bob", "example.net"), Decision::Deny);
    }

    #[test]
    fn authenticated_clients_may_relay_when_allowed() {
        let cfg = Config::default();
        assert_eq!(
            cfg.decide("203.0.113.9", true, "bob", "example.net", local),
            Decision::Allow
        );
        let cfg = config(r#"{"allow_authenticated": false}"#);
        assert_eq!(
            cfg.decide("203.0.113.9", true, "bob", "example.net", local),
            Decision::Deny
        );
        // A local domain stays open even when AUTH does not help.
        assert_eq!(
            cfg.decide("203.0.113.9", true, "bob", "example.org", local),
            Decision::Allow
        );
    }

    #[test]
    fn literals_and_trailing_dots_are_never_local() {
        let cfg = Config::default();
        let everything_local = |_: &str| true;
        for domain in ["[127.0.0.1]", "[IPv6:::1]", "example.org."] {
            assert_eq!(
                cfg.decide("203.0.113.9", false, "alice", domain, everything_local),
                Decision::Deny,
                "{domain}"
            );
        }
        // Trusted clients may still relay to them.
        let cfg = config(r#"{"trusted_networks": ["127.0.0.0/8"]}"#);
        assert_eq!(
            cfg.decide("127.0.0.1", false, "alice", "[192.0.2.1]", |_| false),
            Decision::Allow
        );
    }

    #[test]
    fn the_host_is_not_asked_about_impossible_domains() {
        let cfg = Config::default();
        let mut asked = Vec::new();
        cfg.decide("203.0.113.9", false, "a", "[127.0.0.1]", |d: &str| {
            asked.push(d.to_string());
            true
        });
        cfg.decide("203.0.113.9", false, "a", "Example.Org", |d: &str| {
            asked.push(d.to_string());
            true
        });
        assert_eq!(asked, vec!["example.org".to_string()]);
    }

    #[test]
    fn routing_in_the_local_part_needs_trust() {
        let cfg = config(r#"{"trusted_networks": ["10.0.0.0/8"]}"#);
        for local_part in ["bob%example.net", "example.net!bob", "bob@example.net", ""] {
            assert_eq!(
                decide(&cfg, "203.0.113.9", local_part, "example.org"),
                Decision::Deny,
                "{local_part:?}"
            );
            assert_eq!(
                decide(&cfg, "10.0.0.1", local_part, "example.org"),
                Decision::Allow,
                "{local_part:?}"
            );
            assert_eq!(
                cfg.decide("203.0.113.9", true, local_part, "example.org", local),
                Decision::Allow,
                "{local_part:?}"
            );
        }
    }

    #[test]
    fn bare_postmaster_is_local() {
        let cfg = Config::default();
        assert_eq!(
            decide(&cfg, "203.0.113.9", "PostMaster", ""),
            Decision::Allow
        );
        assert_eq!(decide(&cfg, "203.0.113.9", "alice", ""), Decision::Deny);
    }
}
