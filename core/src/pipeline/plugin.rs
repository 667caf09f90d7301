//! One configured plugin, compiled (through the component cache, off the
//! runtime's workers), checked against the import sandbox and
//! pre-instantiated: the unit the chain instantiates lazily per session, or
//! lends from its bounded pool (`instances = "pooled"`). Bundled plugins come
//! from the binary (`builtin:NAME`), others from a `.wasm` component file.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::Component;
use wasmtime::Store;

use super::auth::SessionAuth;
use super::bindings::{Filter, FilterPre};
use super::cache::CacheOutcome;
use super::engine::PluginEngine;
use super::fault::PluginFault;
use super::host::{HostServices, HostState};
use super::{sandbox, PipelineError};
use crate::config::{
    Capabilities, InstancePolicy, OnError, PluginConfig, PluginMode, PluginSource,
};
use crate::metrics::METRICS;
use crate::milter::MilterAddress;
use crate::state::Kv;

mod builtin {
    include!(concat!(env!("OUT_DIR"), "/builtins.rs"));
}

/// Names of the plugins bundled into this binary (`builtin:NAME`).
pub fn builtin_names() -> impl Iterator<Item = &'static str> {
    builtin::BUILTINS.iter().map(|(name, _)| *name)
}

fn builtin_bytes(name: &str) -> Option<&'static [u8]> {
    builtin::BUILTINS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, bytes)| *bytes)
}

pub struct Plugin {
    pub name: Arc<str>,
    pub allow: Capabilities,
    pub mode: PluginMode,
    pub on_error: OnError,
    pub timeout: Duration,
    pub memory: usize,
    /// Traps, timeouts and cap breaches so far (for metrics and tests).
    faults: AtomicU64,
    backend: Backend,
}

/// What answers the plugin's hooks.
enum Backend {
    Wasm(Box<WasmComponent>),
    /// A milter, reached over its socket (`path = "milter:…"`).
    Milter(MilterAddress),
}

/// A compiled component and what its instances share.
struct WasmComponent {
    config_json: Arc<str>,
    pre: FilterPre<HostState>,
    kv: Kv,
    /// `instances = "pooled"`: the idle instances and the bound.
    pool: Option<InstancePool>,
}

/// A live instance of a plugin, owned by one session.
pub struct LiveInstance {
    pub(crate) store: Store<HostState>,
    pub(crate) filter: Filter,
    /// For a pooled instance, its place in the pool's bound: released when
    /// the instance goes back (or is dropped after a fault).
    lease: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// Initialized instances kept between sessions (`instances = "pooled"` or
/// `"reused"`). Wasmtime cannot rewind an instance, so "reset" between
/// sessions is the host side only (`HostState::rebind`); the guest's memory
/// carries over, which is why reuse is for guests that keep no per-session
/// state in globals, or reset it when the session id changes (the bundled
/// plugins). An instance that faulted is dropped, never returned.
struct InstancePool {
    /// How many idle instances are kept.
    size: u32,
    idle: std::sync::Mutex<Vec<LiveInstance>>,
    /// `pooled`: at most `size` instances exist, lent one session at a
    /// time. `reused`: none; a session that finds no idle instance gets a
    /// new one, and one that comes back to a full idle list is dropped.
    permits: Option<Arc<tokio::sync::Semaphore>>,
}

impl Plugin {
    /// Reads (or finds the bundled bytes of) the component, compiles it
    /// (through the engine's cache) and links it against the host.
    pub async fn load(
        engine: &PluginEngine,
        config: &PluginConfig,
        kv: Kv,
    ) -> Result<Plugin, PipelineError> {
        let name = config.name.clone();
        let bytes: Cow<'static, [u8]> = match &config.source {
            PluginSource::Milter(address) => return Ok(Plugin::milter(config, address.clone())),
            PluginSource::Builtin(builtin) => {
                Cow::Borrowed(builtin_bytes(builtin).ok_or_else(|| {
                    PipelineError::UnknownBuiltin {
                        plugin: name.clone(),
                        builtin: builtin.clone(),
                        known: builtin_names().collect::<Vec<_>>().join(", "),
                    }
                })?)
            }
            PluginSource::File(path) => Cow::Owned(tokio::fs::read(path).await.map_err(
                |source| PipelineError::Read {
                    plugin: name.clone(),
                    path: path.clone(),
                    source,
                },
            )?),
        };
        // Compiling takes whole seconds for a big guest: off the runtime's
        // workers, which keep serving sessions meanwhile (a reload).
        let (wasm_engine, cache) = (engine.engine.clone(), engine.cache.clone());
        let started = Instant::now();
        let compiled = tokio::task::spawn_blocking(move || match &cache {
            Some(cache) => cache.load(&wasm_engine, &bytes),
            None => Component::new(&wasm_engine, &bytes).map(|c| (c, CacheOutcome::Compiled)),
        })
        .await
        .map_err(|e| PipelineError::Compile {
            plugin: name.clone(),
            message: format!("compilation did not finish: {e}"),
        })?;
        let (component, outcome) = compiled.map_err(|e| PipelineError::Compile {
            plugin: name.clone(),
            message: format!("{e:#}"),
        })?;
        METRICS.plugin_loads.inc(&[&name, outcome.name()]);
        tracing::info!(
            plugin = &*name,
            cache = ?outcome,
            ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "plugin component loaded"
        );
        let forbidden = sandbox::forbidden_imports(&engine.engine, &component);
        if !forbidden.is_empty() {
            return Err(PipelineError::ForbiddenImport {
                plugin: name,
                imports: forbidden.join(", "),
            });
        }
        let pre = engine
            .linker
            .instantiate_pre(&component)
            .map_err(|e| PipelineError::Link {
                plugin: name.clone(),
                message: format!("{e:#}"),
            })?;
        let pre = FilterPre::new(pre).map_err(|e| PipelineError::Link {
            plugin: name.clone(),
            message: format!("{e:#}"),
        })?;
        let backend = Backend::Wasm(Box::new(WasmComponent {
            config_json: Arc::from(config.config_json.as_str()),
            pre,
            kv,
            pool: match config.instances {
                InstancePolicy::PerSession => None,
                InstancePolicy::Pooled { size } => Some(InstancePool {
                    size,
                    idle: std::sync::Mutex::new(Vec::new()),
                    permits: Some(Arc::new(tokio::sync::Semaphore::new(
                        usize::try_from(size).unwrap_or(1),
                    ))),
                }),
                InstancePolicy::Reused { idle } => Some(InstancePool {
                    size: idle,
                    idle: std::sync::Mutex::new(Vec::new()),
                    permits: None,
                }),
            },
        }));
        Ok(Plugin::with_backend(config, backend))
    }

