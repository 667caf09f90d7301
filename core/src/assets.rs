//! The files a configuration names: the certificate and key pairs of
//! `[tls]` and the listeners, the `[[dkim.sign]]` keys, the admin token of
//! `[admin] token_file` and the routes' `auth_file` credentials, loaded
//! once. Private keys that group or
//! others may read are loaded but reported as warnings.
//! `config` only checks their paths' form; [`Assets::load`] opens them and
//! reports every failure as a [`ConfigDiagnostic`] on the key that named the
//! file, so `sluice check-config` prints file and value errors alike. The
//! server takes the loaded certificates to its listeners and the signers to
//! its sessions; SIGHUP re-reads the same files later.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::admin::AdminToken;
use crate::config::{
    CertificatesConfig, Config, ConfigDiagnostic, Located, TlsCertificates, TlsFilesConfig, TlsMode,
};
use crate::delivery::Credentials;
use crate::dkim::DkimSigners;
use crate::tls::{self, ReloadableTls, TlsError};

/// Files a configuration names that did not load, one diagnostic each,
/// in the order the configuration names them.
#[derive(Debug, thiserror::Error)]
#[error("{}", .diagnostics.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct AssetError {
    pub diagnostics: Vec<ConfigDiagnostic>,
}

/// Everything loaded from the files a configuration names.
pub struct Assets {
    /// The configured certificate of each TLS listener that has one (its
    /// own or `[tls]`), by listener name; listeners sharing a pair share
    /// one. A TLS listener missing here gets the server's self-signed one.
    listener_certificates: BTreeMap<String, Arc<ReloadableTls>>,
    /// The `[[dkim.sign]]` keys.
    pub dkim: DkimSigners,
    /// The token of `[admin] token_file`, if configured.
    pub admin_token: Option<AdminToken>,
    /// The credentials of each `[[delivery.route]]` with an `auth_file`,
    /// by route domain.
    pub route_credentials: BTreeMap<String, Arc<Credentials>>,
    /// Loaded, but worth the operator's attention: private keys group or
    /// others may read.
    pub warnings: Vec<ConfigDiagnostic>,
}

impl Assets {
    /// Opens every configured certificate pair and DKIM key once. Creates
    /// no file.
    pub fn load(config: &Config) -> Result<Assets, AssetError> {
        let mut diagnostics = Vec::new();
        let mut certificates = Certificates::default();
        let mut listener_certificates = BTreeMap::new();
        // Every pair is checked, also that of a listener without TLS (which
        // config reports as unused) or a `[tls]` no listener needs.
        for listener in &config.listeners {
            let Some(pair) = &listener.tls_files else {
                continue;
            };
            let loaded = certificates.load(pair, &mut diagnostics);
            if let (Some(tls), true) = (loaded, listener.tls != TlsMode::None) {
                listener_certificates.insert(listener.name.clone(), tls);
            }
        }
        if let Some(pair) = &config.tls {
            let loaded = certificates.load(pair, &mut diagnostics);
            if let Some(tls) = loaded {
                for listener in &config.listeners {
                    if listener.tls != TlsMode::None && listener.tls_files.is_none() {
                        listener_certificates.insert(listener.name.clone(), tls.clone());
                    }
                }
            }
        }
        let dkim = match DkimSigners::load(&config.dkim.sign) {
            Ok(signers) => Some(signers),
            Err(failures) => {
                for (index, error) in failures {
                    if let Some(entry) = config.dkim.sign.get(index) {
                        diagnostics.push(entry.key.origin.diagnostic(error.to_string()));
                    }
                }
                None
            }
        };
        let admin_token = match &config.admin.token_file {
            None => None,
            Some(path) => match AdminToken::read(path) {
                Ok(token) => Some(token),
                Err(e) => {
                    diagnostics.push(path.origin.diagnostic(e.to_string()));
                    None
                }
            },
        };
        let mut route_credentials = BTreeMap::new();
        for route in &config.delivery.routes {
            let Some(file) = &route.auth_file else {
                continue;
            };
            match Credentials::read(&file.value) {
                Ok(credentials) => {
                    route_credentials.insert(route.domain.clone(), Arc::new(credentials));
                }
                Err(e) => diagnostics.push(file.origin.diagnostic(e.to_string())),
            }
        }
        match dkim {
            Some(dkim) if diagnostics.is_empty() => Ok(Assets {
                listener_certificates,
                dkim,
                admin_token,
                route_credentials,
                warnings: exposed_keys(config),
            }),
            _ => Err(AssetError { diagnostics }),
        }
    }

