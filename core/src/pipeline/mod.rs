//! The plugin pipeline: the configured chains of WebAssembly plugins that
//! judge every SMTP stage.
//!
//! - `engine`: the wasmtime engine (async, epochs, pooling)
//! - `cache`: compiled components on disk, keyed by content and engine
//! - `plugin`: one configured plugin, compiled and pre-instantiated, or a
//!   milter's address
//! - `milter`: a milter element, fed from the stages over its connection
//! - `chain`: a session's lazily created instances, each call's answer
//!   logged, counted and traced
//! - `fold`: the verdict fold of a stage, a pure function of the answers
//! - `fault`: why a plugin call failed, typed (the metric's `kind` label)
//! - `host`: the imports plugins call (log, kv, dns, auth, message)
//! - `sandbox`: the imports a component may have, the capabilities checks,
//!   the memory cap
//! - `auth`: a session's SPF/DKIM/DMARC/ARC results, computed on first ask
//! - `message`: the message resource of the data stage
//! - `recipients`: the grant and the syntax a plugin's recipient changes
//!   need
//! - `directory`: files and mailbox servers granted to plugins
//! - `verdict`, `session`: the host-side types the rest of sluice uses
//! - `trace`: each plugin's answer, recorded for `sluice pipeline test`
//! - `bindings`: the one `bindgen!`; its types never leave this module
//!
//! A [`PipelineSet`] is built whole from the config (compile, link, `init`
//! each plugin once to validate its configuration) before it serves, so a
//! bad plugin or plugin config fails the start or the reload, not a session.

pub mod auth;
mod bindings;
pub mod cache;
pub mod chain;
pub mod directory;
pub mod engine;
pub mod fault;
pub mod fold;
pub mod host;
pub mod message;
pub mod milter;
pub mod plugin;
mod recipients;
pub mod sandbox;
pub mod session;
pub mod trace;
pub mod verdict;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use sluice_spool::Spool;

pub use chain::SessionFilters;
pub use engine::PluginEngine;
pub use fault::PluginFault;
pub use host::HostServices;
pub use plugin::{builtin_names, Plugin};
pub use session::{HookArg, MailboxArg, SessionInfo, TlsInfo};
pub use trace::{PluginStep, StepAnswer};
pub use verdict::{DataOutcome, Modification, Stage, StageOutcome};

use crate::authn::Authenticator;
use crate::config::Config;
use crate::dns::Dns;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("plugin engine: {0}")]
    Engine(String),
    #[error("{0}")]
    Cache(#[from] cache::CacheError),
    #[error("plugins.{plugin}: unknown bundled plugin \"builtin:{builtin}\" (bundled: {known})")]
    UnknownBuiltin {
        plugin: String,
        builtin: String,
        known: String,
    },
    #[error("plugins.{plugin}: cannot read {path}: {source}")]
    Read {
        plugin: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("plugins.{plugin}: not a valid sluice:filter component: {message}")]
    Compile { plugin: String, message: String },
    #[error(
        "plugins.{plugin}: imports outside the sandbox (only sluice:filter and inert WASI are allowed): {imports}"
    )]
    ForbiddenImport { plugin: String, imports: String },
    #[error("plugins.{plugin}: does not fit the sluice:filter world: {message}")]
    Link { plugin: String, message: String },
    #[error("plugins.{plugin}: {message}")]
    Init { plugin: String, message: String },
    #[error("plugin state: {0}")]
    State(#[from] crate::state::StateError),
}

/// One `[pipeline.NAME]`: per stage, the plugins to run, in order.
pub struct Pipeline {
    pub name: String,
    /// Every plugin this pipeline uses, once each.
    pub(crate) plugins: Vec<Arc<Plugin>>,
    /// Per stage, indexes into `plugins`.
    stages: [Vec<usize>; 5],
    pub(crate) services: Arc<HostServices>,
}

impl Pipeline {
    fn stage(&self, stage: Stage) -> &[usize] {
        &self.stages[stage.index()]
    }

