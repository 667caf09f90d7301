//! Where a recipient's mail goes: a configured route's next hop, the
//! domain's MX hosts (RFC 5321 §5.1), or local delivery. MX hosts are
//! tried by preference, shuffled among equal preferences; a domain without
//! MX records is its own implicit MX (its A/AAAA records); a null MX (RFC
//! 7505) or a domain that does not exist fails at once; and this server is
//! never a target of its own, so a misconfigured MX cannot loop mail back.
//!
//! What a domain's DNS can make sluice do is bounded: at most
//! `max_mx_hosts` MX hosts are looked up and `max_addresses` addresses
//! tried per attempt, and addresses in `ignore_target_hosts` (loopback,
//! unspecified, link-local by default) are never targets. Routes are the
//! operator's own word and exempt from the filter.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::credentials::Credentials;
use super::dane::{Dane, HostDane, SecureLookupError};
use super::ignore::is_ignored;
use super::mta_sts::{Mode, Policy};
use super::smtp_client::{Target, TargetAddress};
use super::tls_policy::AppliedTls;
use super::DeliverySettings;
use crate::config::OutboundTls;
use crate::dns::{Dns, LookupError, MxRecord};

/// Where the recipients of one domain are sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// A configured next hop, "host:port", and what to AUTH with there.
    Route {
        next_hop: String,
        tls: OutboundTls,
        auth: Option<Arc<Credentials>>,
    },
    /// The domain's MX hosts.
    Mx { domain: String, tls: OutboundTls },
}

impl Destination {
    /// The key concurrency and rate limits are kept per.
    pub fn key(&self) -> &str {
        match self {
            Destination::Route { next_hop, .. } => next_hop,
            Destination::Mx { domain, .. } => domain,
        }
    }

    /// A route's credentials; MX hosts are never sent any.
    pub fn auth(&self) -> Option<&Credentials> {
        match self {
            Destination::Route { auth, .. } => auth.as_deref(),
            Destination::Mx { .. } => None,
        }
    }
}

/// Why no target could be found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteFailure {
    /// Final: the recipient fails with this reply.
    Permanent(String),
    /// Try again later with this reply.
    Temporary(String),
}

/// The destination of a remote domain (or a local one with its own route).
pub fn destination(settings: &DeliverySettings, domain: &str) -> Destination {
    match settings.route(domain) {
        Some(route) => Destination::Route {
            next_hop: route.next_hop.clone(),
            tls: route.tls.unwrap_or(settings.delivery.tls),
            auth: settings.route_credentials.get(&route.domain).cloned(),
        },
        None => Destination::Mx {
            domain: domain.to_ascii_lowercase(),
            tls: settings.delivery.tls,
        },
    }
}

/// The hosts to try, in order, and the TLS policy they are tried under.
#[derive(Debug)]
pub struct Routed {
    pub targets: Vec<Target>,
    pub policy: AppliedTls,
}

/// The hosts to try, in order: DANE hosts where the domain has them
/// (RFC 8461 §2: DANE before MTA-STS), else under an MTA-STS policy
/// (`sts`) only the MX hosts it lists.
pub async fn targets(
    settings: &DeliverySettings,
    dns: &Dns,
    destination: &Destination,
    sts: Option<&Policy>,
) -> Result<Routed, RouteFailure> {
    match destination {
        Destination::Route { next_hop, tls, .. } => {
            let (mut targets, policy) = match (tls, settings.dane.as_deref()) {
                (OutboundTls::Dane, Some(dane)) => {
                    (dane_next_hop(dane, next_hop).await?, AppliedTls::Dane)
                }
                (tls, _) => (next_hop_targets(next_hop).await?, AppliedTls::Plain(*tls)),
            };
            targets.truncate(settings.delivery.max_addresses);
            Ok(Routed { targets, policy })
        }
        Destination::Mx { domain, tls } => mx_targets(settings, dns, domain, sts, *tls).await,
    }
}

