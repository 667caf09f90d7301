//! The checks of `builtin:helo`: its configuration, the syntax of a HELO
//! argument (RFC 5321 §4.1.1.1, §4.1.3), forged own names, and
//! forward-confirmed reverse DNS, each turned into a [`Refusal`].
//!
//! Nothing here touches the host: the server's names and the DNS come in as
//! closures, so it tests natively. `lib.rs` runs it from the SMTP hooks.

use std::net::IpAddr;

use serde::Deserialize;
use sluice_sdk::net::{unmap, Networks, ParseError};

/// Why the plugin's configuration was refused; shown to the operator when
/// the pipeline is built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// Malformed JSON, an unknown key (serde names it) or a wrong type.
    #[error("helo: invalid config: {0}")]
    Json(String),
    #[error("helo: trusted_networks: {0}")]
    Trusted(ParseError),
    #[error("helo: own_addresses: {0}")]
    OwnAddresses(ParseError),
}

/// The operator's settings, as `[plugins.helo.config]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub reject_invalid: bool,
    pub reject_own_name: bool,
    /// The server's addresses, for `[192.0.2.1]` HELO literals.
    pub own_addresses: Networks,
    pub require_fqdn: bool,
    pub check_fcrdns: bool,
    pub reject_no_ptr: bool,
    pub tempfail_on_dns_error: bool,
    /// Clients that skip every check.
    pub trusted_networks: Networks,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            reject_invalid: true,
            reject_own_name: true,
            own_addresses: Networks::default(),
            require_fqdn: false,
            check_fcrdns: false,
            reject_no_ptr: false,
            tempfail_on_dns_error: true,
            trusted_networks: default_trusted(),
        }
    }
}

/// The loopback addresses themselves: the server's own processes. Other
/// 127.0.0.0/8 addresses are not trusted unless listed.
fn default_trusted() -> Networks {
    Networks::parse(&["127.0.0.1/32", "::1/128"]).unwrap_or_default()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "yes")]
    reject_invalid: bool,
    #[serde(default = "yes")]
    reject_own_name: bool,
    #[serde(default)]
    own_addresses: Vec<String>,
    #[serde(default)]
    require_fqdn: bool,
    #[serde(default)]
    check_fcrdns: bool,
    #[serde(default)]
    reject_no_ptr: bool,
    #[serde(default = "yes")]
    tempfail_on_dns_error: bool,
    trusted_networks: Option<Vec<String>>,
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
        let trusted_networks = match raw.trusted_networks {
            None => default_trusted(),
            Some(list) => Networks::parse(&list).map_err(ConfigError::Trusted)?,
        };
        Ok(Config {
            reject_invalid: raw.reject_invalid,
            reject_own_name: raw.reject_own_name,
            own_addresses: Networks::parse(&raw.own_addresses)
                .map_err(ConfigError::OwnAddresses)?,
            require_fqdn: raw.require_fqdn,
            check_fcrdns: raw.check_fcrdns,
            reject_no_ptr: raw.reject_no_ptr,
            tempfail_on_dns_error: raw.tempfail_on_dns_error,
            trusted_networks,
        })
    }

    /// Whether any switch needs the client's reverse DNS.
    pub fn needs_rdns(&self) -> bool {
        self.check_fcrdns || self.reject_no_ptr
    }
}

/// A HELO argument that follows RFC 5321.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeloName {
    /// A domain, lower case.
    Domain(String),
    /// An address literal, `[192.0.2.1]` or `[IPv6:2001:db8::1]`.
    Literal(IpAddr),
}

/// What is wrong with a HELO argument, for the reply text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SyntaxError {
    #[error("empty name")]
    Empty,
    #[error("an IP address must be written as an address literal in brackets")]
    BareAddress,
    #[error("bad address literal")]
    BadLiteral,
    #[error("not a domain name (letters, digits and inner hyphens only)")]
    BadCharacter,
    #[error("empty label")]
    EmptyLabel,
    #[error("label longer than 63 octets")]
    LongLabel,
    #[error("name longer than 255 octets")]
    LongName,
    #[error("label starting or ending with a hyphen")]
    Hyphen,
    #[error("numeric top-level label")]
    NumericTop,
}

