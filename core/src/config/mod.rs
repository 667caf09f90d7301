//! The configuration file: TOML deserialized into raw structs that refuse
//! unknown keys, then resolved into a typed [`Config`] that cannot hold an
//! unknown plugin, a listener without a pipeline, or an unparsed duration.
//! Every error names the key and the line it came from. Nothing here opens
//! the files a configuration names (certificates, DKIM keys): `assets`
//! does, once, for `check-config` and the server, reporting against the
//! [`Origin`] each path carries.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod resolve;

pub use resolve::valid_domain;

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

/// Where a value was written: the file, the line and column of its key,
/// and the key's path. Values that name files carry it, so the step that
/// opens those files (`assets`) reports in the same form as the diagnostics
/// here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// "listener[0].certificate", "dkim.sign[1].key".
    pub key: String,
}

impl Origin {
    /// A problem with the value written here.
    pub fn diagnostic(&self, message: impl Into<String>) -> ConfigDiagnostic {
        ConfigDiagnostic {
            origin: self.file.clone(),
            line: self.line,
            column: self.column,
            key: self.key.clone(),
            message: message.into(),
        }
    }
}

/// A resolved value and where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located<T> {
    pub value: T,
    pub origin: Origin,
}

impl<T> std::ops::Deref for Located<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.value
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
    pub dns: DnsConfig,
    pub log: LogConfig,
    /// `[tls]`: the certificate of TLS listeners without one of their own;
    /// None makes the server generate a self-signed one under data_dir.
    pub tls: Option<CertificatesConfig>,
    pub auth: AuthConfig,
    pub admin: AdminConfig,
    /// `[state]`: where the plugins' kv state lives.
    pub state: StateConfig,
    pub reload: ReloadConfig,
    pub plugin_cache: PluginCacheConfig,
    pub submission: SubmissionConfig,
    pub dkim: DkimConfig,
    pub dmarc_reports: DmarcReportsConfig,
}

impl Config {
    /// The largest memory cap of any plugin (bytes; the default cap when
    /// none is declared): what the plugin engine's pool is sized for.
    pub fn max_plugin_memory(&self) -> u64 {
        self.plugins
            .values()
            .map(|p| p.memory)
            .max()
            .unwrap_or(64 << 20)
    }
}

/// `[submission]`: which addresses an authenticated user may send as on a
/// submission listener (RFC 6409 §6.1).
#[derive(Debug, Clone, Default)]
pub struct SubmissionConfig {
    /// Lower-cased user name -> what it may use as reverse-path and From.
    /// A user without an entry may use its own name when that is an
    /// address.
    pub senders: BTreeMap<String, Vec<SenderPattern>>,
}

/// One entry of a user's `senders` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SenderPattern {
    /// `alice@example.org` (lower-cased; compared case-insensitively).
    Address(String),
    /// `@example.org`: any address of the domain.
    Domain(String),
    /// `*`: any address (an application sending for everyone).
    Any,
}

impl SubmissionConfig {
    /// Whether `user` may send as `address` (`local@domain`).
    pub fn may_send_as(&self, user: &str, address: &str) -> bool {
        let address = address.to_lowercase();
        let user = user.to_lowercase();
        match self.senders.get(&user) {
            Some(patterns) => patterns.iter().any(|p| match p {
                SenderPattern::Any => true,
                SenderPattern::Address(a) => *a == address,
                SenderPattern::Domain(d) => address
                    .rsplit_once('@')
                    .is_some_and(|(local, domain)| !local.is_empty() && domain == d),
            }),
            None => user.contains('@') && user == address,
        }
    }
}

/// `[dmarc_reports]`: DMARC aggregate reports (RFC 7489 §7.2) about the
/// mail received, sent to the domains that ask for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmarcReportsConfig {
    pub enabled: bool,
    /// The reporting organization (`org_name` in the report).
    pub org_name: String,
    /// The From address of the reports (`email` in the report).
    pub email: String,
    /// `extra_contact_info`, when set.
    pub extra_contact: Option<String>,
    /// The reporting period; reports cover whole periods counted from the
    /// Unix epoch, so a day is a UTC day.
    pub interval: Duration,
}

