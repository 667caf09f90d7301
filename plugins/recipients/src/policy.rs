//! The decisions of `builtin:recipients`: its configuration, lookups in the
//! `users` list and the recipients file (a [`Table`] either way), alias
//! expansion, and what one recipient of a local domain gets.
//!
//! Nothing here touches the host, so it tests natively; `lib.rs` reads the
//! file, asks the mailbox server and keeps the callout cache through the
//! host, and turns a [`Lookup`] into a verdict.

use std::collections::HashSet;

use serde::Deserialize;
use sluice_sdk::net::parse_duration;

/// Why the configuration was refused; shown when the pipeline is built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// Malformed JSON, an unknown key (serde names it) or a wrong type.
    #[error("recipients: invalid config: {0}")]
    Json(String),
    #[error("recipients: {key}: {reason}")]
    Value { key: &'static str, reason: String },
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
    pub users: Users,
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
    /// Each character separates a local part from its detail: `+` makes
    /// `alice+news@` the mailbox `alice@` (the host fills in `[domains]
    /// recipient_delimiter` when the operator sets none here).
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
        let mut users = Users::default();
        for user in &raw.users {
            users.add(user).map_err(|reason| ConfigError::Value {
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
            // As `[domains] recipient_delimiter` takes it, "" aside.
            Some(d)
                if d.is_empty()
                    || d.chars().count() > 8
                    || d.chars()
                        .any(|c| !c.is_ascii_graphic() || "@.\"\\".contains(c)) =>
            {
                return Err(ConfigError::Value {
                    key: "recipient_delimiter",
                    reason: format!(
                        "{d:?} cannot separate a detail: give up to 8 characters, e.g. \"+\" or \"+-\""
                    ),
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

    /// The mailbox a recipient is delivered to: lower-cased, its detail
    /// (`+news`) removed at the first delimiter character when delimiters
    /// are configured. A leading delimiter is part of the name.
    pub fn mailbox(&self, local_part: &str, domain: &str) -> (String, String) {
        let mut local = local_part.to_lowercase();
        if let Some(delimiter) = &self.delimiter {
            if let Some(i) = local.find(|c| delimiter.contains(c)) {
                if i > 0 {
                    local.truncate(i);
                }
            }
        }
        (local, domain.to_ascii_lowercase())
    }
}

fn target(key: &'static str, value: String) -> Result<String, ConfigError> {
    if value
        .strip_prefix("unix:")
        .is_some_and(|p| p.starts_with('/'))
    {
        return Ok(value);
    }
    match value.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
            Ok(value)
        }
        _ => Err(ConfigError::Value {
            key,
            reason: format!("{value:?} is not HOST:PORT or unix:/PATH"),
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

/// Where recipients are looked up: the `users` list, or the recipients
/// file through the host. Keys are `local@domain`, a bare `local` (in every
/// local domain) or `@domain` (a catch-all); a value, when there is one,
/// lists an alias's targets.
pub trait Table {
    /// The value of a lower-cased key ("" for a bare key), if present.
    fn get(&self, key: &str) -> Result<Option<String>, String>;
}

/// The static `users` list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Users(HashSet<String>);

impl Users {
    /// Adds `alice@example.org`, `alice` or `@example.org`.
    fn add(&mut self, entry: &str) -> Result<(), String> {
        let entry = entry.trim().to_lowercase();
        let valid = !entry.is_empty()
            && !entry.contains(|c: char| c.is_whitespace() || c == '<' || c == '>')
            && match entry.rsplit_once('@') {
                Some((_, domain)) => valid_domain(domain),
                None => true,
            };
        if !valid {
            return Err(format!("{entry:?} is not an address"));
        }
        self.0.insert(entry);
        Ok(())
    }
}

impl Table for Users {
    fn get(&self, key: &str) -> Result<Option<String>, String> {
        Ok(self.0.contains(key).then(String::new))
    }
}

/// Whether a (lower-cased) mailbox is in a table: as itself, as a bare
/// local part, or by its domain's catch-all.
pub fn exists(table: &dyn Table, local: &str, domain: &str) -> Result<bool, String> {
    for key in [
        format!("{local}@{domain}"),
        local.to_owned(),
        format!("@{domain}"),
    ] {
        if table.get(&key)?.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// How deep aliases of aliases are followed.
const MAX_ALIAS_DEPTH: usize = 8;

/// The targets of an alias (`name@domain: a, b` or `name: a, b`), if the
/// mailbox is one.
fn alias(table: &dyn Table, local: &str, domain: &str) -> Result<Option<Vec<String>>, String> {
    for key in [format!("{local}@{domain}"), local.to_owned()] {
        if let Some(value) = table.get(&key)? {
            let targets: Vec<String> = value
                .split(',')
                .map(|t| t.trim().to_lowercase())
                .filter(|t| !t.is_empty())
                .collect();
            return Ok((!targets.is_empty()).then_some(targets));
        }
    }
    Ok(None)
}

/// The addresses a (lower-cased) mailbox is delivered to when it is an
/// alias, aliases of aliases followed; `None` when it is not an alias. A
/// bare target (`alice`) is in the alias's domain.
pub fn expand(table: &dyn Table, local: &str, domain: &str) -> Result<Option<Vec<String>>, String> {
    let Some(targets) = alias(table, local, domain)? else {
        return Ok(None);
    };
    let mut out = Vec::new();
    let mut seen = HashSet::from([format!("{local}@{domain}")]);
    expand_into(table, &targets, domain, &mut out, &mut seen, 0)?;
    Ok(Some(out))
}

fn expand_into(
    table: &dyn Table,
    targets: &[String],
    domain: &str,
    out: &mut Vec<String>,
    seen: &mut HashSet<String>,
    depth: usize,
) -> Result<(), String> {
    for target in targets {
        let (local, target_domain) = match target.rsplit_once('@') {
            Some((l, d)) => (l.to_owned(), d.to_owned()),
            None => (target.clone(), domain.to_owned()),
        };
        let full = format!("{local}@{target_domain}");
        if !seen.insert(full.clone()) {
            continue;
        }
        // A bare alias names a local part of the local domains: the
        // alias's own domain is one, another target's may not be.
        let nested = if depth >= MAX_ALIAS_DEPTH {
            None
        } else if target_domain == domain {
            alias(table, &local, &target_domain)?
        } else {
            table
                .get(&full)?
                .filter(|v| !v.trim().is_empty())
                .map(|v| v.split(',').map(|t| t.trim().to_lowercase()).collect())
        };
        match nested {
            Some(next) => expand_into(table, &next, &target_domain, out, seen, depth + 1)?,
            None => out.push(full),
        }
    }
    Ok(())
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

/// Decides from the lists alone. `file` is the recipients file, when
/// there is one; its errors (unreadable, malformed) come back as they are.
pub fn lookup(
    config: &Config,
    file: Option<&dyn Table>,
    local: &str,
    domain: &str,
) -> Result<Lookup, String> {
    // RFC 5321 4.5.1: postmaster exists in every domain we take mail for.
    if local == "postmaster" || exists(&config.users, local, domain)? {
        return Ok(Lookup::Known);
    }
    if let Some(file) = file {
        if exists(file, local, domain)? {
            return Ok(Lookup::Known);
        }
    }
    Ok(if config.callout.is_some() {
        Lookup::AskCallout
    } else {
        Lookup::Unknown
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(json: &str) -> Config {
        Config::parse(json).unwrap()
    }

    /// A recipients file as the host reads it (`key` or `key: value`).
    struct File(HashMap<String, String>);

    impl File {
        fn new(text: &str) -> File {
            File(
                text.lines()
                    .map(|l| l.split('#').next().unwrap().trim())
                    .filter(|l| !l.is_empty())
                    .map(|l| match l.split_once(':') {
                        Some((k, v)) => (k.trim().to_lowercase(), v.trim().to_owned()),
                        None => (l.to_lowercase(), String::new()),
                    })
                    .collect(),
            )
        }
    }

    impl Table for File {
        fn get(&self, key: &str) -> Result<Option<String>, String> {
            Ok(self.0.get(key).cloned())
        }
    }

    struct Broken;

    impl Table for Broken {
        fn get(&self, _key: &str) -> Result<Option<String>, String> {
            Err("/r line 3: bad".into())
        }
    }

    #[test]
    fn static_users_addresses_local_parts_and_catchalls() {
        let c = config(r#"{"users":["Alice@Example.org","abuse","@catchall.example"]}"#);
        let is = |l: &str, d: &str| {
            let (l, d) = c.mailbox(l, d);
            lookup(&c, None, &l, &d).unwrap()
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
        assert_eq!(lookup(&c, None, &l, &d), Ok(Lookup::Known));
        // A leading delimiter is part of the name, not a tag.
        assert_eq!(c.mailbox("+x", "example.org").0, "+x");
        let plain = config(r#"{"users":["alice@example.org"]}"#);
        assert_eq!(plain.mailbox("alice+news", "example.org").0, "alice+news");
        // An unknown base name stays unknown with any detail.
        let (l, d) = c.mailbox("bob+x", "example.org");
        assert_eq!(lookup(&c, None, &l, &d), Ok(Lookup::Unknown));
        // Several delimiters: each character splits, as Postfix's "+-".
        let both = config(r#"{"users":["alice@example.org"],"recipient_delimiter":"+-"}"#);
        assert_eq!(both.mailbox("Alice-lists+x", "example.org").0, "alice");
        assert_eq!(both.mailbox("alice+a-b", "example.org").0, "alice");
    }

    #[test]
    fn file_entries_aliases_and_errors() {
        let file = File::new("alice@example.org\nsales@example.org: alice@example.org, bob@example.org\nhostmaster: alice@example.org\n@catchall.example\n");
        let c = config(r#"{"file":"/etc/sluice/recipients"}"#);
        let f: Option<&dyn Table> = Some(&file);
        assert_eq!(lookup(&c, f, "sales", "example.org"), Ok(Lookup::Known));
        assert_eq!(lookup(&c, f, "hostmaster", "x.example"), Ok(Lookup::Known));
        assert_eq!(lookup(&c, f, "z", "catchall.example"), Ok(Lookup::Known));
        assert_eq!(lookup(&c, f, "bob", "example.org"), Ok(Lookup::Unknown));
        assert_eq!(
            lookup(&c, Some(&Broken), "bob", "example.org"),
            Err("/r line 3: bad".into())
        );
        // postmaster needs no file.
        assert_eq!(
            lookup(&c, Some(&Broken), "postmaster", "example.org"),
            Ok(Lookup::Known)
        );
    }

    #[test]
    fn aliases_expand_to_their_final_targets() {
        let file = File::new("sales@example.org: alice, team@example.org\nteam@example.org: bob@example.org, carol@other.example, sales@example.org\nhostmaster: root\nroot: admin@example.net\nalice@example.org\n");
        assert_eq!(
            expand(&file, "sales", "example.org"),
            Ok(Some(vec![
                "alice@example.org".to_string(),
                "bob@example.org".to_string(),
                "carol@other.example".to_string(),
            ]))
        );
        assert_eq!(
            expand(&file, "hostmaster", "localhost"),
            Ok(Some(vec!["admin@example.net".to_string()]))
        );
        assert_eq!(expand(&file, "alice", "example.org"), Ok(None));
        assert_eq!(expand(&file, "nobody", "example.org"), Ok(None));
    }

    #[test]
    fn callout_config() {
        let c = config(r#"{"callout":{"lmtp":"127.0.0.1:24"}}"#);
        assert_eq!(c.callout, Some(Callout::Lmtp("127.0.0.1:24".into())));
        assert_eq!((c.positive_ttl, c.negative_ttl), (3600, 600));
        assert!(!c.callout_fail_open);
        assert_eq!(lookup(&c, None, "x", "example.org"), Ok(Lookup::AskCallout));
        assert_eq!(
            lookup(&c, None, "postmaster", "example.org"),
            Ok(Lookup::Known)
        );
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
        assert!(err(r#"{"users":["a@.example"]}"#).contains("not an address"));
        assert!(err(r#"{"callout":{"lmtp":"a:1","smtp":"b:2"}}"#).contains("exactly one"));
        assert!(err(r#"{"callout":{"lmtp":"nohost"}}"#).contains("callout.lmtp"));
        assert!(err(r#"{"callout":{"lmtp":"unix:rel"}}"#).contains("callout.lmtp"));
        assert_eq!(
            config(r#"{"callout":{"lmtp":"unix:/run/dovecot/lmtp"}}"#).callout,
            Some(Callout::Lmtp("unix:/run/dovecot/lmtp".into()))
        );
        assert!(err(r#"{"callout":{"ldap":"x:1"}}"#).contains("unknown field"));
        assert!(
            err(r#"{"users":["a"],"callout_negative_ttl":"0s"}"#).contains("callout_negative_ttl")
        );
        assert!(err(r#"{"users":["a"],"callout_positive_ttl":"soon"}"#)
            .contains("callout_positive_ttl"));
        for bad in ["", "@", ".", " ", "+++++++++"] {
            let json = format!(r#"{{"users":["a"],"recipient_delimiter":{bad:?}}}"#);
            assert!(err(&json).contains("recipient_delimiter"), "{bad:?}");
        }
        assert!(err(r#"{"users":["a"],"colour":"red"}"#).contains("unknown field `colour`"));
        assert!(err(r#"{"file":" "}"#).contains("file"));
    }
}