/// Parses a HELO argument: `Domain / address-literal` of RFC 5321
/// §4.1.1.1 and §4.1.3. Only the IPv4 and `IPv6:` literal forms are
/// accepted (no other tag is registered); a bare IP address is refused
/// (§4.1.3 wants it in brackets), as is any numeric top-level label.
pub fn parse_helo(helo: &str) -> Result<HeloName, SyntaxError> {
    if helo.is_empty() {
        return Err(SyntaxError::Empty);
    }
    if let Some(inner) = helo.strip_prefix('[') {
        let inner = inner.strip_suffix(']').ok_or(SyntaxError::BadLiteral)?;
        let ip = match inner.get(..5) {
            Some(tag) if tag.eq_ignore_ascii_case("ipv6:") => inner[5..]
                .parse::<std::net::Ipv6Addr>()
                .map(IpAddr::V6)
                .map_err(|_| SyntaxError::BadLiteral)?,
            _ => inner
                .parse::<std::net::Ipv4Addr>()
                .map(IpAddr::V4)
                .map_err(|_| SyntaxError::BadLiteral)?,
        };
        return Ok(HeloName::Literal(ip));
    }
    if helo.parse::<IpAddr>().is_ok() {
        return Err(SyntaxError::BareAddress);
    }
    if helo.len() > 255 {
        return Err(SyntaxError::LongName);
    }
    let labels: Vec<&str> = helo.split('.').collect();
    for label in &labels {
        if label.is_empty() {
            return Err(SyntaxError::EmptyLabel);
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(SyntaxError::BadCharacter);
        }
        if label.len() > 63 {
            return Err(SyntaxError::LongLabel);
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(SyntaxError::Hyphen);
        }
    }
    if labels
        .last()
        .is_some_and(|top| top.bytes().all(|b| b.is_ascii_digit()))
    {
        // 192.0.2, 10.1.2.3.4 or 1234: no top-level domain is numeric.
        return Err(SyntaxError::NumericTop);
    }
    Ok(HeloName::Domain(helo.to_ascii_lowercase()))
}

/// A refusal: the reply code, its enhanced status code and the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: u16,
    pub enhanced: &'static str,
    pub text: String,
}

impl Refusal {
    fn new(code: u16, enhanced: &'static str, text: String) -> Self {
        Refusal {
            code,
            enhanced,
            text,
        }
    }

    /// Whether it is a temporary (4xx) refusal.
    pub fn is_temporary(&self) -> bool {
        self.code < 500
    }
}

/// A client-supplied name as it may appear in a reply: printable ASCII, at
/// most 100 characters.
pub fn printable(text: &str) -> String {
    text.chars()
        .take(100)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}