impl Default for DmarcReportsConfig {
    fn default() -> Self {
        DmarcReportsConfig {
            enabled: false,
            org_name: String::new(),
            email: String::new(),
            extra_contact: None,
            interval: Duration::from_secs(24 * 3600),
        }
    }
}

/// `[dkim]`: outbound signing.
#[derive(Debug, Clone, Default)]
pub struct DkimConfig {
    /// Clients whose mail is signed without AUTH (besides authenticated
    /// ones).
    pub trusted_networks: Vec<ipnet::IpNet>,
    /// `[[dkim.sign]]`, in file order.
    pub sign: Vec<DkimKeyConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum DkimAlgorithm {
    #[serde(rename = "rsa-sha256")]
    RsaSha256,
    #[serde(rename = "ed25519-sha256")]
    Ed25519Sha256,
}

impl DkimAlgorithm {
    pub fn name(self) -> &'static str {
        match self {
            DkimAlgorithm::RsaSha256 => "rsa-sha256",
            DkimAlgorithm::Ed25519Sha256 => "ed25519-sha256",
        }
    }
}

/// One `[[dkim.sign]]` key.
#[derive(Debug, Clone)]
pub struct DkimKeyConfig {
    /// Lower-cased; mail whose From domain is this one is signed (d=).
    pub domain: String,
    pub selector: String,
    /// PEM private key (PKCS#8; PKCS#1 also for RSA); read by `assets`.
    pub key: Located<PathBuf>,
    pub algorithm: DkimAlgorithm,
    /// Header fields to sign; empty: the default list. From is always
    /// signed.
    pub headers: Vec<String>,
}

/// `[plugin_cache]`: where compiled components are kept between starts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PluginCacheConfig {
    /// `<data_dir>/cache`.
    #[default]
    DataDir,
    /// `dir = "..."`.
    Dir(PathBuf),
    /// `enabled = false`: every start compiles.
    Off,
}

impl PluginCacheConfig {
    /// The directory to use, or None when the cache is off.
    pub fn resolve(&self, data_dir: &std::path::Path) -> Option<PathBuf> {
        match self {
            PluginCacheConfig::DataDir => Some(data_dir.join("cache")),
            PluginCacheConfig::Dir(dir) => Some(dir.clone()),
            PluginCacheConfig::Off => None,
        }
    }
}

/// `[reload]`: reloading plugins and pipelines when their files change.
#[derive(Debug, Clone)]
pub struct ReloadConfig {
    /// Watch the config file and every plugin file; a change reloads.
    pub watch: bool,
    /// How long the files must stay quiet before the reload starts (a
    /// copy or an editor's save is several events).
    pub debounce: Duration,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        ReloadConfig {
            watch: true,
            debounce: Duration::from_millis(300),
        }
    }
}

/// A PEM certificate chain and its private key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TlsFiles {
    pub certificate: PathBuf,
    pub key: PathBuf,
}

/// The certificates a TLS listener serves: the pair for clients that send
/// no server name (SNI, RFC 6066 §3) or one no pair is for, and the pairs
/// chosen by server name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TlsCertificates {
    pub default: TlsFiles,
    pub named: Vec<NamedTlsFiles>,
}

/// A pair served to clients asking for one of `names` (lowercase; a
/// leading `*.` matches exactly one label).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NamedTlsFiles {
    pub names: Vec<String>,
    pub files: TlsFiles,
}

impl TlsCertificates {
    /// Every pair, the default first.
    pub fn pairs(&self) -> impl Iterator<Item = &TlsFiles> {
        std::iter::once(&self.default).chain(self.named.iter().map(|n| &n.files))
    }
}

/// `[tls]`'s or a listener's certificates as configured: either one pair
/// (`certificate` and `key`) or `[[tls.certificate]]` tables, each with
/// its own pair and the server `names` it is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificatesConfig {
    pub default: TlsFilesConfig,
    pub named: Vec<NamedCertificateConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedCertificateConfig {
    pub names: Vec<String>,
    pub files: TlsFilesConfig,
}

impl CertificatesConfig {
    /// One pair for every client.
    pub fn single(files: TlsFilesConfig) -> CertificatesConfig {
        CertificatesConfig {
            default: files,
            named: Vec::new(),
        }
    }

