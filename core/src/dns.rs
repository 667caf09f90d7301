//! The server's one DNS resolver (hickory, with its cache), shared by
//! delivery (MX routing), the host's `dns` interface for plugins, and
//! SPF/DKIM/DMARC checks. `[dns] nameservers` replaces the system's
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
use hickory_resolver::{NameServerPool, PoolContext, TlsConfig, TokioResolver};

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
pub struct ResolverSetupError(String);

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
        let pool_options = options.clone();
        let resolver = builder
            .build()
            .map_err(|e| ResolverSetupError(e.to_string()))?;
        let loopback_ptr = if config.nameservers.is_empty() {
            None
        } else {
            let tls = TlsConfig::new().map_err(|e| ResolverSetupError(e.to_string()))?;
            Some(Arc::new(NameServerPool::from_config(
                config.nameservers.iter().map(|s| name_server(*s)),
                Arc::new(PoolContext::new(pool_options, tls)),
                TokioRuntimeProvider::default(),
            )))
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
}

fn name_server(address: SocketAddr) -> NameServerConfig {
    let mut udp = ConnectionConfig::udp();
    udp.port = address.port();
    let mut tcp = ConnectionConfig::tcp();
    tcp.port = address.port();
    NameServerConfig::new(address.ip(), true, vec![udp, tcp])
}

/// `name` as an absolute DNS name.
fn fqdn(name: &str) -> Result<Name, LookupError> {
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
fn host_name(name: &Name) -> String {
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
}
