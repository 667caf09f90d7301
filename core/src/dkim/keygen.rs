//! `sluice dkim keygen`: a new DKIM key pair (RSA-2048 with the pure-Rust
//! `rsa` crate, Ed25519 with ring), its private key as PKCS#8 PEM, and the
//! DNS TXT record that publishes its public key (RFC 6376 §3.6.1, RFC 8463).

use base64::Engine;
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    Rsa,
    Ed25519,
}

#[derive(Debug, thiserror::Error)]
pub enum KeygenError {
    #[error("RSA key generation failed: {0}")]
    Rsa(String),
    #[error("Ed25519 key generation failed")]
    Ed25519,
    #[error("invalid domain {0:?}")]
    Domain(String),
    #[error("invalid selector {0:?} (letters, digits, hyphens and dots)")]
    Selector(String),
}

/// A generated key pair.
pub struct GeneratedKey {
    /// PKCS#8 `-----BEGIN PRIVATE KEY-----` PEM.
    pub private_pem: String,
    /// The zone-file line to publish, strings split at 255 octets.
    pub dns_record: String,
    /// The record's text as one string (`v=DKIM1; k=...; p=...`).
    pub txt: String,
}

/// RSA modulus size: RFC 8301 §3.2 and what every large receiver expects.
const RSA_BITS: usize = 2048;

pub fn generate(kind: KeyType, domain: &str, selector: &str) -> Result<GeneratedKey, KeygenError> {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    if !valid_name(&domain) || !domain.contains('.') {
        return Err(KeygenError::Domain(domain));
    }
    if !valid_name(selector) {
        return Err(KeygenError::Selector(selector.to_owned()));
    }
    let (pkcs8, public, k) = match kind {
        KeyType::Rsa => {
            let key = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, RSA_BITS)
                .map_err(|e| KeygenError::Rsa(e.to_string()))?;
            let pkcs8 = key
                .to_pkcs8_der()
                .map_err(|e| KeygenError::Rsa(e.to_string()))?;
            // p= holds the SubjectPublicKeyInfo DER for RSA (RFC 6376 §3.6.1).
            let public = key
                .to_public_key()
                .to_public_key_der()
                .map_err(|e| KeygenError::Rsa(e.to_string()))?;
            (pkcs8.as_bytes().to_vec(), public.as_bytes().to_vec(), "rsa")
        }
        KeyType::Ed25519 => {
            use ring::signature::KeyPair;
            let rng = ring::rand::SystemRandom::new();
            let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
                .map_err(|_| KeygenError::Ed25519)?;
            let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
                .map_err(|_| KeygenError::Ed25519)?;
            // p= is the raw 32-octet public key for Ed25519 (RFC 8463 §4).
            let public = pair.public_key().as_ref().to_vec();
            (pkcs8.as_ref().to_vec(), public, "ed25519")
        }
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    let txt = format!("v=DKIM1; k={k}; p={}", b64.encode(public));
    let dns_record = format!(
        "{selector}._domainkey.{domain}. IN TXT {}",
        txt_strings(&txt)
    );
    Ok(GeneratedKey {
        private_pem: pem("PRIVATE KEY", &pkcs8),
        dns_record,
        txt,
    })
}

/// The text as quoted DNS character-strings of at most 255 octets
/// (RFC 1035 §3.3), separated by spaces; the text is ASCII without quotes.
fn txt_strings(text: &str) -> String {
    text.as_bytes()
        .chunks(255)
        .map(|chunk| format!("\"{}\"", String::from_utf8_lossy(chunk)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// PEM armour, 64 columns (RFC 7468).
fn pem(label: &str, der: &[u8]) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in encoded.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(record: &str) -> Vec<String> {
        record
            .split('"')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn rsa_record_is_split_into_255_octet_strings() {
        let key = generate(KeyType::Rsa, "Example.ORG.", "s1").unwrap();
        assert!(key.private_pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert!(key
            .dns_record
            .starts_with("s1._domainkey.example.org. IN TXT \"v=DKIM1; k=rsa; p=MII"));
        let parts = strings(&key.dns_record);
        assert!(parts.len() >= 2, "{}", key.dns_record);
        assert!(parts.iter().all(|p| p.len() <= 255));
        assert_eq!(parts[0].len(), 255);
        assert_eq!(parts.concat(), key.txt);
        // 2048-bit SPKI: 294 octets, 392 in base64.
        let p = key.txt.split("p=").nth(1).unwrap();
        assert_eq!(p.len(), 392);
    }

    #[test]
    fn ed25519_record_fits_one_string() {
        let key = generate(KeyType::Ed25519, "example.org", "ed1").unwrap();
        let parts = strings(&key.dns_record);
        assert_eq!(parts.len(), 1);
        let p = key.txt.split("p=").nth(1).unwrap();
        let raw = base64::engine::general_purpose::STANDARD.decode(p).unwrap();
        assert_eq!(raw.len(), 32);
        assert!(key.txt.starts_with("v=DKIM1; k=ed25519; p="));
    }

    #[test]
    fn bad_names_are_refused() {
        assert!(matches!(
            generate(KeyType::Ed25519, "exa mple.org", "s1"),
            Err(KeygenError::Domain(_))
        ));
        assert!(matches!(
            generate(KeyType::Ed25519, "example.org", "s\"1"),
            Err(KeygenError::Selector(_))
        ));
    }
}
