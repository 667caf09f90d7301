//! `[[listener]]`: where sluice listens, with which pipeline, TLS mode and
//! AUTH policy, and its own certificates (`certificates`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::super::*;
use super::certificates::RawCertificate;
use super::{loopback_networks, networks, Diagnostics};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListener {
    name: Spanned<String>,
    address: Spanned<String>,
    pipeline: Spanned<String>,
    tls: Option<Spanned<TlsMode>>,
    auth: Option<Spanned<AuthMode>>,
    certificate: Option<Spanned<RawCertificate>>,
    key: Option<Spanned<String>>,
    auth_without_tls: Option<bool>,
    submission: Option<bool>,
    greet_delay: Option<Spanned<String>>,
    proxy_protocol: Option<bool>,
    proxy_trusted_networks: Option<Spanned<Vec<Spanned<String>>>>,
}

/// Every listener; each must name a pipeline of `pipelines`.
pub(super) fn resolve_listeners(
    d: &mut Diagnostics<'_>,
    raw: &[RawListener],
    pipelines: &BTreeMap<String, PipelineConfig>,
) -> Vec<ListenerConfig> {
    let mut listeners: Vec<ListenerConfig> = Vec::new();
    for (i, listener) in raw.iter().enumerate() {
        let key = format!("listener[{i}]");
        if listeners.iter().any(|l| l.name == *listener.name.get_ref()) {
            d.add(
                listener.name.span(),
                format!("{key}.name"),
                format!("duplicate listener name {:?}", listener.name.get_ref()),
            );
        }
        let address: SocketAddr = match listener.address.get_ref().parse() {
            Ok(a) => a,
            Err(_) => {
                d.add(
                    listener.address.span(),
                    format!("{key}.address"),
                    format!(
                        "invalid address {:?} (expected IP:PORT)",
                        listener.address.get_ref()
                    ),
                );
                continue;
            }
        };
        if !pipelines.contains_key(listener.pipeline.get_ref()) {
            let known: Vec<&str> = pipelines.keys().map(String::as_str).collect();
            d.add(
                listener.pipeline.span(),
                format!("{key}.pipeline"),
                format!(
                    "unknown pipeline {:?} (defined: {})",
                    listener.pipeline.get_ref(),
                    known.join(", ")
                ),
            );
        }
        let tls = listener
            .tls
            .as_ref()
            .map_or(TlsMode::None, |t| *t.get_ref());
        let auth = listener
            .auth
            .as_ref()
            .map_or(AuthMode::None, |a| *a.get_ref());
        let auth_without_tls = listener.auth_without_tls.unwrap_or(false);
        let tls_files = d.certificates(listener.certificate.as_ref(), listener.key.as_ref(), &key);
        if tls == TlsMode::None {
            let first = (listener.certificate.as_ref().map(Spanned::span))
                .or(listener.key.as_ref().map(Spanned::span));
            if let Some(span) = first {
                d.add(
                    span,
                    format!("{key}.certificate"),
                    "a certificate is only used by a listener with tls = \"starttls\" or \"implicit\"",
                );
            }
            if let Some(a) = &listener.auth {
                if auth != AuthMode::None && !auth_without_tls {
                    d.add(
                        a.span(),
                        format!("{key}.auth"),
                        "AUTH is only offered over TLS: set tls = \"starttls\" or \"implicit\" \
                         (or auth_without_tls = true for loopback testing)",
                    );
                }
            }
        }
        let submission = listener.submission.unwrap_or(auth == AuthMode::Required);
        if submission && auth == AuthMode::None {
            d.add(
                listener.name.span(),
                format!("{key}.submission"),
                "a submission listener needs auth = \"required\" (or \"optional\")",
            );
        }
        // Port-25 style listeners wait a second before greeting (a short
        // postscreen pregreet test); submission and implicit TLS do not.
        let default_delay = if submission || tls == TlsMode::Implicit {
            Duration::ZERO
        } else {
            Duration::from_secs(1)
        };
        let greet_delay = d.duration(
            &listener.greet_delay,
            &format!("{key}.greet_delay"),
            default_delay,
        );
        if let Some(g) = &listener.greet_delay {
            if tls == TlsMode::Implicit && !greet_delay.is_zero() {
                d.add(
                    g.span(),
                    format!("{key}.greet_delay"),
                    "with implicit TLS the client speaks first: greet_delay must be 0",
                );
            } else if greet_delay > Duration::from_secs(30) {
                d.add(
                    g.span(),
                    format!("{key}.greet_delay"),
                    "must be at most 30s",
                );
            }
        }
        let proxy_protocol = listener.proxy_protocol.unwrap_or(false);
        let proxy_trusted_networks = match &listener.proxy_trusted_networks {
            None => loopback_networks(),
            Some(list) => {
                if !proxy_protocol {
                    d.add(
                        list.span(),
                        format!("{key}.proxy_trusted_networks"),
                        "only used with proxy_protocol = true",
                    );
                }
                networks(d, list.get_ref(), &format!("{key}.proxy_trusted_networks"))
            }
        };
        listeners.push(ListenerConfig {
            name: listener.name.get_ref().clone(),
            address,
            pipeline: listener.pipeline.get_ref().clone(),
            tls,
            auth,
            tls_files,
            auth_without_tls,
            submission,
            greet_delay,
            proxy_protocol,
            proxy_trusted_networks,
        });
    }
    if raw.is_empty() {
        d.add(0..0, "listener", "at least one [[listener]] is required");
    }
    listeners
}
