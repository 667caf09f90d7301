//! The wasmtime engine sluice runs every plugin on: component model, async
//! calls (a plugin that spins yields to the runtime instead of blocking a
//! worker thread), epoch interruption for per-call deadlines, the pooling
//! allocator for cheap instantiation, and the on-disk compiled-component
//! cache (`cache`) so a component is compiled once per content and engine
//! version.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::bindings::Filter;
use super::cache::ComponentCache;
use super::host::HostState;
use super::PipelineError;

/// How often the engine's epoch advances: the granularity of plugin
/// deadlines and of the yields a long-running plugin makes to the runtime.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Upper bounds of the instance pool. Instances are created lazily, one per
/// plugin per session, so these cap concurrent plugin instances, not sessions.
const POOL_COMPONENT_INSTANCES: u32 = 10_000;
const POOL_CORE_INSTANCES: u32 = 40_000;
const POOL_MEMORIES: u32 = 20_000;
const POOL_TABLES: u32 = 20_000;
const POOL_STACKS: u32 = 10_000;
/// Bytes of a freed table reset in place rather than decommitted.
const KEEP_RESIDENT_TABLE: usize = 64 << 10;
/// Freed slots decommitted together, per CPU shard.
const DECOMMIT_BATCH: usize = 32;

pub struct PluginEngine {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<HostState>,
    /// Compiled components on disk; None compiles every load.
    pub(crate) cache: Option<ComponentCache>,
    ticker: EpochTicker,
}

impl PluginEngine {
    /// `max_memory` is the largest memory cap of any plugin (bytes); the
    /// pool's slots are sized for it. `cache_dir` holds compiled components.
    pub fn new(max_memory: u64, cache_dir: Option<&Path>) -> Result<Self, PipelineError> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(POOL_COMPONENT_INSTANCES)
            .total_core_instances(POOL_CORE_INSTANCES)
            .total_memories(POOL_MEMORIES)
            .total_tables(POOL_TABLES)
            .total_stacks(POOL_STACKS)
            .max_memory_size(usize::try_from(max_memory).unwrap_or(usize::MAX))
            // Every session ends an instance. Returning freed slots to the OS
            // in batches spares a madvise (and the TLB-shootdown IPIs it
            // costs on every core) per session; resetting memory by memset
            // instead (keep_resident) measured slower: 1 MiB per session.
            .table_keep_resident(KEEP_RESIDENT_TABLE)
            .decommit_batch_size(DECOMMIT_BATCH);

        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(|e| PipelineError::Engine(e.to_string()))?;
        let cache = match cache_dir {
            Some(dir) => Some(ComponentCache::open(dir)?),
            None => None,
        };

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| PipelineError::Engine(e.to_string()))?;
        Filter::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |state| state)
            .map_err(|e| PipelineError::Engine(e.to_string()))?;

        let ticker = EpochTicker::start(engine.clone());
        Ok(PluginEngine {
            engine,
            linker,
            cache,
            ticker,
        })
    }
}

impl Drop for PluginEngine {
    fn drop(&mut self) {
        self.ticker.stop();
    }
}

/// A thread that advances the engine's epoch every [`EPOCH_TICK`].
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("sluice-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .ok();
        EpochTicker { stop, thread }
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