    /// A milter element: nothing to compile; its connection is opened by
    /// the first session that calls it, so a milter that is down costs
    /// that call its `on_error`, not the server its start.
    fn milter(config: &PluginConfig, address: MilterAddress) -> Plugin {
        Plugin::with_backend(config, Backend::Milter(address))
    }

    fn with_backend(config: &PluginConfig, backend: Backend) -> Plugin {
        Plugin {
            name: Arc::from(config.name.as_str()),
            allow: config.allow,
            mode: config.mode,
            on_error: config.on_error,
            timeout: config.timeout,
            memory: usize::try_from(config.memory).unwrap_or(usize::MAX),
            faults: AtomicU64::new(0),
            backend,
        }
    }

    /// The milter's address, for a milter element.
    pub fn milter_address(&self) -> Option<&MilterAddress> {
        match &self.backend {
            Backend::Milter(address) => Some(address),
            Backend::Wasm(_) => None,
        }
    }

    fn wasm(&self) -> Result<&WasmComponent, PluginFault> {
        match &self.backend {
            Backend::Wasm(wasm) => Ok(wasm),
            Backend::Milter(_) => Err(PluginFault::Host(format!(
                "{} is a milter, not a component",
                self.name
            ))),
        }
    }

    /// An instance for a session: a new one (per-session), or an idle one
    /// kept from an earlier session. With `pooled`, one is created only
    /// below the pool's size, and a session that finds every instance lent
    /// waits up to the plugin's timeout; with `reused`, a new one is
    /// created whenever none is idle.
    pub async fn checkout(
        &self,
        session_id: &str,
        services: &Arc<HostServices>,
        auth: &Arc<SessionAuth>,
    ) -> Result<LiveInstance, PluginFault> {
        let Some(pool) = &self.wasm()?.pool else {
            return self.instantiate(session_id, services, auth).await;
        };
        let lease = match &pool.permits {
            None => None,
            Some(permits) => {
                match tokio::time::timeout(self.timeout, permits.clone().acquire_owned()).await {
                    Ok(Ok(lease)) => Some(lease),
                    Ok(Err(_)) | Err(_) => {
                        return Err(PluginFault::PoolExhausted {
                            size: pool.size,
                            waited: self.timeout,
                        })
                    }
                }
            }
        };
        let idle = pool
            .idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop();
        let mut live = match idle {
            Some(mut live) => {
                live.store.data_mut().rebind(session_id, auth.clone());
                METRICS.plugin_instance_reuses.inc(&[&self.name]);
                live
            }
            None => self.instantiate(session_id, services, auth).await?,
        };
        live.lease = lease;
        Ok(live)
    }

