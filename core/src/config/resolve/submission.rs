//! `[submission]` and `[dkim]`: who may send as whom on a submission
//! listener, and which mail is signed with which key (the key paths are
//! checked for form only; `assets` opens them).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::super::*;
use super::{networks, valid_domain, Diagnostics};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSubmission {
    #[serde(default)]
    senders: BTreeMap<String, Spanned<Vec<Spanned<String>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDkim {
    #[serde(default)]
    trusted_networks: Vec<Spanned<String>>,
    #[serde(default)]
    sign: Vec<RawDkimSign>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDkimSign {
    domain: Spanned<String>,
    selector: Spanned<String>,
    key: Spanned<String>,
    algorithm: Option<DkimAlgorithm>,
    headers: Option<Spanned<Vec<String>>>,
}

pub(super) fn resolve_submission(
    d: &mut Diagnostics<'_>,
    raw: Option<&RawSubmission>,
) -> SubmissionConfig {
    let mut senders = BTreeMap::new();
    for (user, list) in raw.map(|r| &r.senders).into_iter().flatten() {
        let key = format!("submission.senders.{user:?}");
        let mut patterns = Vec::new();
        if list.get_ref().is_empty() {
            d.add(
                list.span(),
                &key,
                "empty list (leave the user out to allow its own address)",
            );
        }
        for item in list.get_ref() {
            let text = item.get_ref().trim().to_lowercase();
            let pattern = if text == "*" {
                Some(SenderPattern::Any)
            } else if let Some(domain) = text.strip_prefix('@') {
                valid_domain(domain).then(|| SenderPattern::Domain(domain.to_owned()))
            } else {
                match text.rsplit_once('@') {
                    Some((local, domain)) if !local.is_empty() && valid_domain(domain) => {
                        Some(SenderPattern::Address(text.clone()))
                    }
                    _ => None,
                }
            };
            match pattern {
                Some(p) => patterns.push(p),
                None => d.add(
                    item.span(),
                    &key,
                    format!(
                        "invalid sender {:?} (expected \"user@domain\", \"@domain\" or \"*\")",
                        item.get_ref()
                    ),
                ),
            }
        }
        senders.insert(user.to_lowercase(), patterns);
    }
    SubmissionConfig { senders }
}

pub(super) fn resolve_dkim(d: &mut Diagnostics<'_>, raw: Option<&RawDkim>) -> DkimConfig {
    let Some(raw) = raw else {
        return DkimConfig::default();
    };
    let trusted_networks = networks(d, &raw.trusted_networks, "dkim.trusted_networks");
    let mut sign: Vec<DkimKeyConfig> = Vec::new();
    for (i, entry) in raw.sign.iter().enumerate() {
        let key = format!("dkim.sign[{i}]");
        let domain = entry
            .domain
            .get_ref()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        if !valid_domain(&domain) {
            d.add(
                entry.domain.span(),
                format!("{key}.domain"),
                format!("invalid domain {:?}", entry.domain.get_ref()),
            );
        }
        let selector = entry.selector.get_ref();
        if !selector.split('.').all(|l| {
            !l.is_empty()
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        }) {
            d.add(
                entry.selector.span(),
                format!("{key}.selector"),
                format!("invalid selector {selector:?}"),
            );
        }
        if sign
            .iter()
            .any(|s| s.domain == domain && s.selector == *selector)
        {
            d.add(
                entry.selector.span(),
                format!("{key}.selector"),
                format!("selector {selector:?} of {domain} is configured twice"),
            );
        }
        let algorithm = entry.algorithm.unwrap_or(DkimAlgorithm::RsaSha256);
        let key_path = Located {
            value: PathBuf::from(entry.key.get_ref()),
            origin: d.origin(entry.key.span(), format!("{key}.key")),
        };
        let headers = entry
            .headers
            .as_ref()
            .map(|h| h.get_ref().clone())
            .unwrap_or_default();
        if let Some(h) = &entry.headers {
            if let Some(bad) = h.get_ref().iter().find(|name| {
                name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
            }) {
                d.add(
                    h.span(),
                    format!("{key}.headers"),
                    format!("invalid header field name {bad:?}"),
                );
            }
            if h.get_ref()
                .iter()
                .any(|n| n.eq_ignore_ascii_case("dkim-signature"))
            {
                d.add(
                    h.span(),
                    format!("{key}.headers"),
                    "DKIM-Signature cannot be signed by itself",
                );
            }
        }
        sign.push(DkimKeyConfig {
            domain,
            selector: selector.clone(),
            key: key_path,
            algorithm,
            headers,
        });
    }
    DkimConfig {
        trusted_networks,
        sign,
    }
}
