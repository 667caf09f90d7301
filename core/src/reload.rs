//! Hot reload of plugins and pipelines: `sluice reload` (admin `POST
//! /reload`), SIGHUP, or a change to the config file or a plugin file.
//!
//! A reload reads the config file again, builds a whole new [`PipelineSet`]
//! off the hot path (compile, link, `init` each plugin with its config),
//! and only then swaps it in: sessions in flight keep the pipeline they
//! started with, new sessions get the new one. A build that fails is
//! logged, counted (`sluice_reloads_total{result="failed"}`) and returned
//! to the caller; the running pipelines keep serving.
//!
//! Only `[plugins.*]` and `[pipeline.*]` are reloaded. Every other section
//! (`[server]`, `[domains]`, `[[listener]]`, `[delivery]`, `[queue]`,
//! `[dns]`, `[log]`, `[tls]`, `[auth]`, `[admin]`, `[state]`, `[reload]`,
//! `[plugin_cache]`, `[submission]`, `[dkim]`) is what the server started
//! with; a reload that finds one changed says so (`restart_needed`) and
//! leaves it alone, so the pipelines never run against a half-applied
//! configuration. Files named by a section (certificates, DKIM keys) are
//! read at start only; a changed file under the same name is not seen.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use serde::Serialize;
use sluice_spool::Spool;

use crate::config::{self, Config, ConfigError, PluginSource};
use crate::dns::Dns;
use crate::metrics::METRICS;
use crate::pipeline::{PipelineError, PipelineSet, PluginEngine};

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Pipeline(#[from] PipelineError),
    #[error("listener {listener} uses pipeline {pipeline:?}, which the new configuration does not declare (listeners change only with a restart)")]
    MissingPipeline { listener: String, pipeline: String },
    #[error("plugins.{plugin}.memory: {memory} bytes is above the {limit} bytes the plugin engine was started with; raising it needs a restart")]
    MemoryAboveStart {
        plugin: String,
        memory: u64,
        limit: u64,
    },
}

/// What triggered a reload (for logs).
#[derive(Debug, Clone, Copy)]
pub enum Trigger {
    Command,
    Signal,
    FileChange,
}

impl Trigger {
    fn name(self) -> &'static str {
        match self {
            Trigger::Command => "reload command",
            Trigger::Signal => "SIGHUP",
            Trigger::FileChange => "file change",
        }
    }
}

/// What a successful reload did.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadReport {
    /// Plugins of the new pipelines, by name.
    pub plugins: Vec<String>,
    pub pipelines: Vec<String>,
    /// Sections that differ from the running configuration and were not
    /// applied: they take effect only after a restart.
    pub restart_needed: Vec<&'static str>,
    /// Milliseconds spent building the new pipelines.
    pub build_ms: u64,
}

/// Rebuilds and swaps the pipelines of a running server.
pub struct Reloader {
    /// The file the server was started with; None for the embedded default
    /// (a reload then rebuilds the same pipelines).
    config_path: Option<PathBuf>,
    /// The configuration the server started with.
    startup: Arc<Config>,
    /// The plugin and pipeline sections now serving.
    current: std::sync::Mutex<Arc<Config>>,
    /// The plugin files of the last configuration read, built or not: a
    /// fixed file must trigger the next reload.
    wanted_files: std::sync::Mutex<BTreeSet<PathBuf>>,
    engine: Arc<PluginEngine>,
    /// The largest plugin memory the engine's instance pool was sized for.
    memory_limit: u64,
    spool: Spool,
    dns: Dns,
    pipelines: Arc<ArcSwap<PipelineSet>>,
    /// One reload at a time: two builds racing could swap in the older.
    running: tokio::sync::Mutex<()>,
}

