//! Outbound DKIM signing (RFC 6376, RFC 8463): the keys of `[[dkim.sign]]`
//! loaded from PEM files (once at start, through `assets`, and again on
//! SIGHUP), and the signatures sluice adds to mail from authenticated or
//! trusted clients before it is spooled. Verification of incoming mail
//! lives in `authn`; key generation in [`keygen`].

pub mod keygen;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256, SigningKey};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;

use crate::config::{DkimAlgorithm, DkimKeyConfig};

/// The header fields signed when `headers` is not set: RFC 6376 §5.4.1's
/// list (fields a verifier's user sees or that change how the message is
/// read), Message-ID and the MIME fields. Fields absent from a message are
/// still listed in `h=`, so nobody can add them later without breaking the
/// signature.
pub const DEFAULT_SIGNED_HEADERS: &[&str] = &[
    "From",
    "Reply-To",
    "Subject",
    "Date",
    "To",
    "Cc",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "Resent-Date",
    "Resent-From",
    "Resent-To",
    "Resent-Cc",
    "List-Id",
    "List-Help",
    "List-Unsubscribe",
    "List-Subscribe",
    "List-Post",
    "List-Owner",
    "List-Archive",
];

#[derive(Debug, thiserror::Error)]
pub enum DkimKeyError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no PEM private key found ({detail})")]
    Pem { path: PathBuf, detail: String },
    #[error("{path}: not a usable {algorithm} key: {detail}")]
    Key {
        path: PathBuf,
        algorithm: &'static str,
        detail: String,
    },
}

/// A loaded private key of either algorithm.
enum Key {
    Rsa(RsaKey<Sha256>),
    Ed25519(Ed25519Key),
}

/// Reads a PEM private key (PKCS#8, or PKCS#1 for RSA) and checks that it
/// is a key of `algorithm`.
fn load_key(path: &Path, algorithm: DkimAlgorithm) -> Result<Key, DkimKeyError> {
    let pem = std::fs::read(path).map_err(|source| DkimKeyError::Read {
        path: path.to_owned(),
        source,
    })?;
    let der = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| DkimKeyError::Pem {
        path: path.to_owned(),
        detail: e.to_string(),
    })?;
    let key_error = |detail: String| DkimKeyError::Key {
        path: path.to_owned(),
        algorithm: algorithm.name(),
        detail,
    };
    match algorithm {
        DkimAlgorithm::RsaSha256 => {
            // ring accepts RSA keys of 2048 to 8192 bits only (RFC 8301
            // §3.2 wants at least 1024; 2048 is what everybody publishes).
            let key = RsaKey::<Sha256>::from_key_der(der).map_err(|e| key_error(e.to_string()))?;
            Ok(Key::Rsa(key))
        }
        DkimAlgorithm::Ed25519Sha256 => match der {
            PrivateKeyDer::Pkcs8(pkcs8) => {
                Ed25519Key::from_pkcs8_maybe_unchecked_der(pkcs8.secret_pkcs8_der())
                    .map(Key::Ed25519)
                    .map_err(|e| key_error(e.to_string()))
            }
            _ => Err(key_error("an Ed25519 key must be PKCS#8".to_owned())),
        },
    }
}

/// One `[[dkim.sign]]` entry, ready to sign.
struct DomainKey {
    domain: String,
    selector: String,
    key: Key,
    headers: Vec<String>,
}

/// Every signing key, by From domain. Clones share the keys, and see a
/// [`DkimSigners::reload`].
#[derive(Clone, Default)]
pub struct DkimSigners {
    keys: Arc<RwLock<Arc<Vec<DomainKey>>>>,
}

impl std::fmt::Debug for DkimSigners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(
                self.current()
                    .iter()
                    .map(|k| format!("{}/{}", k.domain, k.selector)),
            )
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("DKIM signing for {domain} (selector {selector}) failed: {detail}")]
    Sign {
        domain: String,
        selector: String,
        detail: String,
    },
}