/// A `tls = "dane"` route: its host's DNSSEC-signed addresses and TLSA
/// records for its port, or the mail waits.
async fn dane_next_hop(dane: &Dane, next_hop: &str) -> Result<Vec<Target>, RouteFailure> {
    let parsed = next_hop
        .rsplit_once(':')
        .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)));
    let Some((host, port)) = parsed else {
        return Err(RouteFailure::Temporary(format!(
            "451 4.3.5 invalid next hop {next_hop:?}"
        )));
    };
    let host = host.to_ascii_lowercase();
    let answer = dane.host(&host, port).await.map_err(|e| {
        RouteFailure::Temporary(format!(
            "451 4.7.5 next hop {host} cannot be used: {e} (TLS policy: dane)"
        ))
    })?;
    let Some(tlsa) = answer.tlsa else {
        return Err(RouteFailure::Temporary(format!(
            "451 4.7.5 tls = \"dane\": {} (TLS policy: dane)",
            answer
                .without
                .unwrap_or_else(|| format!("no usable TLSA records for {host}"))
        )));
    };
    Ok(answer
        .addresses
        .into_iter()
        .map(|ip| Target {
            host: host.clone(),
            address: TargetAddress::Tcp(SocketAddr::new(ip, port)),
            dane: Some(tlsa.clone()),
        })
        .collect())
}

