//! The certificate check of a DANE host (RFC 7672 §3.1): the server's
//! chain must match one of the host's usable TLSA records.
//!
//! - DANE-EE(3): the server's own certificate (or key) is the one
//!   published; its names and dates do not matter (§3.1.1), the DNSSEC
//!   signature on the record is what vouches for it.
//! - DANE-TA(2): a certificate of the presented chain is the published
//!   trust anchor; the server's certificate must chain to it, be current
//!   and be valid for the host's name (§3.1.2, §3.2.2).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::super::transport::AnyCertificate;
use super::tlsa::{Tlsa, DANE_EE, DANE_TA};

#[derive(Debug)]
pub struct DaneVerifier {
    /// Usable records only.
    records: Arc<[Tlsa]>,
    /// What a DANE-TA chain must be valid for: the MX host name.
    name: ServerName<'static>,
    provider: Arc<CryptoProvider>,
    signatures: AnyCertificate,
}

impl DaneVerifier {
    pub fn new(records: Arc<[Tlsa]>, name: ServerName<'static>) -> DaneVerifier {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        DaneVerifier {
            records,
            name,
            signatures: AnyCertificate(provider.clone()),
            provider,
        }
    }

    /// A client configuration that accepts only what the records allow.
    pub fn client_config(self) -> Result<Arc<ClientConfig>, rustls::Error> {
        let provider = self.provider.clone();
        let config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(self))
            .with_no_client_auth();
        Ok(Arc::new(config))
    }

    fn trust_anchor_chain_verifies(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> bool {
        for record in self.records.iter().filter(|r| r.usage == DANE_TA) {
            // A full certificate published as is may be left out of the
            // chain; anything else must be found in it (RFC 7671 §5.2.2).
            let published = (record.selector == 0 && record.matching == 0)
                .then(|| CertificateDer::from(record.data.clone()));
            let anchors = intermediates
                .iter()
                .filter(|cert| record.matches(cert))
                .map(|cert| cert.clone().into_owned())
                .chain(published);
            for anchor in anchors {
                let mut roots = RootCertStore::empty();
                if roots.add(anchor).is_err() {
                    continue;
                }
                let verifier = match WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    self.provider.clone(),
                )
                .build()
                {
                    Ok(verifier) => verifier,
                    Err(_) => continue,
                };
                if verifier
                    .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
                    .is_ok()
                {
                    return true;
                }
            }
        }
        false
    }
}

impl ServerCertVerifier for DaneVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let own_key = self
            .records
            .iter()
            .any(|r| r.usage == DANE_EE && r.matches(end_entity));
        if own_key
            || self.trust_anchor_chain_verifies(end_entity, intermediates, ocsp_response, now)
        {
            return Ok(ServerCertVerified::assertion());
        }
        Err(rustls::Error::General(format!(
            "no TLSA record matches the certificate chain (records: {})",
            self.records
                .iter()
                .map(|r| format!("{} {} {}", r.usage, r.selector, r.matching))
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }

    // The handshake's signatures are checked as for any TLS session.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::digest;

    fn sha256(bytes: &[u8]) -> Vec<u8> {
        digest::digest(&digest::SHA256, bytes).as_ref().to_vec()
    }

    struct Chain {
        ca: CertificateDer<'static>,
        leaf: CertificateDer<'static>,
    }

    /// A CA and a server certificate it issued for `name`.
    fn chain(name: &str) -> Chain {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "DANE test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf_params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key).unwrap();
        Chain {
            ca: ca.der().clone(),
            leaf: leaf.der().clone(),
        }
    }

    fn verifier(records: Vec<Tlsa>, name: &str) -> DaneVerifier {
        DaneVerifier::new(
            records.into(),
            ServerName::try_from(name.to_owned()).unwrap(),
        )
    }

    fn record(usage: u8, cert: &CertificateDer<'_>) -> Tlsa {
        Tlsa {
            usage,
            selector: 1,
            matching: 1,
            data: sha256(&super::super::tlsa::subject_public_key_info(cert).unwrap()),
        }
    }

    fn check(v: &DaneVerifier, chain: &Chain, now: UnixTime) -> bool {
        let name = ServerName::try_from("ignored.test").unwrap();
        v.verify_server_cert(
            &chain.leaf,
            std::slice::from_ref(&chain.ca),
            &name,
            &[],
            now,
        )
        .is_ok()
    }

    #[test]
    fn dane_ee_matches_the_key_whatever_the_name_and_date() {
        let chain = chain("some.other.name");
        let v = verifier(vec![record(DANE_EE, &chain.leaf)], "mx.example.test");
        assert!(check(&v, &chain, UnixTime::now()));
        // Far past the certificate's validity: still the published key.
        let later = UnixTime::since_unix_epoch(std::time::Duration::from_secs(40_000_000_000));
        assert!(check(&v, &chain, later));
        // The CA's key as DANE-EE is not the server's.
        let v = verifier(vec![record(DANE_EE, &chain.ca)], "mx.example.test");
        assert!(!check(&v, &chain, UnixTime::now()));
    }

    #[test]
    fn dane_ta_needs_the_chain_and_the_mx_name() {
        let chain = chain("mx.example.test");
        let ta = vec![record(DANE_TA, &chain.ca)];
        assert!(check(
            &verifier(ta.clone(), "mx.example.test"),
            &chain,
            UnixTime::now()
        ));
        assert!(!check(
            &verifier(ta, "mx.elsewhere.test"),
            &chain,
            UnixTime::now()
        ));
        // The leaf's key as DANE-TA anchors nothing.
        let v = verifier(vec![record(DANE_TA, &chain.leaf)], "mx.example.test");
        assert!(!check(&v, &chain, UnixTime::now()));
        // Another CA's key does not verify this chain.
        let other = self::chain("mx.example.test");
        let v = verifier(vec![record(DANE_TA, &other.ca)], "mx.example.test");
        assert!(!check(&v, &chain, UnixTime::now()));
    }

    #[test]
    fn a_ta_published_in_full_need_not_be_in_the_chain() {
        let chain = chain("mx.example.test");
        let full = Tlsa {
            usage: DANE_TA,
            selector: 0,
            matching: 0,
            data: chain.ca.as_ref().to_vec(),
        };
        let v = verifier(vec![full], "mx.example.test");
        let name = ServerName::try_from("mx.example.test").unwrap();
        assert!(v
            .verify_server_cert(&chain.leaf, &[], &name, &[], UnixTime::now())
            .is_ok());
    }
}
