//! `[tls]` and a listener's `certificate`: one pair (`certificate` and
//! `key` paths) or `[[tls.certificate]]` tables, each a pair and the
//! server names (SNI) it is served for. Paths are checked for form only;
//! `assets` opens them.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use toml::Spanned;

use super::super::*;
use super::{valid_domain, Diagnostics};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    certificate: Option<Spanned<RawCertificate>>,
    key: Option<Spanned<String>>,
}

/// `certificate = "path"`, or an array of `[[...certificate]]` tables.
pub(super) enum RawCertificate {
    Path(String),
    Named(Vec<RawNamedCertificate>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNamedCertificate {
    names: Option<Vec<Spanned<String>>>,
    certificate: Option<Spanned<String>>,
    key: Option<Spanned<String>>,
}

// By hand rather than `untagged`: an untagged enum buffers its input and
// the spans of the tables' keys (the lines in error messages) are lost.
impl<'de> Deserialize<'de> for RawCertificate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CertificateVisitor;
        impl<'de> Visitor<'de> for CertificateVisitor {
            type Value = RawCertificate;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "a PEM file path, or [[certificate]] tables with names, certificate and key",
                )
            }
            fn visit_str<E: de::Error>(self, path: &str) -> Result<RawCertificate, E> {
                Ok(RawCertificate::Path(path.to_owned()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawCertificate, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = seq.next_element()? {
                    entries.push(entry);
                }
                Ok(RawCertificate::Named(entries))
            }
        }
        deserializer.deserialize_any(CertificateVisitor)
    }
}

impl Diagnostics<'_> {
    /// A certificate and key pair given as two keys of one table: both or
    /// neither. Relative paths are relative to the working directory, like
    /// `server.data_dir`.
    pub(super) fn tls_files(
        &mut self,
        certificate: Option<&Spanned<String>>,
        key: Option<&Spanned<String>>,
        table: &str,
    ) -> Option<TlsFilesConfig> {
        match (certificate, key) {
            (None, None) => None,
            (Some(c), None) => {
                self.add(
                    c.span(),
                    format!("{table}.key"),
                    "certificate is set but key is missing",
                );
                None
            }
            (None, Some(k)) => {
                self.add(
                    k.span(),
                    format!("{table}.certificate"),
                    "key is set but certificate is missing",
                );
                None
            }
            (Some(c), Some(k)) => Some(TlsFilesConfig {
                certificate: Located {
                    value: c.get_ref().into(),
                    origin: self.origin(c.span(), format!("{table}.certificate")),
                },
                key: Located {
                    value: k.get_ref().into(),
                    origin: self.origin(k.span(), format!("{table}.key")),
                },
            }),
        }
    }

    /// The certificates of `table` (`tls` or `listener[N]`): a single pair
    /// or named entries, of which the one without `names` (else the first)
    /// also serves clients whose server name matches none.
    pub(super) fn certificates(
        &mut self,
        certificate: Option<&Spanned<RawCertificate>>,
        key: Option<&Spanned<String>>,
        table: &str,
    ) -> Option<CertificatesConfig> {
        let entries = match certificate.map(|c| (c.span(), c.get_ref())) {
            None => {
                return self
                    .tls_files(None, key, table)
                    .map(CertificatesConfig::single)
            }
            Some((span, RawCertificate::Path(path))) => {
                let path = Spanned::new(span, path.clone());
                return self
                    .tls_files(Some(&path), key, table)
                    .map(CertificatesConfig::single);
            }
            Some((span, RawCertificate::Named(entries))) => {
                if let Some(k) = key {
                    self.add(
                        k.span(),
                        format!("{table}.key"),
                        "with [[certificate]] tables each table has its own key",
                    );
                }
                if entries.is_empty() {
                    self.add(span, format!("{table}.certificate"), "no certificate given");
                }
                entries
            }
        };
        let mut named = Vec::new();
        let mut default = None;
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for (index, entry) in entries.iter().enumerate() {
            let entry_key = format!("{table}.certificate[{index}]");
            let files = self.tls_files(entry.certificate.as_ref(), entry.key.as_ref(), &entry_key);
            if entry.certificate.is_none() && entry.key.is_none() {
                self.add(
                    0..0,
                    entry_key.clone(),
                    "a [[certificate]] table needs certificate and key",
                );
            }
            let names = self.server_names(entry.names.as_deref(), &entry_key, index, &mut seen);
            let Some(files) = files else { continue };
            match (names, &default) {
                (None, None) => default = Some(files),
                (None, Some(_)) => self.add(
                    0..0,
                    format!("{entry_key}.names"),
                    "only one [[certificate]] table may leave out names (it serves clients that send no known name)",
                ),
                (Some(names), _) => named.push(NamedCertificateConfig { names, files }),
            }
        }
        let default = match default {
            Some(files) => files,
            None => named.first()?.files.clone(),
        };
        Some(CertificatesConfig { default, named })
    }

    /// The `names` of one entry, lowercased; each a DNS name, optionally
    /// with a leading `*.` (one label, as certificates' wildcards), and in
    /// one entry only.
    fn server_names(
        &mut self,
        names: Option<&[Spanned<String>]>,
        entry_key: &str,
        index: usize,
        seen: &mut BTreeMap<String, usize>,
    ) -> Option<Vec<String>> {
        let names = names?;
        let key = format!("{entry_key}.names");
        if names.is_empty() {
            self.add(
                0..0,
                key.clone(),
                "names is empty (leave it out for the default certificate)",
            );
        }
        let mut out = Vec::new();
        for name in names {
            let lower = name.get_ref().trim_end_matches('.').to_ascii_lowercase();
            let host = lower.strip_prefix("*.").unwrap_or(&lower);
            if !valid_domain(host) {
                self.add(
                    name.span(),
                    key.clone(),
                    format!(
                        "{:?} is not a server name (a DNS name, or *. and one)",
                        name.get_ref()
                    ),
                );
                continue;
            }
            if let Some(first) = seen.insert(lower.clone(), index) {
                self.add(
                    name.span(),
                    key.clone(),
                    format!("{lower} is already the name of certificate[{first}]"),
                );
                continue;
            }
            out.push(lower);
        }
        Some(out)
    }
}

/// `[tls]`: the certificates of TLS listeners without their own.
pub(super) fn resolve_tls(
    d: &mut Diagnostics<'_>,
    raw: Option<&RawTls>,
) -> Option<CertificatesConfig> {
    let raw = raw?;
    if raw.certificate.is_none() && raw.key.is_none() {
        d.add(
            0..0,
            "tls",
            "[tls] needs certificate and key (leave [tls] out to use a generated self-signed certificate)",
        );
    }
    d.certificates(raw.certificate.as_ref(), raw.key.as_ref(), "tls")
}