    /// Every pair as configured, the default first.
    pub fn pairs(&self) -> impl Iterator<Item = &TlsFilesConfig> {
        std::iter::once(&self.default).chain(self.named.iter().map(|n| &n.files))
    }

    pub fn certificates(&self) -> TlsCertificates {
        TlsCertificates {
            default: self.default.files(),
            named: self
                .named
                .iter()
                .map(|n| NamedTlsFiles {
                    names: n.names.clone(),
                    files: n.files.files(),
                })
                .collect(),
        }
    }
}

/// A certificate and key pair as configured (`[tls]` or a listener's
/// `certificate` and `key`): the paths and where each was written. Only
/// their syntax is checked here; `assets` opens them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFilesConfig {
    pub certificate: Located<PathBuf>,
    pub key: Located<PathBuf>,
}

impl TlsFilesConfig {
    pub fn files(&self) -> TlsFiles {
        TlsFiles {
            certificate: self.certificate.value.clone(),
            key: self.key.value.clone(),
        }
    }
}

/// `[auth]`: SMTP AUTH policy.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Failed attempts from one client IP, or for one user, before lockout.
    pub max_failures: u32,
    /// How long failures are remembered, and how long a lockout lasts.
    pub lockout: Duration,
    /// Shortest password `sluice user add|passwd` accepts, in characters.
    pub min_password_length: usize,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            max_failures: 5,
            lockout: Duration::from_secs(15 * 60),
            min_password_length: 12,
        }
    }
}

/// `[dns]`: the resolver every lookup goes through.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// Empty: the system's resolv.conf.
    pub nameservers: Vec<SocketAddr>,
    /// Per query attempt.
    pub timeout: Duration,
    pub attempts: usize,
    /// DNSSEC for the lookups DANE relies on; off by default.
    pub dnssec: DaneConfig,
}

/// `[dns] trust_anchor` and `trust_ad`: where DNSSEC validation of DANE's
/// lookups (MX, A/AAAA, TLSA) comes from. With neither, DANE is off.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DaneConfig {
    /// sluice validates every signature up to these keys.
    pub trust_anchor: Option<TrustAnchor>,
    /// Without a trust anchor: believe the AD bit of `nameservers`, which
    /// must then be a validating resolver on a trusted path (loopback).
    pub trust_ad: bool,
}

impl DaneConfig {
    /// Whether DANE can work: some lookups can be known to be secure.
    pub fn enabled(&self) -> bool {
        self.trust_anchor.is_some() || self.trust_ad
    }
}

/// The keys DNSSEC validation starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustAnchor {
    /// `"root"`: the root zone's KSKs built into the resolver.
    Root,
    /// A file of DNSKEY records (the root's, or a test zone's).
    File(PathBuf),
}

/// `[server] message_memory` when unset.
pub const DEFAULT_MESSAGE_MEMORY: u64 = 64 << 20;

/// `[server] ipv6_prefix` when unset: one site's usual IPv6 network.
pub const DEFAULT_IPV6_PREFIX: u8 = 64;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub hostname: String,
    /// `node_name`: this node among several sharing `[state]` (queue
    /// listings, `sluice_node_info`); the hostname when unset.
    pub node_name: String,
    pub data_dir: PathBuf,
    pub max_message_size: u64,
    /// Octets of messages held whole in memory at once, server-wide, by the
    /// steps that need a message whole (DKIM verification and signing, MIME
    /// parsing for plugins); see `memory`.
    pub message_memory: u64,
    pub max_recipients: usize,
    pub max_received_headers: usize,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// Per-client caps (connections, AUTH lockout) count an IPv6 client by
    /// its network of this many bits; 128 counts each address. IPv4 is
    /// always per address.
    pub ipv6_prefix: u8,
    /// Clients never held for a listener's `greet_delay` (postscreen's
    /// `permit_mynetworks`): loopback by default.
    pub greet_exempt: Vec<ipnet::IpNet>,
    pub timeouts: Timeouts,
    pub shutdown_grace: Duration,
    /// Look up each client's forward-confirmed reverse name at connect
    /// (`Dns::confirmed_reverse_name`), for Received and plugins.
    pub reverse_lookup: bool,
    /// The account to become once the listeners are bound, when started
    /// as root (`user`, `group`).
    pub run_as: Option<RunAs>,
    /// `allow_root`: keep running as root when started as root without
    /// `user`. For tests and throwaway containers only; warned at start.
    pub allow_root: bool,
}

