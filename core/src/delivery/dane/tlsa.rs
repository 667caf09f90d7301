//! TLSA records (RFC 6698, RFC 7671) as SMTP uses them (RFC 7672 §3.1):
//! which records are usable, and whether a certificate matches one.
//!
//! Only DANE-TA(2) and DANE-EE(3) are usable for SMTP; the PKIX usages
//! 0 and 1 name CAs an SMTP client has no reason to trust (§3.1.3), and
//! unknown selectors or matching types are ignored (RFC 6698 §4.1).

use ring::digest;
use rustls::pki_types::CertificateDer;

/// Certificate usage DANE-TA: the record names a trust anchor of the chain.
pub const DANE_TA: u8 = 2;
/// Certificate usage DANE-EE: the record names the server's own key.
pub const DANE_EE: u8 = 3;

/// One TLSA record's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tlsa {
    pub usage: u8,
    /// 0: the whole certificate; 1: its SubjectPublicKeyInfo.
    pub selector: u8,
    /// 0: the selected bytes themselves; 1: SHA-256 of them; 2: SHA-512.
    pub matching: u8,
    pub data: Vec<u8>,
}

impl Tlsa {
    /// Whether sluice can use the record for SMTP: a DANE usage, a known
    /// selector and matching type, and data of the right length for it.
    pub fn is_usable(&self) -> bool {
        let length_fits = match self.matching {
            0 => !self.data.is_empty(),
            1 => self.data.len() == digest::SHA256_OUTPUT_LEN,
            2 => self.data.len() == digest::SHA512_OUTPUT_LEN,
            _ => false,
        };
        matches!(self.usage, DANE_TA | DANE_EE) && self.selector <= 1 && length_fits
    }

    /// Whether `cert` is what the record names (usage aside).
    pub fn matches(&self, cert: &CertificateDer<'_>) -> bool {
        let selected = match self.selector {
            0 => cert.as_ref().to_vec(),
            1 => match subject_public_key_info(cert) {
                Some(spki) => spki,
                None => return false,
            },
            _ => return false,
        };
        let associated: Vec<u8> = match self.matching {
            0 => selected,
            1 => digest::digest(&digest::SHA256, &selected).as_ref().to_vec(),
            2 => digest::digest(&digest::SHA512, &selected).as_ref().to_vec(),
            _ => return false,
        };
        // Published data, not a secret: no need for a constant-time compare.
        associated == self.data
    }
}

impl std::fmt::Display for Tlsa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {} ", self.usage, self.selector, self.matching)?;
        for byte in &self.data {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// The DER SubjectPublicKeyInfo of `cert`, None when it does not parse.
pub fn subject_public_key_info(cert: &CertificateDer<'_>) -> Option<Vec<u8>> {
    let anchor = webpki::anchor_from_trusted_cert(cert).ok()?;
    Some(webpki::spki_for_anchor(&anchor).as_ref().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate() -> (CertificateDer<'static>, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["mx.example.test".to_owned()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.der().clone(), key.public_key_der())
    }

    fn record(usage: u8, selector: u8, matching: u8, data: &[u8]) -> Tlsa {
        Tlsa {
            usage,
            selector,
            matching,
            data: data.to_vec(),
        }
    }

    #[test]
    fn spki_is_the_key_rcgen_made() {
        let (cert, spki) = certificate();
        assert_eq!(subject_public_key_info(&cert), Some(spki));
    }

    #[test]
    fn every_selector_and_matching_type_matches_its_own_certificate() {
        let (cert, spki) = certificate();
        let sha256 = |b: &[u8]| digest::digest(&digest::SHA256, b).as_ref().to_vec();
        let sha512 = |b: &[u8]| digest::digest(&digest::SHA512, b).as_ref().to_vec();
        let full = cert.as_ref();
        for tlsa in [
            record(3, 0, 0, full),
            record(3, 0, 1, &sha256(full)),
            record(3, 0, 2, &sha512(full)),
            record(3, 1, 0, &spki),
            record(3, 1, 1, &sha256(&spki)),
            record(2, 1, 2, &sha512(&spki)),
        ] {
            assert!(tlsa.is_usable(), "{tlsa}");
            assert!(tlsa.matches(&cert), "{tlsa} should match");
        }
    }

    #[test]
    fn another_certificate_or_key_does_not_match() {
        let (cert, spki) = certificate();
        let (other, other_spki) = certificate();
        let sha256 = |b: &[u8]| digest::digest(&digest::SHA256, b).as_ref().to_vec();
        assert!(!record(3, 1, 1, &sha256(&other_spki)).matches(&cert));
        assert!(!record(3, 0, 1, &sha256(other.as_ref())).matches(&cert));
        // The right bytes under the wrong selector do not match either.
        assert!(!record(3, 0, 1, &sha256(&spki)).matches(&cert));
        assert!(!record(3, 1, 1, &sha256(&spki)).matches(&CertificateDer::from(vec![0x30, 0])));
    }

    #[test]
    fn pkix_usages_unknown_types_and_wrong_lengths_are_unusable() {
        let digest = [7u8; 32];
        assert!(!record(0, 1, 1, &digest).is_usable());
        assert!(!record(1, 1, 1, &digest).is_usable());
        assert!(!record(4, 1, 1, &digest).is_usable());
        assert!(!record(3, 2, 1, &digest).is_usable());
        assert!(!record(3, 1, 3, &digest).is_usable());
        assert!(!record(3, 1, 2, &digest).is_usable());
        assert!(!record(3, 1, 0, &[]).is_usable());
        assert_eq!(record(3, 1, 1, &[0xab, 1]).to_string(), "3 1 1 ab01");
    }
}
