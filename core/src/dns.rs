//! The server's one DNS resolver (hickory, with its cache), shared by
//! delivery (MX routing), the host's `dns` interface for plugins,
//! SPF/DKIM/DMARC checks, and sessions (the client's forward-confirmed
//! reverse name, for the Received field and `session.reverse-name`). `[dns] nameservers` replaces the system's
//! resolv.conf, which is how tests point sluice at a local DNS server.
//!
//! Lookups tell three outcomes apart, because mail routing and
//! authentication treat them differently: the name does not exist
//! (NXDOMAIN), it exists without records of the asked type (an empty list),
//! and the answer could not be had (temporary: retry later, never treat it
//! as a pass or a fail).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::lookup::Lookup;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::xfer::{DnsHandle, FirstAnswer};
use hickory_resolver::net::NetError;
use hickory_resolver::proto::op::{DnsRequestOptions, Query};
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use hickory_resolver::{NameServerPool, PoolContext, ResolverBuilder, TlsConfig, TokioResolver};

use crate::config::DnsConfig;

/// Why a lookup gave no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// NXDOMAIN: the name does not exist.
    #[error("{0}: no such domain")]
    NxDomain(String),
    /// No answer could be had (timeout, SERVFAIL, network): try later.
    #[error("{name}: temporary DNS failure: {reason}")]
    Temporary { name: String, reason: String },
    /// The name is not a valid domain name.
    #[error("{0:?} is not a valid domain name")]
    InvalidName(String),
}

impl LookupError {
    pub fn is_temporary(&self) -> bool {
        matches!(self, LookupError::Temporary { .. })
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot set up the DNS resolver: {0}")]
pub struct ResolverSetupError(pub(crate) String);

/// One MX record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxRecord {
    pub preference: u16,
    /// Lower-case, without the trailing dot; "" for a null MX (RFC 7505).
    pub exchange: String,
}

/// A cloneable handle on the shared resolver.
#[derive(Clone)]
pub struct Dns {
    resolver: TokioResolver,
    /// The configured name servers without the resolver's cache, for the
    /// reverse names of loopback addresses: the resolver answers those
    /// itself ("localhost", RFC 6761 §6.3), so with `[dns] nameservers`
    /// set they are asked of the servers, which lets a local test server
    /// give 127.0.0.x clients their own names.
    loopback_ptr: Option<Arc<NameServerPool<TokioRuntimeProvider>>>,
}

impl Dns {
    /// Builds the resolver: the configured name servers, or the system's.
    pub fn new(config: &DnsConfig) -> Result<Dns, ResolverSetupError> {
        let resolver = resolver_builder(config)?
            .build()
            .map_err(|e| ResolverSetupError(e.to_string()))?;
        let loopback_ptr = if config.nameservers.is_empty() {
            None
        } else {
            Some(name_server_pool(config)?)
        };
        Ok(Dns {
            resolver,
            loopback_ptr,
        })
    }

    /// The underlying resolver, for libraries that take one (mail-auth).
    pub fn resolver(&self) -> &TokioResolver {
        &self.resolver
    }

    /// MX records of `domain`, CNAMEs followed; an empty list when the
    /// domain exists without MX records.
    pub async fn mx(&self, domain: &str) -> Result<Vec<MxRecord>, LookupError> {
        let name = fqdn(domain)?;
        let lookup = self.resolver.mx_lookup(name).await;
        Ok(answers(domain, lookup)?
            .filter_map(|data| match data {
                RData::MX(mx) => Some(MxRecord {
                    preference: mx.preference,
                    exchange: host_name(&mx.exchange),
                }),
                _ => None,
            })
            .collect())
    }

    /// IPv4 then IPv6 addresses of `host`.
    pub async fn ips(&self, host: &str) -> Result<Vec<IpAddr>, LookupError> {
        let mut ips: Vec<IpAddr> = self.a(host).await?.into_iter().map(IpAddr::V4).collect();
        match self.aaaa(host).await {
            Ok(v6) => ips.extend(v6.into_iter().map(IpAddr::V6)),
            // An A answer is enough to deliver; a broken AAAA is not fatal.
            Err(e) if !ips.is_empty() => tracing::debug!("{e}"),
            Err(e) => return Err(e),
        }
        Ok(ips)
    }