impl Reloader {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config_path: Option<PathBuf>,
        startup: Arc<Config>,
        engine: Arc<PluginEngine>,
        memory_limit: u64,
        spool: Spool,
        dns: Dns,
        pipelines: Arc<ArcSwap<PipelineSet>>,
    ) -> Self {
        Reloader {
            config_path,
            current: std::sync::Mutex::new(startup.clone()),
            wanted_files: std::sync::Mutex::new(plugin_files(&startup)),
            startup,
            engine,
            memory_limit,
            spool,
            dns,
            pipelines,
            running: tokio::sync::Mutex::new(()),
        }
    }

    pub fn config_path(&self) -> Option<&Path> {
        self.config_path.as_deref()
    }

    /// The files whose change triggers a reload: the config file and every
    /// plugin loaded from a file.
    pub fn watched_files(&self) -> BTreeSet<PathBuf> {
        let mut files = plugin_files(&self.current_config());
        files.extend(
            self.wanted_files
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .iter()
                .cloned(),
        );
        files.extend(self.config_path.clone());
        files
    }

    fn current_config(&self) -> Arc<Config> {
        self.current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Reads the configuration again, builds new pipelines and swaps them
    /// in; on any error the running pipelines stay.
    pub async fn reload(&self, trigger: Trigger) -> Result<ReloadReport, ReloadError> {
        let _one_at_a_time = self.running.lock().await;
        tracing::info!(trigger = trigger.name(), "reloading plugins and pipelines");
        let result = self.build_and_swap().await;
        match &result {
            Ok(report) => {
                METRICS.reloads.inc(&["ok"]);
                tracing::info!(
                    trigger = trigger.name(),
                    plugins = ?report.plugins,
                    pipelines = ?report.pipelines,
                    restart_needed = ?report.restart_needed,
                    build_ms = report.build_ms,
                    "reload done: new sessions use the new pipelines"
                );
                if !report.restart_needed.is_empty() {
                    tracing::warn!(
                        sections = ?report.restart_needed,
                        "changed sections not applied by a reload; restart to apply them"
                    );
                }
            }
            Err(e) => {
                METRICS.reloads.inc(&["failed"]);
                tracing::error!(
                    trigger = trigger.name(),
                    "reload failed, the previous pipelines keep serving: {e}"
                );
            }
        }
        result
    }

    async fn build_and_swap(&self) -> Result<ReloadReport, ReloadError> {
        let started = Instant::now();
        let new = match &self.config_path {
            Some(path) => config::load_file(path)?,
            None => config::default_config()?,
        };
        *self
            .wanted_files
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = plugin_files(&new);
        let restart_needed = restart_needed(&self.startup, &new);
        // The running sections with the new plugins and pipelines.
        let mut effective = (*self.startup).clone();
        effective.plugins = new.plugins;
        effective.pipelines = new.pipelines;
        for listener in &effective.listeners {
            if !effective.pipelines.contains_key(&listener.pipeline) {
                return Err(ReloadError::MissingPipeline {
                    listener: listener.name.clone(),
                    pipeline: listener.pipeline.clone(),
                });
            }
        }
        if let Some(plugin) = effective
            .plugins
            .values()
            .find(|p| p.memory > self.memory_limit)
        {
            return Err(ReloadError::MemoryAboveStart {
                plugin: plugin.name.clone(),
                memory: plugin.memory,
                limit: self.memory_limit,
            });
        }
        let set = PipelineSet::build(&self.engine, &effective, &self.spool, &self.dns).await?;
        self.pipelines.store(Arc::new(set));
        let report = ReloadReport {
            plugins: effective.plugins.keys().cloned().collect(),
            pipelines: effective.pipelines.keys().cloned().collect(),
            restart_needed,
            build_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        };
        *self
            .current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(effective);
        Ok(report)
    }
}

/// The sections of `new` that differ from what the server runs and that a
/// reload does not apply: every field of [`Config`] but `plugins` and
/// `pipelines`.
fn restart_needed(running: &Config, new: &Config) -> Vec<&'static str> {
    // Debug text compares the sections exactly: they hold no maps of
    // unstable order, and their one float (a rate) prints the same each
    // time. `[state]` is the exception: its Debug hides the Redis password,
    // whose change must still be seen.
    fn differs<T: std::fmt::Debug>(a: &T, b: &T) -> bool {
        format!("{a:?}") != format!("{b:?}")
    }
    // Destructured so that a new field of Config fails to compile here
    // until it is compared or named as reloaded.
    let Config {
        server,
        domains,
        listeners,
        delivery,
        queue,
        plugins: _,
        pipelines: _,
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
    } = running;
    let checks: [(&'static str, bool); 16] = [
        ("server", differs(server, &new.server)),
        ("domains", differs(domains, &new.domains)),
        ("listener", differs(listeners, &new.listeners)),
        ("delivery", differs(delivery, &new.delivery)),
        ("queue", differs(queue, &new.queue)),
        ("dns", differs(dns, &new.dns)),
        ("log", differs(log, &new.log)),
        ("tls", differs(tls, &new.tls)),
        ("auth", differs(auth, &new.auth)),
        ("admin", differs(admin, &new.admin)),
        ("state", *state != new.state),
        ("reload", differs(reload, &new.reload)),
        ("plugin_cache", differs(plugin_cache, &new.plugin_cache)),
        ("submission", differs(submission, &new.submission)),
        ("dkim", differs(dkim, &new.dkim)),
        ("dmarc_reports", *dmarc_reports != new.dmarc_reports),
    ];
    checks
        .into_iter()
        .filter_map(|(section, changed)| changed.then_some(section))
        .collect()
}

