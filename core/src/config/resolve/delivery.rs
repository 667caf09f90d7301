//! `[delivery]`, `[queue]` and `[dns]`: where accepted mail goes, how long
//! it is retried, and the resolver every lookup uses.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::super::*;
use super::{networks, valid_domain, valid_host_port, Diagnostics, Size};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDelivery {
    local: Option<Spanned<RawLocal>>,
    #[serde(default)]
    route: Vec<RawRoute>,
    max_connections_per_domain: Option<usize>,
    messages_per_second_per_domain: Option<Spanned<f64>>,
    smtp_port: Option<u16>,
    tls: Option<Spanned<OutboundTls>>,
    ca_file: Option<String>,
    mta_sts: Option<bool>,
    max_concurrent_deliveries: Option<Spanned<usize>>,
    max_mx_hosts: Option<Spanned<usize>>,
    max_addresses: Option<Spanned<usize>>,
    ignore_target_hosts: Option<Vec<Spanned<String>>>,
    timeouts: Option<RawDeliveryTimeouts>,
    maildir: Option<RawMaildir>,
}

/// `[delivery.maildir]`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMaildir {
    catch_all: Option<Spanned<String>>,
    create_mailboxes: Option<bool>,
}

/// `[delivery.timeouts]`: durations such as "30s" or "5m".
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDeliveryTimeouts {
    connect: Option<Spanned<String>>,
    greeting: Option<Spanned<String>>,
    command: Option<Spanned<String>>,
    data_init: Option<Spanned<String>>,
    data_block: Option<Spanned<String>>,
    data_end: Option<Spanned<String>>,
    attempt: Option<Spanned<String>>,
}

