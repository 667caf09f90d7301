//! The DNS block list logic of `builtin:dnsbl`: its configuration, the
//! query names of RFC 5782 (§2.1 IPv4, §2.4 IPv6 nibbles, §2.2 domains),
//! what an answer means, and the score of a session's listings.
//!
//! Nothing here touches the host: lookups come in as closures, so it tests
//! natively. `lib.rs` runs it from the SMTP hooks and turns the score into
//! a verdict.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};

use serde::Deserialize;
use sluice_sdk::net::{Networks, ParseError};

/// Why the plugin's configuration was refused; shown to the operator when
/// the pipeline is built.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    /// Malformed JSON, an unknown key (serde names it) or a wrong type.
    #[error("dnsbl: invalid config: {0}")]
    Json(String),
    #[error("dnsbl: allow: {0}")]
    Allow(ParseError),
    #[error("dnsbl: zones[{index}].answers: {error}")]
    Answers { index: usize, error: ParseError },
    #[error("dnsbl: zones[{index}].zone: {zone:?} is not a DNS zone name")]
    ZoneName { index: usize, zone: String },
    #[error("dnsbl: zones[{index}].zone: {zone:?} is listed twice with the same type")]
    DuplicateZone { index: usize, zone: String },
    #[error("dnsbl: zones[{index}].weight: {weight} is not a finite number")]
    Weight { index: usize, weight: f64 },
    #[error("dnsbl: threshold: {0} must be a finite number above 0")]
    Threshold(f64),
}

/// What a zone lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ZoneType {
    /// Client addresses, queried at connect.
    Ip,
    /// Domain names, queried with the HELO name and the MAIL FROM domain.
    Domain,
}

/// Where a listed session is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RejectAt {
    /// As soon as the threshold is reached (connect, HELO or MAIL), like
    /// Postfix's postscreen.
    Connect,
    /// At each RCPT, except to postmaster (RFC 5321 §4.5.1), so a listed
    /// sender can still reach the postmaster about the listing.
    Rcpt,
}

/// One block list.
#[derive(Debug, Clone, PartialEq)]
pub struct Zone {
    /// Lower case, no trailing dot.
    pub zone: String,
    pub kind: ZoneType,
    /// Added to the session's score when the zone lists it; negative for an
    /// allow list (a DNSWL).
    pub weight: f64,
    /// A-record answers that count as a listing.
    pub answers: Networks,
}

/// The operator's settings, as `[plugins.dnsbl.config]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub zones: Vec<Zone>,
    pub threshold: f64,
    /// Clients never checked.
    pub allow: Networks,
    pub reject_at: RejectAt,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            zones: Vec::new(),
            threshold: 1.0,
            allow: Networks::default(),
            reject_at: RejectAt::Rcpt,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    zones: Vec<RawZone>,
    #[serde(default = "default_threshold")]
    threshold: f64,
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default = "default_reject_at")]
    reject_at: RejectAt,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawZone {
    zone: String,
    #[serde(rename = "type", default = "default_type")]
    kind: ZoneType,
    #[serde(default = "default_weight")]
    weight: f64,
    answers: Option<Vec<String>>,
}

fn default_threshold() -> f64 {
    1.0
}

fn default_reject_at() -> RejectAt {
    RejectAt::Rcpt
}

fn default_type() -> ZoneType {
    ZoneType::Ip
}

fn default_weight() -> f64 {
    1.0
}

/// The answers that count when a zone does not say: RFC 5782 §2.3 puts
/// listings in 127.0.0.0/8.
fn default_answers() -> Networks {
    Networks::parse(&["127.0.0.0/8"]).unwrap_or_default()
}

impl Config {
    /// Parses the JSON config; an empty string means all defaults (no
    /// zones: the plugin then checks nothing).
    pub fn parse(json: &str) -> Result<Config, ConfigError> {
        if json.trim().is_empty() {
            return Ok(Config::default());
        }
        let raw: RawConfig =
            serde_json::from_str(json).map_err(|e| ConfigError::Json(e.to_string()))?;
        if !raw.threshold.is_finite() || raw.threshold <= 0.0 {
            return Err(ConfigError::Threshold(raw.threshold));
        }
        let allow = Networks::parse(&raw.allow).map_err(ConfigError::Allow)?;
        let mut zones: Vec<Zone> = Vec::new();
        for (index, zone) in raw.zones.into_iter().enumerate() {
            let name = zone.zone.trim_end_matches('.').to_ascii_lowercase();
            if !valid_zone_name(&name) {
                return Err(ConfigError::ZoneName {
                    index,
                    zone: zone.zone,
                });
            }
            if zones.iter().any(|z| z.zone == name && z.kind == zone.kind) {
                return Err(ConfigError::DuplicateZone {
                    index,
                    zone: zone.zone,
                });
            }
            if !zone.weight.is_finite() {
                return Err(ConfigError::Weight {
                    index,
                    weight: zone.weight,
                });
            }
            let answers = match zone.answers {
                None => default_answers(),
                Some(list) => {
                    Networks::parse(&list).map_err(|error| ConfigError::Answers { index, error })?
                }
            };
            zones.push(Zone {
                zone: name,
                kind: zone.kind,
                weight: zone.weight,
                answers,
            });
        }
        Ok(Config {
            zones,
            threshold: raw.threshold,
            allow,
            reject_at: raw.reject_at,
        })
    }