/// `[server] user` and `group`: who the server runs as after binding its
/// listeners as root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub user: String,
    /// None: the user's primary group.
    pub group: Option<String>,
}

/// Server-side timeouts, RFC 5321 §4.5.3.2, and the bounds that keep a
/// client that stalls on purpose from holding a session slot.
#[derive(Debug, Clone)]
pub struct Timeouts {
    /// Waiting for the next command, and writing the replies to the
    /// client (5 minutes).
    pub command: Duration,
    /// Waiting for the next chunk of DATA (3 minutes).
    pub data_block: Duration,
    /// The whole of the message text, from the 354 to the final dot (10
    /// minutes, RFC 5321 §4.5.3.2.6's data block): a client trickling one
    /// byte per `data_block` cannot keep the session for ever.
    pub data: Duration,
    /// Waiting for the next command or chunk of DATA, and writing replies,
    /// while the server is under load (open connections at 80% of
    /// `max_connections` or more): clients that stall are let go sooner,
    /// like Postfix's stress mode (10 seconds).
    pub command_under_load: Duration,
    /// A TLS handshake, after STARTTLS or on an implicit-TLS listener (10
    /// seconds): an honest client finishes it in a few round trips.
    pub tls_handshake: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            command: Duration::from_secs(300),
            data_block: Duration::from_secs(180),
            data: Duration::from_secs(600),
            command_under_load: Duration::from_secs(10),
            tls_handshake: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct DomainsConfig {
    /// Lower-cased.
    pub local: Vec<String>,
    /// `recipient_delimiter`: each of these characters separates a local
    /// part from its detail (`alice+news`); empty = subaddressing off.
    pub recipient_delimiter: String,
}

impl DomainsConfig {
    /// The local part whose mailbox receives mail for `local`: `local` up
    /// to its first delimiter character (as Postfix and Dovecot split it).
    /// A leading delimiter is part of the name, not a detail, and a quoted
    /// local part (`"a b+x"`, as stored) is never split inside its quotes.
    pub fn mailbox_local_part<'a>(&self, local: &'a str) -> &'a str {
        if local.starts_with('"') {
            return local;
        }
        match local.find(|c| self.recipient_delimiter.contains(c)) {
            Some(i) if i > 0 => &local[..i],
            _ => local,
        }
    }
}

/// `[state]`: the backend of the plugins' key-value state.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum StateConfig {
    /// sled trees next to the queue under data_dir: one node.
    #[default]
    Sled,
    /// A Redis server several nodes share (rate-limit counters, greylist
    /// triplets); every key starts with `key_prefix`.
    Redis { url: String, key_prefix: String },
}

impl StateConfig {
    /// The Redis URL with any password replaced, for logs and `Debug`.
    pub fn redacted_url(url: &str) -> String {
        match (url.find("://"), url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                let userinfo = &url[scheme + 3..at];
                let user = userinfo.split(':').next().unwrap_or("");
                format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
            }
            _ => url.to_owned(),
        }
    }
}

impl std::fmt::Debug for StateConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StateConfig::Sled => f.write_str("Sled"),
            StateConfig::Redis { url, key_prefix } => f
                .debug_struct("Redis")
                .field("url", &StateConfig::redacted_url(url))
                .field("key_prefix", key_prefix)
                .finish(),
        }
    }
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
    /// The listener's own certificates (override `[tls]`).
    pub tls_files: Option<CertificatesConfig>,
    /// Allow AUTH over a cleartext connection (for loopback testing only).
    pub auth_without_tls: bool,
    /// A message submission listener (RFC 6409): senders must be the
    /// authenticated user's, Date and Message-ID are added when missing.
    /// Defaults to `auth == required`.
    pub submission: bool,
    /// Connections start with a PROXY protocol header (v1 or v2) naming
    /// the client; accepted only from `proxy_trusted_networks`.
    pub proxy_protocol: bool,
    /// Who may send the PROXY header (default loopback).
    pub proxy_trusted_networks: Vec<ipnet::IpNet>,
    /// How long the greeting waits; a client that talks before it is
    /// refused with 554 and dropped (postscreen's pregreet test). Zero turns
    /// the check off; clients in `server.greet_exempt` skip it.
    pub greet_delay: Duration,
}

