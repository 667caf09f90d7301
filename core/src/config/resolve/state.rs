//! `[state]`: where the plugins' key-value state lives (sled, or a Redis
//! URL checked for form; connecting happens when the server runs).

use serde::Deserialize;
use toml::Spanned;

use super::super::*;
use super::Diagnostics;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawState {
    backend: Option<Spanned<String>>,
    url: Option<Spanned<String>>,
    key_prefix: Option<Spanned<String>>,
}

/// `[state]`: sled unless `backend = "redis"`, which needs a `redis://` URL
/// (checked for form here; connecting happens when the server runs).
pub(super) fn resolve_state(d: &mut Diagnostics<'_>, raw: Option<&RawState>) -> StateConfig {
    let Some(raw) = raw else {
        return StateConfig::Sled;
    };
    let backend = raw.backend.as_ref().map(|b| b.get_ref().as_str());
    match backend {
        None | Some("sled") => {
            for (value, key) in [
                (&raw.url, "state.url"),
                (&raw.key_prefix, "state.key_prefix"),
            ] {
                if let Some(v) = value {
                    d.add(v.span(), key, "only used with backend = \"redis\"");
                }
            }
            StateConfig::Sled
        }
        Some("redis") => {
            let key_prefix = raw
                .key_prefix
                .as_ref()
                .map_or_else(|| "sluice:".to_owned(), |p| p.get_ref().clone());
            let Some(url) = &raw.url else {
                let span = raw.backend.as_ref().map_or(0..0, |b| b.span());
                d.add(
                    span,
                    "state.url",
                    "backend = \"redis\" needs url (e.g. \"redis://127.0.0.1:6379\")",
                );
                return StateConfig::Sled;
            };
            let text = url.get_ref();
            let scheme_ok = text.starts_with("redis://") || text.starts_with("redis+unix://");
            if let Err(e) = redis::Client::open(text.as_str()).map(drop).and_then(|()| {
                if scheme_ok {
                    Ok(())
                } else {
                    Err(redis::RedisError::from((
                        redis::ErrorKind::InvalidClientConfig,
                        "expected a redis:// URL",
                    )))
                }
            }) {
                d.add(
                    url.span(),
                    "state.url",
                    format!(
                        "invalid Redis URL {:?}: {e}",
                        StateConfig::redacted_url(text)
                    ),
                );
                return StateConfig::Sled;
            }
            StateConfig::Redis {
                url: text.clone(),
                key_prefix,
            }
        }
        Some(other) => {
            let span = raw.backend.as_ref().map_or(0..0, |b| b.span());
            d.add(
                span,
                "state.backend",
                format!("unknown backend {other:?} (expected \"sled\" or \"redis\")"),
            );
            StateConfig::Sled
        }
    }
}
