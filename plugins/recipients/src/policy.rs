//! The decisions of `builtin:recipients`: its configuration, the recipient
//! list built from `users` and the recipients file, and what one recipient
//! of a local domain gets.
//!
//! Nothing here touches the host, so it tests natively; `lib.rs` reads the
//! file, asks the mailbox server and keeps the callout cache through the
//! host, and turns a [`Lookup`] into a verdict.

use std::collections::{HashMap, HashSet};

use serde::Deserialize;
use sluice_sdk::net::parse_duration;

/// Why the configuration or the recipients file was refused; shown when the
/// pipeline is built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// Malformed JSON, an unknown key (serde names it) or a wrong type.
    #[error("recipients: invalid config: {0}")]
    Json(String),
    #[error("recipients: {key}: {reason}")]
    Value { key: &'static str, reason: String },
    #[error("recipients: {file} line {line}: {reason}")]
    File {
        file: String,
        line: usize,
        reason: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    users: Vec<String>,
    file: Option<String>,
    callout: Option<RawCallout>,
    #[serde(default)]
    callout_fail_open: bool,
    callout_positive_ttl: Option<String>,
    callout_negative_ttl: Option<String>,
    recipient_delimiter: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCallout {
    lmtp: Option<String>,
    smtp: Option<String>,
}

/// The mailbox server to ask, as the config names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Callout {
    Lmtp(String),
    Smtp(String),
}

/// The operator's settings, as `[plugins.NAME.config]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The static `users` list.
    pub users: Recipients,
    /// The recipients file, read through the host.
    pub file: Option<String>,
    pub callout: Option<Callout>,
    /// A callout that cannot answer lets the recipient through to the rest
    /// of the chain instead of tempfailing it.
    pub callout_fail_open: bool,
    /// Seconds a callout's "exists" is remembered.
    pub positive_ttl: u32,
    /// Seconds a callout's "unknown" is remembered.
    pub negative_ttl: u32,
    /// `+` makes `alice+news@` the mailbox `alice@`.
    pub delimiter: Option<String>,
}

const DEFAULT_POSITIVE_TTL: u32 = 3600;
const DEFAULT_NEGATIVE_TTL: u32 = 600;

impl Config {
    pub fn parse(json: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = if json.trim().is_empty() {
            serde_json::from_str("{}")
        } else {
            serde_json::from_str(json)
        }
        .map_err(|e| ConfigError::Json(e.to_string()))?;
        let mut users = Recipients::default();
        for user in &raw.users {
            users.add_entry(user).map_err(|reason| ConfigError::Value {
                key: "users",
                reason,
            })?;
        }
        let callout = match raw.callout {
            None => None,
            Some(RawCallout {
                lmtp: Some(t),
                smtp: None,
            }) => Some(Callout::Lmtp(target("callout.lmtp", t)?)),
            Some(RawCallout {
                lmtp: None,
                smtp: Some(t),
            }) => Some(Callout::Smtp(target("callout.smtp", t)?)),
            Some(_) => {
                return Err(ConfigError::Value {
                    key: "callout",
                    reason: "give exactly one of lmtp = \"HOST:PORT\" or smtp = \"HOST:PORT\""
                        .into(),
                })
            }
        };
        if let Some(file) = &raw.file {
            if file.trim().is_empty() {
                return Err(ConfigError::Value {
                    key: "file",
                    reason: "empty path".into(),
                });
            }
        }
        if raw.users.is_empty() && raw.file.is_none() && callout.is_none() {
            return Err(ConfigError::Value {
                key: "users",
                reason: "no source of recipients: set users, file or callout".into(),
            });
        }
        let delimiter = match raw.recipient_delimiter {
            Some(d) if d.is_empty() || d.contains('@') => {
                return Err(ConfigError::Value {
                    key: "recipient_delimiter",
                    reason: format!("{d:?} cannot separate a tag, e.g. \"+\""),
                })
            }
            other => other,
        };
        Ok(Config {
            users,
            file: raw.file,
            callout,
            callout_fail_open: raw.callout_fail_open,
            positive_ttl: ttl("callout_positive_ttl", raw.callout_positive_ttl)?
                .unwrap_or(DEFAULT_POSITIVE_TTL),
            negative_ttl: ttl("callout_negative_ttl", raw.callout_negative_ttl)?
                .unwrap_or(DEFAULT_NEGATIVE_TTL),
            delimiter,
        })
    }

