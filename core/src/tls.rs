//! Inbound TLS: reading PEM certificates and keys, building the rustls
//! server configuration (TLS 1.2 and 1.3, ring provider), generating a
//! self-signed certificate when none is configured, and keeping each
//! certificate in an [`ArcSwap`] so SIGHUP can replace it while sessions
//! run. Sessions take a [`TlsAcceptor`] from here for STARTTLS or
//! implicit TLS; what they negotiated ([`TlsInfo`]) goes to the plugins'
//! session record and the Received header.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, ServerConnection};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

use crate::config::{TlsCertificates, TlsFiles};

/// What a finished handshake negotiated, as plugins and the Received
/// header report it.
#[derive(Debug, Clone)]
pub struct TlsInfo {
    /// "TLSv1.3", "TLSv1.2".
    pub version: String,
    /// The IANA cipher suite name, "TLS13_AES_256_GCM_SHA384".
    pub cipher: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file does not exist or cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not PEM, or its base64 is damaged.
    #[error("{path}: not a valid PEM file: {detail}")]
    Pem { path: PathBuf, detail: String },
    /// The certificate file holds no `CERTIFICATE` section.
    #[error("{path}: no certificate found (expected a PEM \"BEGIN CERTIFICATE\" section)")]
    NoCertificate { path: PathBuf },
    /// The key file holds no PKCS#8, RSA or EC private key.
    #[error("{path}: no private key found (expected a PEM PKCS#8, RSA or EC private key)")]
    NoKey { path: PathBuf },
    /// rustls refused the pair: unsupported key type, or a key that does
    /// not belong to the certificate.
    #[error("certificate {certificate} with key {key}: {source}")]
    Rejected {
        certificate: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    /// Generating or storing the self-signed certificate failed.
    #[error("cannot create the self-signed certificate in {path}: {detail}")]
    SelfSigned { path: PathBuf, detail: String },
}

fn pem_error(path: &Path, e: rustls::pki_types::pem::Error) -> TlsError {
    match e {
        rustls::pki_types::pem::Error::Io(source) => TlsError::Read {
            path: path.to_owned(),
            source,
        },
        other => TlsError::Pem {
            path: path.to_owned(),
            detail: other.to_string(),
        },
    }
}

/// Every certificate of a PEM chain, leaf first.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 RSA or SEC1 EC) of a PEM file.
pub fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    match PrivateKeyDer::from_pem_file(path) {
        Ok(key) => Ok(key),
        Err(rustls::pki_types::pem::Error::NoItemsFound) => Err(TlsError::NoKey {
            path: path.to_owned(),
        }),
        Err(e) => Err(pem_error(path, e)),
    }
}

/// A server configuration for one certificate: TLS 1.2 and 1.3 only, no
/// client certificates.
pub fn server_config(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    server_config_for(&TlsCertificates {
        default: files.clone(),
        named: Vec::new(),
    })
}

/// A server configuration choosing among `certificates` by the client's
/// server name.
pub fn server_config_for(certificates: &TlsCertificates) -> Result<ServerConfig, TlsError> {
    let default = read_pair(&certificates.default)?;
    let named = certificates
        .named
        .iter()
        .map(|n| Ok((n.names.clone(), read_pair(&n.files)?)))
        .collect::<Result<Vec<_>, TlsError>>()?;
    server_config_from(default, named)
}

/// A chain and its key, read.
pub type Pair = (
    TlsFiles,
    Vec<CertificateDer<'static>>,
    PrivateKeyDer<'static>,
);

fn read_pair(files: &TlsFiles) -> Result<Pair, TlsError> {
    let certs = read_certificates(&files.certificate)?;
    let key = read_private_key(&files.key)?;
    Ok((files.clone(), certs, key))
}