    /// Whether a score reaches the threshold (with room for the rounding
    /// of summed fractions: 0.1 + 0.2 + 0.7 is 1).
    pub fn reached(&self, score: f64) -> bool {
        score >= self.threshold - 1e-9
    }
}

/// LDH labels of at most 63 octets, at least two of them (a zone is never
/// a top-level domain), 253 octets in all.
fn valid_zone_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').count() >= 2
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The name to query for a client address (RFC 5782 §2.1, §2.4): IPv4
/// octets reversed, IPv6 as 32 reversed nibbles.
pub fn ip_query(ip: IpAddr, zone: &str) -> String {
    match sluice_sdk::net::unmap(ip) {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}.{zone}")
        }
        IpAddr::V6(v6) => {
            let mut name = String::with_capacity(64 + zone.len());
            for byte in v6.octets().iter().rev() {
                let _ = write!(name, "{:x}.{:x}.", byte & 0x0f, byte >> 4);
            }
            name.push_str(zone);
            name
        }
    }
}

/// The name to query for a domain (RFC 5782 §2.2), or `None` when it is
/// not a domain name at all: an address literal, an empty name, a bare IP.
pub fn domain_query(domain: &str, zone: &str) -> Option<String> {
    let domain = domain.trim().trim_end_matches('.').to_lowercase();
    if domain.is_empty()
        || domain.starts_with('[')
        || domain.contains(['@', ' ', '/', '\\'])
        || domain.split('.').any(str::is_empty)
        || domain.parse::<IpAddr>().is_ok()
        || domain.len() + zone.len() + 1 > 253
    {
        return None;
    }
    Some(format!("{domain}.{zone}"))
}

/// A lookup failure, as the host's DNS reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupError {
    NxDomain,
    Temporary(String),
    Invalid(String),
}

/// What one zone said about one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Not listed (NXDOMAIN, no A record, or only answers that do not count).
    Clear,
    /// Listed with these A answers.
    Listed(Vec<Ipv4Addr>),
    /// The list refused the query: a 127.255.255.x code (Spamhaus: open
    /// resolver, over quota, ...). Not a listing.
    Refused(Ipv4Addr),
    /// Answers outside the zone's `answers` (a resolver that rewrites
    /// NXDOMAIN, or a code the operator did not ask for).
    Ignored(Vec<String>),
    /// The lookup failed for now; the zone is skipped.
    Failed(String),
}

/// The error-code range used by the lists for refused queries.
fn is_error_code(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    (a, b, c) == (127, 255, 255)
}

/// Classifies the A lookup of a query name for `zone`.
pub fn classify(zone: &Zone, lookup: Result<Vec<String>, LookupError>) -> Answer {
    let answers = match lookup {
        Ok(answers) => answers,
        Err(LookupError::NxDomain) => return Answer::Clear,
        Err(LookupError::Temporary(e) | LookupError::Invalid(e)) => return Answer::Failed(e),
    };
    let ips: Vec<Ipv4Addr> = answers.iter().filter_map(|a| a.parse().ok()).collect();
    if let Some(code) = ips.iter().copied().find(|ip| is_error_code(*ip)) {
        return Answer::Refused(code);
    }
    let counted: Vec<Ipv4Addr> = ips
        .into_iter()
        .filter(|ip| zone.answers.contains(IpAddr::V4(*ip)))
        .collect();
    if !counted.is_empty() {
        Answer::Listed(counted)
    } else if answers.is_empty() {
        Answer::Clear
    } else {
        Answer::Ignored(answers)
    }
}

/// A TXT reason as it may appear in an SMTP reply: printable ASCII only,
/// at most 200 characters.
pub fn clean_reason(txt: &[String]) -> Option<String> {
    let joined = txt.join(" ");
    let cleaned: String = joined
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { ' ' })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let cleaned: String = cleaned.chars().take(200).collect();
    (!cleaned.is_empty()).then_some(cleaned)
}

