//! Lookups whose answers say whether DNSSEC vouches for them: hickory
//! validating against the configured trust anchor, or (`trust_ad`) a
//! local validating resolver's AD bit. DANE uses only what is secure; a
//! bogus answer is a failure, never "no records" (RFC 7672 §2.1.1), so an
//! attacker who breaks signatures cannot turn DANE off.

use std::net::IpAddr;
use std::sync::Arc;

use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::xfer::{DnsHandle, FirstAnswer};
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::dnssec::{Proof, TrustAnchors};
use hickory_resolver::proto::op::{DnsRequestOptions, Query};
use hickory_resolver::proto::rr::{RData, Record, RecordType};
use hickory_resolver::{NameServerPool, TokioResolver};

use super::tlsa::Tlsa;
use crate::config::{DnsConfig, TrustAnchor};
use crate::dns::{
    fqdn, host_name, name_server_pool, resolver_builder, MxRecord, ResolverSetupError,
};

/// Records of one lookup and whether DNSSEC vouches for all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer<T> {
    pub records: Vec<T>,
    pub secure: bool,
}

/// Why a validated lookup gave no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecureLookupError {
    /// The name or the records do not exist (NXDOMAIN or NODATA);
    /// `secure` when DNSSEC proves it.
    #[error("{name}: no records")]
    NoRecords { name: String, secure: bool },
    /// Signatures that should validate do not (RFC 4035 §4.3 "bogus").
    #[error("{0}: DNSSEC validation failed (bogus)")]
    Bogus(String),
    /// No answer could be had: try later.
    #[error("{name}: DNS lookup failed: {reason}")]
    Temporary { name: String, reason: String },
}

/// Where the security of an answer comes from.
enum Validator {
    /// hickory checks every signature up to the trust anchor.
    Hickory(Box<TokioResolver>),
    /// The configured resolver validates; its AD bit is believed.
    AuthenticData(Arc<NameServerPool<TokioRuntimeProvider>>),
}

pub struct SecureResolver {
    validator: Validator,
}

impl SecureResolver {
    pub fn new(dns: &DnsConfig) -> Result<SecureResolver, ResolverSetupError> {
        let validator = match &dns.dnssec.trust_anchor {
            Some(anchor) => {
                let anchors = match anchor {
                    TrustAnchor::Root => TrustAnchors::default(),
                    TrustAnchor::File(path) => TrustAnchors::from_file(path).map_err(|e| {
                        ResolverSetupError(format!("dns.trust_anchor {}: {e}", path.display()))
                    })?,
                };
                let resolver = resolver_builder(dns)?
                    .with_trust_anchor(Arc::new(anchors))
                    .build()
                    .map_err(|e| ResolverSetupError(e.to_string()))?;
                Validator::Hickory(Box::new(resolver))
            }
            None => Validator::AuthenticData(name_server_pool(dns)?),
        };
        Ok(SecureResolver { validator })
    }

    async fn lookup(
        &self,
        name: &str,
        kind: RecordType,
    ) -> Result<Answer<RData>, SecureLookupError> {
        let query_name = fqdn(name).map_err(|e| SecureLookupError::Temporary {
            name: name.to_owned(),
            reason: e.to_string(),
        })?;
        let failure = |e: NetError| classify(name, e);
        let (records, authentic) = match &self.validator {
            Validator::Hickory(resolver) => {
                let lookup = resolver.lookup(query_name, kind).await.map_err(failure)?;
                (lookup.answers().to_vec(), None)
            }
            Validator::AuthenticData(pool) => {
                // DO set: a validating resolver then reports AD.
                let mut options = DnsRequestOptions::default();
                options.use_edns = true;
                options.edns_set_dnssec_ok = true;
                let response = pool
                    .lookup(Query::query(query_name, kind), options)
                    .first_answer()
                    .await
                    .map_err(failure)?;
                let authentic = response.metadata.authentic_data;
                let response = DnsError::from_response(response).map_err(|e| {
                    match failure(NetError::from(e)) {
                        SecureLookupError::NoRecords { name, .. } => SecureLookupError::NoRecords {
                            name,
                            secure: authentic,
                        },
                        other => other,
                    }
                })?;
                (response.answers.clone(), Some(authentic))
            }
        };
        let wanted: Vec<&Record> = records
            .iter()
            .filter(|r| !matches!(r.record_type(), RecordType::RRSIG))
            .collect();
        if wanted.iter().any(|r| r.proof == Proof::Bogus) {
            return Err(SecureLookupError::Bogus(name.to_owned()));
        }
        let secure = match authentic {
            Some(ad) => ad,
            None => wanted.iter().all(|r| r.proof == Proof::Secure),
        };
        let records: Vec<RData> = wanted
            .into_iter()
            .filter(|r| r.record_type() == kind)
            .map(|r| r.data.clone())
            .collect();
        if records.is_empty() {
            return Err(SecureLookupError::NoRecords {
                name: name.to_owned(),
                secure: false,
            });
        }
        Ok(Answer { records, secure })
    }