impl DkimSigners {
    /// Loads every key of `[[dkim.sign]]`; when some do not load, every
    /// failure is returned with the index of its entry.
    pub fn load(entries: &[DkimKeyConfig]) -> Result<DkimSigners, Vec<(usize, DkimKeyError)>> {
        let mut keys = Vec::with_capacity(entries.len());
        let mut failures = Vec::new();
        for (index, entry) in entries.iter().enumerate() {
            match domain_key(entry) {
                Ok(key) => keys.push(key),
                Err(e) => failures.push((index, e)),
            }
        }
        if !failures.is_empty() {
            return Err(failures);
        }
        Ok(DkimSigners {
            keys: Arc::new(RwLock::new(Arc::new(keys))),
        })
    }

    /// Re-reads every key file (a key replaced under the same path); when
    /// one does not load, the error is returned and the previous keys stay.
    pub fn reload(&self, entries: &[DkimKeyConfig]) -> Result<(), DkimKeyError> {
        let keys = Arc::new(load_all(entries)?);
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = keys;
        Ok(())
    }

    /// The keys in use; a reload does not disturb a signing in progress.
    fn current(&self) -> Arc<Vec<DomainKey>> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn is_empty(&self) -> bool {
        self.current().is_empty()
    }

    /// Whether some key signs for `domain` (lower-case).
    pub fn has_domain(&self, domain: &str) -> bool {
        self.current().iter().any(|k| k.domain == domain)
    }

    /// The `DKIM-Signature:` fields (CRLF-terminated, to prepend to the
    /// message) of every key for `domain`, relaxed/relaxed. Empty when no
    /// key signs for it.
    pub fn sign(&self, domain: &str, message: &[u8]) -> Result<Vec<String>, SignError> {
        let mut out = Vec::new();
        let keys = self.current();
        for key in keys.iter().filter(|k| k.domain == domain) {
            let fail = |e: mail_auth::Error| SignError::Sign {
                domain: key.domain.clone(),
                selector: key.selector.clone(),
                detail: e.to_string(),
            };
            let header = match &key.key {
                Key::Rsa(k) => sign_with(k, key, message).map_err(fail)?,
                Key::Ed25519(k) => sign_with(k, key, message).map_err(fail)?,
            };
            out.push(header);
        }
        Ok(out)
    }
}

fn load_all(entries: &[DkimKeyConfig]) -> Result<Vec<DomainKey>, DkimKeyError> {
    entries.iter().map(domain_key).collect()
}

fn domain_key(entry: &DkimKeyConfig) -> Result<DomainKey, DkimKeyError> {
    Ok(DomainKey {
        domain: entry.domain.clone(),
        selector: entry.selector.clone(),
        key: load_key(&entry.key, entry.algorithm)?,
        headers: signed_headers(&entry.headers),
    })
}

fn sign_with<T: SigningKey>(
    signing_key: &T,
    entry: &DomainKey,
    message: &[u8],
) -> mail_auth::Result<String> {
    // DkimSigner owns its key; sign through a borrowing adapter so the
    // loaded key is reused for every message.
    let signature = DkimSigner::from_key(KeyRef(signing_key))
        .domain(entry.domain.as_str())
        .selector(entry.selector.as_str())
        .headers(entry.headers.iter().map(String::as_str))
        .header_canonicalization(Canonicalization::Relaxed)
        .body_canonicalization(Canonicalization::Relaxed)
        .sign(message)?;
    Ok(signature.to_header())
}

/// A borrowed [`SigningKey`].
struct KeyRef<'a, T>(&'a T);

impl<T: SigningKey> SigningKey for KeyRef<'_, T> {
    type Hasher = T::Hasher;

    fn sign(&self, input: impl mail_auth::common::headers::Writable) -> mail_auth::Result<Vec<u8>> {
        self.0.sign(input)
    }

    fn algorithm(&self) -> mail_auth::common::crypto::Algorithm {
        self.0.algorithm()
    }
}