impl ListenerConfig {
    /// Whether AUTH may be offered on a connection in this TLS state.
    pub fn auth_offered(&self, tls_active: bool) -> bool {
        self.auth != AuthMode::None && (tls_active || self.auth_without_tls)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalDelivery {
    Maildir,
    Lmtp(LmtpTarget),
}

/// Where the LMTP server (RFC 2033) for local domains listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LmtpTarget {
    /// "host:port".
    Tcp(String),
    Unix(PathBuf),
}

/// STARTTLS policy for outbound SMTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutboundTls {
    /// Unset: DANE where the MX host has usable TLSA records, else the
    /// domain's MTA-STS policy, else opportunistic.
    #[serde(skip)]
    Auto,
    /// DANE only: MX hosts without usable TLSA records are not used.
    Dane,
    /// The domain's MTA-STS policy when it has one, else opportunistic;
    /// never DANE.
    MtaSts,
    /// Use STARTTLS when offered; deliver in clear text otherwise or when
    /// the handshake fails (certificates are not verified, RFC 7435).
    Opportunistic,
    /// STARTTLS with a verified certificate, or no delivery.
    Required,
    None,
}

impl std::fmt::Display for OutboundTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OutboundTls::Auto => "auto",
            OutboundTls::Dane => "dane",
            OutboundTls::MtaSts => "mta-sts",
            OutboundTls::Opportunistic => "opportunistic",
            OutboundTls::Required => "required",
            OutboundTls::None => "none",
        })
    }
}

#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    pub local: LocalDelivery,
    pub routes: Vec<Route>,
    pub max_connections_per_domain: usize,
    /// New messages started per second and destination; None: unlimited.
    pub messages_per_second_per_domain: Option<f64>,
    /// The port MX hosts are contacted on (25; tests use others).
    pub smtp_port: u16,
    /// Default STARTTLS policy (`Auto` when unset); a route may override it.
    pub tls: OutboundTls,
    /// CA bundle (PEM) for `required` TLS; None: the bundled web PKI roots.
    pub ca_file: Option<PathBuf>,
    /// Honour the MTA-STS policies (RFC 8461) of the domains mail goes
    /// to by MX.
    pub mta_sts: bool,
    /// Deliveries (connections, Maildir writes) running at once over all
    /// destinations; a destination's own cap is taken before one of these.
    pub max_concurrent_deliveries: usize,
    /// MX hosts of a domain looked up per attempt, most preferred first.
    pub max_mx_hosts: usize,
    /// Addresses tried per attempt over all of a domain's MX hosts (or a
    /// route's next hop): what one hostile DNS answer can cost.
    pub max_addresses: usize,
    /// MX-derived (and implicit-MX) addresses never connected to; explicit
    /// routes are exempt.
    pub ignore_target_hosts: Vec<ipnet::IpNet>,
    pub timeouts: DeliveryTimeouts,
    pub maildir: MaildirConfig,
}

/// `[delivery.maildir]`: which local parts Maildir delivery has a mailbox
/// for. By default only those whose directory exists (and postmaster), so
/// mail for a made-up name bounces instead of creating a mailbox.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MaildirConfig {
    /// `catch_all`: the mailbox (a local part, lower-cased) of the same
    /// domain that receives mail for local parts without one.
    pub catch_all: Option<String>,
    /// `create_mailboxes`: every local part gets a mailbox on its first
    /// delivery (a test setup, a single-user host); invites backscatter.
    pub create_mailboxes: bool,
}

/// Deadlines of outbound SMTP/LMTP (`[delivery.timeouts]`): every read and
/// write waits at most this long, so a silent next hop costs its own
/// deliveries and nothing else. Defaults after RFC 5321 §4.5.3.2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryTimeouts {
    /// TCP (or unix socket) connect.
    pub connect: Duration,
    /// The 220 greeting.
    pub greeting: Duration,
    /// Writing a command and reading its reply (EHLO, STARTTLS and the TLS
    /// handshake, RSET, MAIL, RCPT).
    pub command: Duration,
    /// The 354 reply to DATA.
    pub data_init: Duration,
    /// The longest a write of the message may make no progress (the
    /// server stopped reading).
    pub data_block: Duration,
    /// The reply after the final dot (each one, under LMTP).
    pub data_end: Duration,
    /// One attempt over all of a destination's targets, connects included.
    pub attempt: Duration,
}