/// Watches the reloader's files and reloads when they change, `debounce`
/// after the last event. Editors and deploy tools replace files by rename,
/// so the directories are watched and events filtered by path; the set of
/// files is read again after every reload (a new plugin path is watched).
pub async fn watch_files(reloader: Arc<Reloader>, debounce: Duration) {
    use notify::{RecursiveMode, Watcher};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<PathBuf>();
    let handler = move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            if matches!(event.kind, notify::EventKind::Access(_)) {
                return;
            }
            for path in event.paths {
                let _ = tx.send(path);
            }
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            tracing::error!("cannot watch the config and plugin files; reload with `sluice reload` or SIGHUP: {e}");
            return;
        }
    };
    let mut watched_dirs: BTreeSet<PathBuf> = BTreeSet::new();
    loop {
        let files = reloader.watched_files();
        let dirs: BTreeSet<PathBuf> = files.iter().map(|f| parent_dir(f)).collect();
        for dir in watched_dirs.difference(&dirs) {
            let _ = watcher.unwatch(dir);
        }
        for dir in dirs.difference(&watched_dirs) {
            if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
                tracing::warn!(directory = %dir.display(), "cannot watch for changes: {e}");
            }
        }
        watched_dirs = dirs;
        let names: BTreeSet<PathBuf> = files.iter().map(|f| absolute(f)).collect();

        // Wait for a change to one of the files...
        loop {
            let Some(path) = rx.recv().await else {
                return;
            };
            if names.contains(&absolute(&path)) {
                tracing::debug!(file = %path.display(), "changed");
                break;
            }
        }
        // ...then for its writes to settle. Other files of the directories
        // (a log file next to the config) do not delay the reload.
        let mut quiet_until = tokio::time::Instant::now() + debounce;
        loop {
            match tokio::time::timeout_at(quiet_until, rx.recv()).await {
                Ok(Some(path)) if names.contains(&absolute(&path)) => {
                    quiet_until = tokio::time::Instant::now() + debounce;
                }
                Ok(Some(_)) => {}
                Ok(None) => return,
                Err(_elapsed) => break,
            }
        }
        // The outcome is logged and counted by reload().
        let _ = reloader.reload(Trigger::FileChange).await;
    }
}

/// The plugins of `config` loaded from a file.
fn plugin_files(config: &Config) -> BTreeSet<PathBuf> {
    config
        .plugins
        .values()
        .filter_map(|p| match &p.source {
            PluginSource::File(path) => Some(path.clone()),
            PluginSource::Builtin(_) | PluginSource::Milter(_) => None,
        })
        .collect()
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

fn parent_dir(file: &Path) -> PathBuf {
    match absolute(file).parent() {
        Some(dir) => dir.to_owned(),
        None => PathBuf::from("/"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "[server]\nhostname = \"a.test\"\n[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:2525\"\npipeline = \"p\"\n[pipeline.p]\nrcpt = [\"relay\"]\n[plugins.relay]\npath = \"builtin:relay\"\n";

    #[test]
    fn plugin_and_pipeline_changes_need_no_restart() {
        let running = config::load_str(BASE, "a").unwrap();
        let text = BASE.replace(
            "rcpt = [\"relay\"]",
            "rcpt = [\"relay\"]\nmail = [\"relay\"]",
        ) + "[plugins.relay.config]\ntrusted_networks = [\"10.0.0.0/8\"]\n";
        let new = config::load_str(&text, "b").unwrap();
        assert!(restart_needed(&running, &new).is_empty());
    }

    #[test]
    fn listener_and_domain_changes_are_reported() {
        let running = config::load_str(BASE, "a").unwrap();
        let text = BASE.replace("2525", "2526") + "[domains]\nlocal = [\"b.test\"]\n";
        let new = config::load_str(&text, "b").unwrap();
        assert_eq!(restart_needed(&running, &new), ["domains", "listener"]);
    }

    #[test]
    fn state_submission_and_dkim_changes_are_reported() {
        let redis = |url: &str| format!("[state]\nbackend = \"redis\"\nurl = \"{url}\"\n");
        let running = config::load_str(BASE, "a").unwrap();
        for (added, section) in [
            (redis("redis://127.0.0.1:6379"), "state"),
            (
                "[submission]\nsenders = { \"app\" = [\"*\"] }\n".to_owned(),
                "submission",
            ),
            (
                "[dkim]\ntrusted_networks = [\"10.0.0.0/8\"]\n".to_owned(),
                "dkim",
            ),
            ("[server.timeouts]\ncommand = \"1m\"\n".to_owned(), "server"),
        ] {
            let new = config::load_str(&(BASE.to_owned() + &added), "b").unwrap();
            assert_eq!(restart_needed(&running, &new), [section], "{added}");
        }
        // The Redis password is hidden from Debug, not from the comparison.
        let running = config::load_str(&(BASE.to_owned() + &redis("redis://:old@h:6379")), "a");
        let new = config::load_str(&(BASE.to_owned() + &redis("redis://:new@h:6379")), "b");
        assert_eq!(restart_needed(&running.unwrap(), &new.unwrap()), ["state"]);
    }

    #[test]
    fn a_changed_plugin_alone_needs_no_restart() {
        let running = config::load_str(BASE, "a").unwrap();
        let text = BASE.to_owned() + "timeout = \"3s\"\non_error = \"skip\"\n";
        let new = config::load_str(&text, "b").unwrap();
        assert_ne!(
            format!("{:?}", running.plugins),
            format!("{:?}", new.plugins)
        );
        assert!(restart_needed(&running, &new).is_empty());
    }
}
