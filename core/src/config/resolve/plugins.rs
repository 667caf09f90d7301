//! `[plugins.NAME]`, `[pipeline.NAME]` and `[plugin_cache]`: which Wasm
//! components run, with what limits and grants, in which stage of which
//! pipeline.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::super::*;
use super::{Diagnostics, Size};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPlugin {
    path: Spanned<String>,
    allow: Option<Spanned<Vec<Spanned<String>>>>,
    mode: Option<PluginMode>,
    instances: Option<Spanned<String>>,
    pool_size: Option<Spanned<i64>>,
    on_error: Option<OnError>,
    timeout: Option<Spanned<String>>,
    memory: Option<Spanned<Size>>,
    config: Option<toml::Table>,
    /// Files the plugin may read through the `directory` interface.
    #[serde(default)]
    files: Vec<Spanned<String>>,
    /// Mailbox servers it may ask, "lmtp:HOST:PORT" or "smtp:HOST:PORT".
    #[serde(default)]
    callouts: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPipeline {
    #[serde(default)]
    connect: Vec<Spanned<String>>,
    #[serde(default)]
    helo: Vec<Spanned<String>>,
    #[serde(default)]
    mail: Vec<Spanned<String>>,
    #[serde(default)]
    rcpt: Vec<Spanned<String>>,
    #[serde(default)]
    data: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPluginCache {
    enabled: Option<bool>,
    dir: Option<Spanned<String>>,
}

/// A mailbox server a plugin may ask: `lmtp:HOST:PORT`, `smtp:HOST:PORT`,
/// or `lmtp:unix:/path` (`smtp:unix:` too).
fn parse_callout(text: &str) -> Result<CalloutGrant, String> {
    let usage =
        || format!("{text:?} is not \"lmtp:HOST:PORT\", \"smtp:HOST:PORT\" or \"lmtp:unix:/PATH\"");
    let (protocol, target) = text.split_once(':').ok_or_else(usage)?;
    let protocol = match protocol {
        "lmtp" => CalloutProtocol::Lmtp,
        "smtp" => CalloutProtocol::Smtp,
        _ => return Err(usage()),
    };
    if let Some(path) = target.strip_prefix("unix:") {
        if !path.starts_with('/') {
            return Err(usage());
        }
        return Ok(CalloutGrant {
            protocol,
            target: target.to_owned(),
        });
    }
    let (host, port) = target.rsplit_once(':').ok_or_else(usage)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(usage());
    }
    Ok(CalloutGrant {
        protocol,
        target: target.to_owned(),
    })
}

/// `builtin:recipients` without a `recipient_delimiter` of its own takes
/// `[domains]`'s (a plugin sees only its config), so the one key makes
/// `alice+news@` verified at RCPT as it is delivered.
pub(super) fn inherit_recipient_delimiter(
    plugins: &mut BTreeMap<String, PluginConfig>,
    domains: &DomainsConfig,
) {
    if domains.recipient_delimiter.is_empty() {
        return;
    }
    let recipients = PluginSource::Builtin("recipients".to_owned());
    for plugin in plugins.values_mut().filter(|p| p.source == recipients) {
        let Ok(serde_json::Value::Object(mut config)) = serde_json::from_str(&plugin.config_json)
        else {
            continue;
        };
        if !config.contains_key("recipient_delimiter") {
            config.insert(
                "recipient_delimiter".to_owned(),
                domains.recipient_delimiter.clone().into(),
            );
            plugin.config_json = serde_json::Value::Object(config).to_string();
        }
    }
}

pub(super) fn resolve_plugins(
    d: &mut Diagnostics<'_>,
    raw: &BTreeMap<String, Spanned<RawPlugin>>,
) -> BTreeMap<String, PluginConfig> {
    let mut plugins = BTreeMap::new();
    for (name, spanned) in raw {
        let key = format!("plugins.{name}");
        let plugin = spanned.get_ref();
        let path = plugin.path.get_ref();
        let source = match path.strip_prefix("builtin:") {
            Some("") => {
                d.add(
                    plugin.path.span(),
                    format!("{key}.path"),
                    "\"builtin:\" needs a plugin name",
                );
                continue;
            }
            Some(builtin) => PluginSource::Builtin(builtin.to_owned()),
            None if path.starts_with("milter:") => {
                match crate::milter::MilterAddress::parse(&path["milter:".len()..]) {
                    Ok(address) => PluginSource::Milter(address),
                    Err(e) => {
                        d.add(plugin.path.span(), format!("{key}.path"), e);
                        continue;
                    }
                }
            }
            None if path.is_empty() => {
                d.add(plugin.path.span(), format!("{key}.path"), "empty path");
                continue;
            }
            None => PluginSource::File(path.into()),
        };
        let milter = matches!(source, PluginSource::Milter(_));
        if milter {
            refuse_for_milter(d, &key, plugin);
        }
        // A milter answers over a socket, often after scanning: seconds.
        let default_timeout = if milter {
            Duration::from_secs(10)
        } else {
            Duration::from_millis(100)
        };
        let timeout = d.duration(&plugin.timeout, &format!("{key}.timeout"), default_timeout);
        if let Some(t) = &plugin.timeout {
            if timeout.is_zero() || timeout > Duration::from_secs(60) {
                d.add(
                    t.span(),
                    format!("{key}.timeout"),
                    "must be more than 0 and at most 60s",
                );
            }
        }
        let memory = match &plugin.memory {
            None => 64 << 20,
            Some(m) => match m.get_ref().bytes() {
                Ok(n) if (1 << 20..=4 << 30).contains(&n) => n,
                Ok(_) => {
                    d.add(
                        m.span(),
                        format!("{key}.memory"),
                        "must be between 1MiB and 4GiB",
                    );
                    64 << 20
                }
                Err(e) => {
                    d.add(m.span(), format!("{key}.memory"), e);
                    64 << 20
                }
            },
        };
        let config_json = match &plugin.config {
            Some(table) => serde_json::to_string(table).unwrap_or_else(|_| "{}".to_owned()),
            None => "{}".to_owned(),
        };
        let mut files = Vec::new();
        for file in &plugin.files {
            if file.get_ref().trim().is_empty() {
                d.add(file.span(), format!("{key}.files"), "empty path");
            } else {
                files.push(PathBuf::from(file.get_ref()));
            }
        }
        let mut callouts = Vec::new();
        for callout in &plugin.callouts {
            match parse_callout(callout.get_ref()) {
                Ok(grant) => callouts.push(grant),
                Err(e) => d.add(callout.span(), format!("{key}.callouts"), e),
            }
        }
        let allow = match &plugin.allow {
            None if matches!(source, PluginSource::Builtin(_)) => Capabilities::bundled(),
            None => Capabilities::NONE,
            Some(list) => {
                let mut granted = Vec::new();
                for entry in list.get_ref() {
                    match Capability::parse(entry.get_ref()) {
                        Some(capability) => granted.push(capability),
                        None => d.add(
                            entry.span(),
                            format!("{key}.allow"),
                            format!(
                                "unknown capability {:?} (known: {})",
                                entry.get_ref(),
                                Capability::ALL.map(Capability::name).join(", ")
                            ),
                        ),
                    }
                }
                Capabilities::from_iter(granted)
            }
        };
        let builtin = matches!(source, PluginSource::Builtin(_));
        let instances = resolve_instances(d, &key, builtin, &plugin.instances, &plugin.pool_size);
        plugins.insert(
            name.clone(),
            PluginConfig {
                name: name.clone(),
                source,
                allow,
                mode: plugin.mode.unwrap_or_default(),
                instances,
                on_error: plugin.on_error.unwrap_or(OnError::Tempfail),
                timeout,
                memory,
                config_json,
                files,
                callouts,
            },
        );
    }
    plugins
}

/// The keys that shape a Wasm instance mean nothing for a milter.
fn refuse_for_milter(d: &mut Diagnostics<'_>, key: &str, plugin: &RawPlugin) {
    let mut refuse = |span: std::ops::Range<usize>, name: &str| {
        d.add(span, format!("{key}.{name}"), "does not apply to a milter");
    };
    if let Some(v) = &plugin.instances {
        refuse(v.span(), "instances");
    }
    if let Some(v) = &plugin.pool_size {
        refuse(v.span(), "pool_size");
    }
    if let Some(v) = &plugin.memory {
        refuse(v.span(), "memory");
    }
    if let Some(v) = plugin.files.first() {
        refuse(v.span(), "files");
    }
    if let Some(v) = plugin.callouts.first() {
        refuse(v.span(), "callouts");
    }
}

/// Every pipeline; each stage may name only plugins declared in `plugins`.
pub(super) fn resolve_pipelines(
    d: &mut Diagnostics<'_>,
    raw: &BTreeMap<String, RawPipeline>,
    plugins: &BTreeMap<String, Spanned<RawPlugin>>,
) -> BTreeMap<String, PipelineConfig> {
    let mut pipelines = BTreeMap::new();
    for (name, pipeline) in raw {
        let mut stage = |stage: &str, names: &[Spanned<String>]| -> Vec<String> {
            let mut out = Vec::new();
            for plugin in names {
                if plugins.contains_key(plugin.get_ref()) {
                    out.push(plugin.get_ref().clone());
                } else {
                    let known: Vec<&str> = plugins.keys().map(String::as_str).collect();
                    d.add(
                        plugin.span(),
                        format!("pipeline.{name}.{stage}"),
                        format!(
                            "unknown plugin {:?} (declared: {})",
                            plugin.get_ref(),
                            known.join(", ")
                        ),
                    );
                }
            }
            out
        };
        let resolved = PipelineConfig {
            name: name.clone(),
            connect: stage("connect", &pipeline.connect),
            helo: stage("helo", &pipeline.helo),
            mail: stage("mail", &pipeline.mail),
            rcpt: stage("rcpt", &pipeline.rcpt),
            data: stage("data", &pipeline.data),
        };
        pipelines.insert(name.clone(), resolved);
    }
    pipelines
}

/// Largest `pool_size`: each kept instance holds its memory for good.
const MAX_POOL_SIZE: i64 = 1024;

/// `instances` and `pool_size`. Without `instances`, bundled plugins are
/// `reused` (they reset their per-session state themselves) and plugin files
/// `per-session` (a fresh instance is the only reset wasmtime has).
fn resolve_instances(
    d: &mut Diagnostics<'_>,
    key: &str,
    builtin: bool,
    policy: &Option<Spanned<String>>,
    pool_size: &Option<Spanned<i64>>,
) -> InstancePolicy {
    #[derive(PartialEq)]
    enum Kind {
        PerSession,
        Pooled,
        Reused,
    }
    let default = if builtin {
        Kind::Reused
    } else {
        Kind::PerSession
    };
    let kind = match policy {
        None => default,
        Some(text) => match text.get_ref().as_str() {
            "per-session" => Kind::PerSession,
            "pooled" => Kind::Pooled,
            "reused" => Kind::Reused,
            other => {
                d.add(
                    text.span(),
                    format!("{key}.instances"),
                    format!("{other:?} is not \"per-session\", \"pooled\" or \"reused\""),
                );
                default
            }
        },
    };
    let size = match pool_size {
        None => None,
        Some(size) if kind == Kind::PerSession => {
            d.add(
                size.span(),
                format!("{key}.pool_size"),
                "only applies with instances = \"pooled\" or \"reused\"",
            );
            None
        }
        Some(size) => match u32::try_from(*size.get_ref()) {
            Ok(n) if (1..=MAX_POOL_SIZE).contains(size.get_ref()) => Some(n),
            _ => {
                d.add(
                    size.span(),
                    format!("{key}.pool_size"),
                    format!("must be between 1 and {MAX_POOL_SIZE}"),
                );
                None
            }
        },
    };
    match kind {
        Kind::PerSession => InstancePolicy::PerSession,
        Kind::Pooled => InstancePolicy::Pooled {
            size: size.unwrap_or(4),
        },
        Kind::Reused => InstancePolicy::Reused {
            idle: size.unwrap_or(InstancePolicy::DEFAULT_IDLE),
        },
    }
}

pub(super) fn resolve_plugin_cache(
    d: &mut Diagnostics<'_>,
    raw: Option<&RawPluginCache>,
) -> PluginCacheConfig {
    let Some(raw) = raw else {
        return PluginCacheConfig::default();
    };
    if raw.enabled == Some(false) {
        return PluginCacheConfig::Off;
    }
    match &raw.dir {
        None => PluginCacheConfig::DataDir,
        Some(dir) if dir.get_ref().is_empty() => {
            d.add(dir.span(), "plugin_cache.dir", "empty path");
            PluginCacheConfig::DataDir
        }
        Some(dir) => PluginCacheConfig::Dir(PathBuf::from(dir.get_ref())),
    }
}