/// [`server_config_for`] with the pairs already read: TLS 1.2 and 1.3 only,
/// no client certificates. A key that does not belong to its certificate
/// is refused, naming both files.
pub fn server_config_from(
    default: Pair,
    named: Vec<(Vec<String>, Pair)>,
) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certified = |(files, certs, key): Pair| {
        CertifiedKey::from_der(certs, key, &provider)
            .map(Arc::new)
            .map_err(|source| TlsError::Rejected {
                certificate: files.certificate,
                key: files.key,
                source,
            })
    };
    let default_files = default.0.clone();
    let mut resolver = ByServerName {
        default: certified(default)?,
        exact: BTreeMap::new(),
        wildcard: BTreeMap::new(),
    };
    for (names, pair) in named {
        let key = certified(pair)?;
        for name in names {
            match name.strip_prefix("*.") {
                Some(parent) => resolver.wildcard.insert(parent.to_owned(), key.clone()),
                None => resolver.exact.insert(name, key.clone()),
            };
        }
    }
    ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|source| TlsError::Rejected {
            certificate: default_files.certificate,
            key: default_files.key,
            source,
        })
        .map(|builder| {
            builder
                .with_no_client_auth()
                .with_cert_resolver(Arc::new(resolver))
        })
}

/// Picks the certificate for a handshake from the client's server name
/// (RFC 6066 §3): an exact name first, then a `*.` name one label up,
/// else the default, so clients without SNI (most MTAs verify nothing,
/// RFC 7435) still get TLS.
#[derive(Debug)]
struct ByServerName {
    default: Arc<CertifiedKey>,
    exact: BTreeMap<String, Arc<CertifiedKey>>,
    wildcard: BTreeMap<String, Arc<CertifiedKey>>,
}

impl ByServerName {
    fn choose(&self, server_name: Option<&str>) -> &Arc<CertifiedKey> {
        let Some(name) = server_name.map(|n| n.trim_end_matches('.').to_ascii_lowercase()) else {
            return &self.default;
        };
        if let Some(key) = self.exact.get(&name) {
            return key;
        }
        name.split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent))
            .unwrap_or(&self.default)
    }
}

impl ResolvesServerCert for ByServerName {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.choose(client_hello.server_name()).clone())
    }
}

/// The certificates in use: the files they came from and the
/// configuration new handshakes read. Sessions already in TLS keep what
/// they negotiated.
pub struct ReloadableTls {
    certificates: TlsCertificates,
    current: ArcSwap<ServerConfig>,
}

impl ReloadableTls {
    pub fn load(files: TlsFiles) -> Result<ReloadableTls, TlsError> {
        let config = server_config(&files)?;
        Ok(ReloadableTls::new(
            TlsCertificates {
                default: files,
                named: Vec::new(),
            },
            config,
        ))
    }

    /// Certificates already loaded from their files (which a reload reads).
    pub fn new(certificates: TlsCertificates, config: ServerConfig) -> ReloadableTls {
        ReloadableTls {
            certificates,
            current: ArcSwap::from_pointee(config),
        }
    }

    pub fn certificates(&self) -> &TlsCertificates {
        &self.certificates
    }

    /// Re-reads the files; on error the previous certificates stay.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = server_config_for(&self.certificates)?;
        self.current.store(Arc::new(config));
        Ok(())
    }

    /// An acceptor on the current certificates, for one handshake.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.load_full())
    }
}

/// The certificate of TLS listeners when the configuration names none:
/// `<data_dir>/tls/cert.pem` and `key.pem`, generated self-signed for
/// `hostname` on first use and reused after (so clients that pinned it
/// keep working across restarts).
pub fn self_signed(data_dir: &Path, hostname: &str) -> Result<TlsFiles, TlsError> {
    let dir = data_dir.join("tls");
    let files = TlsFiles {
        certificate: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    if files.certificate.exists() && files.key.exists() {
        return Ok(files);
    }
    let fail = |detail: String| TlsError::SelfSigned {
        path: dir.clone(),
        detail,
    };
    // Holds a private key: the owner's alone, whatever the umask.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| fail(e.to_string()))?;
    let mut params = rcgen::CertificateParams::new(vec![hostname.to_owned()])
        .map_err(|e| fail(e.to_string()))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, hostname);
    let key_pair = rcgen::KeyPair::generate().map_err(|e| fail(e.to_string()))?;
    let cert = params
        .self_signed(&key_pair)
        .map_err(|e| fail(e.to_string()))?;
    // The key first, so a crash in between leaves no certificate without
    // its key (the pair is regenerated when either is missing).
    write_private(&files.key, key_pair.serialize_pem().as_bytes())
        .map_err(|e| fail(e.to_string()))?;
    write_private(&files.certificate, cert.pem().as_bytes()).map_err(|e| fail(e.to_string()))?;
    tracing::info!(
        certificate = %files.certificate.display(),
        "generated a self-signed certificate for {hostname}"
    );
    Ok(files)
}

