//! The file as written and its resolution into [`Config`](super::Config),
//! collecting every semantic error with the line of the offending key. Each
//! section has its own file holding its raw (serde, unknown keys refused)
//! form and its `resolve_*` function; this one holds the whole file's raw
//! form, the diagnostics collector and the value syntaxes sections share.

mod certificates;
mod delivery;
mod dmarc_reports;
mod listener;
mod plugins;
mod server;
mod state;
mod submission;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{Config, ConfigDiagnostic, Origin};
use certificates::RawTls;
use delivery::{RawDelivery, RawDns, RawQueue};
use dmarc_reports::RawDmarcReports;
use listener::RawListener;
use plugins::{RawPipeline, RawPlugin, RawPluginCache};
use server::{RawAdmin, RawAuth, RawDomains, RawLog, RawReload, RawServer};
use state::RawState;
use submission::{RawDkim, RawSubmission};

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
    dmarc_reports: Option<RawDmarcReports>,
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
    /// Where a value at `span` of `key` was written.
    fn origin(&self, span: std::ops::Range<usize>, key: impl Into<String>) -> Origin {
        let (line, column) = position(self.text, span.start);
        Origin {
            file: self.origin.to_owned(),
            line,
            column,
            key: key.into(),
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

/// The configuration with defaults where a value was wrong, and every
/// problem found; Err when the text is not TOML of known keys.
pub(super) fn resolve(
    text: &str,
    origin: &str,
) -> Result<(Config, Vec<ConfigDiagnostic>), Vec<ConfigDiagnostic>> {
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

    // Fields in the order their errors are best read.
    let server = server::resolve_server(&mut d, raw.server.as_ref());
    let domains = server::resolve_domains(&mut d, raw.domains.as_ref());
    let mut plugins = plugins::resolve_plugins(&mut d, &raw.plugins);
    plugins::inherit_recipient_delimiter(&mut plugins, &domains);
    let pipelines = plugins::resolve_pipelines(&mut d, &raw.pipeline, &raw.plugins);
    let listeners = listener::resolve_listeners(&mut d, &raw.listener, &pipelines);
    let dns = delivery::resolve_dns(&mut d, raw.dns.as_ref());
    let delivery = delivery::resolve_delivery(&mut d, raw.delivery.as_ref(), &dns.dnssec);
    let queue = delivery::resolve_queue(&mut d, raw.queue.as_ref());
    let admin = server::resolve_admin(&mut d, raw.admin.as_ref());
    let log = server::resolve_log(raw.log.as_ref());
    let tls = certificates::resolve_tls(&mut d, raw.tls.as_ref());
    let auth = server::resolve_auth(&mut d, raw.auth.as_ref());
    let state = state::resolve_state(&mut d, raw.state.as_ref());
    let reload = server::resolve_reload(&mut d, raw.reload.as_ref());
    let plugin_cache = plugins::resolve_plugin_cache(&mut d, raw.plugin_cache.as_ref());
    let submission = submission::resolve_submission(&mut d, raw.submission.as_ref());
    let dkim = submission::resolve_dkim(&mut d, raw.dkim.as_ref());
    let dmarc_reports = dmarc_reports::resolve_dmarc_reports(&mut d, raw.dmarc_reports.as_ref());
    let config = Config {
        server,
        domains,
        listeners,
        delivery,
        queue,
        plugins,
        pipelines,
        dns,
        log,
        tls,
        auth,
        admin,
        state,
        reload,
        plugin_cache,
        submission,
        dkim,
        dmarc_reports,
    };
    Ok((config, d.list))
}

/// 127.0.0.0/8 and ::1: the default of keys that trust only this host.
fn loopback_networks() -> Vec<ipnet::IpNet> {
    vec![
        ipnet::IpNet::V4(ipnet::Ipv4Net::new_assert(std::net::Ipv4Addr::LOCALHOST, 8)),
        ipnet::IpNet::V6(ipnet::Ipv6Net::new_assert(
            std::net::Ipv6Addr::LOCALHOST,
            128,
        )),
    ]
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

/// "host:port" with a non-empty host and a numeric port.
fn valid_host_port(text: &str) -> bool {
    text.rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

/// RFC 1035 host name syntax (letters, digits, hyphens; labels of 1–63).
pub fn valid_domain(name: &str) -> bool {
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
