//! The file as written (serde, unknown keys refused) and its resolution
//! into [`Config`](super::Config), collecting every semantic error with the
//! line of the offending key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
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
    #[serde(default)]
    plugins: BTreeMap<String, Spanned<RawPlugin>>,
    #[serde(default)]
    pipeline: BTreeMap<String, RawPipeline>,
    log: Option<RawLog>,
    admin: Option<RawAdmin>,
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
    timeouts: Option<RawTimeouts>,
    shutdown_grace: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    command: Option<Spanned<String>>,
    data_block: Option<Spanned<String>>,
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
    tls: Option<TlsMode>,
    auth: Option<AuthMode>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDelivery {
    local: Option<Spanned<String>>,
    #[serde(default)]
    route: Vec<RawRoute>,
    max_connections_per_domain: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    domain: Spanned<String>,
    next_hop: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQueue {
    retry: Option<Spanned<Vec<String>>>,
    max_age: Option<Spanned<String>>,
    min_free_space: Option<Spanned<Size>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlugin {
    path: Spanned<String>,
    on_error: Option<OnError>,
    timeout: Option<Spanned<String>>,
    memory: Option<Spanned<Size>>,
    config: Option<toml::Table>,
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
        timeouts: None,
        shutdown_grace: None,
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
    let (command_timeout, data_timeout) = match &server.timeouts {
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
        ),
        None => (Duration::from_secs(300), Duration::from_secs(180)),
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
        timeouts: Timeouts {
            command: command_timeout,
            data_block: data_timeout,
        },
        shutdown_grace,
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
        plugins.insert(
            name.clone(),
            PluginConfig {
                name: name.clone(),
                source,
                on_error: plugin.on_error.unwrap_or(OnError::Tempfail),
                timeout,
                memory,
                config_json,
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
        let tls = listener.tls.unwrap_or(TlsMode::None);
        if tls != TlsMode::None {
            d.add(
                listener.name.span(),
                format!("{key}.tls"),
                "TLS listeners are not supported by this version",
            );
        }
        listeners.push(ListenerConfig {
            name: listener.name.get_ref().clone(),
            address,
            pipeline: listener.pipeline.get_ref().clone(),
            tls,
            auth: listener.auth.unwrap_or(AuthMode::None),
        });
    }
    if raw.listener.is_empty() {
        d.add(0..0, "listener", "at least one [[listener]] is required");
    }

    let delivery = raw.delivery.unwrap_or(RawDelivery {
        local: None,
        route: Vec::new(),
        max_connections_per_domain: None,
    });
    if let Some(local) = &delivery.local {
        if local.get_ref() != "maildir" {
            d.add(
                local.span(),
                "delivery.local",
                format!(
                    "unsupported local delivery {:?} (expected \"maildir\")",
                    local.get_ref()
                ),
            );
        }
    }
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
        let valid_hop = hop
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !valid_hop {
            d.add(
                route.next_hop.span(),
                format!("delivery.route[{i}].next_hop"),
                format!("invalid next hop {hop:?} (expected HOST:PORT)"),
            );
        }
        routes.push(Route {
            domain,
            next_hop: hop.clone(),
        });
    }

    let queue = raw.queue.unwrap_or(RawQueue {
        retry: None,
        max_age: None,
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

    if !d.list.is_empty() {
        return Err(d.list);
    }
    Ok(Config {
        server: server_config,
        domains: DomainsConfig { local },
        listeners,
        delivery: DeliveryConfig {
            local: LocalDelivery::Maildir,
            routes,
            max_connections_per_domain: delivery.max_connections_per_domain.unwrap_or(10).max(1),
        },
        queue: QueueConfig {
            retry,
            max_age,
            min_free_space,
        },
        plugins,
        pipelines,
        log: LogConfig {
            level: log.level.unwrap_or_else(|| "info".to_owned()),
            format: log.format.unwrap_or(LogFormat::Text),
        },
        admin: AdminConfig {
            address: admin_address,
            allow_remote,
        },
    })
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