    /// The MX records of `domain`.
    pub async fn mx(&self, domain: &str) -> Result<Answer<MxRecord>, SecureLookupError> {
        let answer = self.lookup(domain, RecordType::MX).await?;
        Ok(map(answer, |data| match data {
            RData::MX(mx) => Some(MxRecord {
                preference: mx.preference,
                exchange: host_name(&mx.exchange),
            }),
            _ => None,
        }))
    }

    /// IPv4 then IPv6 addresses of `host`, secure only if both are (a
    /// missing AAAA set counts as neither).
    pub async fn ips(&self, host: &str) -> Result<Answer<IpAddr>, SecureLookupError> {
        let v4 = self.lookup(host, RecordType::A).await;
        let v6 = self.lookup(host, RecordType::AAAA).await;
        let mut answer = Answer {
            records: Vec::new(),
            secure: true,
        };
        let mut missing = 0;
        for part in [v4, v6] {
            match part {
                Ok(part) => {
                    answer.secure &= part.secure;
                    answer
                        .records
                        .extend(part.records.into_iter().filter_map(|data| match data {
                            RData::A(a) => Some(IpAddr::V4(a.0)),
                            RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
                            _ => None,
                        }));
                }
                Err(SecureLookupError::NoRecords { .. }) => missing += 1,
                Err(e) => return Err(e),
            }
        }
        if missing == 2 {
            return Err(SecureLookupError::NoRecords {
                name: host.to_owned(),
                secure: false,
            });
        }
        Ok(answer)
    }

    /// The TLSA records of `_<port>._tcp.<host>` (RFC 7672 §2.2).
    pub async fn tlsa(&self, host: &str, port: u16) -> Result<Answer<Tlsa>, SecureLookupError> {
        let answer = self
            .lookup(&format!("_{port}._tcp.{host}"), RecordType::TLSA)
            .await?;
        Ok(map(answer, |data| match data {
            RData::TLSA(tlsa) => Some(Tlsa {
                usage: u8::from(tlsa.cert_usage),
                selector: u8::from(tlsa.selector),
                matching: u8::from(tlsa.matching),
                data: tlsa.cert_data,
            }),
            _ => None,
        }))
    }
}

fn map<T>(answer: Answer<RData>, f: impl Fn(RData) -> Option<T>) -> Answer<T> {
    Answer {
        records: answer.records.into_iter().filter_map(f).collect(),
        secure: answer.secure,
    }
}

fn classify(name: &str, error: NetError) -> SecureLookupError {
    match error {
        NetError::Dns(DnsError::DnssecBogus) => SecureLookupError::Bogus(name.to_owned()),
        NetError::Dns(DnsError::Nsec {
            proof: Proof::Bogus,
            ..
        }) => SecureLookupError::Bogus(name.to_owned()),
        NetError::Dns(DnsError::NoRecordsFound(denial)) => SecureLookupError::NoRecords {
            name: name.to_owned(),
            // Validated NSEC/NSEC3 and SOA records prove the denial.
            secure: denial.authorities.as_ref().is_some_and(|records| {
                let proofs: Vec<Proof> = records
                    .iter()
                    .filter(|r| r.record_type() != RecordType::RRSIG)
                    .map(|r| r.proof)
                    .collect();
                !proofs.is_empty() && proofs.iter().all(|p| *p == Proof::Secure)
            }),
        },
        e => SecureLookupError::Temporary {
            name: name.to_owned(),
            reason: e.to_string(),
        },
    }
}