/// One zone listing something of this session.
#[derive(Debug, Clone, PartialEq)]
pub struct Listing {
    /// Index into `Config::zones`.
    pub zone_index: usize,
    pub zone: String,
    pub weight: f64,
    /// What is listed, for the reply: "client host [192.0.2.1]".
    pub subject: String,
    /// The zone's TXT record, when it has one.
    pub reason: Option<String>,
}

/// The session's score: each listing zone counts once, however many of the
/// session's names it lists.
pub fn score<'a>(listings: impl IntoIterator<Item = &'a Listing>) -> f64 {
    let mut seen = BTreeSet::new();
    listings
        .into_iter()
        .filter(|l| seen.insert(l.zone_index))
        .map(|l| l.weight)
        .sum()
}

/// The text of the 554 reply, Postfix style: "Service unavailable; client
/// host [192.0.2.1] blocked using zen.example; <TXT>", one clause per
/// listing with a positive weight.
pub fn reply_text<'a>(listings: impl IntoIterator<Item = &'a Listing>) -> String {
    let clauses: Vec<String> = listings
        .into_iter()
        .filter(|l| l.weight > 0.0)
        .map(|l| match &l.reason {
            Some(reason) => format!("{} blocked using {}; {}", l.subject, l.zone, reason),
            None => format!("{} blocked using {}", l.subject, l.zone),
        })
        .collect();
    format!("Service unavailable; {}", clauses.join("; "))
}

/// What one check found: the listings, and the zones skipped with why (for
/// the log).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Findings {
    pub listings: Vec<Listing>,
    pub skipped: Vec<String>,
}