    /// Gives a session's instance back when the session ends: a pooled or
    /// reused one is kept for the next session (a reused one only while
    /// fewer than `pool_size` are idle), any other is dropped.
    pub fn release(&self, mut live: LiveInstance) {
        let Backend::Wasm(wasm) = &self.backend else {
            return;
        };
        if let Some(pool) = &wasm.pool {
            let lease = live.lease.take();
            {
                let mut idle = pool
                    .idle
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                // A pooled plugin never has more than `size` instances, so
                // only a reused one can find the list full.
                if idle.len() < usize::try_from(pool.size).unwrap_or(usize::MAX) {
                    idle.push(live);
                }
            }
            // Only now may a waiting session take the slot.
            drop(lease);
        }
    }

    /// Creates an instance for a session and runs the plugin's `init` with
    /// its configuration, all within the plugin's deadline.
    pub async fn instantiate(
        &self,
        session_id: &str,
        services: &Arc<HostServices>,
        auth: &Arc<SessionAuth>,
    ) -> Result<LiveInstance, PluginFault> {
        let wasm = self.wasm()?;
        let state = HostState::new(
            self.name.clone(),
            self.allow,
            session_id.to_owned(),
            services.clone(),
            wasm.kv.clone(),
            auth.clone(),
            self.memory,
        );
        let mut store = Store::new(wasm.pre.engine(), state);
        store.limiter(|state| &mut state.limits);
        store.epoch_deadline_callback(|ctx| {
            if Instant::now() >= ctx.data().deadline {
                Ok(wasmtime::UpdateDeadline::Interrupt)
            } else {
                Ok(wasmtime::UpdateDeadline::Yield(1))
            }
        });
        self.arm_deadline(&mut store);
        let call = async {
            let filter = wasm
                .pre
                .instantiate_async(&mut store)
                .await
                .map_err(|e| PluginFault::from_instantiate(&e))?;
            match filter.call_init(&mut store, &wasm.config_json).await {
                Ok(Ok(())) => Ok(filter),
                Ok(Err(message)) => Err(PluginFault::InitRefused(message)),
                Err(e) => Err(PluginFault::from_instantiate(&e)),
            }
        };
        let filter = self.with_backstop(call).await?;
        METRICS.plugin_instances.inc(&[&self.name]);
        Ok(LiveInstance {
            store,
            filter,
            lease: None,
        })
    }

    /// Starts the deadline for the next call into this store.
    pub(crate) fn arm_deadline(&self, store: &mut Store<HostState>) {
        let now = Instant::now();
        let state = store.data_mut();
        state.deadline = now + self.timeout;
        state.host_cutoff = now + self.timeout - self.timeout / 5;
        store.set_epoch_deadline(1);
    }

    /// Epoch interruption stops guest code; this bounds the rest (a host
    /// call that never returns), a little after the deadline.
    pub(crate) async fn with_backstop<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, PluginFault>>,
    ) -> Result<T, PluginFault> {
        let backstop = self.timeout + self.timeout / 2 + Duration::from_millis(50);
        match tokio::time::timeout(backstop, call).await {
            Ok(result) => result,
            Err(_) => Err(PluginFault::Deadline {
                backstop: Some(backstop),
            }),
        }
    }

    pub(crate) fn record_fault(&self) {
        self.faults.fetch_add(1, Ordering::Relaxed);
    }

    pub fn faults(&self) -> u64 {
        self.faults.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::sandbox::forbidden_imports;

    fn component(engine: &wasmtime::Engine, file: &str) -> Component {
        let path = std::path::Path::new(env!("SLUICE_PLUGIN_DIR")).join(file);
        Component::from_file(engine, &path).unwrap()
    }

    #[test]
    fn bundled_plugins_and_fixtures_stay_inside_the_sandbox() {
        // A plain engine: the import list does not depend on the allocator.
        let engine = wasmtime::Engine::default();
        for (name, bytes) in builtin::BUILTINS {
            let component = Component::new(&engine, bytes).unwrap();
            let forbidden = forbidden_imports(&engine, &component);
            assert!(forbidden.is_empty(), "builtin:{name} imports {forbidden:?}");
        }
        for file in [
            "fixture_verdict.wasm",
            "fixture_caps.wasm",
            "fixture_dns.wasm",
        ] {
            let forbidden = forbidden_imports(&engine, &component(&engine, file));
            assert!(forbidden.is_empty(), "{file} imports {forbidden:?}");
        }
    }

    #[test]
    fn a_component_that_opens_sockets_is_refused_by_name() {
        // A plain engine: the import list does not depend on the allocator.
        let engine = wasmtime::Engine::default();
        let forbidden = forbidden_imports(&engine, &component(&engine, "fixture_sockets.wasm"));
        assert!(
            forbidden.iter().any(|i| i.starts_with("wasi:sockets/")),
            "{forbidden:?}"
        );
    }
}
