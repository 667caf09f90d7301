//! sluice: a mail transfer agent whose every SMTP stage runs through a chain
//! of sandboxed WebAssembly plugins.
//!
//! Layout (data flows down this list):
//! - [`server`]: listeners, accepting under the connection limits, reload
//!   on SIGHUP, shutdown
//! - [`replay`]: `sluice pipeline test`, the session run on a recorded
//!   message over an in-memory pipe
//! - [`session`]: one SMTP session over any byte stream: an explicit state,
//!   one file per verb, the intake between the end of DATA and its reply
//! - [`proxy`]: the PROXY protocol header a load balancer sends first
//! - [`limits`]: the global and per-client connection caps, "under load"
//! - [`client_key`]: what per-client caps count by (IPv4 address, IPv6 /64)
//! - [`tls`]: certificates and the rustls configuration of TLS listeners
//! - [`users`]: SMTP AUTH users (the users file, argon2, lockout)
//! - [`smtp`]: sans-IO protocol code: commands, addresses, replies, DATA
//! - [`pipeline`]: the Wasm plugin chains that judge each stage
//! - [`reload`]: rebuilding and swapping the pipelines of a running server
//! - the spool (crate `sluice-spool`): where accepted mail is kept durably
//! - [`delivery`]: from the spool to Maildir or the next hop
//! - [`memory`]: the server-wide budget of messages held whole in memory
//! - [`dns`]: the shared resolver (MX routing, plugins, SPF/DKIM/DMARC)
//! - [`dkim`]: outbound DKIM signing and `sluice dkim keygen`
//! - [`authn`]: SPF, DKIM, DMARC and ARC for the plugins' `auth` interface
//! - [`dmarc_reports`]: DMARC aggregate reports on the mail received
//! - [`assets`]: the certificates and DKIM keys the config names, loaded once
//! - [`config`]: the TOML file, parsed and checked value by value with the
//!   key and line of every error; a leaf: it imports no other module and
//!   opens no file it names
//! - [`private_file`]: secrets read from files only their owner may open
//! - [`state`]: the plugins' key-value state (sled, or Redis shared by nodes)
//! - [`metrics`]: counters, gauges and histograms for Prometheus
//! - [`milter`]: the MTA side of the Sendmail milter protocol
//! - [`admin`]: the operator's HTTP endpoint (queue, health) and its client
//! - [`privilege`]: dropping root to `[server] user` after binding
//! - [`cli`]: the `sluice` command line

pub mod admin;
pub mod assets;
pub mod authn;
pub mod cli;
pub mod client_key;
pub mod config;
pub mod delivery;
pub mod dkim;
pub mod dmarc_reports;
pub mod dns;
pub mod limits;
pub mod memory;
pub mod metrics;
pub mod milter;
pub mod pipeline;
pub mod private_file;
pub mod privilege;
pub mod proxy;
pub mod reload;
pub mod replay;
pub mod server;
pub mod session;
pub mod smtp;
pub mod state;
pub mod tls;
pub mod users;
