//! The plugins' key-value state behind the WIT `kv` interface: one
//! namespace per plugin, kept in the spool's sled database (one node) or in
//! a Redis server several MX nodes share (`[state] backend = "redis"`), so
//! rate-limit counters and greylist triplets are the same on every node.
//!
//! On Redis a namespace is the key prefix `<key_prefix><plugin>:` (`:` and
//! `%` in the plugin name percent-encoded, so two plugins never share a
//! key), `incr` is one Lua script (one round trip, the TTL set only when the
//! counter is created), and the connection is made lazily and remade after
//! a failure. A failing call returns its error to the plugin, which decides
//! (the bundled limiters fail open).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use sluice_spool::{KvStore, Spool, SpoolError};

use crate::config::StateConfig;

/// How often expired sled keys are swept away.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Connecting to Redis: each attempt, and the retries of one reconnection;
/// plugin calls are bounded by their own deadline on top of this.
const REDIS_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const REDIS_RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
const REDIS_RETRIES: usize = 1;

/// Adds ARGV[1] to KEYS[1]; sets the TTL ARGV[2] (seconds, "" for none)
/// only if the counter did not exist, like the WIT's `incr`. TTL 0 makes
/// the counter expire at once, as on sled.
const INCR_SCRIPT: &str = r"
local existed = redis.call('EXISTS', KEYS[1])
local value = redis.call('INCRBY', KEYS[1], ARGV[1])
if existed == 0 and ARGV[2] ~= '' then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return value
";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Sled(#[from] SpoolError),
    #[error("redis {op} {key}: {source}")]
    Redis {
        op: &'static str,
        key: String,
        source: redis::RedisError,
    },
    #[error("redis: cannot use {url}: {source}")]
    RedisClient {
        url: String,
        source: redis::RedisError,
    },
}

/// The state backend of one configuration; hands out a [`Kv`] per plugin.
#[derive(Clone)]
pub enum StateBackend {
    Sled(Spool),
    Redis(RedisState),
}

/// A shared, lazily connected Redis client.
#[derive(Clone)]
pub struct RedisState {
    connection: ConnectionManager,
    key_prefix: Arc<str>,
    incr: Arc<redis::Script>,
    /// Password-free URL for errors.
    url: Arc<str>,
    /// The last plugin call failed: the next success is logged, and only
    /// the first failure of an outage is (each one is counted).
    failing: Arc<AtomicBool>,
}

impl StateBackend {
    /// The backend `[state]` asks for. Redis is not contacted here: the
    /// first kv call connects, so a Redis outage at start does not keep
    /// mail out (the plugins fail open).
    pub fn open(config: &StateConfig, spool: &Spool) -> Result<StateBackend, StateError> {
        match config {
            StateConfig::Sled => Ok(StateBackend::Sled(spool.clone())),
            StateConfig::Redis { url, key_prefix } => {
                let shown = StateConfig::redacted_url(url);
                let client_error = |source| StateError::RedisClient {
                    url: shown.clone(),
                    source,
                };
                let client = redis::Client::open(url.as_str()).map_err(client_error)?;
                let manager_config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(REDIS_CONNECT_TIMEOUT))
                    .set_response_timeout(Some(REDIS_RESPONSE_TIMEOUT))
                    .set_number_of_retries(REDIS_RETRIES)
                    .set_max_delay(Duration::from_millis(500));
                let connection = ConnectionManager::new_lazy_with_config(client, manager_config)
                    .map_err(client_error)?;
                Ok(StateBackend::Redis(RedisState {
                    connection,
                    key_prefix: key_prefix.as_str().into(),
                    incr: Arc::new(redis::Script::new(INCR_SCRIPT)),
                    url: shown.into(),
                    failing: Arc::new(AtomicBool::new(false)),
                }))
            }
        }
    }

    /// The state of plugin `namespace`.
    pub fn kv(&self, namespace: &str) -> Result<Kv, StateError> {
        match self {
            StateBackend::Sled(spool) => Ok(Kv::Sled(spool.kv(namespace)?)),
            StateBackend::Redis(redis) => {
                if namespace.is_empty() {
                    return Err(SpoolError::EmptyNamespace.into());
                }
                let encoded = namespace.replace('%', "%25").replace(':', "%3A");
                Ok(Kv::Redis {
                    redis: redis.clone(),
                    prefix: format!("{}{encoded}:", redis.key_prefix).into(),
                })
            }
        }
    }

    /// The Redis server, when state is shared through one (the AUTH
    /// lockout keeps its counts there too).
    pub fn redis(&self) -> Option<&RedisState> {
        match self {
            StateBackend::Sled(_) => None,
            StateBackend::Redis(redis) => Some(redis),
        }
    }

    /// Where the state lives, for the start-up log.
    pub fn describe(&self) -> String {
        match self {
            StateBackend::Sled(_) => "sled (data_dir)".to_owned(),
            StateBackend::Redis(redis) => format!("redis {}", redis.url),
        }
    }
}

impl RedisState {
    /// A handle on the shared connection (cheap: it is a clone).
    pub fn connection(&self) -> ConnectionManager {
        self.connection.clone()
    }

    /// `[state] key_prefix`: every key sluice writes starts with it.
    pub fn key_prefix(&self) -> &str {
        &self.key_prefix
    }

    /// The URL without its password, for logs and errors.
    pub fn url(&self) -> &str {
        &self.url
    }
}