    pub async fn a(&self, host: &str) -> Result<Vec<std::net::Ipv4Addr>, LookupError> {
        let lookup = self.resolver.ipv4_lookup(fqdn(host)?).await;
        Ok(answers(host, lookup)?
            .filter_map(|data| match data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect())
    }

    pub async fn aaaa(&self, host: &str) -> Result<Vec<std::net::Ipv6Addr>, LookupError> {
        let lookup = self.resolver.ipv6_lookup(fqdn(host)?).await;
        Ok(answers(host, lookup)?
            .filter_map(|data| match data {
                RData::AAAA(aaaa) => Some(aaaa.0),
                _ => None,
            })
            .collect())
    }

    /// TXT records of `name`, each one's strings joined (RFC 7208 §3.3).
    pub async fn txt(&self, name: &str) -> Result<Vec<String>, LookupError> {
        let lookup = self.resolver.txt_lookup(fqdn(name)?).await;
        Ok(answers(name, lookup)?
            .filter_map(|data| match data {
                RData::TXT(txt) => Some(
                    txt.txt_data
                        .iter()
                        .map(|part| String::from_utf8_lossy(part))
                        .collect::<String>(),
                ),
                _ => None,
            })
            .collect())
    }

    /// Host names of `ip`'s PTR records.
    pub async fn ptr(&self, ip: IpAddr) -> Result<Vec<String>, LookupError> {
        if let (true, Some(pool)) = (ip.is_loopback(), &self.loopback_ptr) {
            let query = Query::query(Name::from(ip), RecordType::PTR);
            let response = pool
                .lookup(query, DnsRequestOptions::default())
                .first_answer()
                .await;
            let records = match response {
                Ok(response) => Ok(response.answers.clone().into_iter()),
                Err(e) => answers(&ip.to_string(), Err(e)).map(|_| Vec::new().into_iter()),
            }?;
            return Ok(records
                .filter_map(|record| match record.data {
                    RData::PTR(ptr) => Some(host_name(&ptr.0)),
                    _ => None,
                })
                .collect());
        }
        let lookup = self.resolver.reverse_lookup(Name::from(ip)).await;
        Ok(answers(&ip.to_string(), lookup)?
            .filter_map(|data| match data {
                RData::PTR(ptr) => Some(host_name(&ptr.0)),
                _ => None,
            })
            .collect())
    }

    /// The client's reverse name, forward-confirmed (FCrDNS, Postfix's
    /// `client_name` rather than `reverse_client_name`): a PTR name of `ip`
    /// counts only if one of its A (IPv4) or AAAA (IPv6) records is `ip`.
    /// At most [`MAX_PTR_NAMES`] names are tried, the whole lookup takes at
    /// most `timeout`, and any failure is None: the name is information for
    /// the Received field and plugins, never a reason to refuse a client.
    pub async fn confirmed_reverse_name(
        &self,
        ip: IpAddr,
        timeout: std::time::Duration,
    ) -> Option<String> {
        // A v4 client on a dual-stack socket arrives as ::ffff:a.b.c.d; its
        // PTR lives under in-addr.arpa and its name has A records.
        let ip = ip.to_canonical();
        match tokio::time::timeout(timeout, self.forward_confirm(ip)).await {
            Ok(Ok(name)) => Some(name),
            Ok(Err(why)) => {
                tracing::debug!(client = %ip, "no reverse name: {why}");
                None
            }
            Err(_elapsed) => {
                tracing::debug!(
                    client = %ip,
                    timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                    "no reverse name: the lookup timed out"
                );
                None
            }
        }
    }

    async fn forward_confirm(&self, ip: IpAddr) -> Result<String, Unconfirmed> {
        let names = match self.ptr(ip).await {
            Ok(names) if names.is_empty() => return Err(Unconfirmed::NoPtr),
            Ok(names) => names,
            Err(LookupError::NxDomain(_)) => return Err(Unconfirmed::NoPtr),
            Err(e) => return Err(Unconfirmed::Ptr(e)),
        };
        let mut tried = Vec::new();
        for name in names
            .into_iter()
            .filter(|n| !n.is_empty())
            .take(MAX_PTR_NAMES)
        {
            let addresses = match ip {
                IpAddr::V4(_) => self
                    .a(&name)
                    .await
                    .map(|a| a.into_iter().map(IpAddr::V4).collect::<Vec<_>>()),
                IpAddr::V6(_) => self
                    .aaaa(&name)
                    .await
                    .map(|a| a.into_iter().map(IpAddr::V6).collect::<Vec<_>>()),
            };
            match addresses {
                Ok(addresses) if addresses.contains(&ip) => return Ok(name),
                Ok(_) => {}
                Err(e) => tracing::debug!(client = %ip, "forward lookup of a PTR name: {e}"),
            }
            tried.push(name);
        }
        Err(Unconfirmed::NotConfirmed(tried))
    }
}

/// PTR names of a client tried for forward confirmation; more are ignored
/// (a host with dozens of PTR records must not cost dozens of lookups).
pub const MAX_PTR_NAMES: usize = 3;

/// How long a session waits for its client's reverse name
/// ([`Dns::confirmed_reverse_name`]) before going on without it.
pub const REVERSE_LOOKUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Why a client has no confirmed reverse name (logged at debug).
#[derive(Debug, thiserror::Error)]
enum Unconfirmed {
    #[error("{0}")]
    Ptr(LookupError),
    #[error("no PTR record")]
    NoPtr,
    #[error("no A/AAAA record of {0:?} is the client's address")]
    NotConfirmed(Vec<String>),
}

/// A resolver builder for `config`: its name servers (or the system's),
/// timeout and attempts, names never tried with the search list.
pub(crate) fn resolver_builder(
    config: &DnsConfig,
) -> Result<ResolverBuilder<TokioRuntimeProvider>, ResolverSetupError> {
    let mut builder = if config.nameservers.is_empty() {
        TokioResolver::builder_tokio().map_err(|e| ResolverSetupError(e.to_string()))?
    } else {
        let servers = config.nameservers.iter().map(|s| name_server(*s)).collect();
        TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        )
    };
    let options: &mut ResolverOpts = builder.options_mut();
    options.timeout = config.timeout;
    options.attempts = config.attempts;
    // Mail names are absolute: never try them with the search list.
    options.ndots = 0;
    Ok(builder)
}

/// The configured name servers (or the system's) without a cache: for
/// queries whose answer's header matters, not only its records.
pub(crate) fn name_server_pool(
    config: &DnsConfig,
) -> Result<Arc<NameServerPool<TokioRuntimeProvider>>, ResolverSetupError> {
    let (servers, mut options) = if config.nameservers.is_empty() {
        let (system, options) = hickory_resolver::system_conf::read_system_conf()
            .map_err(|e| ResolverSetupError(e.to_string()))?;
        (system.name_servers, options)
    } else {
        let servers = config.nameservers.iter().map(|s| name_server(*s));
        (servers.collect(), ResolverOpts::default())
    };
    options.timeout = config.timeout;
    options.attempts = config.attempts;
    options.ndots = 0;
    let tls = TlsConfig::new().map_err(|e| ResolverSetupError(e.to_string()))?;
    Ok(Arc::new(NameServerPool::from_config(
        servers,
        Arc::new(PoolContext::new(options, tls)),
        TokioRuntimeProvider::default(),
    )))
}

fn name_server(address: SocketAddr) -> NameServerConfig {
    let mut udp = ConnectionConfig::udp();
    udp.port = address.port();
    let mut tcp = ConnectionConfig::tcp();
    tcp.port = address.port();
    NameServerConfig::new(address.ip(), true, vec![udp, tcp])
}

/// `name` as an absolute DNS name.
pub(crate) fn fqdn(name: &str) -> Result<Name, LookupError> {
    let trimmed = name.trim_end_matches('.');
    if trimmed.is_empty() {
        return Err(LookupError::InvalidName(name.to_owned()));
    }
    let mut parsed =
        Name::from_utf8(trimmed).map_err(|_| LookupError::InvalidName(name.to_owned()))?;
    parsed.set_fqdn(true);
    Ok(parsed)
}

/// A name as mail code writes it: lower case, no trailing dot.
pub(crate) fn host_name(name: &Name) -> String {
    name.to_ascii().trim_end_matches('.').to_ascii_lowercase()
}

/// The answer records of a lookup; "no records" is an empty answer, and
/// every failure that is not NXDOMAIN is temporary.
fn answers(
    name: &str,
    lookup: Result<Lookup, NetError>,
) -> Result<impl Iterator<Item = RData>, LookupError> {
    match lookup {
        Ok(lookup) => Ok(lookup
            .answers()
            .iter()
            .map(|record| record.data.clone())
            .collect::<Vec<_>>()
            .into_iter()),
        Err(e) if e.is_nx_domain() => Err(LookupError::NxDomain(name.to_owned())),
        Err(e) if e.is_no_records_found() => Ok(Vec::new().into_iter()),
        Err(e) => Err(LookupError::Temporary {
            name: name.to_owned(),
            reason: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_made_absolute_and_checked() {
        assert!(fqdn("example.org").unwrap().is_fqdn());
        assert!(fqdn("example.org.").unwrap().is_fqdn());
        assert_eq!(fqdn(""), Err(LookupError::InvalidName(String::new())));
        assert_eq!(fqdn("."), Err(LookupError::InvalidName(".".into())));
    }

    #[test]
    fn host_names_lose_the_root_dot_and_case() {
        let name = Name::from_ascii("MX1.Example.ORG.").unwrap();
        assert_eq!(host_name(&name), "mx1.example.org");
        assert_eq!(host_name(&Name::root()), "");
    }

    #[test]
    fn name_servers_keep_their_port() {
        let server = name_server("127.0.0.1:5353".parse().unwrap());
        assert_eq!(server.connections.len(), 2);
        assert!(server.connections.iter().all(|c| c.port == 5353));
    }

    /// A resolver asking only `server`, one attempt of `timeout`.
    fn dns_at(server: SocketAddr, timeout: std::time::Duration) -> Dns {
        Dns::new(&DnsConfig {
            nameservers: vec![server],
            timeout,
            attempts: 1,
            dnssec: Default::default(),
        })
        .unwrap()
    }

    /// The fixture server of `sluice pipeline test --dns-fixture` on `zone`.
    async fn fixture_server(test: &str, zone: &str) -> crate::replay::fixture_dns::FixtureServer {
        let dir = std::env::temp_dir().join(format!("sluice-dns-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("zone.toml");
        std::fs::write(&file, zone).unwrap();
        let zone = crate::replay::fixture_dns::load(&file).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        crate::replay::fixture_dns::serve(zone).await.unwrap()
    }

    const REVERSE_ZONE: &str = r#"
["1.2.0.192.in-addr.arpa"]
PTR = ["Client.Example.TEST."]
["client.example.test"]
A = ["192.0.2.1"]
["2.2.0.192.in-addr.arpa"]
PTR = ["liar.example.test"]
["liar.example.test"]
A = ["192.0.2.99"]
["3.2.0.192.in-addr.arpa"]
PTR = ["gone.example.test", "one.example.test", "two.example.test", "three.example.test"]
["one.example.test"]
A = ["192.0.2.91"]
["two.example.test"]
A = ["192.0.2.92"]
["three.example.test"]
A = ["192.0.2.3"]
["4.2.0.192.in-addr.arpa"]
PTR = ["first.example.test", "second.example.test"]
["second.example.test"]
A = ["192.0.2.4"]
["5.0.0.127.in-addr.arpa"]
PTR = ["loop.example.test"]
["loop.example.test"]
A = ["127.0.0.5"]
["1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"]
PTR = ["six.example.test"]
["six.example.test"]
AAAA = ["2001:db8::1"]
A = ["192.0.2.1"]
"#;

    #[tokio::test]
    async fn reverse_names_count_only_when_forward_confirmed() {
        let server = fixture_server("reverse", REVERSE_ZONE).await;
        let dns = dns_at(server.address, std::time::Duration::from_secs(2));
        for (client, expected) in [
            // Confirmed: lower-cased, without the root dot.
            ("192.0.2.1", Some("client.example.test")),
            // The same client on a dual-stack socket.
            ("::ffff:192.0.2.1", Some("client.example.test")),
            // A PTR whose name does not resolve back.
            ("192.0.2.2", None),
            // No PTR at all.
            ("192.0.2.77", None),
            // The second name confirms, after one that does not exist.
            ("192.0.2.4", Some("second.example.test")),
            // Only the first three names are tried: the fourth would confirm.
            ("192.0.2.3", None),
            // IPv6 is confirmed by AAAA, not by the name's A record.
            ("2001:db8::1", Some("six.example.test")),
            // Loopback clients ask the configured server too.
            ("127.0.0.5", Some("loop.example.test")),
            ("127.0.0.6", None),
        ] {
            let name = dns
                .confirmed_reverse_name(client.parse().unwrap(), std::time::Duration::from_secs(2))
                .await;
            assert_eq!(name.as_deref(), expected, "{client}");
        }
    }

    #[tokio::test]
    async fn an_unresponsive_server_gives_no_name_within_the_bound() {
        // Takes queries and never answers; TCP on the same port neither.
        let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let address = silent.local_addr().unwrap();
        let _tcp = tokio::net::TcpListener::bind(address).await.ok();
        // Each attempt would wait 10 s: only the bound can end it sooner.
        let dns = dns_at(address, std::time::Duration::from_secs(10));
        let started = std::time::Instant::now();
        let name = dns
            .confirmed_reverse_name(
                "192.0.2.1".parse().unwrap(),
                std::time::Duration::from_millis(300),
            )
            .await;
        assert_eq!(name, None);
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }
}
