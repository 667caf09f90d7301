//! `[server]`, `[domains]`, `[auth]`, `[admin]`, `[log]` and `[reload]`:
//! the server's own settings, resolved into their typed forms.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::super::*;
use super::{loopback_networks, networks, valid_domain, Diagnostics, Size};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    max_failures: Option<Spanned<u32>>,
    lockout: Option<Spanned<String>>,
    min_password_length: Option<Spanned<usize>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    address: Option<Spanned<String>>,
    allow_remote: Option<bool>,
    token_file: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    hostname: Option<Spanned<String>>,
    node_name: Option<Spanned<String>>,
    data_dir: Option<String>,
    max_message_size: Option<Spanned<Size>>,
    message_memory: Option<Spanned<Size>>,
    max_recipients: Option<usize>,
    max_received_headers: Option<usize>,
    max_connections: Option<usize>,
    max_connections_per_ip: Option<usize>,
    ipv6_prefix: Option<Spanned<i64>>,
    greet_exempt: Option<Vec<Spanned<String>>>,
    timeouts: Option<RawTimeouts>,
    shutdown_grace: Option<Spanned<String>>,
    reverse_lookup: Option<bool>,
    user: Option<Spanned<String>>,
    group: Option<Spanned<String>>,
    allow_root: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTimeouts {
    command: Option<Spanned<String>>,
    data_block: Option<Spanned<String>>,
    data: Option<Spanned<String>>,
    command_under_load: Option<Spanned<String>>,
    tls_handshake: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDomains {
    #[serde(default)]
    local: Vec<Spanned<String>>,
    recipient_delimiter: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    level: Option<String>,
    format: Option<LogFormat>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReload {
    watch: Option<bool>,
    debounce: Option<Spanned<String>>,
}

pub(super) fn resolve_server(d: &mut Diagnostics<'_>, raw: Option<&RawServer>) -> ServerConfig {
    let default = RawServer::default();
    let server = raw.unwrap_or(&default);
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
    let node_name = resolve_node_name(d, server.node_name.as_ref(), &hostname);
    let max_message_size = positive_size(
        d,
        server.max_message_size.as_ref(),
        "server.max_message_size",
        25 << 20,
    );
    let message_memory = positive_size(
        d,
        server.message_memory.as_ref(),
        "server.message_memory",
        DEFAULT_MESSAGE_MEMORY,
    );
    let timeouts = resolve_timeouts(d, server.timeouts.as_ref());
    let greet_exempt = match &server.greet_exempt {
        None => loopback_networks(),
        Some(list) => networks(d, list, "server.greet_exempt"),
    };
    let ipv6_prefix = match &server.ipv6_prefix {
        None => DEFAULT_IPV6_PREFIX,
        Some(p) => match u8::try_from(*p.get_ref()) {
            Ok(bits @ 1..=128) => bits,
            _ => {
                d.add(
                    p.span(),
                    "server.ipv6_prefix",
                    "must be between 1 and 128 (64: per /64 network, 128: per address)",
                );
                DEFAULT_IPV6_PREFIX
            }
        },
    };
    let run_as = resolve_run_as(d, server);
    let shutdown_grace = d.duration(
        &server.shutdown_grace,
        "server.shutdown_grace",
        Duration::from_secs(10),
    );
    ServerConfig {
        hostname,
        node_name,
        data_dir: server
            .data_dir
            .as_ref()
            .map(Into::into)
            .unwrap_or_else(|| "./data".into()),
        max_message_size,
        message_memory,
        max_recipients: server.max_recipients.unwrap_or(100).max(1),
        max_received_headers: server.max_received_headers.unwrap_or(50),
        max_connections: server.max_connections.unwrap_or(1000).max(1),
        max_connections_per_ip: server.max_connections_per_ip.unwrap_or(50).max(1),
        ipv6_prefix,
        greet_exempt,
        timeouts,
        shutdown_grace,
        reverse_lookup: server.reverse_lookup.unwrap_or(true),
        run_as,
        allow_root: server.allow_root.unwrap_or(false),
    }
}

/// Longest `node_name`: a host name label or two, not a sentence.
const MAX_NODE_NAME: usize = 64;

/// `node_name`: what tells this node from the others sharing its Redis
/// state in queue listings and metrics; the host name when unset. Kept to
/// characters that need no escaping in a metric label or a log line.
fn resolve_node_name(
    d: &mut Diagnostics<'_>,
    raw: Option<&Spanned<String>>,
    hostname: &str,
) -> String {
    let Some(name) = raw else {
        return hostname.to_owned();
    };
    let text = name.get_ref();
    let valid = !text.is_empty()
        && text.len() <= MAX_NODE_NAME
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    if valid {
        text.clone()
    } else {
        d.add(
            name.span(),
            "server.node_name",
            format!(
                "invalid node name {text:?} (1 to {MAX_NODE_NAME} letters, digits, '-', '.' or '_')"
            ),
        );
        hostname.to_owned()
    }
}

/// `user` and `group`: account names, checked for shape here; whether
/// they exist is only known (and only matters) when started as root.
fn resolve_run_as(d: &mut Diagnostics<'_>, server: &RawServer) -> Option<RunAs> {
    let mut name = |value: &Spanned<String>, key: &str| {
        let text = value.get_ref();
        let valid = !text.is_empty()
            && !text.starts_with('-')
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !valid {
            d.add(value.span(), key, format!("not an account name: {text:?}"));
        }
        valid.then(|| text.clone())
    };
    let user = server.user.as_ref().and_then(|u| name(u, "server.user"));
    let group = server.group.as_ref().and_then(|g| name(g, "server.group"));
    match (user, &server.group) {
        (Some(user), _) => Some(RunAs { user, group }),
        (None, Some(g)) if server.user.is_none() => {
            d.add(g.span(), "server.group", "needs server.user");
            None
        }
        (None, _) => None,
    }
}

/// A size that must be above 0; absent or wrong, `default`.
fn positive_size(
    d: &mut Diagnostics<'_>,
    raw: Option<&Spanned<Size>>,
    key: &str,
    default: u64,
) -> u64 {
    let Some(size) = raw else {
        return default;
    };
    match size.get_ref().bytes() {
        Ok(n) if n > 0 => n,
        Ok(_) => {
            d.add(size.span(), key, "must be greater than 0");
            default
        }
        Err(e) => {
            d.add(size.span(), key, e);
            default
        }
    }
}

/// `[server.timeouts]`; each key absent or wrong takes its default.
fn resolve_timeouts(d: &mut Diagnostics<'_>, raw: Option<&RawTimeouts>) -> Timeouts {
    let defaults = Timeouts::default();
    let Some(t) = raw else {
        return defaults;
    };
    let mut positive = |value: &Option<Spanned<String>>, key: &str, default: Duration| {
        let resolved = d.duration(value, key, default);
        match value {
            Some(v) if resolved.is_zero() => {
                d.add(v.span(), key, "must be greater than 0");
                default
            }
            _ => resolved,
        }
    };
    Timeouts {
        command: positive(&t.command, "server.timeouts.command", defaults.command),
        data_block: positive(
            &t.data_block,
            "server.timeouts.data_block",
            defaults.data_block,
        ),
        data: positive(&t.data, "server.timeouts.data", defaults.data),
        command_under_load: positive(
            &t.command_under_load,
            "server.timeouts.command_under_load",
            defaults.command_under_load,
        ),
        tls_handshake: positive(
            &t.tls_handshake,
            "server.timeouts.tls_handshake",
            defaults.tls_handshake,
        ),
    }
}

pub(super) fn resolve_domains(d: &mut Diagnostics<'_>, raw: Option<&RawDomains>) -> DomainsConfig {
    let mut local = Vec::new();
    for domain in raw.map(|d| d.local.as_slice()).unwrap_or_default() {
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
    let recipient_delimiter = match raw.and_then(|d| d.recipient_delimiter.as_ref()) {
        None => String::new(),
        Some(text) => match recipient_delimiter(text.get_ref()) {
            Ok(()) => text.get_ref().clone(),
            Err(reason) => {
                d.add(text.span(), "domains.recipient_delimiter", reason);
                String::new()
            }
        },
    };
    DomainsConfig {
        local,
        recipient_delimiter,
    }
}

/// Longest delimiter set taken: a few characters, as Postfix's `+-`.
const MAX_DELIMITERS: usize = 8;

/// A delimiter set ("" = off) whose characters may each end a local part's
/// name: printable ASCII that is not part of an address's syntax.
fn recipient_delimiter(text: &str) -> Result<(), String> {
    if text.chars().count() > MAX_DELIMITERS {
        return Err(format!(
            "{text:?} is longer than {MAX_DELIMITERS} characters; each character is a delimiter"
        ));
    }
    match text
        .chars()
        .find(|c| !c.is_ascii_graphic() || "@.\"\\".contains(*c))
    {
        Some(c) => Err(format!(
            "{c:?} cannot separate a detail from a local part (use e.g. \"+\" or \"+-\")"
        )),
        None => Ok(()),
    }
}

pub(super) fn resolve_admin(d: &mut Diagnostics<'_>, raw: Option<&RawAdmin>) -> AdminConfig {
    let default = RawAdmin::default();
    let admin = raw.unwrap_or(&default);
    let allow_remote = admin.allow_remote.unwrap_or(false);
    let admin_address = match &admin.address {
        None => None,
        Some(text) => match text.get_ref().parse::<SocketAddr>() {
            Ok(a) if !a.ip().is_loopback() && !allow_remote => {
                d.add(
                    text.span(),
                    "admin.address",
                    format!(
                        "{a} is not a loopback address and would serve the admin API \
                         beyond this host; set admin.allow_remote = true to bind it anyway"
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
    let token_file = match &admin.token_file {
        None => None,
        Some(path) if path.get_ref().is_empty() => {
            d.add(path.span(), "admin.token_file", "must not be empty");
            None
        }
        Some(path) => Some(Located {
            value: PathBuf::from(path.get_ref()),
            origin: d.origin(path.span(), "admin.token_file"),
        }),
    };
    AdminConfig {
        address: admin_address,
        allow_remote,
        token_file,
    }
}

pub(super) fn resolve_log(raw: Option<&RawLog>) -> LogConfig {
    LogConfig {
        level: raw
            .and_then(|l| l.level.clone())
            .unwrap_or_else(|| "info".to_owned()),
        format: raw.and_then(|l| l.format).unwrap_or(LogFormat::Text),
    }
}

pub(super) fn resolve_reload(d: &mut Diagnostics<'_>, raw: Option<&RawReload>) -> ReloadConfig {
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

pub(super) fn resolve_auth(d: &mut Diagnostics<'_>, raw: Option<&RawAuth>) -> AuthConfig {
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