    /// The configured certificate of a TLS listener; None when it has none
    /// (nor `[tls]`) or does not use TLS.
    pub fn listener_certificate(&self, listener: &str) -> Option<Arc<ReloadableTls>> {
        self.listener_certificates.get(listener).cloned()
    }
}

/// A warning for each configured private key (TLS, DKIM) that group or
/// others may read: it loaded, but anyone who can read it can sign as
/// this server. Each file once, on the first key naming it.
fn exposed_keys(config: &Config) -> Vec<ConfigDiagnostic> {
    let tls = config
        .listeners
        .iter()
        .filter_map(|l| l.tls_files.as_ref())
        .chain(config.tls.as_ref())
        .flat_map(CertificatesConfig::pairs)
        .map(|pair| &pair.key);
    let dkim = config.dkim.sign.iter().map(|entry| &entry.key);
    let mut seen: Vec<&PathBuf> = Vec::new();
    let mut warnings = Vec::new();
    for key in tls.chain(dkim) {
        let key: &Located<PathBuf> = key;
        if seen.contains(&&key.value) {
            continue;
        }
        seen.push(&key.value);
        // Unreadable files were reported by the loaders already.
        let Ok(meta) = std::fs::metadata(&key.value) else {
            continue;
        };
        let mode = meta.mode() & 0o7777;
        if mode & 0o044 != 0 {
            warnings.push(key.origin.diagnostic(format!(
                "private key {} is readable by group or others (mode {mode:04o}); \
                 chmod 600 it",
                key.value.display()
            )));
        }
    }
    warnings
}

/// Each distinct set of certificates loaded once, however many keys name
/// it. One that fails is read again for each use, so every key naming it
/// gets its error.
#[derive(Default)]
struct Certificates {
    loaded: Vec<(TlsCertificates, Arc<ReloadableTls>)>,
}

impl Certificates {
    /// The loaded certificates, or None after adding each pair's errors, on
    /// the keys that named its files, to `diagnostics`.
    fn load(
        &mut self,
        configured: &CertificatesConfig,
        diagnostics: &mut Vec<ConfigDiagnostic>,
    ) -> Option<Arc<ReloadableTls>> {
        let certificates = configured.certificates();
        if let Some((_, tls)) = self.loaded.iter().find(|(c, _)| *c == certificates) {
            return Some(tls.clone());
        }
        let tls = load_certificates(configured, diagnostics)?;
        self.loaded.push((certificates, tls.clone()));
        Some(tls)
    }
}

fn load_certificates(
    configured: &CertificatesConfig,
    diagnostics: &mut Vec<ConfigDiagnostic>,
) -> Option<Arc<ReloadableTls>> {
    let before = diagnostics.len();
    let default = read_pair(&configured.default, diagnostics);
    let named: Vec<_> = configured
        .named
        .iter()
        .map(|n| read_pair(&n.files, diagnostics).map(|pair| (n.names.clone(), pair)))
        .collect();
    if diagnostics.len() > before {
        return None;
    }
    let (default, named) = (default?, named.into_iter().collect::<Option<Vec<_>>>()?);
    // A key that does not fit its certificate is reported on the key.
    let key_origin = |path: &PathBuf| {
        configured
            .pairs()
            .find(|p| p.key.value == *path)
            .map(|p| p.key.origin.clone())
    };
    match tls::server_config_from(default, named) {
        Ok(config) => Some(Arc::new(ReloadableTls::new(
            configured.certificates(),
            config,
        ))),
        Err(e) => {
            let origin = match &e {
                TlsError::Rejected { key, .. } => key_origin(key),
                _ => None,
            };
            let origin = origin.unwrap_or_else(|| configured.default.key.origin.clone());
            diagnostics.push(origin.diagnostic(e.to_string()));
            None
        }
    }
}