/// The `h=` list: the configured one (or the default) with From always
/// first, and From listed once more so a second From field added in transit
/// breaks the signature (RFC 6376 §8.15 "oversigning").
fn signed_headers(configured: &[String]) -> Vec<String> {
    let mut headers: Vec<String> = vec!["From".to_owned()];
    let source: Vec<String> = if configured.is_empty() {
        DEFAULT_SIGNED_HEADERS
            .iter()
            .map(|h| (*h).to_owned())
            .collect()
    } else {
        configured.to_vec()
    };
    for name in source {
        if !headers.iter().any(|h| h.eq_ignore_ascii_case(&name)) {
            headers.push(name);
        }
    }
    headers.push("From".to_owned());
    headers
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Located, Origin};

    /// Whether the key at `path` loads as `algorithm`.
    fn check_key(path: &Path, algorithm: DkimAlgorithm) -> Result<(), DkimKeyError> {
        load_key(path, algorithm).map(drop)
    }

    fn entry(dir: &Path, algorithm: DkimAlgorithm) -> DkimKeyConfig {
        let generated = keygen::generate(
            match algorithm {
                DkimAlgorithm::RsaSha256 => keygen::KeyType::Rsa,
                DkimAlgorithm::Ed25519Sha256 => keygen::KeyType::Ed25519,
            },
            "example.org",
            "s1",
        )
        .unwrap();
        let path = dir.join(format!("{}.pem", algorithm.name()));
        std::fs::write(&path, &generated.private_pem).unwrap();
        DkimKeyConfig {
            domain: "example.org".into(),
            selector: "s1".into(),
            key: Located {
                value: path,
                origin: Origin {
                    file: "c.toml".into(),
                    line: 1,
                    column: 1,
                    key: "dkim.sign[0].key".into(),
                },
            },
            algorithm,
            headers: Vec::new(),
        }
    }

    const MESSAGE: &[u8] = b"From: Alice <alice@example.org>\r\nTo: bob@example.test\r\n\
Subject: hi\r\n\r\nHello.\r\n";

    #[test]
    fn signs_with_every_key_of_the_domain() {
        let dir = tempfile::tempdir().unwrap();
        let entries = [
            entry(dir.path(), DkimAlgorithm::RsaSha256),
            entry(dir.path(), DkimAlgorithm::Ed25519Sha256),
        ];
        let signers = DkimSigners::load(&entries).unwrap();
        assert!(signers.has_domain("example.org"));
        assert!(!signers.has_domain("example.com"));
        let headers = signers.sign("example.org", MESSAGE).unwrap();
        assert_eq!(headers.len(), 2);
        assert!(headers[0].starts_with("DKIM-Signature: v=1; a=rsa-sha256;"));
        assert!(headers[1].contains("a=ed25519-sha256;"));
        for h in &headers {
            assert!(h.ends_with("\r\n"));
            assert!(h.contains("c=relaxed/relaxed"));
            assert!(h.contains("d=example.org"));
            assert!(h.contains("s=s1"));
            // From signed, and oversigned.
            let h_tag = h.split("h=").nth(1).unwrap().split(';').next().unwrap();
            let h_tag: String = h_tag.chars().filter(|c| !c.is_whitespace()).collect();
            let from = h_tag.split(':').filter(|h| h.eq_ignore_ascii_case("from"));
            assert_eq!(from.count(), 2, "{h_tag}");
        }
        assert!(signers.sign("example.com", MESSAGE).unwrap().is_empty());
    }

    #[test]
    fn key_of_the_wrong_algorithm_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ed = entry(dir.path(), DkimAlgorithm::Ed25519Sha256);
        let err = check_key(&ed.key, DkimAlgorithm::RsaSha256).unwrap_err();
        assert!(err.to_string().contains("rsa-sha256"), "{err}");
        let rsa = entry(dir.path(), DkimAlgorithm::RsaSha256);
        assert!(check_key(&rsa.key, DkimAlgorithm::Ed25519Sha256).is_err());
        let missing = check_key(&dir.path().join("nope.pem"), DkimAlgorithm::RsaSha256);
        assert!(matches!(missing, Err(DkimKeyError::Read { .. })));
        std::fs::write(dir.path().join("junk.pem"), "junk").unwrap();
        let junk = check_key(&dir.path().join("junk.pem"), DkimAlgorithm::RsaSha256);
        assert!(matches!(junk, Err(DkimKeyError::Pem { .. })));
    }

    #[test]
    fn header_list_always_has_from() {
        let h = signed_headers(&["Subject".into(), "from".into(), "To".into()]);
        assert_eq!(h, ["From", "Subject", "To", "From"]);
        let d = signed_headers(&[]);
        assert_eq!(d.first().map(String::as_str), Some("From"));
        assert!(d.iter().any(|h| h == "Message-ID"));
    }
}