/// A route's "host:port": an IP literal, or a name resolved by the system
/// (so /etc/hosts names work for internal hops).
async fn next_hop_targets(next_hop: &str) -> Result<Vec<Target>, RouteFailure> {
    let Some((host, port)) = next_hop.rsplit_once(':') else {
        return Err(RouteFailure::Temporary(format!(
            "451 4.3.5 invalid next hop {next_hop:?}"
        )));
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addresses: Vec<SocketAddr> = match tokio::net::lookup_host(next_hop).await {
        Ok(list) => list.collect(),
        Err(e) => {
            return Err(RouteFailure::Temporary(format!(
                "451 4.4.3 cannot resolve next hop {host}: {e}"
            )))
        }
    };
    if addresses.is_empty() {
        return Err(RouteFailure::Temporary(format!(
            "451 4.4.3 next hop {host} has no address (port {port})"
        )));
    }
    Ok(addresses
        .into_iter()
        .map(|address| Target {
            host: host.to_owned(),
            address: TargetAddress::Tcp(address),
            dane: None,
        })
        .collect())
}

/// The MX hosts an MTA-STS policy lets mail go to (RFC 8461 §4.1): under
/// `enforce` the others are dropped, and with none left the mail waits
/// (§4.2: not delivered elsewhere); under `testing` all stay and what
/// `enforce` would drop is logged.
fn sts_hosts(
    policy: &Policy,
    domain: &str,
    hosts: Vec<String>,
) -> Result<Vec<String>, RouteFailure> {
    let (listed, unlisted): (Vec<String>, Vec<String>) =
        hosts.into_iter().partition(|host| policy.allows_mx(host));
    match policy.mode {
        Mode::Enforce if listed.is_empty() => Err(RouteFailure::Temporary(format!(
            "451 4.7.5 no MX host of {domain} is in its MTA-STS policy (mx: {}; MX: {}) \
             (TLS policy: {})",
            policy.mx.join(", "),
            unlisted.join(", "),
            AppliedTls::MtaSts(Mode::Enforce)
        ))),
        Mode::Enforce => {
            for host in &unlisted {
                tracing::info!(%domain, mx = %host, "MX host skipped: not in the MTA-STS policy");
            }
            Ok(listed)
        }
        _ => {
            for host in &unlisted {
                tracing::info!(%domain, mx = %host, "MTA-STS testing: this MX host is not in the policy");
            }
            Ok(listed.into_iter().chain(unlisted).collect())
        }
    }
}

/// The MX records of `domain` and whether DNSSEC vouches for them: asked
/// of the validating resolver when DANE may apply.
async fn mx_records(
    dns: &Dns,
    dane: Option<&Dane>,
    domain: &str,
) -> Result<(Vec<MxRecord>, bool), RouteFailure> {
    let mut denied_securely = false;
    if let Some(dane) = dane {
        match dane.resolver.mx(domain).await {
            Ok(answer) => return Ok((answer.records, answer.secure)),
            // NXDOMAIN or no MX (the implicit MX): the plain lookup tells
            // which. A domain proven to have no MX is its own TLSA base
            // (RFC 7672 §2.2.1).
            Err(SecureLookupError::NoRecords { secure, .. }) => denied_securely = secure,
            Err(e @ SecureLookupError::Bogus(_)) => {
                return Err(RouteFailure::Temporary(format!(
                    "451 4.7.5 {e} (TLS policy: dane)"
                )))
            }
            Err(SecureLookupError::Temporary { reason, .. }) => {
                return Err(RouteFailure::Temporary(format!(
                    "451 4.4.3 DNS lookup for {domain} failed: {reason}"
                )))
            }
        }
    }
    match dns.mx(domain).await {
        Ok(records) => {
            let secure = denied_securely && records.is_empty();
            Ok((records, secure))
        }
        Err(e) => Err(lookup_failure(domain, e)),
    }
}

/// What DANE says about each of `hosts` (a secure MX RRset's), and the
/// first failure of the hosts that cannot be used at all.
async fn dane_hosts(
    dane: &Dane,
    domain: &str,
    hosts: &[String],
    port: u16,
) -> (HashMap<String, HostDane>, Option<RouteFailure>) {
    let mut found = HashMap::new();
    let mut failure = None;
    for host in hosts {
        match dane.host(host, port).await {
            Ok(answer) => {
                if let Some(why) = &answer.without {
                    tracing::info!(%domain, mx = %host, "no DANE for this MX host: {why}");
                }
                found.insert(host.clone(), answer);
            }
            Err(e) => {
                tracing::info!(%domain, mx = %host, "MX host skipped: {e}");
                failure.get_or_insert(RouteFailure::Temporary(format!(
                    "451 4.7.5 MX {host} of {domain} cannot be used: {e} (TLS policy: dane)"
                )));
            }
        }
    }
    (found, failure)
}

async fn mx_targets(
    settings: &DeliverySettings,
    dns: &Dns,
    domain: &str,
    sts: Option<&Policy>,
    tls: OutboundTls,
) -> Result<Routed, RouteFailure> {
    let limits = &settings.delivery;
    let dane = match tls {
        OutboundTls::Auto | OutboundTls::Dane => settings.dane.as_deref(),
        _ => None,
    };
    let (records, mx_secure) = mx_records(dns, dane, domain).await?;
    if is_null_mx(&records) {
        return Err(RouteFailure::Permanent(format!(
            "556 5.1.10 {domain} does not accept mail (null MX)"
        )));
    }
    let hosts: Vec<String> = if records.is_empty() {
        // RFC 5321 §5.1: no MX, the domain itself is the mail host.
        vec![domain.to_ascii_lowercase()]
    } else {
        order_by_preference(records)
            .into_iter()
            .map(|r| r.exchange)
            .filter(|host| !host.is_empty())
            .take(limits.max_mx_hosts)
            .collect()
    };
    // RFC 7672 §2.2: TLSA records count only below a signed MX RRset
    // (or a signed proof that there is none).
    let (host_dane, mut temporary) = match (dane, mx_secure) {
        (Some(dane), true) => dane_hosts(dane, domain, &hosts, limits.smtp_port).await,
        _ => (HashMap::new(), None),
    };
    // A host whose DANE answers were bogus is used under no policy.
    let hosts: Vec<String> = hosts
        .into_iter()
        .filter(|host| !mx_secure || dane.is_none() || host_dane.contains_key(host))
        .collect();
    let has_tlsa = |host: &String| host_dane.get(host).is_some_and(|h| h.tlsa.is_some());
    let (hosts, policy) = if tls == OutboundTls::Dane {
        let (with, without): (Vec<String>, Vec<String>) = hosts.into_iter().partition(has_tlsa);
        if with.is_empty() {
            return Err(temporary.unwrap_or_else(|| no_dane_host(domain, &without, mx_secure)));
        }
        (with, AppliedTls::Dane)
    } else if hosts.iter().any(has_tlsa) {
        // RFC 8461 §2: DANE before MTA-STS.
        (hosts, AppliedTls::Dane)
    } else {
        match sts {
            Some(policy) if matches!(tls, OutboundTls::Auto | OutboundTls::MtaSts) => (
                sts_hosts(policy, domain, hosts)?,
                AppliedTls::MtaSts(policy.mode),
            ),
            _ => (hosts, AppliedTls::Plain(tls)),
        }
    };
    let mut targets = Vec::new();
    let mut ignored = Vec::new();
    for host in hosts {
        if targets.len() >= limits.max_addresses {
            break;
        }
        let (ips, tlsa) = match host_dane.get(&host) {
            Some(answer) => (answer.addresses.clone(), answer.tlsa.clone()),
            None => match dns.ips(&host).await {
                Ok(ips) => (ips, None),
                Err(e) => {
                    temporary.get_or_insert(lookup_failure(&host, e));
                    continue;
                }
            },
        };
        // RFC 5321 §5.1: when this server is one of the MX hosts, only
        // the more preferred ones may be used.
        if host == settings.hostname || ips.iter().any(|ip| is_own(settings, *ip)) {
            if targets.is_empty() && temporary.is_none() {
                return Err(RouteFailure::Permanent(format!(
                    "554 5.4.6 mail for {domain} loops back to this server (MX {host})"
                )));
            }
            break;
        }
        for ip in ips {
            if is_ignored(&limits.ignore_target_hosts, ip) {
                tracing::info!(%domain, mx = %host, address = %ip, "target ignored (delivery.ignore_target_hosts)");
                ignored.push(format!("{host} [{ip}]"));
                continue;
            }
            if targets.len() < limits.max_addresses {
                targets.push(Target {
                    host: host.clone(),
                    address: TargetAddress::Tcp(SocketAddr::new(ip, limits.smtp_port)),
                    dane: tlsa.clone(),
                });
            }
        }
    }
    if targets.is_empty() {
        return Err(match temporary {
            Some(failure @ RouteFailure::Temporary(_)) => failure,
            // As Exim: a domain whose every target is ignored has no
            // usable MX. Deferred, not bounced, so a DNS mistake that is
            // fixed within `max_age` costs no mail; the DSN at expiry
            // carries this reason.
            _ if !ignored.is_empty() => RouteFailure::Temporary(format!(
                "451 4.4.4 no usable mail host for {domain}: {} in delivery.ignore_target_hosts",
                ignored_list(&ignored)
            )),
            _ => RouteFailure::Permanent(format!(
                "550 5.1.2 no mail host for {domain} has an address"
            )),
        });
    }
    Ok(Routed { targets, policy })
}

/// Why a `tls = "dane"` destination has no host to try.
fn no_dane_host(domain: &str, hosts: &[String], mx_secure: bool) -> RouteFailure {
    let unsigned = if mx_secure {
        ""
    } else {
        "; the MX records are not DNSSEC-signed"
    };
    RouteFailure::Temporary(format!(
        "451 4.7.5 tls = \"dane\": no MX host of {domain} has usable DNSSEC-signed TLSA \
         records (MX: {}{unsigned}) (TLS policy: dane)",
        hosts.join(", ")
    ))
}

/// "mx [127.0.0.1] is", or the first few of many.
fn ignored_list(ignored: &[String]) -> String {
    const SHOWN: usize = 3;
    match ignored.len() {
        1 => format!("{} is", ignored[0]),
        n if n <= SHOWN => format!("{} are", ignored.join(", ")),
        n => format!("{} and {} more are", ignored[..SHOWN].join(", "), n - SHOWN),
    }
}

fn lookup_failure(name: &str, error: LookupError) -> RouteFailure {
    match error {
        LookupError::NxDomain(_) => {
            RouteFailure::Permanent(format!("550 5.1.2 domain {name} does not exist"))
        }
        LookupError::InvalidName(_) => {
            RouteFailure::Permanent(format!("550 5.1.2 {name:?} is not a valid domain"))
        }
        LookupError::Temporary { reason, .. } => {
            RouteFailure::Temporary(format!("451 4.4.3 DNS lookup for {name} failed: {reason}"))
        }
    }
}

/// RFC 7505: a single MX of preference 0 whose exchange is the root.
fn is_null_mx(records: &[MxRecord]) -> bool {
    records.len() == 1 && records[0].exchange.is_empty()
}

/// Sorted by preference; equal preferences in random order, which spreads
/// load as RFC 5321 §5.1 asks.
fn order_by_preference(mut records: Vec<MxRecord>) -> Vec<MxRecord> {
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(1)
        | 1;
    let mut keyed: Vec<(u16, u64, MxRecord)> = records
        .drain(..)
        .map(|r| {
            // xorshift: cheap, and quality does not matter here.
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (r.preference, seed, r)
        })
        .collect();
    keyed.sort_by_key(|(preference, random, _)| (*preference, *random));
    keyed.into_iter().map(|(_, _, r)| r).collect()
}

/// Whether `ip` on the SMTP port is one of this server's listeners.
fn is_own(settings: &DeliverySettings, ip: IpAddr) -> bool {
    settings.own_addresses.iter().any(|own| {
        own.port() == settings.delivery.smtp_port
            && (own.ip() == ip || (own.ip().is_unspecified() && is_local_ip(ip)))
    })
}

/// Loopback, or an address of one of this machine's interfaces (checked
/// by binding to it, which only succeeds for local addresses).
fn is_local_ip(ip: IpAddr) -> bool {
    ip.is_loopback() || std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mx(preference: u16, exchange: &str) -> MxRecord {
        MxRecord {
            preference,
            exchange: exchange.into(),
        }
    }

    #[test]
    fn preference_orders_and_equal_ones_vary() {
        let records = vec![mx(20, "c"), mx(10, "a"), mx(10, "b"), mx(30, "d")];
        let mut firsts = std::collections::HashSet::new();
        for _ in 0..200 {
            let ordered: Vec<String> = order_by_preference(records.clone())
                .into_iter()
                .map(|r| r.exchange)
                .collect();
            assert_eq!(&ordered[2..], &["c".to_owned(), "d".to_owned()]);
            firsts.insert(ordered[0].clone());
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
        assert_eq!(firsts.len(), 2, "equal preferences are shuffled");
    }

    #[test]
    fn null_mx_is_one_root_record() {
        assert!(is_null_mx(&[mx(0, "")]));
        assert!(!is_null_mx(&[mx(0, ""), mx(10, "a")]));
        assert!(!is_null_mx(&[]));
    }

    #[test]
    fn lookup_failures_map_to_permanent_or_temporary() {
        assert!(matches!(
            lookup_failure("x.test", LookupError::NxDomain("x.test".into())),
            RouteFailure::Permanent(r) if r.starts_with("550 5.1.2")
        ));
        assert!(matches!(
            lookup_failure(
                "x.test",
                LookupError::Temporary {
                    name: "x.test".into(),
                    reason: "timeout".into()
                }
            ),
            RouteFailure::Temporary(r) if r.starts_with("451 4.4.3")
        ));
    }
}