/// `local = "maildir"` or `local = { lmtp = "127.0.0.1:24" }`.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum RawLocal {
    Name(String),
    Lmtp(RawLmtp),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLmtp {
    lmtp: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    domain: Spanned<String>,
    next_hop: Spanned<String>,
    tls: Option<Spanned<OutboundTls>>,
    auth_file: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDns {
    #[serde(default)]
    nameservers: Vec<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    attempts: Option<usize>,
    trust_anchor: Option<Spanned<String>>,
    trust_ad: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawQueue {
    retry: Option<Spanned<Vec<String>>>,
    max_age: Option<Spanned<String>>,
    warn_after: Option<Spanned<String>>,
    quarantine_retention: Option<Spanned<String>>,
    min_free_space: Option<Spanned<Size>>,
    min_free_inodes: Option<u64>,
}

pub(super) fn resolve_delivery(
    d: &mut Diagnostics<'_>,
    raw: Option<&RawDelivery>,
    dnssec: &DaneConfig,
) -> DeliveryConfig {
    let default = RawDelivery::default();
    let delivery = raw.unwrap_or(&default);
    // DANE needs lookups known to be secure.
    let mut needs_dnssec = |tls: Option<&Spanned<OutboundTls>>, key: String| {
        if let Some(tls) = tls.filter(|t| *t.get_ref() == OutboundTls::Dane && !dnssec.enabled()) {
            d.add(
                tls.span(),
                key,
                "tls = \"dane\" needs DNSSEC: set [dns] trust_anchor (or trust_ad)",
            );
        }
    };
    needs_dnssec(delivery.tls.as_ref(), "delivery.tls".to_owned());
    for (i, route) in delivery.route.iter().enumerate() {
        needs_dnssec(route.tls.as_ref(), format!("delivery.route[{i}].tls"));
    }
    let local_delivery = match delivery.local.as_ref().map(|l| (l.get_ref(), l.span())) {
        None => LocalDelivery::Maildir,
        Some((RawLocal::Name(name), _)) if name == "maildir" => LocalDelivery::Maildir,
        Some((RawLocal::Name(name), span)) => {
            d.add(
                span,
                "delivery.local",
                format!(
                    "unsupported local delivery {name:?} (expected \"maildir\" or {{ lmtp = \"HOST:PORT\" }})"
                ),
            );
            LocalDelivery::Maildir
        }
        Some((RawLocal::Lmtp(lmtp), span)) => match lmtp.lmtp.strip_prefix("unix:") {
            Some(path) if !path.is_empty() => LocalDelivery::Lmtp(LmtpTarget::Unix(path.into())),
            _ if valid_host_port(&lmtp.lmtp) => {
                LocalDelivery::Lmtp(LmtpTarget::Tcp(lmtp.lmtp.clone()))
            }
            _ => {
                d.add(
                    span,
                    "delivery.local.lmtp",
                    format!(
                        "invalid LMTP address {:?} (expected HOST:PORT or unix:/path)",
                        lmtp.lmtp
                    ),
                );
                LocalDelivery::Maildir
            }
        },
    };
    let messages_per_second_per_domain = match &delivery.messages_per_second_per_domain {
        Some(rate) if !(rate.get_ref().is_finite() && *rate.get_ref() > 0.0) => {
            d.add(
                rate.span(),
                "delivery.messages_per_second_per_domain",
                "must be a number greater than 0",
            );
            None
        }
        rate => rate.as_ref().map(|r| *r.get_ref()),
    };
    let mut routes = Vec::new();
    for (i, route) in delivery.route.iter().enumerate() {
        let domain = route.domain.get_ref().to_ascii_lowercase();
        if domain != "*" && !valid_domain(&domain) {
            d.add(
                route.domain.span(),
                format!("delivery.route[{i}].domain"),
                format!("invalid domain {domain:?}"),
            );
        }
        let hop = route.next_hop.get_ref();
        if !valid_host_port(hop) {
            d.add(
                route.next_hop.span(),
                format!("delivery.route[{i}].next_hop"),
                format!("invalid next hop {hop:?} (expected HOST:PORT)"),
            );
        }
        let auth_file = route.auth_file.as_ref().map(|file| Located {
            value: PathBuf::from(file.get_ref()),
            origin: d.origin(file.span(), format!("delivery.route[{i}].auth_file")),
        });
        let mut tls = route.tls.as_ref().map(|t| *t.get_ref());
        if auth_file.is_some() {
            match &route.tls {
                // Credentials never travel in clear text or to a host
                // whose certificate was not verified.
                Some(t) if *t.get_ref() != OutboundTls::Required => d.add(
                    t.span(),
                    format!("delivery.route[{i}].tls"),
                    "a route with auth_file sends its credentials only over verified TLS: \
                     tls must be \"required\" (or left out)",
                ),
                _ => tls = Some(OutboundTls::Required),
            }
        }
        routes.push(Route {
            domain,
            next_hop: hop.clone(),
            tls,
            auth_file,
        });
    }

    let ignore_target_hosts = match &delivery.ignore_target_hosts {
        None => DEFAULT_IGNORE_TARGET_HOSTS
            .iter()
            .map(|net| net.parse().expect("literal network"))
            .collect(),
        Some(list) => networks(d, list, "delivery.ignore_target_hosts"),
    };

    DeliveryConfig {
        local: local_delivery,
        routes,
        max_connections_per_domain: delivery.max_connections_per_domain.unwrap_or(10).max(1),
        messages_per_second_per_domain,
        smtp_port: delivery.smtp_port.unwrap_or(25),
        tls: delivery
            .tls
            .as_ref()
            .map_or(OutboundTls::Auto, |t| *t.get_ref()),
        ca_file: delivery.ca_file.as_ref().map(PathBuf::from),
        mta_sts: delivery.mta_sts.unwrap_or(true),
        max_concurrent_deliveries: at_least_one(
            d,
            &delivery.max_concurrent_deliveries,
            "delivery.max_concurrent_deliveries",
            100,
        ),
        max_mx_hosts: at_least_one(d, &delivery.max_mx_hosts, "delivery.max_mx_hosts", 5),
        max_addresses: at_least_one(d, &delivery.max_addresses, "delivery.max_addresses", 10),
        ignore_target_hosts,
        timeouts: resolve_delivery_timeouts(d, delivery.timeouts.as_ref()),
        maildir: resolve_maildir(d, delivery.maildir.as_ref()),
    }
}

/// `[delivery.maildir]`; `catch_all` must be a local part that can name a
/// mailbox directory.
fn resolve_maildir(d: &mut Diagnostics<'_>, raw: Option<&RawMaildir>) -> MaildirConfig {
    let Some(raw) = raw else {
        return MaildirConfig::default();
    };
    let catch_all = raw.catch_all.as_ref().and_then(|name| {
        let text = name.get_ref();
        let valid = !text.is_empty()
            && !text.starts_with('.')
            && !text.contains(['/', '\\', '\0', '@'])
            && !text.chars().any(char::is_control);
        if !valid {
            d.add(
                name.span(),
                "delivery.maildir.catch_all",
                format!("not a mailbox name (a local part without @): {text:?}"),
            );
        }
        valid.then(|| text.to_lowercase())
    });
    MaildirConfig {
        catch_all,
        create_mailboxes: raw.create_mailboxes.unwrap_or(false),
    }
}

/// Where MX-derived targets never go (as Exim's `ignore_target_hosts`): a
/// DNS answer must not aim delivery at this host's own services or at
/// addresses that are no host's. IPv4-mapped forms are listed too.
const DEFAULT_IGNORE_TARGET_HOSTS: &[&str] = &[
    "127.0.0.0/8",
    "::1/128",
    "0.0.0.0/8",
    "::/128",
    "169.254.0.0/16",
    "fe80::/10",
    "::ffff:127.0.0.0/104",
    "::ffff:0.0.0.0/104",
    "::ffff:169.254.0.0/112",
];

fn at_least_one(
    d: &mut Diagnostics<'_>,
    value: &Option<Spanned<usize>>,
    key: &str,
    default: usize,
) -> usize {
    match value {
        None => default,
        Some(n) if *n.get_ref() == 0 => {
            d.add(n.span(), key, "must be at least 1");
            default
        }
        Some(n) => *n.get_ref(),
    }
}

fn resolve_delivery_timeouts(
    d: &mut Diagnostics<'_>,
    raw: Option<&RawDeliveryTimeouts>,
) -> DeliveryTimeouts {
    let default = RawDeliveryTimeouts::default();
    let raw = raw.unwrap_or(&default);
    let defaults = DeliveryTimeouts::default();
    // A zero deadline would fail every delivery; it is refused, not obeyed.
    let mut timeout = |value: &Option<Spanned<String>>, name: &str, default: Duration| {
        let key = format!("delivery.timeouts.{name}");
        let duration = d.duration(value, &key, default);
        match value {
            Some(v) if duration.is_zero() => {
                d.add(v.span(), key, "must be greater than 0");
                default
            }
            _ => duration,
        }
    };
    DeliveryTimeouts {
        connect: timeout(&raw.connect, "connect", defaults.connect),
        greeting: timeout(&raw.greeting, "greeting", defaults.greeting),
        command: timeout(&raw.command, "command", defaults.command),
        data_init: timeout(&raw.data_init, "data_init", defaults.data_init),
        data_block: timeout(&raw.data_block, "data_block", defaults.data_block),
        data_end: timeout(&raw.data_end, "data_end", defaults.data_end),
        attempt: timeout(&raw.attempt, "attempt", defaults.attempt),
    }
}

pub(super) fn resolve_queue(d: &mut Diagnostics<'_>, raw: Option<&RawQueue>) -> QueueConfig {
    let default = RawQueue::default();
    let queue = raw.unwrap_or(&default);
    let default_retry: Vec<Duration> = [120, 300, 600, 900, 1800, 3600, 7200]
        .into_iter()
        .map(Duration::from_secs)
        .collect();
    let retry = match &queue.retry {
        None => default_retry,
        Some(list) if list.get_ref().is_empty() => {
            d.add(
                list.span(),
                "queue.retry",
                "must list at least one interval",
            );
            default_retry
        }
        Some(list) => {
            let mut out = Vec::new();
            for item in list.get_ref() {
                match humantime::parse_duration(item) {
                    Ok(v) => out.push(v),
                    Err(e) => d.add(
                        list.span(),
                        "queue.retry",
                        format!("invalid duration {item:?}: {e}"),
                    ),
                }
            }
            out
        }
    };
    let max_age = d.duration(
        &queue.max_age,
        "queue.max_age",
        Duration::from_secs(5 * 86400),
    );
    // "0s" turns the delayed-delivery warning off.
    let warn_after = Some(d.duration(
        &queue.warn_after,
        "queue.warn_after",
        Duration::from_secs(4 * 3600),
    ))
    .filter(|d| !d.is_zero());
    // "0s" keeps quarantined mail until the operator releases or deletes it.
    let quarantine_retention = Some(d.duration(
        &queue.quarantine_retention,
        "queue.quarantine_retention",
        Duration::from_secs(30 * 86400),
    ))
    .filter(|d| !d.is_zero());

    const DEFAULT_MIN_FREE_SPACE: u64 = 256 << 20;
    // Maildir delivery takes an inode per message; a full inode table
    // fails writes as surely as a full disk.
    const DEFAULT_MIN_FREE_INODES: u64 = 4096;
    let min_free_space = match &queue.min_free_space {
        None => DEFAULT_MIN_FREE_SPACE,
        Some(size) => match size.get_ref().bytes() {
            Ok(n) => n,
            Err(e) => {
                d.add(size.span(), "queue.min_free_space", e);
                DEFAULT_MIN_FREE_SPACE
            }
        },
    };

    QueueConfig {
        retry,
        max_age,
        warn_after,
        quarantine_retention,
        min_free_space,
        min_free_inodes: queue.min_free_inodes.unwrap_or(DEFAULT_MIN_FREE_INODES),
    }
}

pub(super) fn resolve_dns(d: &mut Diagnostics<'_>, raw: Option<&RawDns>) -> DnsConfig {
    let default = RawDns::default();
    let dns = raw.unwrap_or(&default);
    let mut nameservers = Vec::new();
    for server in &dns.nameservers {
        let text = server.get_ref();
        // A bare IP means port 53.
        let parsed = text.parse::<SocketAddr>().ok().or_else(|| {
            text.parse::<std::net::IpAddr>()
                .ok()
                .map(|ip| SocketAddr::new(ip, 53))
        });
        match parsed {
            Some(address) => nameservers.push(address),
            None => d.add(
                server.span(),
                "dns.nameservers",
                format!("invalid name server {text:?} (expected IP or IP:PORT)"),
            ),
        }
    }
    DnsConfig {
        nameservers,
        timeout: d.duration(&dns.timeout, "dns.timeout", Duration::from_secs(5)),
        attempts: dns.attempts.unwrap_or(2).max(1),
        dnssec: DaneConfig {
            trust_anchor: dns.trust_anchor.as_ref().and_then(|anchor| {
                match anchor.get_ref().as_str() {
                    "" => {
                        d.add(
                            anchor.span(),
                            "dns.trust_anchor",
                            "expected \"root\" or the path of a file of DNSKEY records",
                        );
                        None
                    }
                    "root" => Some(TrustAnchor::Root),
                    path => Some(TrustAnchor::File(PathBuf::from(path))),
                }
            }),
            trust_ad: dns.trust_ad.unwrap_or(false),
        },
    }
}