impl Default for DeliveryTimeouts {
    fn default() -> Self {
        DeliveryTimeouts {
            connect: Duration::from_secs(30),
            greeting: Duration::from_secs(300),
            command: Duration::from_secs(300),
            data_init: Duration::from_secs(120),
            data_block: Duration::from_secs(180),
            data_end: Duration::from_secs(600),
            attempt: Duration::from_secs(1800),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Route {
    /// Lower-cased; "*" matches every domain without a route of its own.
    pub domain: String,
    /// "host:port".
    pub next_hop: String,
    pub tls: Option<OutboundTls>,
    /// A file (0600) of `username:password` to AUTH to the next hop with;
    /// only ever sent over verified TLS.
    pub auth_file: Option<Located<PathBuf>>,
}

#[derive(Debug, Clone)]
pub struct QueueConfig {
    pub retry: Vec<Duration>,
    pub max_age: Duration,
    /// Send a delayed-delivery DSN once a message is this old; None: never.
    pub warn_after: Option<Duration>,
    /// Quarantined mail older than this is removed; None: kept until the
    /// operator releases or deletes it.
    pub quarantine_retention: Option<Duration>,
    /// Below this many free bytes on the spool's filesystem, MAIL FROM is
    /// answered 452 4.3.1 (0 turns the check off).
    pub min_free_space: u64,
    /// Below this many free inodes there, likewise (0 turns it off; not
    /// checked on filesystems without a fixed inode table).
    pub min_free_inodes: u64,
}

/// The admin endpoint. Its unix socket (`<data_dir>/admin.sock`) always
/// exists and serves the whole API; this adds an optional TCP listener
/// that serves metrics and health to anyone and the rest only to a
/// request bearing the token of `token_file`.
#[derive(Debug, Clone, Default)]
pub struct AdminConfig {
    /// TCP address of the admin HTTP API; loopback unless `allow_remote`.
    pub address: Option<SocketAddr>,
    /// Allows a non-loopback `address` (and Host headers naming an IP
    /// address rather than a loopback name).
    pub allow_remote: bool,
    /// The file holding the bearer token that unlocks the whole API over
    /// TCP; without it TCP serves metrics and health only. `assets` reads
    /// it (and refuses one that group or others may open).
    pub token_file: Option<Located<PathBuf>>,
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
    /// `milter:inet:HOST:PORT` or `milter:unix:/PATH`.
    Milter(crate::milter::MilterAddress),
}

/// What a plugin may be allowed (`[plugins.NAME] allow`): a host
/// interface to call, or a change to the envelope. `host` (log, clock,
/// hostname, local domains) and the message's size and headers are always
/// available.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Capability {
    /// `dns`: A, AAAA, MX, TXT and PTR lookups through the server's resolver.
    Dns,
    /// `kv`: the plugin's persistent key-value state.
    Kv,
    /// `auth`: SPF, DKIM, DMARC and ARC results (the host looks them up).
    Auth,
    /// `message-body`: the message's bytes, body text and attachment list.
    MessageBody,
    /// `recipients`: adding or removing envelope recipients at data. Never
    /// held without the operator's grant, bundled plugins included: it
    /// decides where mail goes.
    Recipients,
}

impl Capability {
    pub const ALL: [Capability; 5] = [
        Capability::Dns,
        Capability::Kv,
        Capability::Auth,
        Capability::MessageBody,
        Capability::Recipients,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Capability::Dns => "dns",
            Capability::Kv => "kv",
            Capability::Auth => "auth",
            Capability::MessageBody => "message-body",
            Capability::Recipients => "recipients",
        }
    }

    pub fn parse(name: &str) -> Option<Capability> {
        Capability::ALL.into_iter().find(|c| c.name() == name)
    }
}

/// The capabilities a plugin holds. Bundled plugins (`builtin:`) hold
/// every host interface unless `allow` says otherwise: they are built from
/// this source tree. Plugins loaded from a file hold none unless `allow`
/// lists them. `recipients` is held only where `allow` lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities(u8);

impl Capabilities {
    pub const NONE: Capabilities = Capabilities(0);