/// Removes expired sled kv keys every minute, for as long as the server
/// runs (Redis expires keys itself).
pub fn spawn_sled_sweeper(spool: Spool) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let spool = spool.clone();
            match tokio::task::spawn_blocking(move || spool.sweep_kv()).await {
                Ok(Ok(0)) => {}
                Ok(Ok(removed)) => tracing::debug!(removed, "expired plugin state swept"),
                Ok(Err(e)) => tracing::warn!("sweeping expired plugin state: {e}"),
                Err(e) => tracing::warn!("sweeping expired plugin state: {e}"),
            }
        }
    })
}

/// One plugin's namespace.
#[derive(Clone)]
pub enum Kv {
    Sled(KvStore),
    Redis {
        redis: RedisState,
        /// `<key_prefix><namespace>:`
        prefix: Arc<str>,
    },
}

impl std::fmt::Debug for Kv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Kv::Sled(store) => store.fmt(f),
            Kv::Redis { prefix, .. } => f.debug_struct("RedisKv").field("prefix", prefix).finish(),
        }
    }
}

/// Runs one sled call on the calling worker. Kv values are small and sled
/// serves them from memory: reads from its page cache, writes into its log
/// buffer, which sled's own IO threads write out and the spool's committer
/// makes durable. Sending each call to the blocking pool instead cost two
/// thread wakeups, more CPU than the call (with the inbound benchmark's
/// two rate-limit counters, a sixth of the server's CPU per message).
fn on_worker<T>(
    store: &KvStore,
    call: impl FnOnce(&KvStore) -> Result<T, SpoolError>,
) -> Result<T, StateError> {
    Ok(call(store)?)
}

impl Kv {
    /// A call of `plugin` failed with `error`: logged once per Redis
    /// outage (each time on sled, where a failure is a disk's).
    pub fn failed(&self, plugin: &str, error: &str) {
        match self {
            Kv::Sled(_) => tracing::warn!(plugin, "plugin state: {error}"),
            Kv::Redis { redis, .. } => {
                if !redis.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        plugin,
                        "plugin state unreachable: {error}; each plugin decides (the bundled limiters let mail through) until redis answers"
                    );
                }
            }
        }
    }

    /// A call succeeded: says so once after an outage.
    pub fn answered(&self) {
        if let Kv::Redis { redis, .. } = self {
            if redis.failing.swap(false, Ordering::Relaxed) {
                tracing::info!("plugin state shared through redis {} again", redis.url);
            }
        }
    }

    fn redis_error(op: &'static str, key: &str) -> impl FnOnce(redis::RedisError) -> StateError {
        let key = key.to_owned();
        move |source| StateError::Redis { op, key, source }
    }

    /// The value of `key`, or None if it is missing or expired.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        match self {
            Kv::Sled(store) => on_worker(store, |store| store.get(key)),
            Kv::Redis { redis, prefix } => {
                let mut conn = redis.connection.clone();
                redis::cmd("GET")
                    .arg(format!("{prefix}{key}"))
                    .query_async(&mut conn)
                    .await
                    .map_err(Self::redis_error("GET", key))
            }
        }
    }

    /// Stores `value`, expiring after `ttl_seconds` when given.
    pub async fn set(
        &self,
        key: &str,
        value: &[u8],
        ttl_seconds: Option<u32>,
    ) -> Result<(), StateError> {
        match self {
            Kv::Sled(store) => on_worker(store, |store| store.set(key, value, ttl_seconds)),
            Kv::Redis { redis, prefix } => {
                let mut conn = redis.connection.clone();
                let full = format!("{prefix}{key}");
                let cmd = match ttl_seconds {
                    // Redis refuses EX 0; a value that expires at once is gone.
                    Some(0) => {
                        let mut cmd = redis::cmd("DEL");
                        cmd.arg(&full);
                        cmd
                    }
                    Some(ttl) => {
                        let mut cmd = redis::cmd("SET");
                        cmd.arg(&full).arg(value).arg("EX").arg(ttl);
                        cmd
                    }
                    None => {
                        let mut cmd = redis::cmd("SET");
                        cmd.arg(&full).arg(value);
                        cmd
                    }
                };
                let _: redis::Value = cmd
                    .query_async(&mut conn)
                    .await
                    .map_err(Self::redis_error("SET", key))?;
                Ok(())
            }
        }
    }

    /// Atomically adds `delta` (missing counts as 0) and returns the new
    /// value; the TTL applies when the counter is created.
    pub async fn incr(
        &self,
        key: &str,
        delta: i64,
        ttl_seconds: Option<u32>,
    ) -> Result<i64, StateError> {
        match self {
            Kv::Sled(store) => on_worker(store, |store| store.incr(key, delta, ttl_seconds)),
            Kv::Redis { redis, prefix } => {
                let mut conn = redis.connection.clone();
                let ttl = ttl_seconds.map(|t| t.to_string()).unwrap_or_default();
                redis
                    .incr
                    .key(format!("{prefix}{key}"))
                    .arg(delta)
                    .arg(ttl)
                    .invoke_async(&mut conn)
                    .await
                    .map_err(Self::redis_error("INCR", key))
            }
        }
    }

    /// Removes `key`; a missing key is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), StateError> {
        match self {
            Kv::Sled(store) => on_worker(store, |store| store.delete(key)),
            Kv::Redis { redis, prefix } => {
                let mut conn = redis.connection.clone();
                let _: i64 = redis::cmd("DEL")
                    .arg(format!("{prefix}{key}"))
                    .query_async(&mut conn)
                    .await
                    .map_err(Self::redis_error("DEL", key))?;
                Ok(())
            }
        }
    }
}