/// The checks on the HELO argument itself, in order: syntax, FQDN, own
/// name. `hostname` is the server's name; `is_local_domain` the host's.
pub fn check_name(
    config: &Config,
    helo: &str,
    hostname: &str,
    is_local_domain: impl Fn(&str) -> bool,
) -> Option<Refusal> {
    let parsed = parse_helo(helo);
    if config.reject_invalid {
        if let Err(e) = parsed {
            // RFC 5321 §4.3.2: any command may get 501 for a syntax error
            // in its argument; RFC 3463 X.5.2 is "syntax error".
            return Some(Refusal::new(
                501,
                "5.5.2",
                format!("Invalid HELO/EHLO name {:?}: {e}", printable(helo)),
            ));
        }
    }
    if config.require_fqdn {
        let fqdn = match &parsed {
            Ok(HeloName::Literal(_)) => true,
            Ok(HeloName::Domain(d)) => d.contains('.'),
            Err(_) => helo.trim_end_matches('.').contains('.'),
        };
        if !fqdn {
            // Postfix's reply for a non-FQDN HELO (non_fqdn_reject_code).
            return Some(Refusal::new(
                504,
                "5.5.2",
                format!(
                    "HELO/EHLO name {:?} is not a fully-qualified domain name",
                    printable(helo)
                ),
            ));
        }
    }
    if config.reject_own_name {
        let own = match &parsed {
            Ok(HeloName::Literal(ip)) => config.own_addresses.contains(*ip),
            Ok(HeloName::Domain(d)) => {
                let hostname = hostname.trim_end_matches('.');
                d.eq_ignore_ascii_case(hostname) || is_local_domain(d)
            }
            Err(_) => helo
                .parse::<IpAddr>()
                .is_ok_and(|ip| config.own_addresses.contains(ip)),
        };
        if own {
            return Some(Refusal::new(
                550,
                "5.7.1",
                format!(
                    "HELO/EHLO name {} is this server's own name or address: forged",
                    printable(helo)
                ),
            ));
        }
    }
    None
}

/// A DNS failure, as the host reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupError {
    NxDomain,
    Temporary(String),
    Invalid(String),
}

/// What the client's reverse DNS says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rdns {
    /// This PTR name resolves back to the client address.
    Confirmed(String),
    /// The PTR names (none confirmed, or not asked to confirm).
    Unconfirmed(Vec<String>),
    /// No PTR record at all.
    NoPtr,
    /// A lookup failed for now.
    Temporary(String),
}

/// At most this many PTR names are tried, like SPF's ptr mechanism
/// (RFC 7208 §5.5).
const MAX_NAMES: usize = 10;

/// Looks up the client's reverse DNS; with `confirm`, each PTR name's A
/// (IPv4 client) or AAAA (IPv6 client) records until one is the client
/// address ("forward-confirmed reverse DNS"). `forward` gets the name and
/// whether to ask for AAAA.
pub fn reverse_dns(
    ip: IpAddr,
    confirm: bool,
    ptr: impl Fn(&str) -> Result<Vec<String>, LookupError>,
    forward: impl Fn(&str, bool) -> Result<Vec<String>, LookupError>,
) -> Rdns {
    let ip = unmap(ip);
    let names: Vec<String> = match ptr(&ip.to_string()) {
        Ok(names) => names
            .into_iter()
            .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
            .filter(|n| !n.is_empty())
            .collect(),
        Err(LookupError::NxDomain) => Vec::new(),
        Err(LookupError::Temporary(e) | LookupError::Invalid(e)) => return Rdns::Temporary(e),
    };
    if names.is_empty() {
        return Rdns::NoPtr;
    }
    if !confirm {
        return Rdns::Unconfirmed(names);
    }
    let mut failure = None;
    for name in names.iter().take(MAX_NAMES) {
        match forward(name, ip.is_ipv6()) {
            Ok(addresses) => {
                if addresses
                    .iter()
                    .filter_map(|a| a.parse::<IpAddr>().ok())
                    .any(|a| unmap(a) == ip)
                {
                    return Rdns::Confirmed(name.clone());
                }
            }
            // A name that does not exist (or cannot be asked) confirms
            // nothing; the next may.
            Err(LookupError::NxDomain | LookupError::Invalid(_)) => {}
            Err(LookupError::Temporary(e)) => failure = Some(format!("{name}: {e}")),
        }
    }
    match failure {
        Some(e) => Rdns::Temporary(e),
        None => Rdns::Unconfirmed(names),
    }
}