    /// Plugin names of a stage, in order (for logs and `pipeline test`).
    pub fn stage_plugins(&self, stage: Stage) -> Vec<&str> {
        self.stage(stage)
            .iter()
            .map(|&i| &*self.plugins[i].name)
            .collect()
    }

    pub fn plugin(&self, name: &str) -> Option<&Arc<Plugin>> {
        self.plugins.iter().find(|p| &*p.name == name)
    }
}

/// Every pipeline of a configuration, by name.
pub struct PipelineSet {
    pipelines: HashMap<String, Arc<Pipeline>>,
}

impl PipelineSet {
    /// Compiles every plugin the config declares, validates each one's
    /// configuration through its `init`, and assembles the pipelines.
    /// Plugins look names up and authenticate senders through `dns`.
    pub async fn build(
        engine: &PluginEngine,
        config: &Config,
        spool: &Spool,
        dns: &Dns,
    ) -> Result<PipelineSet, PipelineError> {
        let services = Arc::new(HostServices {
            hostname: config.server.hostname.clone(),
            local_domains: config.domains.local.iter().cloned().collect(),
            dns: dns.clone(),
            authenticator: Authenticator::new(dns, &config.server.hostname),
            directory: Arc::new(directory::Directory::new(&config.plugins)),
            dmarc_reports: crate::dmarc_reports::DmarcRecorder::open(&config.dmarc_reports, spool),
        });
        let state = crate::state::StateBackend::open(&config.state, spool)?;
        tracing::debug!(state = %state.describe(), "plugin state backend");
        let mut plugins: BTreeMap<&str, Arc<Plugin>> = BTreeMap::new();
        for (name, plugin_config) in &config.plugins {
            let kv = state.kv(name)?;
            let plugin = Plugin::load(engine, plugin_config, kv).await?;
            if plugin.milter_address().is_some() {
                plugins.insert(name.as_str(), Arc::new(plugin));
                continue;
            }
            // One throwaway instance proves the component instantiates and
            // accepts its configuration before any session depends on it.
            let auth = Arc::new(auth::SessionAuth::new(services.authenticator.clone()));
            let validated = plugin
                .instantiate("validate", &services, &auth)
                .await
                .map_err(|fault| PipelineError::Init {
                    plugin: name.clone(),
                    message: fault.to_string(),
                })?;
            // A pooled plugin keeps it as its first instance.
            plugin.release(validated);
            plugins.insert(name.as_str(), Arc::new(plugin));
        }

        let mut pipelines = HashMap::new();
        for (name, pipeline_config) in &config.pipelines {
            let mut used: Vec<Arc<Plugin>> = Vec::new();
            let mut stages: [Vec<usize>; 5] = Default::default();
            let lists = [
                (Stage::Connect, &pipeline_config.connect),
                (Stage::Helo, &pipeline_config.helo),
                (Stage::Mail, &pipeline_config.mail),
                (Stage::Rcpt, &pipeline_config.rcpt),
                (Stage::Data, &pipeline_config.data),
            ];
            for (stage, names) in lists {
                for plugin_name in names {
                    // The resolved config guarantees the name exists.
                    let Some(plugin) = plugins.get(plugin_name.as_str()) else {
                        return Err(PipelineError::Init {
                            plugin: plugin_name.clone(),
                            message: format!("used by pipeline {name} but not declared"),
                        });
                    };
                    let index = match used.iter().position(|p| Arc::ptr_eq(p, plugin)) {
                        Some(i) => i,
                        None => {
                            used.push(plugin.clone());
                            used.len() - 1
                        }
                    };
                    stages[stage.index()].push(index);
                }
            }
            pipelines.insert(
                name.clone(),
                Arc::new(Pipeline {
                    name: name.clone(),
                    plugins: used,
                    stages,
                    services: services.clone(),
                }),
            );
        }
        Ok(PipelineSet { pipelines })
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Pipeline>> {
        self.pipelines.get(name)
    }
}