/// Reads the chain and the key of one pair, each error on its own key.
fn read_pair(pair: &TlsFilesConfig, diagnostics: &mut Vec<ConfigDiagnostic>) -> Option<tls::Pair> {
    let certs = tls::read_certificates(&pair.certificate.value);
    let key = tls::read_private_key(&pair.key.value);
    match (certs, key) {
        (Ok(certs), Ok(key)) => Some((pair.files(), certs, key)),
        (certs, key) => {
            if let Err(e) = certs {
                diagnostics.push(pair.certificate.origin.diagnostic(e.to_string()));
            }
            if let Err(e) = key {
                diagnostics.push(pair.key.origin.diagnostic(e.to_string()));
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;

    const PIPELINE: &str = "[pipeline.p]\n";

    fn pem_pair(dir: &std::path::Path, host: &str) -> (String, String) {
        let files = tls::self_signed(&dir.join(host), host).unwrap();
        (
            files.certificate.display().to_string(),
            files.key.display().to_string(),
        )
    }

    fn load_err(text: &str) -> String {
        let config = load_str(text, "c.toml").unwrap();
        match Assets::load(&config) {
            Ok(_) => panic!("loaded:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    fn has_line(err: &str, at: &str, what: &[&str]) -> bool {
        err.lines()
            .any(|l| l.starts_with(at) && what.iter().all(|w| l.contains(w)))
    }

    #[test]
    fn missing_certificate_names_key_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let (_cert, key) = pem_pair(dir.path(), "mx.test");
        let missing = dir.path().join("missing-cert.pem").display().to_string();
        let text = format!(
            "[[listener]]\nname = \"smtps\"\naddress = \"127.0.0.1:465\"\npipeline = \"p\"\n\
             tls = \"implicit\"\ncertificate = \"{missing}\"\nkey = \"{key}\"\n{PIPELINE}"
        );
        let err = load_err(&text);
        assert!(
            has_line(
                &err,
                "c.toml:6:",
                &["listener[0].certificate: cannot read", "missing-cert.pem"]
            ),
            "{err}"
        );
        // The key loaded: nothing said about it.
        assert_eq!(err.lines().count(), 1, "{err}");
    }

    #[test]
    fn bad_key_file_names_key_and_line_for_each_use() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _key) = pem_pair(dir.path(), "mx.test");
        // The certificate given as key: a PEM file without a key in it.
        let text = format!(
            "[tls]\ncertificate = \"{cert}\"\nkey = \"{cert}\"\n\
             [[listener]]\nname = \"a\"\naddress = \"127.0.0.1:25\"\npipeline = \"p\"\n\
             tls = \"starttls\"\ncertificate = \"{cert}\"\nkey = \"{cert}\"\n{PIPELINE}"
        );
        let err = load_err(&text);
        assert!(
            has_line(&err, "c.toml:3:", &["tls.key", "no private key found"]),
            "{err}"
        );
        assert!(
            has_line(&err, "c.toml:10:", &["listener[0].key", "no private key"]),
            "{err}"
        );
        assert!(!err.contains(".certificate"), "{err}");
    }

    #[test]
    fn key_of_another_certificate_is_reported_on_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = pem_pair(dir.path(), "a.test");
        let (_, other_key) = pem_pair(dir.path(), "b.test");
        let text = format!(
            "[tls]\ncertificate = \"{cert}\"\nkey = \"{other_key}\"\n\
             [[listener]]\nname = \"a\"\naddress = \"127.0.0.1:25\"\npipeline = \"p\"\n{PIPELINE}"
        );
        let err = load_err(&text);
        assert!(
            has_line(&err, "c.toml:3:", &["tls.key", "with key"]),
            "{err}"
        );
    }

    #[test]
    fn missing_dkim_key_names_key_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let generated =
            crate::dkim::keygen::generate(crate::dkim::keygen::KeyType::Ed25519, "a.test", "s1")
                .unwrap();
        let good = dir.path().join("good.pem");
        std::fs::write(&good, &generated.private_pem).unwrap();
        let text = format!(
            "[[listener]]\nname = \"a\"\naddress = \"127.0.0.1:25\"\npipeline = \"p\"\n{PIPELINE}\
             [[dkim.sign]]\ndomain = \"a.test\"\nselector = \"s1\"\nkey = \"{}\"\nalgorithm = \"ed25519-sha256\"\n\
             [[dkim.sign]]\ndomain = \"b.test\"\nselector = \"s1\"\nkey = \"/nonexistent/missing.pem\"\n",
            good.display()
        );
        let err = load_err(&text);
        assert!(
            has_line(
                &err,
                "c.toml:14:",
                &["dkim.sign[1].key: cannot read", "missing.pem"]
            ),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
    }

    #[test]
    fn admin_token_is_read_and_exposed_files_are_reported() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("admin.token");
        std::fs::write(&token, "0123456789abcdef-secret\n").unwrap();
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
        let text = format!(
            "[[listener]]\nname = \"a\"\naddress = \"127.0.0.1:25\"\npipeline = \"p\"\n{PIPELINE}\
             [admin]\ntoken_file = \"{}\"\n",
            token.display()
        );
        let config = load_str(&text, "c.toml").unwrap();
        let assets = Assets::load(&config).unwrap();
        let loaded = assets.admin_token.unwrap();
        assert!(loaded.matches(b"0123456789abcdef-secret"));
        assert!(assets.warnings.is_empty());

        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = load_err(&text);
        assert!(
            has_line(
                &err,
                "c.toml:7:",
                &["admin.token_file:", "mode 0640", "chmod 600"]
            ),
            "{err}"
        );
    }

    #[test]
    fn readable_private_keys_are_warnings_not_errors() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pem_pair(dir.path(), "mx.test");
        let generated =
            crate::dkim::keygen::generate(crate::dkim::keygen::KeyType::Ed25519, "a.test", "s1")
                .unwrap();
        let dkim = dir.path().join("dkim.pem");
        std::fs::write(&dkim, &generated.private_pem).unwrap();
        let text = format!(
            "[tls]\ncertificate = \"{cert}\"\nkey = \"{key}\"\n\
             [[listener]]\nname = \"a\"\naddress = \"127.0.0.1:25\"\npipeline = \"p\"\ntls = \"starttls\"\n\
             certificate = \"{cert}\"\nkey = \"{key}\"\n{PIPELINE}\
             [[dkim.sign]]\ndomain = \"a.test\"\nselector = \"s1\"\nkey = \"{}\"\nalgorithm = \"ed25519-sha256\"\n",
            dkim.display()
        );
        let config = load_str(&text, "c.toml").unwrap();
        for (path, mode) in [(&key, 0o600), (&dkim.display().to_string(), 0o600)] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        assert!(Assets::load(&config).unwrap().warnings.is_empty());
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
        std::fs::set_permissions(&dkim, std::fs::Permissions::from_mode(0o604)).unwrap();
        let warnings: Vec<String> = Assets::load(&config)
            .unwrap()
            .warnings
            .iter()
            .map(|w| w.to_string())
            .collect();
        // The shared TLS key once, on the first key naming it; then DKIM.
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings[0].starts_with("c.toml:10:") && warnings[0].contains("listener[0].key"),
            "{warnings:?}"
        );
        assert!(warnings[0].contains("mode 0640"), "{warnings:?}");
        assert!(
            warnings[1].contains("dkim.sign[0].key") && warnings[1].contains("mode 0604"),
            "{warnings:?}"
        );
    }

    #[test]
    fn shared_pairs_load_once_and_listeners_get_theirs() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pem_pair(dir.path(), "mx.test");
        let (own_cert, own_key) = pem_pair(dir.path(), "own.test");
        let text = format!(
            "[tls]\ncertificate = \"{cert}\"\nkey = \"{key}\"\n\
             [[listener]]\nname = \"a\"\naddress = \"127.0.0.1:25\"\npipeline = \"p\"\ntls = \"starttls\"\n\
             [[listener]]\nname = \"b\"\naddress = \"127.0.0.1:26\"\npipeline = \"p\"\ntls = \"implicit\"\n\
             certificate = \"{cert}\"\nkey = \"{key}\"\n\
             [[listener]]\nname = \"c\"\naddress = \"127.0.0.1:27\"\npipeline = \"p\"\ntls = \"implicit\"\n\
             certificate = \"{own_cert}\"\nkey = \"{own_key}\"\n\
             [[listener]]\nname = \"plain\"\naddress = \"127.0.0.1:28\"\npipeline = \"p\"\n{PIPELINE}"
        );
        let config = load_str(&text, "c.toml").unwrap();
        let assets = Assets::load(&config).unwrap();
        let a = assets.listener_certificate("a").unwrap();
        let b = assets.listener_certificate("b").unwrap();
        let c = assets.listener_certificate("c").unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(
            c.certificates().default.certificate.display().to_string(),
            own_cert
        );
        assert!(assets.listener_certificate("plain").is_none());
        assert!(assets.dkim.is_empty());
    }

    #[test]
    fn without_configured_files_nothing_is_loaded_or_created() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let text = format!(
            "[server]\ndata_dir = \"{}\"\n\
             [[listener]]\nname = \"a\"\naddress = \"127.0.0.1:25\"\npipeline = \"p\"\ntls = \"starttls\"\n{PIPELINE}",
            data.display()
        );
        let config = load_str(&text, "c.toml").unwrap();
        let assets = Assets::load(&config).unwrap();
        // The server generates the self-signed certificate, not the check.
        assert!(assets.listener_certificate("a").is_none());
        assert!(!data.exists());
    }
}