/// The refusal, if any, the reverse DNS of client `ip` earns. RFC 7372
/// registers X.7.25 for "reverse DNS validation failed".
pub fn check_rdns(config: &Config, ip: IpAddr, rdns: &Rdns) -> Option<Refusal> {
    match rdns {
        Rdns::Confirmed(_) => None,
        Rdns::NoPtr if config.needs_rdns() => Some(Refusal::new(
            550,
            "5.7.25",
            format!("Client host [{ip}] has no reverse DNS (PTR) record"),
        )),
        Rdns::Unconfirmed(names) if config.check_fcrdns => Some(Refusal::new(
            550,
            "5.7.25",
            format!(
                "Client host [{ip}]: reverse DNS name {} does not resolve back to it",
                printable(&names.join(", "))
            ),
        )),
        Rdns::Temporary(_) if config.needs_rdns() && config.tempfail_on_dns_error => {
            Some(Refusal::new(
                450,
                "4.7.25",
                format!("Client host [{ip}]: reverse DNS lookup failed; try again later"),
            ))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> Config {
        Config::parse(json).unwrap()
    }

    #[test]
    fn defaults() {
        let cfg = config("{}");
        assert_eq!(cfg, Config::default());
        assert!(cfg.reject_invalid && cfg.reject_own_name && cfg.tempfail_on_dns_error);
        assert!(!cfg.require_fqdn && !cfg.check_fcrdns && !cfg.reject_no_ptr);
        assert!(cfg.trusted_networks.contains_client("127.0.0.1"));
        assert!(cfg.trusted_networks.contains_client("::1"));
        assert!(!cfg.trusted_networks.contains_client("127.0.0.2"));
        assert_eq!(config(""), Config::default());
    }

    #[test]
    fn parses_switches() {
        let cfg = config(
            r#"{"reject_invalid": false, "require_fqdn": true, "check_fcrdns": true,
                "reject_no_ptr": true, "tempfail_on_dns_error": false,
                "trusted_networks": [], "own_addresses": ["192.0.2.1"]}"#,
        );
        assert!(!cfg.reject_invalid && cfg.require_fqdn && cfg.check_fcrdns);
        assert!(cfg.reject_no_ptr && !cfg.tempfail_on_dns_error);
        assert!(!cfg.trusted_networks.contains_client("127.0.0.1"));
        assert!(cfg.own_addresses.contains_client("192.0.2.1"));
    }

    #[test]
    fn bad_configs_name_the_key() {
        let err = |json: &str| Config::parse(json).unwrap_err().to_string();
        assert!(err(r#"{"check_fcrdn": true}"#).contains("unknown field `check_fcrdn`"));
        assert!(err(r#"{"require_fqdn": "yes"}"#).starts_with("helo: invalid config"));
        assert!(err(r#"{"trusted_networks": ["10.0.0.0/33"]}"#)
            .starts_with("helo: trusted_networks: \"10.0.0.0/33\""));
        assert!(err(r#"{"own_addresses": ["mx"]}"#).starts_with("helo: own_addresses: \"mx\""));
    }

    #[test]
    fn helo_syntax() {
        assert_eq!(
            parse_helo("Mail.Example.ORG"),
            Ok(HeloName::Domain("mail.example.org".into()))
        );
        assert_eq!(
            parse_helo("localhost"),
            Ok(HeloName::Domain("localhost".into()))
        );
        assert_eq!(
            parse_helo("a-1.b2.example"),
            Ok(HeloName::Domain("a-1.b2.example".into()))
        );
        assert_eq!(
            parse_helo("[192.0.2.1]"),
            Ok(HeloName::Literal("192.0.2.1".parse().unwrap()))
        );
        assert_eq!(
            parse_helo("[IPv6:2001:db8::1]"),
            Ok(HeloName::Literal("2001:db8::1".parse().unwrap()))
        );
        assert_eq!(
            parse_helo("[ipv6:::1]"),
            Ok(HeloName::Literal("::1".parse().unwrap()))
        );
        let bad = [
            ("", SyntaxError::Empty),
            ("192.0.2.1", SyntaxError::BareAddress),
            ("2001:db8::1", SyntaxError::BareAddress),
            ("10.1.2.3.4", SyntaxError::NumericTop),
            ("1234", SyntaxError::NumericTop),
            ("[192.0.2.1", SyntaxError::BadLiteral),
            ("[192.0.2.256]", SyntaxError::BadLiteral),
            ("[2001:db8::1]", SyntaxError::BadLiteral),
            ("[IPv6:192.0.2.1]", SyntaxError::BadLiteral),
            ("[x400:foo]", SyntaxError::BadLiteral),
            ("mail..example", SyntaxError::EmptyLabel),
            ("mail.example.", SyntaxError::EmptyLabel),
            (".example", SyntaxError::EmptyLabel),
            ("my_host.example", SyntaxError::BadCharacter),
            ("host name", SyntaxError::BadCharacter),
            ("-mail.example", SyntaxError::Hyphen),
            ("mail-.example", SyntaxError::Hyphen),
        ];
        for (helo, error) in bad {
            assert_eq!(parse_helo(helo), Err(error), "{helo:?}");
        }
        assert_eq!(
            parse_helo(&format!("{}.example", "a".repeat(64))),
            Err(SyntaxError::LongLabel)
        );
        assert_eq!(parse_helo(&"abc.".repeat(64)), Err(SyntaxError::LongName));
    }

    fn local(domain: &str) -> bool {
        domain == "example.org"
    }

    #[test]
    fn name_checks() {
        let cfg = config(r#"{"own_addresses": ["192.0.2.1"], "require_fqdn": true}"#);
        let check = |helo: &str| check_name(&cfg, helo, "mx.example.test", local);
        assert_eq!(check("client.example.net"), None);
        assert_eq!(check("[192.0.2.7]"), None);
        let invalid = check("192.0.2.7").unwrap();
        assert_eq!((invalid.code, invalid.enhanced), (501, "5.5.2"));
        assert!(invalid.text.contains("brackets"), "{}", invalid.text);
        let short = check("client").unwrap();
        assert_eq!((short.code, short.enhanced), (504, "5.5.2"));
        for own in ["MX.example.test", "example.org", "[192.0.2.1]"] {
            let forged = check(own).unwrap();
            assert_eq!((forged.code, forged.enhanced), (550, "5.7.1"), "{own}");
            assert!(forged.text.ends_with("forged"), "{}", forged.text);
        }
        // Each switch alone.
        let off = config(r#"{"reject_invalid": false, "reject_own_name": false}"#);
        assert_eq!(check_name(&off, "192.0.2.7", "mx", local), None);
        assert_eq!(check_name(&off, "mx", "mx", local), None);
        let own_only = config(r#"{"reject_invalid": false, "own_addresses": ["192.0.2.1"]}"#);
        assert_eq!(
            check_name(&own_only, "192.0.2.1", "mx", local).map(|r| r.code),
            Some(550)
        );
        assert_eq!(
            check_name(&own_only, "bad_name", "mx", local),
            None,
            "syntax not checked"
        );
    }

    #[test]
    fn printable_replaces_controls() {
        assert_eq!(printable("a\r\nb c"), "a??b?c");
        assert_eq!(printable(&"x".repeat(300)).len(), 100);
    }

    fn names(list: &[&str]) -> Result<Vec<String>, LookupError> {
        Ok(list.iter().map(|s| s.to_string()).collect())
    }

    fn temporary() -> Result<Vec<String>, LookupError> {
        Err(LookupError::Temporary("SERVFAIL".into()))
    }

    #[test]
    fn forward_confirmed_reverse_dns() {
        let ip: IpAddr = "192.0.2.5".parse().unwrap();
        let ptr = |ip: &str| {
            assert_eq!(ip, "192.0.2.5");
            names(&["other.example.", "Mail.Example."])
        };
        let forward = |name: &str, v6: bool| {
            assert!(!v6);
            match name {
                "other.example" => names(&["192.0.2.99"]),
                "mail.example" => names(&["192.0.2.5"]),
                _ => Err(LookupError::NxDomain),
            }
        };
        assert_eq!(
            reverse_dns(ip, true, ptr, forward),
            Rdns::Confirmed("mail.example".into())
        );
        assert_eq!(
            reverse_dns(ip, false, ptr, |_, _| unreachable!()),
            Rdns::Unconfirmed(vec!["other.example".into(), "mail.example".into()])
        );
        // Mapped clients are asked about as IPv4.
        let mapped: IpAddr = "::ffff:192.0.2.5".parse().unwrap();
        assert!(matches!(
            reverse_dns(mapped, true, ptr, forward),
            Rdns::Confirmed(_)
        ));
        let none = |_: &str| Err(LookupError::NxDomain);
        assert_eq!(reverse_dns(ip, true, none, forward), Rdns::NoPtr);
        assert_eq!(reverse_dns(ip, true, |_| names(&[]), forward), Rdns::NoPtr);
        assert_eq!(
            reverse_dns(ip, true, |_| temporary(), forward),
            Rdns::Temporary("SERVFAIL".into())
        );
        let wrong = |_: &str, _| names(&["192.0.2.6"]);
        assert_eq!(
            reverse_dns(ip, true, ptr, wrong),
            Rdns::Unconfirmed(vec!["other.example".into(), "mail.example".into()])
        );
        // A failure matters only when no name confirms.
        let flaky = |name: &str, _| match name {
            "other.example" => temporary(),
            _ => names(&["192.0.2.5"]),
        };
        assert!(matches!(
            reverse_dns(ip, true, ptr, flaky),
            Rdns::Confirmed(_)
        ));
        let flaky_miss = |name: &str, _| match name {
            "other.example" => temporary(),
            _ => names(&["192.0.2.6"]),
        };
        assert!(matches!(
            reverse_dns(ip, true, ptr, flaky_miss),
            Rdns::Temporary(_)
        ));
        let v6: IpAddr = "2001:db8::5".parse().unwrap();
        let forward6 = |_: &str, v6: bool| {
            assert!(v6);
            names(&["2001:db8:0:0::5"])
        };
        assert!(matches!(
            reverse_dns(v6, true, |_| names(&["h.example"]), forward6),
            Rdns::Confirmed(_)
        ));
    }

    #[test]
    fn reverse_dns_refusals() {
        let ip: IpAddr = "192.0.2.5".parse().unwrap();
        let fcrdns = config(r#"{"check_fcrdns": true}"#);
        let no_ptr = config(r#"{"reject_no_ptr": true}"#);
        let lenient = config(r#"{"check_fcrdns": true, "tempfail_on_dns_error": false}"#);
        let off = config("{}");
        let unconfirmed = Rdns::Unconfirmed(vec!["a.example".into()]);
        let temp = Rdns::Temporary("x".into());
        let code =
            |cfg: &Config, rdns: &Rdns| check_rdns(cfg, ip, rdns).map(|r| (r.code, r.enhanced));
        assert_eq!(code(&fcrdns, &Rdns::Confirmed("a".into())), None);
        assert_eq!(code(&fcrdns, &unconfirmed), Some((550, "5.7.25")));
        assert_eq!(code(&fcrdns, &Rdns::NoPtr), Some((550, "5.7.25")));
        assert_eq!(code(&fcrdns, &temp), Some((450, "4.7.25")));
        assert_eq!(code(&no_ptr, &unconfirmed), None);
        assert_eq!(code(&no_ptr, &Rdns::NoPtr), Some((550, "5.7.25")));
        assert_eq!(code(&no_ptr, &temp), Some((450, "4.7.25")));
        assert_eq!(code(&lenient, &temp), None);
        assert_eq!(code(&off, &Rdns::NoPtr), None);
        let text = check_rdns(&fcrdns, ip, &unconfirmed).unwrap().text;
        assert_eq!(
            text,
            "Client host [192.0.2.5]: reverse DNS name a.example does not resolve back to it"
        );
        assert!(check_rdns(&fcrdns, ip, &temp).unwrap().is_temporary());
    }
}
