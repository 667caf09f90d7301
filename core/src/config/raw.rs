//! The file as written (serde, unknown keys refused) and its resolution
//! into [`Config`](super::Config), collecting every semantic error with the
//! line of the offending key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: Option<RawServer>,
    domains: Option<RawDomains>,
    #[serde(default)]
    listener: Vec<RawListener>,
    delivery: Option<RawDelivery>,
    queue: Option<RawQueue>,
    dns: Option<RawDns>,
    #[serde(default)]
    plugins: BTreeMap<String, Spanned<RawPlugin>>,
    #[serde(default)]
    pipeline: BTreeMap<String, RawPipeline>,
    log: Option<RawLog>,
    tls: Option<RawTls>,
    auth: Option<RawAuth>,
    admin: Option<RawAdmin>,
    state: Option<RawState>,
    reload: Option<RawReload>,
    plugin_cache: Option<RawPluginCache>,
    submission: Option<RawSubmission>,
    dkim: Option<RawDkim>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawState {
    backend: Option<Spanned<String>>,
    url: Option<Spanned<String>>,
    key_prefix: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSubmission {
    #[serde(default)]
    senders: BTreeMap<String, Spanned<Vec<Spanned<String>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPluginCache {
    enabled: Option<bool>,
    dir: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDkim {
    #[serde(default)]
    trusted_networks: Vec<Spanned<String>>,
    #[serde(default)]
    sign: Vec<RawDkimSign>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReload {
    watch: Option<bool>,
    debounce: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDkimSign {
    domain: Spanned<String>,
    selector: Spanned<String>,
    key: Spanned<String>,
    algorithm: Option<DkimAlgorithm>,
    headers: Option<Spanned<Vec<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    certificate: Option<Spanned<String>>,
    key: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    max_failures: Option<Spanned<u32>>,
    lockout: Option<Spanned<String>>,
    min_password_length: Option<Spanned<usize>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    address: Option<Spanned<String>>,
    allow_remote: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    hostname: Option<Spanned<String>>,
    data_dir: Option<String>,
    max_message_size: Option<Spanned<Size>>,
    max_recipients: Option<usize>,
    max_received_headers: Option<usize>,
    max_connections: Option<usize>,
    max_connections_per_ip: Option<usize>,
    greet_exempt: Option<Vec<Spanned<String>>>,
    timeouts: Option<RawTimeouts>,
    shutdown_grace: Option<Spanned<String>>,
    reverse_lookup: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    command: Option<Spanned<String>>,
    data_block: Option<Spanned<String>>,
    command_under_load: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDomains {
    #[serde(default)]
    local: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    name: Spanned<String>,
    address: Spanned<String>,
    pipeline: Spanned<String>,
    tls: Option<Spanned<TlsMode>>,
    auth: Option<Spanned<AuthMode>>,
    certificate: Option<Spanned<String>>,
    key: Option<Spanned<String>>,
    auth_without_tls: Option<bool>,
    submission: Option<bool>,
    greet_delay: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDelivery {
    local: Option<Spanned<RawLocal>>,
    #[serde(default)]
    route: Vec<RawRoute>,
    max_connections_per_domain: Option<usize>,
    messages_per_second_per_domain: Option<Spanned<f64>>,
    smtp_port: Option<u16>,
    tls: Option<OutboundTls>,
    ca_file: Option<String>,
}

/// `local = "maildir"` or `local = { lmtp = "127.0.0.1:24" }`.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawLocal {
    Name(String),
    Lmtp(RawLmtp),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLmtp {
    lmtp: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    domain: Spanned<String>,
    next_hop: Spanned<String>,
    tls: Option<OutboundTls>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDns {
    #[serde(default)]
    nameservers: Vec<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    attempts: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQueue {
    retry: Option<Spanned<Vec<String>>>,
    max_age: Option<Spanned<String>>,
    warn_after: Option<Spanned<String>>,
    min_free_space: Option<Spanned<Size>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlugin {
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
struct RawPipeline {
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
struct RawLog {
    level: Option<String>,
    format: Option<LogFormat>,
}

/// A size: an integer of bytes or a string such as "25MiB" or "512KB".
#[derive(Deserialize)]
#[serde(untagged)]
enum Size {
    Bytes(u64),
    Text(String),
}

impl Size {
    fn bytes(&self) -> Result<u64, String> {
        match self {
            Size::Bytes(n) => Ok(*n),
            Size::Text(text) => parse_size(text),
        }
    }
}

fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| {
        format!("invalid size {text:?} (expected e.g. 1048576, \"64MiB\", \"10MB\")")
    })?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        other => return Err(format!("unknown size unit {other:?} in {text:?}")),
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("size {text:?} is too large"))
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

/// Line and column (1-based) of a byte offset.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, column)
}

struct Diagnostics<'a> {
    text: &'a str,
    origin: &'a str,
    list: Vec<ConfigDiagnostic>,
}

impl Diagnostics<'_> {
    /// A certificate and key pair given as two keys of one table: both or
    /// neither, each a readable PEM file of the right kind. Relative paths
    /// are relative to the working directory, like `server.data_dir`.
    fn tls_files(
        &mut self,
        certificate: &Option<Spanned<String>>,
        key: &Option<Spanned<String>>,
        table: &str,
    ) -> Option<TlsFiles> {
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
            (Some(c), Some(k)) => {
                let files = TlsFiles {
                    certificate: c.get_ref().into(),
                    key: k.get_ref().into(),
                };
                let mut ok = true;
                if let Err(e) = crate::tls::read_certificates(&files.certificate) {
                    self.add(c.span(), format!("{table}.certificate"), e.to_string());
                    ok = false;
                }
                if let Err(e) = crate::tls::read_private_key(&files.key) {
                    self.add(k.span(), format!("{table}.key"), e.to_string());
                    ok = false;
                }
                ok.then_some(files)
            }
        }
    }

    fn add(
        &mut self,
        span: std::ops::Range<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) {
        let (line, column) = position(self.text, span.start);
        self.list.push(ConfigDiagnostic {
            origin: self.origin.to_owned(),
            line,
            column,
            key: key.into(),
            message: message.into(),
        });
    }

    fn duration(
        &mut self,
        value: &Option<Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Duration {
        match value {
            None => default,
            Some(v) => match humantime::parse_duration(v.get_ref()) {
                Ok(d) => d,
                Err(e) => {
                    self.add(
                        v.span(),
                        key,
                        format!("invalid duration {:?}: {e}", v.get_ref()),
                    );
                    default
                }
            },
        }
    }
}

pub(super) fn resolve(text: &str, origin: &str) -> Result<Config, Vec<ConfigDiagnostic>> {
    let mut d = Diagnostics {
        text,
        origin,
        list: Vec::new(),
    };
    let raw: RawConfig = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            d.add(span, "", e.message().trim().to_owned());
            return Err(d.list);
        }
    };

    let server = raw.server.unwrap_or(RawServer {
        hostname: None,
        data_dir: None,
        max_message_size: None,
        max_recipients: None,
        max_received_headers: None,
        max_connections: None,
        max_connections_per_ip: None,
        greet_exempt: None,
        timeouts: None,
        shutdown_grace: None,
        reverse_lookup: None,
    });
    let hostname = match &server.hostname {
        Some(h) if !valid_domain(h.get_ref()) => {
            d.add(
                h.span(),
                "server.hostname",
                format!("invalid host name {:?}", h.get_ref()),
            );
            "localhost".to_owned()
        }
        Some(h) => h.get_ref().to_ascii_lowercase(),
        None => "localhost".to_owned(),
    };
    let max_message_size = match &server.max_message_size {
        None => 25 << 20,
        Some(size) => match size.get_ref().bytes() {
            Ok(n) if n > 0 => n,
            Ok(_) => {
                d.add(
                    size.span(),
                    "server.max_message_size",
                    "must be greater than 0",
                );
                25 << 20
            }
            Err(e) => {
                d.add(size.span(), "server.max_message_size", e);
                25 << 20
            }
        },
    };
    let (command_timeout, data_timeout, stress_timeout) = match &server.timeouts {
        Some(t) => (
            d.duration(
                &t.command,
                "server.timeouts.command",
                Duration::from_secs(300),
            ),
            d.duration(
                &t.data_block,
                "server.timeouts.data_block",
                Duration::from_secs(180),
            ),
            d.duration(
                &t.command_under_load,
                "server.timeouts.command_under_load",
                Duration::from_secs(10),
            ),
        ),
        None => (
            Duration::from_secs(300),
            Duration::from_secs(180),
            Duration::from_secs(10),
        ),
    };
    let greet_exempt = match &server.greet_exempt {
        None => vec![
            "127.0.0.0/8".parse().expect("literal network"),
            "::1/128".parse().expect("literal network"),
        ],
        Some(list) => networks(&mut d, list, "server.greet_exempt"),
    };
    let shutdown_grace = d.duration(
        &server.shutdown_grace,
        "server.shutdown_grace",
        Duration::from_secs(10),
    );
    let server_config = ServerConfig {
        hostname,
        data_dir: server
            .data_dir
            .map(Into::into)
            .unwrap_or_else(|| "./data".into()),
        max_message_size,
        max_recipients: server.max_recipients.unwrap_or(100).max(1),
        max_received_headers: server.max_received_headers.unwrap_or(50),
        max_connections: server.max_connections.unwrap_or(1000).max(1),
        max_connections_per_ip: server.max_connections_per_ip.unwrap_or(50).max(1),
        greet_exempt,
        timeouts: Timeouts {
            command: command_timeout,
            data_block: data_timeout,
            command_under_load: stress_timeout,
        },
        shutdown_grace,
        reverse_lookup: server.reverse_lookup.unwrap_or(true),
    };

    let mut local = Vec::new();
    for domain in raw.domains.map(|d| d.local).unwrap_or_default() {
        if valid_domain(domain.get_ref()) {
            local.push(domain.get_ref().to_ascii_lowercase());
        } else {
            d.add(
                domain.span(),
                "domains.local",
                format!("invalid domain {:?}", domain.get_ref()),
            );
        }
    }

    let mut plugins = BTreeMap::new();
    for (name, spanned) in &raw.plugins {
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
            None if path.is_empty() => {
                d.add(plugin.path.span(), format!("{key}.path"), "empty path");
                continue;
            }
            None => PluginSource::File(path.into()),
        };
        let timeout = d.duration(
            &plugin.timeout,
            &format!("{key}.timeout"),
            Duration::from_millis(100),
        );
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
            None if matches!(source, PluginSource::Builtin(_)) => Capabilities::all(),
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
        let instances =
            resolve_instances(&mut d, &key, builtin, &plugin.instances, &plugin.pool_size);
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

    let mut pipelines = BTreeMap::new();
    for (name, pipeline) in &raw.pipeline {
        let mut stage = |stage: &str, names: &[Spanned<String>]| -> Vec<String> {
            let mut out = Vec::new();
            for plugin in names {
                if raw.plugins.contains_key(plugin.get_ref()) {
                    out.push(plugin.get_ref().clone());
                } else {
                    let known: Vec<&str> = raw.plugins.keys().map(String::as_str).collect();
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

    let mut listeners: Vec<ListenerConfig> = Vec::new();
    for (i, listener) in raw.listener.iter().enumerate() {
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
        if !raw.pipeline.contains_key(listener.pipeline.get_ref()) {
            let known: Vec<&str> = raw.pipeline.keys().map(String::as_str).collect();
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
        let tls_files = d.tls_files(&listener.certificate, &listener.key, &key);
        if tls == TlsMode::None {
            if let Some(first) = listener.certificate.as_ref().or(listener.key.as_ref()) {
                d.add(
                    first.span(),
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
        });
    }
    if raw.listener.is_empty() {
        d.add(0..0, "listener", "at least one [[listener]] is required");
    }

    let delivery = raw.delivery.unwrap_or(RawDelivery {
        local: None,
        route: Vec::new(),
        max_connections_per_domain: None,
        messages_per_second_per_domain: None,
        smtp_port: None,
        tls: None,
        ca_file: None,
    });
    let local_delivery = match delivery.local.as_ref().map(|l| (l.get_ref(), l.span())) {
        None => LocalDelivery::Maildir,
        Some((RawLocal::Name(name), _)) if name == "maildir" => LocalDelivery::Maildir,
        Some((RawLocal::Name(name), span)) => {
            d.add(
                span,
                "delivery.local",
                format!(
                    "unsupported local delivery {name:?} (expected \"maildir\" or {{ lmtp = \"HOST:PORT\" }})"
                ),
            );
            LocalDelivery::Maildir
        }
        Some((RawLocal::Lmtp(lmtp), span)) => match lmtp.lmtp.strip_prefix("unix:") {
            Some(path) if !path.is_empty() => LocalDelivery::Lmtp(LmtpTarget::Unix(path.into())),
            _ if valid_host_port(&lmtp.lmtp) => {
                LocalDelivery::Lmtp(LmtpTarget::Tcp(lmtp.lmtp.clone()))
            }
            _ => {
                d.add(
                    span,
                    "delivery.local.lmtp",
                    format!(
                        "invalid LMTP address {:?} (expected HOST:PORT or unix:/path)",
                        lmtp.lmtp
                    ),
                );
                LocalDelivery::Maildir
            }
        },
    };
    let messages_per_second_per_domain = match &delivery.messages_per_second_per_domain {
        Some(rate) if !(rate.get_ref().is_finite() && *rate.get_ref() > 0.0) => {
            d.add(
                rate.span(),
                "delivery.messages_per_second_per_domain",
                "must be a number greater than 0",
            );
            None
        }
        rate => rate.as_ref().map(|r| *r.get_ref()),
    };
    let mut routes = Vec::new();
    for (i, route) in delivery.route.iter().enumerate() {
        let domain = route.domain.get_ref().to_ascii_lowercase();
        if domain != "*" && !valid_domain(&domain) {
            d.add(
                route.domain.span(),
                format!("delivery.route[{i}].domain"),
                format!("invalid domain {domain:?}"),
            );
        }
        let hop = route.next_hop.get_ref();
        if !valid_host_port(hop) {
            d.add(
                route.next_hop.span(),
                format!("delivery.route[{i}].next_hop"),
                format!("invalid next hop {hop:?} (expected HOST:PORT)"),
            );
        }
        routes.push(Route {
            domain,
            next_hop: hop.clone(),
            tls: route.tls,
        });
    }

    let queue = raw.queue.unwrap_or(RawQueue {
        retry: None,
        max_age: None,
        warn_after: None,
        min_free_space: None,
    });
    let default_retry: Vec<Duration> = [120, 300, 600, 900, 1800, 3600, 7200]
        .into_iter()
        .map(Duration::from_secs)
        .collect();
    let retry = match &queue.retry {
        None => default_retry,
        Some(list) if list.get_ref().is_empty() => {
            d.add(
                list.span(),
                "queue.retry",
                "must list at least one interval",
            );
            default_retry
        }
        Some(list) => {
            let mut out = Vec::new();
            for item in list.get_ref() {
                match humantime::parse_duration(item) {
                    Ok(v) => out.push(v),
                    Err(e) => d.add(
                        list.span(),
                        "queue.retry",
                        format!("invalid duration {item:?}: {e}"),
                    ),
                }
            }
            out
        }
    };
    let max_age = d.duration(
        &queue.max_age,
        "queue.max_age",
        Duration::from_secs(5 * 86400),
    );
    // "0s" turns the delayed-delivery warning off.
    let warn_after = Some(d.duration(
        &queue.warn_after,
        "queue.warn_after",
        Duration::from_secs(4 * 3600),
    ))
    .filter(|d| !d.is_zero());

    let dns = raw.dns.unwrap_or(RawDns {
        nameservers: Vec::new(),
        timeout: None,
        attempts: None,
    });
    let mut nameservers = Vec::new();
    for server in &dns.nameservers {
        let text = server.get_ref();
        // A bare IP means port 53.
        let parsed = text.parse::<SocketAddr>().ok().or_else(|| {
            text.parse::<std::net::IpAddr>()
                .ok()
                .map(|ip| SocketAddr::new(ip, 53))
        });
        match parsed {
            Some(address) => nameservers.push(address),
            None => d.add(
                server.span(),
                "dns.nameservers",
                format!("invalid name server {text:?} (expected IP or IP:PORT)"),
            ),
        }
    }
    let dns_config = DnsConfig {
        nameservers,
        timeout: d.duration(&dns.timeout, "dns.timeout", Duration::from_secs(5)),
        attempts: dns.attempts.unwrap_or(2).max(1),
    };

    const DEFAULT_MIN_FREE_SPACE: u64 = 256 << 20;
    let min_free_space = match &queue.min_free_space {
        None => DEFAULT_MIN_FREE_SPACE,
        Some(size) => match size.get_ref().bytes() {
            Ok(n) => n,
            Err(e) => {
                d.add(size.span(), "queue.min_free_space", e);
                DEFAULT_MIN_FREE_SPACE
            }
        },
    };

    let admin = raw.admin.unwrap_or(RawAdmin {
        address: None,
        allow_remote: None,
    });
    let allow_remote = admin.allow_remote.unwrap_or(false);
    let admin_address = match &admin.address {
        None => None,
        Some(text) => match text.get_ref().parse::<SocketAddr>() {
            Ok(a) if !a.ip().is_loopback() && !allow_remote => {
                d.add(
                    text.span(),
                    "admin.address",
                    format!(
                        "{a} is not a loopback address and the admin API has no \
                         authentication; set admin.allow_remote = true to bind it anyway"
                    ),
                );
                None
            }
            Ok(a) => Some(a),
            Err(_) => {
                d.add(
                    text.span(),
                    "admin.address",
                    format!(
                        "invalid address {:?} (expected IP:PORT, e.g. \"127.0.0.1:8025\")",
                        text.get_ref()
                    ),
                );
                None
            }
        },
    };

    let log = raw.log.unwrap_or(RawLog {
        level: None,
        format: None,
    });

    let tls = match &raw.tls {
        Some(t) => d.tls_files(&t.certificate, &t.key, "tls"),
        None => None,
    };
    if let Some(RawTls {
        certificate: None,
        key: None,
    }) = &raw.tls
    {
        d.add(
            0..0,
            "tls",
            "[tls] needs certificate and key (leave [tls] out to use a generated self-signed certificate)",
        );
    }
    let auth = resolve_auth(&mut d, raw.auth.as_ref());
    let state = resolve_state(&mut d, raw.state.as_ref());
    let reload = resolve_reload(&mut d, raw.reload.as_ref());
    let plugin_cache = resolve_plugin_cache(&mut d, raw.plugin_cache.as_ref());
    let submission = resolve_submission(&mut d, raw.submission.as_ref());
    let dkim = resolve_dkim(&mut d, raw.dkim.as_ref());

    if !d.list.is_empty() {
        return Err(d.list);
    }
    Ok(Config {
        server: server_config,
        domains: DomainsConfig { local },
        listeners,
        delivery: DeliveryConfig {
            local: local_delivery,
            routes,
            max_connections_per_domain: delivery.max_connections_per_domain.unwrap_or(10).max(1),
            messages_per_second_per_domain,
            smtp_port: delivery.smtp_port.unwrap_or(25),
            tls: delivery.tls.unwrap_or(OutboundTls::Opportunistic),
            ca_file: delivery.ca_file.map(PathBuf::from),
        },
        queue: QueueConfig {
            retry,
            max_age,
            warn_after,
            min_free_space,
        },
        dns: dns_config,
        plugins,
        pipelines,
        log: LogConfig {
            level: log.level.unwrap_or_else(|| "info".to_owned()),
            format: log.format.unwrap_or(LogFormat::Text),
        },
        tls,
        auth,
        admin: AdminConfig {
            address: admin_address,
            allow_remote,
        },
        state,
        reload,
        plugin_cache,
        submission,
        dkim,
    })
}

/// A list of networks (`10.0.0.0/8`, or a bare address for one host).
fn networks(d: &mut Diagnostics<'_>, list: &[Spanned<String>], key: &str) -> Vec<ipnet::IpNet> {
    let mut out = Vec::new();
    for item in list {
        let text = item.get_ref();
        let parsed = text.parse::<ipnet::IpNet>().ok().or_else(|| {
            text.parse::<std::net::IpAddr>()
                .ok()
                .map(ipnet::IpNet::from)
        });
        match parsed {
            Some(net) => out.push(net),
            None => d.add(
                item.span(),
                key,
                format!("invalid network {text:?} (expected e.g. \"192.0.2.0/24\" or an address)"),
            ),
        }
    }
    out
}

fn resolve_submission(d: &mut Diagnostics<'_>, raw: Option<&RawSubmission>) -> SubmissionConfig {
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

fn resolve_dkim(d: &mut Diagnostics<'_>, raw: Option<&RawDkim>) -> DkimConfig {
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
        let path = PathBuf::from(entry.key.get_ref());
        if let Err(e) = crate::dkim::check_key(&path, algorithm) {
            d.add(entry.key.span(), format!("{key}.key"), e.to_string());
        }
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
            key: path,
            algorithm,
            headers,
        });
    }
    DkimConfig {
        trusted_networks,
        sign,
    }
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

fn resolve_plugin_cache(
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

fn resolve_reload(d: &mut Diagnostics<'_>, raw: Option<&RawReload>) -> ReloadConfig {
    let mut reload = ReloadConfig::default();
    let Some(raw) = raw else {
        return reload;
    };
    reload.watch = raw.watch.unwrap_or(reload.watch);
    reload.debounce = d.duration(&raw.debounce, "reload.debounce", reload.debounce);
    if let Some(text) = &raw.debounce {
        if reload.debounce > Duration::from_secs(60) {
            d.add(text.span(), "reload.debounce", "must be at most 60s");
        }
    }
    reload
}

/// `[state]`: sled unless `backend = "redis"`, which needs a `redis://` URL
/// (checked for form here; connecting happens when the server runs).
fn resolve_state(d: &mut Diagnostics<'_>, raw: Option<&RawState>) -> StateConfig {
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

/// "host:port" with a non-empty host and a numeric port.
fn valid_host_port(text: &str) -> bool {
    text.rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

fn resolve_auth(d: &mut Diagnostics<'_>, raw: Option<&RawAuth>) -> AuthConfig {
    let mut auth = AuthConfig::default();
    let Some(raw) = raw else {
        return auth;
    };
    if let Some(n) = &raw.max_failures {
        if *n.get_ref() == 0 {
            d.add(n.span(), "auth.max_failures", "must be at least 1");
        } else {
            auth.max_failures = *n.get_ref();
        }
    }
    auth.lockout = d.duration(&raw.lockout, "auth.lockout", auth.lockout);
    if let Some(l) = &raw.lockout {
        if auth.lockout.is_zero() {
            d.add(l.span(), "auth.lockout", "must be more than 0");
        }
    }
    if let Some(n) = &raw.min_password_length {
        if !(8..=1024).contains(n.get_ref()) {
            d.add(
                n.span(),
                "auth.min_password_length",
                "must be between 8 and 1024",
            );
        } else {
            auth.min_password_length = *n.get_ref();
        }
    }
    auth
}

/// RFC 1035 host name syntax (letters, digits, hyphens; labels of 1–63).
fn valid_domain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

#[cfg(test)]
mod tests {
    use super::super::*;

    #[test]
    fn embedded_default_parses() {
        let config = default_config().unwrap();
        assert_eq!(config.listeners[0].address.to_string(), "127.0.0.1:2525");
        assert_eq!(config.pipelines["default"].rcpt, vec!["relay"]);
    }

    #[test]
    fn minimal_config_parses_as_written() {
        let config =
            load_str(include_str!("../../../config/minimal.toml"), "minimal.toml").unwrap();
        assert_eq!(
            config.routes_for_test(),
            vec![("example.test".to_owned(), "127.0.0.1:2533".to_owned())]
        );
        assert_eq!(
            config.plugins["relay"].config_json,
            r#"{"trusted_networks":["127.0.0.0/8"]}"#
        );
        assert_eq!(config.plugins["relay"].timeout, Duration::from_millis(100));
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let text = "[server]\nhostname = \"a.test\"\n\n[plugins.relay]\npath = \"builtin:relay\"\ntimout = \"1s\"\n";
        let err = load_str(text, "c.toml").unwrap_err().to_string();
        assert!(err.starts_with("c.toml:6:"), "{err}");
        assert!(err.contains("timout"), "{err}");
    }

    #[test]
    fn unknown_plugin_in_pipeline() {
        let text = "[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:25\"\npipeline = \"p\"\n[pipeline.p]\nrcpt = [\"relya\"]\n";
        let err = load_str(text, "c.toml").unwrap_err().to_string();
        assert!(
            err.contains("c.toml:6:") && err.contains("pipeline.p.rcpt") && err.contains("relya"),
            "{err}"
        );
    }

    #[test]
    fn plugin_instance_policy() {
        const L: &str = "[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:25\"\npipeline = \"p\"\n[pipeline.p]\n[plugins.a]\npath = \"a.wasm\"\n";
        let config = load_str(L, "c.toml").unwrap();
        assert_eq!(config.plugins["a"].instances, InstancePolicy::PerSession);
        let config = load_str(&(L.to_owned() + "instances = \"pooled\"\n"), "c.toml").unwrap();
        assert_eq!(
            config.plugins["a"].instances,
            InstancePolicy::Pooled { size: 4 }
        );
        let text = L.to_owned() + "instances = \"pooled\"\npool_size = 16\n";
        let config = load_str(&text, "c.toml").unwrap();
        assert_eq!(
            config.plugins["a"].instances,
            InstancePolicy::Pooled { size: 16 }
        );
        let text = L.to_owned() + "instances = \"reused\"\npool_size = 8\n";
        let config = load_str(&text, "c.toml").unwrap();
        assert_eq!(
            config.plugins["a"].instances,
            InstancePolicy::Reused { idle: 8 }
        );
        // Bundled plugins reset their per-session state themselves.
        let builtin = L.replace("a.wasm", "builtin:relay");
        let config = load_str(&builtin, "c.toml").unwrap();
        assert_eq!(
            config.plugins["a"].instances,
            InstancePolicy::Reused {
                idle: InstancePolicy::DEFAULT_IDLE
            }
        );
        let text = builtin + "instances = \"per-session\"\n";
        let config = load_str(&text, "c.toml").unwrap();
        assert_eq!(config.plugins["a"].instances, InstancePolicy::PerSession);
        for (bad, key) in [
            ("instances = \"shared\"\n", "plugins.a.instances"),
            ("pool_size = 4\n", "plugins.a.pool_size"),
            (
                "instances = \"pooled\"\npool_size = 0\n",
                "plugins.a.pool_size",
            ),
        ] {
            let err = load_str(&(L.to_owned() + bad), "c.toml")
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("c.toml:8:") || err.contains("c.toml:9:"),
                "{err}"
            );
            assert!(err.contains(key), "{err}");
        }
    }

    #[test]
    fn plugin_cache_section() {
        const L: &str = "[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:25\"\npipeline = \"p\"\n[pipeline.p]\n";
        let config = load_str(L, "c.toml").unwrap();
        assert_eq!(
            config.plugin_cache.resolve(Path::new("/d")),
            Some(PathBuf::from("/d/cache"))
        );
        let config = load_str(
            &(L.to_owned() + "[plugin_cache]\ndir = \"/var/cache/x\"\n"),
            "c.toml",
        )
        .unwrap();
        assert_eq!(
            config.plugin_cache.resolve(Path::new("/d")),
            Some(PathBuf::from("/var/cache/x"))
        );
        let config = load_str(
            &(L.to_owned() + "[plugin_cache]\nenabled = false\n"),
            "c.toml",
        )
        .unwrap();
        assert_eq!(config.plugin_cache.resolve(Path::new("/d")), None);
        let err = load_str(
            &(L.to_owned() + "[plugin_cache]\ndirectory = \"x\"\n"),
            "c.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("directory"), "{err}");
    }

    #[test]
    fn plugin_capabilities_and_mode() {
        let text = "[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:25\"\npipeline = \"p\"\n[pipeline.p]\n[plugins.a]\npath = \"builtin:relay\"\n[plugins.b]\npath = \"b.wasm\"\n[plugins.c]\npath = \"c.wasm\"\nallow = [\"dns\", \"message-body\"]\nmode = \"shadow\"\n";
        let config = load_str(text, "c.toml").unwrap();
        assert_eq!(config.plugins["a"].allow, Capabilities::all());
        assert_eq!(config.plugins["b"].allow, Capabilities::NONE);
        assert_eq!(config.plugins["b"].mode, PluginMode::Enforce);
        assert_eq!(config.plugins["c"].allow.names(), ["dns", "message-body"]);
        assert_eq!(config.plugins["c"].mode, PluginMode::Shadow);

        let text = "[plugins.a]\npath = \"a.wasm\"\nallow = [\"dns\", \"sockets\"]\n";
        let err = load_str(text, "c.toml").unwrap_err().to_string();
        assert!(
            err.contains("c.toml:3:")
                && err.contains("plugins.a.allow")
                && err.contains("\"sockets\""),
            "{err}"
        );
    }

    #[test]
    fn unknown_pipeline_and_bad_values() {
        let text = "[server]\nmax_message_size = \"10XB\"\n[[listener]]\nname = \"mx\"\naddress = \"nowhere\"\npipeline = \"p\"\n";
        let err = load_str(text, "c.toml").unwrap_err().to_string();
        assert!(
            err.contains("c.toml:2:") && err.contains("max_message_size"),
            "{err}"
        );
        assert!(
            err.contains("c.toml:5:") && err.contains("listener[0].address"),
            "{err}"
        );
    }

    const LISTENERS: &str = "[pipeline.p]\n\
[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:25\"\npipeline = \"p\"\n\
[[listener]]\nname = \"sub\"\naddress = \"127.0.0.1:587\"\npipeline = \"p\"\ntls = \"starttls\"\nauth = \"required\"\n\
[[listener]]\nname = \"smtps\"\naddress = \"127.0.0.1:465\"\npipeline = \"p\"\ntls = \"implicit\"\nauth = \"required\"\n";

    #[test]
    fn submission_and_greet_delay_defaults() {
        let config = load_str(LISTENERS, "c.toml").unwrap();
        let by_name = |n: &str| config.listeners.iter().find(|l| l.name == n).unwrap();
        assert!(!by_name("mx").submission);
        assert_eq!(by_name("mx").greet_delay, Duration::from_secs(1));
        assert!(by_name("sub").submission);
        assert_eq!(by_name("sub").greet_delay, Duration::ZERO);
        assert!(by_name("smtps").submission);
        assert_eq!(by_name("smtps").greet_delay, Duration::ZERO);
        let exempt = &config.server.greet_exempt;
        assert!(exempt
            .iter()
            .any(|n| n.contains(&"127.0.0.9".parse::<std::net::IpAddr>().unwrap())));
        assert_eq!(
            config.server.timeouts.command_under_load,
            Duration::from_secs(10)
        );
        // Nobody has an entry: only the own address.
        assert!(config
            .submission
            .may_send_as("Alice@Example.org", "alice@EXAMPLE.org"));
        assert!(!config
            .submission
            .may_send_as("alice@example.org", "bob@example.org"));
        assert!(!config.submission.may_send_as("alice", "alice"));
    }

    #[test]
    fn senders_map_patterns() {
        let text = format!(
            "{LISTENERS}[submission]\nsenders = {{ \"Alice@example.org\" = [\"@Example.org\", \"a@other.test\"], \"app\" = [\"*\"] }}\n"
        );
        let config = load_str(&text, "c.toml").unwrap();
        let s = &config.submission;
        assert!(s.may_send_as("alice@example.org", "bob@example.org"));
        assert!(s.may_send_as("alice@example.org", "A@Other.Test"));
        assert!(!s.may_send_as("alice@example.org", "alice@sub.example.org"));
        assert!(!s.may_send_as("alice@example.org", "@example.org"));
        assert!(s.may_send_as("app", "anyone@anywhere.test"));
    }

    #[test]
    fn bad_submission_dkim_and_greet_values_name_key_and_line() {
        let text = "[server]\ngreet_exempt = [\"10.0.0.0/33\"]\n\
[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:25\"\npipeline = \"p\"\nsubmission = true\ngreet_delay = \"1m\"\n\
[[listener]]\nname = \"smtps\"\naddress = \"127.0.0.1:465\"\npipeline = \"p\"\ntls = \"implicit\"\nauth = \"required\"\ngreet_delay = \"1s\"\n\
[pipeline.p]\n\
[submission]\nsenders = { \"alice\" = [\"nobody\"], \"bob\" = [] }\n\
[dkim]\ntrusted_networks = [\"nonsense\"]\n\
[[dkim.sign]]\ndomain = \"exa mple.org\"\nselector = \"s 1\"\nkey = \"/nonexistent/key.pem\"\nheaders = [\"DKIM-Signature\"]\n";
        let err = load_str(text, "c.toml").unwrap_err().to_string();
        for (line, key) in [
            (2, "server.greet_exempt"),
            (4, "listener[0].submission"),
            (8, "listener[0].greet_delay"),
            (15, "listener[1].greet_delay"),
            (18, "submission.senders"),
            (20, "dkim.trusted_networks"),
            (22, "dkim.sign[0].domain"),
            (23, "dkim.sign[0].selector"),
            (24, "dkim.sign[0].key"),
            (25, "dkim.sign[0].headers"),
        ] {
            assert!(
                err.contains(&format!("c.toml:{line}:")) && err.contains(key),
                "{line} {key}: {err}"
            );
        }
        assert!(
            err.contains("\"bob\"") && err.contains("empty list"),
            "{err}"
        );
    }

    #[test]
    fn plugin_file_and_callout_grants() {
        let listener = "\n[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:25\"\npipeline = \"p\"\n[pipeline.p]\n";
        let text = "[plugins.r]\npath = \"builtin:recipients\"\nfiles = [\"/etc/sluice/recipients\"]\ncallouts = [\"lmtp:127.0.0.1:24\", \"smtp:[::1]:2525\", \"lmtp:unix:/run/dovecot/lmtp\"]\n";
        let config = load_str(&format!("{text}{listener}"), "c.toml").unwrap();
        let plugin = &config.plugins["r"];
        assert_eq!(plugin.files, vec![PathBuf::from("/etc/sluice/recipients")]);
        assert_eq!(
            plugin.callouts,
            vec![
                CalloutGrant {
                    protocol: CalloutProtocol::Lmtp,
                    target: "127.0.0.1:24".into()
                },
                CalloutGrant {
                    protocol: CalloutProtocol::Smtp,
                    target: "[::1]:2525".into()
                },
                CalloutGrant {
                    protocol: CalloutProtocol::Lmtp,
                    target: "unix:/run/dovecot/lmtp".into()
                },
            ]
        );
        let relay = load_str(
            &format!("[plugins.x]\npath = \"builtin:relay\"\n{listener}"),
            "c.toml",
        )
        .unwrap();
        assert!(relay.plugins["x"].files.is_empty() && relay.plugins["x"].callouts.is_empty());
        for bad in [
            "ldap:127.0.0.1:389",
            "lmtp:127.0.0.1",
            "smtp::25",
            "lmtp:host:0",
        ] {
            let text = format!(
                "[plugins.r]\npath = \"builtin:recipients\"\n\ncallouts = [\"{bad}\"]\n{listener}"
            );
            let err = load_str(&text, "c.toml").unwrap_err().to_string();
            assert!(
                err.contains("c.toml:4:") && err.contains("plugins.r.callouts"),
                "{bad}: {err}"
            );
        }
        let err = load_str(
            &format!("[plugins.r]\npath = \"builtin:recipients\"\nfiles = [\"\"]\n{listener}"),
            "c.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("c.toml:3:") && err.contains("plugins.r.files"),
            "{err}"
        );
    }

    fn with_pem_files() -> (tempfile::TempDir, String, String) {
        let dir = tempfile::tempdir().unwrap();
        let files = crate::tls::self_signed(dir.path(), "mx.example.test").unwrap();
        let cert = files.certificate.display().to_string();
        let key = files.key.display().to_string();
        (dir, cert, key)
    }

    #[test]
    fn tls_listeners_certificates_and_auth() {
        let (_dir, cert, key) = with_pem_files();
        let text = format!(
            "[tls]\ncertificate = \"{cert}\"\nkey = \"{key}\"\n\
             [auth]\nmax_failures = 3\nlockout = \"2m\"\nmin_password_length = 20\n\
             [[listener]]\nname = \"sub\"\naddress = \"127.0.0.1:587\"\npipeline = \"p\"\n\
             tls = \"starttls\"\nauth = \"required\"\n\
             [[listener]]\nname = \"smtps\"\naddress = \"127.0.0.1:465\"\npipeline = \"p\"\n\
             tls = \"implicit\"\ncertificate = \"{cert}\"\nkey = \"{key}\"\n\
             [[listener]]\nname = \"test\"\naddress = \"127.0.0.1:2526\"\npipeline = \"p\"\n\
             auth = \"optional\"\nauth_without_tls = true\n\
             [pipeline.p]\n"
        );
        let config = load_str(&text, "c.toml").unwrap();
        assert_eq!(
            config
                .tls
                .as_ref()
                .unwrap()
                .certificate
                .display()
                .to_string(),
            cert
        );
        assert_eq!(config.auth.max_failures, 3);
        assert_eq!(config.auth.lockout, Duration::from_secs(120));
        assert_eq!(config.auth.min_password_length, 20);
        let [sub, smtps, test] = &config.listeners[..] else {
            panic!("three listeners")
        };
        assert_eq!((sub.tls, sub.auth), (TlsMode::Starttls, AuthMode::Required));
        assert!(sub.tls_files.is_none() && !sub.auth_offered(false) && sub.auth_offered(true));
        assert_eq!(smtps.tls, TlsMode::Implicit);
        assert_eq!(smtps.auth, AuthMode::None);
        assert!(smtps.tls_files.is_some() && !smtps.auth_offered(true));
        assert!(test.auth_offered(false));
    }

    #[test]
    fn tls_and_auth_errors_name_key_and_line() {
        let (dir, cert, _key) = with_pem_files();
        let missing = dir.path().join("nope.pem").display().to_string();
        let text = format!(
            "[tls]\ncertificate = \"{cert}\"\n\
             [auth]\nmax_failures = 0\nmin_password_length = 4\n\
             [[listener]]\nname = \"a\"\naddress = \"127.0.0.1:25\"\npipeline = \"p\"\n\
             tls = \"implicit\"\ncertificate = \"{missing}\"\nkey = \"{cert}\"\n\
             [[listener]]\nname = \"b\"\naddress = \"127.0.0.1:26\"\npipeline = \"p\"\n\
             auth = \"required\"\n\
             [[listener]]\nname = \"c\"\naddress = \"127.0.0.1:27\"\npipeline = \"p\"\n\
             certificate = \"{cert}\"\n\
             [pipeline.p]\n"
        );
        let err = load_str(&text, "c.toml").unwrap_err().to_string();
        let expect = [
            (
                "c.toml:2:",
                "tls.key: certificate is set but key is missing",
            ),
            ("c.toml:4:", "auth.max_failures"),
            ("c.toml:5:", "auth.min_password_length"),
            ("c.toml:11:", "listener[0].certificate: cannot read"),
            ("c.toml:12:", "listener[0].key"),
            (
                "c.toml:17:",
                "listener[1].auth: AUTH is only offered over TLS",
            ),
            (
                "c.toml:22:",
                "listener[2].key: certificate is set but key is missing",
            ),
        ];
        for (at, what) in expect {
            assert!(
                err.lines().any(|l| l.starts_with(at) && l.contains(what)),
                "{at} {what}\n{err}"
            );
        }
    }

    #[test]
    fn dns_and_delivery_settings() {
        let text = "[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:25\"\npipeline = \"p\"\n[pipeline.p]\n[dns]\nnameservers = [\"127.0.0.1:5353\", \"::1\"]\n[delivery]\nlocal = { lmtp = \"unix:/run/dovecot/lmtp\" }\nsmtp_port = 2525\ntls = \"required\"\n[queue]\nwarn_after = \"0s\"\n";
        let config = load_str(text, "c.toml").unwrap();
        assert_eq!(
            config.dns.nameservers,
            vec![
                "127.0.0.1:5353".parse().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
        assert_eq!(
            config.delivery.local,
            LocalDelivery::Lmtp(LmtpTarget::Unix("/run/dovecot/lmtp".into()))
        );
        assert_eq!(config.delivery.smtp_port, 2525);
        assert_eq!(config.delivery.tls, OutboundTls::Required);
        assert_eq!(config.queue.warn_after, None);
    }

    #[test]
    fn bad_name_server_and_lmtp_address() {
        let text = "[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:25\"\npipeline = \"p\"\n[pipeline.p]\n[dns]\nnameservers = [\"dns.example\"]\n[delivery]\nlocal = { lmtp = \"nowhere\" }\n";
        let err = load_str(text, "c.toml").unwrap_err().to_string();
        assert!(
            err.contains("c.toml:7:") && err.contains("dns.nameservers"),
            "{err}"
        );
        assert!(
            err.contains("c.toml:9:") && err.contains("delivery.local.lmtp"),
            "{err}"
        );
    }

    #[test]
    fn state_section() {
        let base = "[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:25\"\npipeline = \"p\"\n[pipeline.p]\n";
        assert_eq!(load_str(base, "c.toml").unwrap().state, StateConfig::Sled);
        let text = format!("{base}[state]\nbackend = \"sled\"\n");
        assert_eq!(load_str(&text, "c.toml").unwrap().state, StateConfig::Sled);
        let text =
            format!("{base}[state]\nbackend = \"redis\"\nurl = \"redis://:pw@127.0.0.1:6380/2\"\n");
        let config = load_str(&text, "c.toml").unwrap();
        assert_eq!(
            config.state,
            StateConfig::Redis {
                url: "redis://:pw@127.0.0.1:6380/2".into(),
                key_prefix: "sluice:".into()
            }
        );
        // The password never shows in logs.
        let debug = format!("{:?}", config.state);
        assert!(
            !debug.contains("pw") && debug.contains(":***@127.0.0.1"),
            "{debug}"
        );

        let cases = [
            ("[state]\nbackend = \"redis\"\n", "c.toml:7:", "state.url"),
            (
                "[state]\nbackend = \"memcached\"\n",
                "c.toml:7:",
                "state.backend",
            ),
            (
                "[state]\nurl = \"redis://h\"\n",
                "c.toml:7:",
                "only used with backend",
            ),
            (
                "[state]\nbackend = \"redis\"\nurl = \"http://h\"\n",
                "c.toml:8:",
                "state.url",
            ),
            ("[state]\nbakend = \"redis\"\n", "c.toml:7:", "bakend"),
        ];
        for (extra, line, needle) in cases {
            let err = load_str(&format!("{base}{extra}"), "c.toml")
                .unwrap_err()
                .to_string();
            assert!(err.contains(line) && err.contains(needle), "{extra}: {err}");
        }
    }

    #[test]
    fn admin_and_free_space_keys() {
        let base = "[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:25\"\npipeline = \"p\"\n[pipeline.p]\n";
        let config = load_str(base, "c.toml").unwrap();
        assert_eq!(config.admin.address, None);
        assert_eq!(config.queue.min_free_space, 256 << 20);

        let text = format!(
            "{base}[admin]\naddress = \"127.0.0.1:8025\"\n[queue]\nmin_free_space = \"1000TB\"\n"
        );
        let config = load_str(&text, "c.toml").unwrap();
        assert_eq!(
            config.admin.address.map(|a| a.to_string()).as_deref(),
            Some("127.0.0.1:8025")
        );
        assert_eq!(config.queue.min_free_space, 1_000_000_000_000_000);

        let text = format!("{base}[admin]\naddress = \"0.0.0.0:8025\"\n");
        let err = load_str(&text, "c.toml").unwrap_err().to_string();
        assert!(
            err.contains("c.toml:7:")
                && err.contains("admin.address")
                && err.contains("allow_remote"),
            "{err}"
        );
        let text = format!("{base}[admin]\naddress = \"0.0.0.0:8025\"\nallow_remote = true\n");
        assert!(load_str(&text, "c.toml").unwrap().admin.allow_remote);

        let text = format!("{base}[admin]\nadress = \"127.0.0.1:1\"\n");
        let err = load_str(&text, "c.toml").unwrap_err().to_string();
        assert!(err.contains("c.toml:7:") && err.contains("adress"), "{err}");
        let text = format!("{base}[queue]\nmin_free_space = \"lots\"\n");
        let err = load_str(&text, "c.toml").unwrap_err().to_string();
        assert!(err.contains("queue.min_free_space"), "{err}");
    }

    #[test]
    fn sizes() {
        assert_eq!(super::parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(super::parse_size("10MB").unwrap(), 10_000_000);
        assert_eq!(super::parse_size("512").unwrap(), 512);
        assert_eq!(super::parse_size("2TiB").unwrap(), 2 << 40);
        assert!(super::parse_size("5 parsecs").is_err());
    }

    #[test]
    fn reverse_lookup_is_on_unless_switched_off() {
        let base = "[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:25\"\npipeline = \"p\"\n[pipeline.p]\n";
        assert!(load_str(base, "c.toml").unwrap().server.reverse_lookup);
        let text = format!("[server]\nreverse_lookup = false\n{base}");
        assert!(!load_str(&text, "c.toml").unwrap().server.reverse_lookup);
        let text = format!("[server]\nreverse_lookup = \"no\"\n{base}");
        let err = load_str(&text, "c.toml").unwrap_err().to_string();
        assert!(err.contains("c.toml:2:"), "{err}");
    }

    impl Config {
        fn routes_for_test(&self) -> Vec<(String, String)> {
            self.delivery
                .routes
                .iter()
                .map(|r| (r.domain.clone(), r.next_hop.clone()))
                .collect()
        }
    }
}