/// Writes a file readable by its owner only, atomically (temporary file
/// and rename).
fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    // A leftover (from an earlier process with this pid) is removed, not
    // written through: it could be a symbolic link to anywhere.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(contents)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// What a finished handshake negotiated, as plugins and the Received
/// header report it ("TLSv1.3", "TLS13_AES_256_GCM_SHA384").
pub fn negotiated(conn: &ServerConnection) -> TlsInfo {
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_owned(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_owned(),
        Some(other) => format!("{other:?}"),
        None => "unknown".to_owned(),
    };
    let cipher = conn
        .negotiated_cipher_suite()
        .and_then(|suite| suite.suite().as_str())
        .unwrap_or("unknown")
        .to_owned();
    TlsInfo { version, cipher }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_is_generated_once_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let files = self_signed(dir.path(), "mx.example.test").unwrap();
        let first = std::fs::read(&files.certificate).unwrap();
        let tls = ReloadableTls::load(files.clone()).unwrap();
        let again = self_signed(dir.path(), "mx.example.test").unwrap();
        assert_eq!(again, files);
        assert_eq!(std::fs::read(&files.certificate).unwrap(), first);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&files.key).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "key must be private: {mode:o}");
        let mode = std::fs::metadata(dir.path().join("tls"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "key directory must be private: {mode:o}");
        tls.reload().unwrap();
    }

    #[test]
    fn a_planted_temporary_file_is_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let tls_dir = dir.path().join("tls");
        std::fs::create_dir(&tls_dir).unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "untouched").unwrap();
        let planted = tls_dir.join(format!("key.tmp.{}", std::process::id()));
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        let files = self_signed(dir.path(), "mx.example.test").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
        assert!(std::fs::read_to_string(&files.key)
            .unwrap()
            .contains("PRIVATE KEY"));
        assert!(std::fs::symlink_metadata(&planted).is_err());
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = read_certificates(&missing).unwrap_err().to_string();
        assert!(
            err.contains("cannot read") && err.contains("missing.pem"),
            "{err}"
        );

        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "hello\n").unwrap();
        let err = read_certificates(&garbage).unwrap_err().to_string();
        assert!(err.contains("no certificate found"), "{err}");
        let err = read_private_key(&garbage).unwrap_err().to_string();
        assert!(err.contains("no private key found"), "{err}");
    }

    #[test]
    fn mismatched_key_is_refused_and_reload_keeps_the_old_one() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let first = self_signed(a.path(), "a.test").unwrap();
        let second = self_signed(b.path(), "b.test").unwrap();
        let mixed = TlsFiles {
            certificate: first.certificate.clone(),
            key: second.key.clone(),
        };
        let err = server_config(&mixed).unwrap_err().to_string();
        assert!(err.contains("with key"), "{err}");

        let tls = ReloadableTls::load(first.clone()).unwrap();
        let before = tls.current.load_full();
        std::fs::write(&first.certificate, "broken").unwrap();
        assert!(tls.reload().is_err());
        assert!(Arc::ptr_eq(&before, &tls.current.load_full()));
    }

    #[test]
    fn server_names_choose_exact_then_one_label_wildcard_then_default() {
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let pair =
            |i: usize, host: &str| read_pair(&self_signed(dirs[i].path(), host).unwrap()).unwrap();
        let provider = rustls::crypto::ring::default_provider();
        let key = |p: Pair| Arc::new(CertifiedKey::from_der(p.1, p.2, &provider).unwrap());
        let (d, a, w) = (
            key(pair(0, "d.test")),
            key(pair(1, "a.test")),
            key(pair(2, "w.b.test")),
        );
        let resolver = ByServerName {
            default: d.clone(),
            exact: BTreeMap::from([("a.test".to_owned(), a.clone())]),
            wildcard: BTreeMap::from([("b.test".to_owned(), w.clone())]),
        };
        let chosen = |name| resolver.choose(name).clone();
        assert!(Arc::ptr_eq(&chosen(Some("A.Test.")), &a));
        assert!(Arc::ptr_eq(&chosen(Some("x.b.test")), &w));
        assert!(Arc::ptr_eq(&chosen(Some("b.test")), &d));
        assert!(Arc::ptr_eq(&chosen(Some("y.x.b.test")), &d));
        assert!(Arc::ptr_eq(&chosen(None), &d));
    }
}