    /// The mailbox a recipient is delivered to: lower-cased, its tag
    /// (`+news`) removed when a delimiter is configured.
    pub fn mailbox(&self, local_part: &str, domain: &str) -> (String, String) {
        let mut local = local_part.to_lowercase();
        if let Some(delimiter) = &self.delimiter {
            if let Some(i) = local.find(delimiter.as_str()) {
                if i > 0 {
                    local.truncate(i);
                }
            }
        }
        (local, domain.to_ascii_lowercase())
    }
}

fn target(key: &'static str, value: String) -> Result<String, ConfigError> {
    match value.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
            Ok(value)
        }
        _ => Err(ConfigError::Value {
            key,
            reason: format!("{value:?} is not HOST:PORT"),
        }),
    }
}

fn ttl(key: &'static str, value: Option<String>) -> Result<Option<u32>, ConfigError> {
    let Some(value) = value else { return Ok(None) };
    let seconds = parse_duration(&value).map_err(|e| ConfigError::Value {
        key,
        reason: e.to_string(),
    })?;
    u32::try_from(seconds)
        .ok()
        .filter(|s| *s > 0)
        .map(Some)
        .ok_or_else(|| ConfigError::Value {
            key,
            reason: format!("{value:?} must be more than 0s and less than 136 years"),
        })
}

/// Known recipients: full addresses, local parts valid in every local
/// domain, and catch-all domains. Everything is stored lower-case.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recipients {
    addresses: HashSet<String>,
    local_parts: HashSet<String>,
    catchall: HashSet<String>,
    /// Alias (`name@domain` or a bare local part) -> its targets, as
    /// written (a bare target is in the alias's domain).
    aliases: HashMap<String, Vec<String>>,
}

impl Recipients {
    /// Parses a recipients file: one address per line, `alias: target, …`
    /// lines, `#` comments and blank lines. `name` is for errors.
    pub fn parse_file(name: &str, text: &str) -> Result<Recipients, ConfigError> {
        let mut recipients = Recipients::default();
        for (index, line) in text.lines().enumerate() {
            let error = |reason: String| ConfigError::File {
                file: name.to_owned(),
                line: index + 1,
                reason,
            };
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            match line.split_once(':') {
                Some((alias, targets)) => {
                    let targets: Vec<String> = targets
                        .split(',')
                        .map(|t| t.trim().to_lowercase())
                        .filter(|t| !t.is_empty())
                        .collect();
                    if targets.is_empty() {
                        return Err(error(format!("alias {alias:?} has no target")));
                    }
                    if let Some(bad) = targets.iter().find(|t| !valid_target(t)) {
                        return Err(error(format!("alias target {bad:?} is not an address")));
                    }
                    let alias = alias.trim();
                    if alias.starts_with('@') {
                        return Err(error("a catch-all cannot be an alias".into()));
                    }
                    recipients.add_entry(alias).map_err(error)?;
                    recipients.aliases.insert(alias.to_lowercase(), targets);
                }
                None => recipients.add_entry(line).map_err(error)?,
            }
        }
        Ok(recipients)
    }

    /// Adds `alice@example.org`, `alice` (every local domain) or
    /// `@example.org` (every local part of that domain).
    fn add_entry(&mut self, entry: &str) -> Result<(), String> {
        let entry = entry.trim().to_lowercase();
        if entry.is_empty() || entry.contains(|c: char| c.is_whitespace() || c == '<' || c == '>') {
            return Err(format!("{entry:?} is not an address"));
        }
        match entry.rsplit_once('@') {
            Some(("", domain)) if valid_domain(domain) => {
                self.catchall.insert(domain.to_owned());
            }
            Some((local, domain)) if !local.is_empty() && valid_domain(domain) => {
                self.addresses.insert(entry);
            }
            Some(_) => return Err(format!("{entry:?} is not an address")),
            None => {
                self.local_parts.insert(entry);
            }
        }
        Ok(())
    }

    /// Whether a (lower-cased) mailbox is known.
    pub fn contains(&self, local: &str, domain: &str) -> bool {
        self.catchall.contains(domain)
            || self.local_parts.contains(local)
            || self.addresses.contains(&format!("{local}@{domain}"))
    }