/// Queries every zone of `kind` for one subject. `query` makes the name
/// from a zone (`None`: nothing to ask); `a` and `txt` are the host's
/// lookups; the TXT is asked only of listing zones.
pub fn check(
    config: &Config,
    kind: ZoneType,
    subject: &str,
    query: impl Fn(&str) -> Option<String>,
    a: impl Fn(&str) -> Result<Vec<String>, LookupError>,
    txt: impl Fn(&str) -> Result<Vec<String>, LookupError>,
) -> Findings {
    let mut findings = Findings::default();
    for (zone_index, zone) in config.zones.iter().enumerate() {
        if zone.kind != kind {
            continue;
        }
        let Some(name) = query(&zone.zone) else {
            continue;
        };
        match classify(zone, a(&name)) {
            Answer::Clear => {}
            Answer::Listed(_) => {
                let reason = txt(&name).ok().and_then(|t| clean_reason(&t));
                findings.listings.push(Listing {
                    zone_index,
                    zone: zone.zone.clone(),
                    weight: zone.weight,
                    subject: subject.to_string(),
                    reason,
                });
            }
            Answer::Refused(code) => findings.skipped.push(format!(
                "{}: the list refused the query of {name} (answer {code}); not counted",
                zone.zone
            )),
            Answer::Ignored(answers) => findings.skipped.push(format!(
                "{}: {name} answered {} outside the listing answers; not counted",
                zone.zone,
                answers.join(", ")
            )),
            Answer::Failed(e) => findings.skipped.push(format!(
                "{}: lookup of {name} failed ({e}); zone skipped",
                zone.zone
            )),
        }
    }
    findings
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
        assert_eq!(cfg.threshold, 1.0);
        assert_eq!(cfg.reject_at, RejectAt::Rcpt);
        assert_eq!(config(" "), Config::default());
    }

    #[test]
    fn parses_zones() {
        let cfg = config(
            r#"{"zones": [
                {"zone": "Zen.Example.", "weight": 0.5},
                {"zone": "dbl.example", "type": "domain", "answers": ["127.0.1.2", "127.0.2.0/24"]},
                {"zone": "zen.example", "type": "domain"}
            ], "threshold": 1.5, "allow": ["10.0.0.0/8"], "reject_at": "connect"}"#,
        );
        assert_eq!(cfg.zones.len(), 3);
        assert_eq!(cfg.zones[0].zone, "zen.example");
        assert_eq!(cfg.zones[0].kind, ZoneType::Ip);
        assert_eq!(cfg.zones[0].weight, 0.5);
        assert_eq!(cfg.zones[0].answers, default_answers());
        assert_eq!(cfg.zones[1].kind, ZoneType::Domain);
        assert_eq!(cfg.zones[1].weight, 1.0);
        assert!(cfg.zones[1].answers.contains("127.0.2.9".parse().unwrap()));
        assert!(!cfg.zones[1].answers.contains("127.0.1.3".parse().unwrap()));
        assert_eq!(cfg.threshold, 1.5);
        assert!(cfg.allow.contains_client("10.1.2.3"));
        assert_eq!(cfg.reject_at, RejectAt::Connect);
    }

    #[test]
    fn bad_configs_name_the_key() {
        let err = |json: &str| Config::parse(json).unwrap_err().to_string();
        assert!(err(r#"{"zone": []}"#).contains("unknown field `zone`"));
        assert!(err(r#"{"zones": [{"zone": "a.example", "wieght": 1}]}"#)
            .contains("unknown field `wieght`"));
        assert!(err(r#"{"zones": [{"zone": "a.example", "type": "asn"}]}"#)
            .contains("unknown variant `asn`"));
        assert!(err(r#"{"reject_at": "data"}"#).contains("unknown variant `data`"));
        assert_eq!(
            err(r#"{"zones": [{"zone": "a..example"}]}"#),
            "dnsbl: zones[0].zone: \"a..example\" is not a DNS zone name"
        );
        assert!(err(r#"{"zones": [{"zone": "example"}]}"#).contains("zones[0].zone"));
        assert!(
            err(r#"{"zones": [{"zone": "a.example"}, {"zone": "A.example"}]}"#)
                .contains("zones[1].zone: \"A.example\" is listed twice")
        );
        assert!(
            err(r#"{"zones": [{"zone": "a.example", "answers": ["127.0.0.x"]}]}"#)
                .starts_with("dnsbl: zones[0].answers: \"127.0.0.x\"")
        );
        assert!(err(r#"{"allow": ["10/8"]}"#).starts_with("dnsbl: allow: \"10/8\""));
        assert!(err(r#"{"threshold": 0}"#).starts_with("dnsbl: threshold: 0"));
        assert!(err(r#"{"threshold": -1}"#).starts_with("dnsbl: threshold: -1"));
    }

    #[test]
    fn ipv4_query_reverses_octets() {
        assert_eq!(
            ip_query("192.0.2.99".parse().unwrap(), "zen.example"),
            "99.2.0.192.zen.example"
        );
        assert_eq!(
            ip_query("::ffff:127.0.0.2".parse().unwrap(), "zen.example"),
            "2.0.0.127.zen.example"
        );
    }

    #[test]
    fn ipv6_query_reverses_nibbles() {
        // The example of RFC 5782 §2.4.
        assert_eq!(
            ip_query(
                "2001:db8:1:2:3:4:567:89ab".parse().unwrap(),
                "ugly.example.com"
            ),
            "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.ugly.example.com"
        );
    }

    #[test]
    fn domain_queries() {
        assert_eq!(
            domain_query("Spam.Example.", "dbl.example").as_deref(),
            Some("spam.example.dbl.example")
        );
        for not_a_domain in ["", "[192.0.2.1]", "192.0.2.1", "a..b", "a b", "x@y"] {
            assert_eq!(
                domain_query(not_a_domain, "dbl.example"),
                None,
                "{not_a_domain}"
            );
        }
        assert_eq!(domain_query(&"a.".repeat(130), "dbl.example"), None);
    }

    fn zone(answers: Option<&[&str]>) -> Zone {
        Zone {
            zone: "zen.example".into(),
            kind: ZoneType::Ip,
            weight: 1.0,
            answers: answers
                .map(|a| Networks::parse(a).unwrap())
                .unwrap_or_else(default_answers),
        }
    }

    fn ok(answers: &[&str]) -> Result<Vec<String>, LookupError> {
        Ok(answers.iter().map(|a| a.to_string()).collect())
    }

    #[test]
    fn classifies_answers() {
        let any = zone(None);
        assert_eq!(classify(&any, Err(LookupError::NxDomain)), Answer::Clear);
        assert_eq!(classify(&any, ok(&[])), Answer::Clear);
        assert_eq!(
            classify(&any, ok(&["127.0.0.2", "127.0.0.10"])),
            Answer::Listed(vec![
                Ipv4Addr::new(127, 0, 0, 2),
                Ipv4Addr::new(127, 0, 0, 10)
            ])
        );
        assert_eq!(
            classify(&any, ok(&["127.255.255.254"])),
            Answer::Refused(Ipv4Addr::new(127, 255, 255, 254))
        );
        // An error code wins over a listing in the same answer.
        assert_eq!(
            classify(&any, ok(&["127.0.0.2", "127.255.255.252"])),
            Answer::Refused(Ipv4Addr::new(127, 255, 255, 252))
        );
        assert_eq!(
            classify(&any, ok(&["203.0.113.7"])),
            Answer::Ignored(vec!["203.0.113.7".into()])
        );
        assert_eq!(
            classify(&any, Err(LookupError::Temporary("SERVFAIL".into()))),
            Answer::Failed("SERVFAIL".into())
        );
        let only_sbl = zone(Some(&["127.0.0.2"]));
        assert_eq!(
            classify(&only_sbl, ok(&["127.0.0.11"])),
            Answer::Ignored(vec!["127.0.0.11".into()])
        );
        assert_eq!(
            classify(&only_sbl, ok(&["127.0.0.11", "127.0.0.2"])),
            Answer::Listed(vec![Ipv4Addr::new(127, 0, 0, 2)])
        );
    }

    #[test]
    fn reasons_are_cleaned() {
        assert_eq!(
            clean_reason(&["Listed:\r\n see  http://x/?1".into(), "more".into()]),
            Some("Listed: see http://x/?1 more".into())
        );
        assert_eq!(clean_reason(&[]), None);
        assert_eq!(clean_reason(&["\u{7}".into()]), None);
        assert_eq!(clean_reason(&["x".repeat(500)]).map(|r| r.len()), Some(200));
    }

    fn two_zone_config() -> Config {
        config(
            r#"{"zones": [
                {"zone": "a.example", "weight": 0.6},
                {"zone": "b.example", "weight": 0.6},
                {"zone": "c.example", "weight": -1},
                {"zone": "d.example", "type": "domain"}
            ]}"#,
        )
    }

    #[test]
    fn check_sums_listings_and_skips_failures() {
        let cfg = two_zone_config();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let a = |name: &str| match name {
            "1.2.0.192.a.example" => ok(&["127.0.0.2"]),
            "1.2.0.192.b.example" => Err(LookupError::Temporary("SERVFAIL".into())),
            _ => Err(LookupError::NxDomain),
        };
        let txt = |name: &str| match name {
            "1.2.0.192.a.example" => ok(&["Listed by A, see https://a.example/1"]),
            _ => Err(LookupError::NxDomain),
        };
        let found = check(
            &cfg,
            ZoneType::Ip,
            "client host [192.0.2.1]",
            |zone| Some(ip_query(ip, zone)),
            a,
            txt,
        );
        assert_eq!(found.listings.len(), 1);
        assert_eq!(found.listings[0].zone, "a.example");
        assert_eq!(found.skipped.len(), 1);
        assert!(
            found.skipped[0].contains("b.example"),
            "{:?}",
            found.skipped
        );
        assert!(!cfg.reached(score(&found.listings)));
        assert_eq!(
            reply_text(&found.listings),
            "Service unavailable; client host [192.0.2.1] blocked using a.example; \
             Listed by A, see https://a.example/1"
        );
    }

    #[test]
    fn weights_add_up_per_zone() {
        let cfg = two_zone_config();
        let listing = |zone_index: usize, weight: f64, subject: &str| Listing {
            zone_index,
            zone: cfg.zones[zone_index].zone.clone(),
            weight,
            subject: subject.into(),
            reason: None,
        };
        let a = listing(0, 0.6, "x");
        let b = listing(1, 0.6, "x");
        let white = listing(2, -1.0, "x");
        assert!(cfg.reached(score([&a, &b])));
        // A zone listing two names of the session counts once.
        assert!(!cfg.reached(score([&a, &listing(0, 0.6, "y")])));
        assert!(!cfg.reached(score([&a, &b, &white])));
        let tenths = config(r#"{"threshold": 1.0}"#);
        assert!(tenths.reached(0.1 + 0.2 + 0.7));
        assert_eq!(
            reply_text([&a, &white, &b]),
            "Service unavailable; x blocked using a.example; x blocked using b.example"
        );
    }

    #[test]
    fn domain_zones_only_for_domains() {
        let cfg = two_zone_config();
        let asked = std::cell::RefCell::new(Vec::new());
        let found = check(
            &cfg,
            ZoneType::Domain,
            "sender domain spam.example",
            |zone| domain_query("spam.example", zone),
            |name| {
                asked.borrow_mut().push(name.to_string());
                ok(&["127.0.1.2"])
            },
            |_| ok(&[]),
        );
        assert_eq!(*asked.borrow(), vec!["spam.example.d.example".to_string()]);
        assert_eq!(found.listings.len(), 1);
        assert_eq!(found.listings[0].reason, None);
    }
}
