//! The configuration file: TOML deserialized into raw structs that refuse
//! unknown keys, then resolved into a typed [`Config`] that cannot hold an
//! unknown plugin, a listener without a pipeline, or an unparsed duration.
//! Every error names the key and the line it came from.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod raw;

/// The embedded default: what `sluice serve` runs without `--config`.
pub const DEFAULT_CONFIG: &str = include_str!("../../../config/default.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", .0.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<ConfigDiagnostic>),
}

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigDiagnostic {
    pub origin: String,
    pub line: usize,
    pub column: usize,
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for ConfigDiagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}: ", self.origin, self.line, self.column)?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub domains: DomainsConfig,
    pub listeners: Vec<ListenerConfig>,
    pub delivery: DeliveryConfig,
    pub queue: QueueConfig,
    pub plugins: BTreeMap<String, PluginConfig>,
    pub pipelines: BTreeMap<String, PipelineConfig>,
    pub log: LogConfig,
    pub admin: AdminConfig,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub hostname: String,
    pub data_dir: PathBuf,
    pub max_message_size: u64,
    pub max_recipients: usize,
    pub max_received_headers: usize,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub timeouts: Timeouts,
    pub shutdown_grace: Duration,
}

/// Server-side timeouts, RFC 5321 §4.5.3.2.
#[derive(Debug, Clone)]
pub struct Timeouts {
    /// Waiting for the next command (5 minutes).
    pub command: Duration,
    /// Waiting for the next chunk of DATA (3 minutes).
    pub data_block: Duration,
}

#[derive(Debug, Clone)]
pub struct DomainsConfig {
    /// Lower-cased.
    pub local: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    None,
    Starttls,
    Implicit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    None,
    Optional,
    Required,
}

#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub name: String,
    pub address: SocketAddr,
    pub pipeline: String,
    pub tls: TlsMode,
    pub auth: AuthMode,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalDelivery {
    Maildir,
}

#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    pub local: LocalDelivery,
    pub routes: Vec<Route>,
    pub max_connections_per_domain: usize,
}

#[derive(Debug, Clone)]
pub struct Route {
    /// Lower-cased; "*" matches every domain without a route of its own.
    pub domain: String,
    /// "host:port".
    pub next_hop: String,
}

#[derive(Debug, Clone)]
pub struct QueueConfig {
    pub retry: Vec<Duration>,
    pub max_age: Duration,
    /// Below this many free bytes on the spool's filesystem, MAIL FROM is
    /// answered 452 4.3.1 (0 turns the check off).
    pub min_free_space: u64,
}

/// The admin endpoint. Its unix socket (`<data_dir>/admin.sock`) always
/// exists; this adds an optional TCP listener for the same HTTP API.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// TCP address of the admin HTTP API; loopback unless `allow_remote`.
    pub address: Option<SocketAddr>,
    /// Allows a non-loopback `address` (the API has no authentication).
    pub allow_remote: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    Tempfail,
    Skip,
    Reject,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginSource {
    Builtin(String),
    File(PathBuf),
}

#[derive(Debug, Clone)]
pub struct PluginConfig {
    pub name: String,
    pub source: PluginSource,
    pub on_error: OnError,
    pub timeout: Duration,
    pub memory: u64,
    /// The `[plugins.NAME.config]` table as JSON ("{}" when absent).
    pub config_json: String,
}

#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub name: String,
    pub connect: Vec<String>,
    pub helo: Vec<String>,
    pub mail: Vec<String>,
    pub rcpt: Vec<String>,
    pub data: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
}

pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_owned(),
        source,
    })?;
    load_str(&text, &path.display().to_string())
}

pub fn load_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
    raw::resolve(text, origin).map_err(ConfigError::Invalid)
}

/// The embedded default configuration.
pub fn default_config() -> Result<Config, ConfigError> {
    load_str(DEFAULT_CONFIG, "<embedded default>")
}