    pub fn len(&self) -> usize {
        self.addresses.len() + self.local_parts.len() + self.catchall.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn valid_target(target: &str) -> bool {
    !target.contains(|c: char| c.is_whitespace() || c == '<' || c == '>')
        && match target.rsplit_once('@') {
            Some((local, domain)) => !local.is_empty() && valid_domain(domain),
            None => !target.is_empty(),
        }
}

/// How deep aliases of aliases are followed.
const MAX_ALIAS_DEPTH: usize = 8;

impl Recipients {
    /// The addresses a (lower-cased) mailbox is delivered to when it is an
    /// alias, aliases of aliases followed; `None` when it is not an alias.
    /// A bare target (`alice`) is in the alias's domain.
    pub fn expand(&self, local: &str, domain: &str) -> Option<Vec<String>> {
        let full = format!("{local}@{domain}");
        let targets = self.alias(local, domain)?;
        let mut out = Vec::new();
        let mut seen = HashSet::from([full]);
        self.expand_into(targets, domain, &mut out, &mut seen, 0);
        Some(out)
    }

    fn alias(&self, local: &str, domain: &str) -> Option<&Vec<String>> {
        self.aliases
            .get(&format!("{local}@{domain}"))
            .or_else(|| self.aliases.get(local))
    }

    fn expand_into(
        &self,
        targets: &[String],
        domain: &str,
        out: &mut Vec<String>,
        seen: &mut HashSet<String>,
        depth: usize,
    ) {
        for target in targets {
            let (local, target_domain) = match target.rsplit_once('@') {
                Some((l, d)) => (l.to_owned(), d.to_owned()),
                None => (target.clone(), domain.to_owned()),
            };
            let full = format!("{local}@{target_domain}");
            if !seen.insert(full.clone()) {
                continue;
            }
            // Bare aliases name local parts of the local domains only: the
            // alias's own domain is one, another target's may not be.
            let nested = if target_domain == domain {
                self.alias(&local, &target_domain)
            } else {
                self.aliases.get(&full)
            };
            match nested {
                Some(next) if depth < MAX_ALIAS_DEPTH => {
                    self.expand_into(next, &target_domain, out, seen, depth + 1)
                }
                _ => out.push(full),
            }
        }
    }
}

fn valid_domain(domain: &str) -> bool {
    !domain.is_empty()
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..")
}

/// What the static sources say about a recipient of a local domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Listed, or postmaster: it exists.
    Known,
    /// Not listed, and no callout to ask.
    Unknown,
    /// Not listed: ask the mailbox server.
    AskCallout,
}

/// Decides from the lists alone. `file` is the parsed recipients file,
/// when there is one.
pub fn lookup(config: &Config, file: Option<&Recipients>, local: &str, domain: &str) -> Lookup {
    // RFC 5321 4.5.1: postmaster exists in every domain we take mail for.
    if local == "postmaster" {
        return Lookup::Known;
    }
    if config.users.contains(local, domain) || file.is_some_and(|f| f.contains(local, domain)) {
        return Lookup::Known;
    }
    if config.callout.is_some() {
        Lookup::AskCallout
    } else {
        Lookup::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> Config {
        Config::parse(json).unwrap()
    }

    #[test]
    fn static_users_addresses_local_parts_and_catchalls() {
        let c = config(r#"{"users":["Alice@Example.org","abuse","@catchall.example"]}"#);
        let is = |l: &str, d: &str| {
            let (l, d) = c.mailbox(l, d);
            lookup(&c, None, &l, &d)
        };
        assert_eq!(is("alice", "example.org"), Lookup::Known);
        assert_eq!(is("ALICE", "EXAMPLE.ORG"), Lookup::Known);
        assert_eq!(is("bob", "example.org"), Lookup::Unknown);
        assert_eq!(is("alice", "other.example"), Lookup::Unknown);
        assert_eq!(is("abuse", "other.example"), Lookup::Known);
        assert_eq!(is("anyone", "catchall.example"), Lookup::Known);
        assert_eq!(is("PostMaster", "anything.example"), Lookup::Known);
    }

    #[test]
    fn delimiter_strips_the_tag() {
        let c = config(r#"{"users":["alice@example.org"],"recipient_delimiter":"+"}"#);
        let (l, d) = c.mailbox("alice+news", "example.org");
        assert_eq!((l.as_str(), d.as_str()), ("alice", "example.org"));
        assert_eq!(lookup(&c, None, &l, &d), Lookup::Known);
        // A leading delimiter is part of the name, not a tag.
        assert_eq!(c.mailbox("+x", "example.org").0, "+x");
        let plain = config(r#"{"users":["alice@example.org"]}"#);
        assert_eq!(plain.mailbox("alice+news", "example.org").0, "alice+news");
    }

    #[test]
    fn file_with_aliases_comments_and_blank_lines() {
        let text = "# recipients\n\nalice@example.org\nsales@example.org: alice@example.org, bob@example.org  # team\n  hostmaster: alice@example.org\n@catchall.example\n";
        let file = Recipients::parse_file("r", text).unwrap();
        assert_eq!(file.len(), 4);
        let c = config(r#"{"file":"/etc/sluice/recipients"}"#);
        assert_eq!(
            lookup(&c, Some(&file), "sales", "example.org"),
            Lookup::Known
        );
        assert_eq!(
            lookup(&c, Some(&file), "hostmaster", "x.example"),
            Lookup::Known
        );
        assert_eq!(
            lookup(&c, Some(&file), "z", "catchall.example"),
            Lookup::Known
        );
        assert_eq!(
            lookup(&c, Some(&file), "bob", "example.org"),
            Lookup::Unknown
        );
        assert_eq!(
            file.aliases.get("sales@example.org"),
            Some(&vec![
                "alice@example.org".to_string(),
                "bob@example.org".to_string()
            ])
        );
    }

    #[test]
    fn aliases_expand_to_their_final_targets() {
        let text = "sales@example.org: alice, team@example.org\nteam@example.org: bob@example.org, carol@other.example, sales@example.org\nhostmaster: root\nroot: admin@example.net\n";
        let file = Recipients::parse_file("r", text).unwrap();
        assert_eq!(
            file.expand("sales", "example.org"),
            Some(vec![
                "alice@example.org".to_string(),
                "bob@example.org".to_string(),
                "carol@other.example".to_string(),
            ])
        );
        assert_eq!(
            file.expand("hostmaster", "localhost"),
            Some(vec!["admin@example.net".to_string()])
        );
        assert_eq!(file.expand("alice", "example.org"), None);
    }

    #[test]
    fn bad_file_lines_name_the_line() {
        let err = Recipients::parse_file("/r", "ok@example.org\nnot an address\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "recipients: /r line 2: \"not an address\" is not an address"
        );
        let err = Recipients::parse_file("/r", "a@example.org:\n").unwrap_err();
        assert!(err.to_string().contains("line 1") && err.to_string().contains("no target"));
        let err = Recipients::parse_file("/r", "a@example.org: b@\n").unwrap_err();
        assert!(err.to_string().contains("alias target"), "{err}");
        let err = Recipients::parse_file("/r", "a@.example\n").unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
    }

    #[test]
    fn callout_config() {
        let c = config(r#"{"callout":{"lmtp":"127.0.0.1:24"}}"#);
        assert_eq!(c.callout, Some(Callout::Lmtp("127.0.0.1:24".into())));
        assert_eq!((c.positive_ttl, c.negative_ttl), (3600, 600));
        assert!(!c.callout_fail_open);
        assert_eq!(lookup(&c, None, "x", "example.org"), Lookup::AskCallout);
        assert_eq!(lookup(&c, None, "postmaster", "example.org"), Lookup::Known);
        let c = config(
            r#"{"callout":{"smtp":"[::1]:2525"},"callout_positive_ttl":"2h","callout_negative_ttl":"30s","callout_fail_open":true}"#,
        );
        assert_eq!(c.callout, Some(Callout::Smtp("[::1]:2525".into())));
        assert_eq!((c.positive_ttl, c.negative_ttl), (7200, 30));
        assert!(c.callout_fail_open);
    }

    #[test]
    fn config_errors_name_the_key() {
        let err = |json: &str| Config::parse(json).unwrap_err().to_string();
        assert!(err("{}").contains("no source of recipients"));
        assert!(err(r#"{"users":["a b"]}"#).contains("users"));
        assert!(err(r#"{"callout":{"lmtp":"a:1","smtp":"b:2"}}"#).contains("exactly one"));
        assert!(err(r#"{"callout":{"lmtp":"nohost"}}"#).contains("callout.lmtp"));
        assert!(err(r#"{"callout":{"ldap":"x:1"}}"#).contains("unknown field"));
        assert!(
            err(r#"{"users":["a"],"callout_negative_ttl":"0s"}"#).contains("callout_negative_ttl")
        );
        assert!(err(r#"{"users":["a"],"callout_positive_ttl":"soon"}"#)
            .contains("callout_positive_ttl"));
        assert!(err(r#"{"users":["a"],"recipient_delimiter":""}"#).contains("recipient_delimiter"));
        assert!(err(r#"{"users":["a"],"colour":"red"}"#).contains("unknown field `colour`"));
        assert!(err(r#"{"file":" "}"#).contains("file"));
    }
}
