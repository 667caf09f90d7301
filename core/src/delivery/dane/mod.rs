//! DANE for SMTP (RFC 7672): a domain whose MX records are signed with
//! DNSSEC can publish, per MX host, TLSA records naming the host's
//! certificate or its CA. Where the MX RRset, the host's addresses and its
//! TLSA RRset are all secure and a TLSA record is usable, the host gets
//! TLS or nothing, and only a certificate that matches a record.
//!
//! - `lookup`: DNS answers with their DNSSEC security
//! - `tlsa`: which records are usable, and matching them
//! - `verifier`: the rustls certificate check built from a host's records

mod lookup;
mod tlsa;
mod verifier;

use std::net::IpAddr;
use std::sync::Arc;

pub use lookup::{SecureLookupError, SecureResolver};
pub use tlsa::Tlsa;
pub use verifier::DaneVerifier;

use crate::config::DnsConfig;
use crate::dns::ResolverSetupError;

/// What DANE says about one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostDane {
    /// Its addresses, from the secure lookup when there was one.
    pub addresses: Vec<IpAddr>,
    /// Usable TLSA records from a secure lookup: DANE applies. None: it
    /// does not (no records, none usable, or not all of it secure).
    pub tlsa: Option<Arc<[Tlsa]>>,
    /// Why DANE does not apply, for the log.
    pub without: Option<String>,
}

/// Why a host cannot be used at all under DANE: its answers were bogus
/// or could not be had (RFC 7672 §2.1.1: never treated as "no DANE").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct HostUnusable(pub SecureLookupError);

pub struct Dane {
    pub resolver: SecureResolver,
}

impl std::fmt::Debug for Dane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dane").finish_non_exhaustive()
    }
}

impl Dane {
    /// The validating lookups `dns.dnssec` configures.
    pub fn new(dns: &DnsConfig) -> Result<Dane, ResolverSetupError> {
        Ok(Dane {
            resolver: SecureResolver::new(dns)?,
        })
    }

    /// The addresses and usable TLSA records of `host` on `port`; only
    /// for hosts found through a secure MX answer (or named by a route).
    pub async fn host(&self, host: &str, port: u16) -> Result<HostDane, HostUnusable> {
        let addresses = match self.resolver.ips(host).await {
            Ok(answer) => answer,
            Err(e @ SecureLookupError::NoRecords { .. }) => {
                return Ok(HostDane {
                    addresses: Vec::new(),
                    tlsa: None,
                    without: Some(e.to_string()),
                })
            }
            Err(e) => return Err(HostUnusable(e)),
        };
        if !addresses.secure {
            return Ok(HostDane {
                addresses: addresses.records,
                tlsa: None,
                without: Some(format!("the addresses of {host} are not DNSSEC-signed")),
            });
        }
        let (tlsa, without) = match self.resolver.tlsa(host, port).await {
            Ok(answer) if !answer.secure => (
                None,
                Some(format!("the TLSA records of {host} are not DNSSEC-signed")),
            ),
            Ok(answer) => {
                let usable: Vec<Tlsa> =
                    answer.records.into_iter().filter(Tlsa::is_usable).collect();
                if usable.is_empty() {
                    (None, Some(format!("no usable TLSA record for {host}")))
                } else {
                    (Some(Arc::from(usable)), None)
                }
            }
            Err(SecureLookupError::NoRecords { .. }) => {
                (None, Some(format!("no TLSA records for {host}")))
            }
            Err(e) => return Err(HostUnusable(e)),
        };
        Ok(HostDane {
            addresses: addresses.records,
            tlsa,
            without,
        })
    }
}