    pub fn all() -> Capabilities {
        Capabilities::from_iter(Capability::ALL)
    }

    /// What a bundled plugin holds without an `allow` list.
    pub fn bundled() -> Capabilities {
        Capabilities::from_iter(
            Capability::ALL
                .into_iter()
                .filter(|c| *c != Capability::Recipients),
        )
    }

    pub fn allows(self, capability: Capability) -> bool {
        self.0 & (1 << capability as u8) != 0
    }

    pub fn names(self) -> Vec<&'static str> {
        Capability::ALL
            .into_iter()
            .filter(|c| self.allows(*c))
            .map(Capability::name)
            .collect()
    }
}

impl FromIterator<Capability> for Capabilities {
    fn from_iter<I: IntoIterator<Item = Capability>>(iter: I) -> Self {
        Capabilities(iter.into_iter().fold(0, |bits, c| bits | 1 << c as u8))
    }
}

/// Whether a plugin's verdicts apply (`enforce`) or are only logged and
/// counted (`shadow`), to try a filter on live traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginMode {
    #[default]
    Enforce,
    Shadow,
}

/// How a plugin's instances relate to sessions (`[plugins.NAME]
/// instances`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InstancePolicy {
    /// A fresh instance (and `init`) for every session that calls it.
    #[default]
    PerSession,
    /// At most `size` instances, each initialized once and lent to one
    /// session at a time, then reused by the next.
    Pooled { size: u32 },
    /// Initialized once and kept for later sessions, without a bound on how
    /// many sessions hold one at once; at most `idle` are kept unused. The
    /// default of the bundled plugins, which reset their per-session state
    /// when the session id changes.
    Reused { idle: u32 },
}

impl InstancePolicy {
    /// Idle instances a `reused` plugin keeps unless `pool_size` says.
    pub const DEFAULT_IDLE: u32 = 32;
}

#[derive(Debug, Clone)]
pub struct PluginConfig {
    pub name: String,
    pub source: PluginSource,
    /// The host interfaces it may call.
    pub allow: Capabilities,
    pub mode: PluginMode,
    pub instances: InstancePolicy,
    pub on_error: OnError,
    pub timeout: Duration,
    pub memory: u64,
    /// The `[plugins.NAME.config]` table as JSON ("{}" when absent).
    pub config_json: String,
    /// `files`: what the plugin may read through the `directory` interface.
    pub files: Vec<PathBuf>,
    /// `callouts`: the mailbox servers it may ask whether a recipient exists.
    pub callouts: Vec<CalloutGrant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CalloutProtocol {
    Lmtp,
    Smtp,
}

/// One entry of `[plugins.NAME] callouts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalloutGrant {
    pub protocol: CalloutProtocol,
    /// "host:port" as written.
    pub target: String,
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
    let checked = check_str(text, origin)?;
    if !checked.problems.is_empty() {
        return Err(ConfigError::Invalid(checked.problems));
    }
    Ok(checked.config)
}

/// A configuration with every problem found in it. Where a value was
/// wrong, `config` holds its default (or leaves the entry out), so the
/// files the rest names can still be checked (`sluice check-config`).
#[derive(Debug)]
pub struct Checked {
    pub config: Config,
    pub problems: Vec<ConfigDiagnostic>,
}

/// Reads and resolves a file without stopping at the first wrong value.
/// Err only when the file cannot be read or is not TOML of known keys.
pub fn check_file(path: &Path) -> Result<Checked, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_owned(),
        source,
    })?;
    check_str(&text, &path.display().to_string())
}

pub fn check_str(text: &str, origin: &str) -> Result<Checked, ConfigError> {
    let (config, problems) = resolve::resolve(text, origin).map_err(ConfigError::Invalid)?;
    Ok(Checked { config, problems })
}

/// The embedded default configuration.
pub fn default_config() -> Result<Config, ConfigError> {
    load_str(DEFAULT_CONFIG, "<embedded default>")
}
