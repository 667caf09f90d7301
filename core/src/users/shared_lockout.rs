//! The AUTH lockout counts of [`super::lockout`] kept in Redis when
//! `[state] backend = "redis"`: every node sharing the Redis server sees
//! the same attempts, so a guesser gains nothing by spreading them over the
//! MX nodes.
//!
//! Keys: `<key_prefix>:lockout:client:<client>` and
//! `<key_prefix>:lockout:user:<name>` (a plugin's keys are
//! `<key_prefix><plugin>:` and no plugin has an empty name, so they never
//! meet), each a hash of `counted` and `in_flight` that expires one window
//! after its first attempt. Reserving and settling are one Lua script each:
//! the check and the count are one atomic step however many nodes reserve
//! at once, as the mutex makes them on one node.

use std::time::Duration;

use crate::client_key::ClientKey;
use crate::state::RedisState;

use super::lockout::{Locked, Outcome};

/// One call, connecting included: past it the attempt is counted on this
/// node instead (the client waits this long at most for Redis).
const CALL_DEADLINE: Duration = Duration::from_secs(2);

/// KEYS: the client's and the user's key. ARGV: max_failures, the window
/// in milliseconds. Returns 0 when reserved, 1 if the client is locked, 2
/// if the user is.
const RESERVE_SCRIPT: &str = r"
local max = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  local counted = tonumber(redis.call('HGET', key, 'counted') or '0')
  if counted >= max then
    return i
  end
end
for _, key in ipairs(KEYS) do
  redis.call('HINCRBY', key, 'counted', 1)
  redis.call('HINCRBY', key, 'in_flight', 1)
  if redis.call('PTTL', key) < 0 then
    redis.call('PEXPIRE', key, ARGV[2])
  end
end
return 0
";

/// KEYS: as for reserving. ARGV[1]: failed, succeeded or abandoned, with
/// the meaning of [`Outcome`]. A key that expired meanwhile is left alone.
const SETTLE_SCRIPT: &str = r"
for i, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then
    local in_flight = math.max(redis.call('HINCRBY', key, 'in_flight', -1), 0)
    local counted = tonumber(redis.call('HGET', key, 'counted') or '0')
    if ARGV[1] == 'succeeded' and i == 2 then
      counted = in_flight
    elseif ARGV[1] ~= 'failed' then
      counted = math.max(counted - 1, 0)
    end
    if counted == 0 and in_flight == 0 then
      redis.call('DEL', key)
    else
      redis.call('HSET', key, 'counted', counted, 'in_flight', in_flight)
    end
  end
end
return 0
";

#[derive(Debug, thiserror::Error)]
pub enum SharedLockoutError {
    #[error("redis {url}: lockout {op}: {source}")]
    Redis {
        url: String,
        op: &'static str,
        source: redis::RedisError,
    },
    #[error("redis {url}: lockout {op}: no answer within {after:?}")]
    Timeout {
        url: String,
        op: &'static str,
        after: Duration,
    },
    #[error("redis {url}: lockout reserve: unexpected answer {answer}")]
    Unexpected { url: String, answer: i64 },
}

/// The lockout counts in Redis.
pub struct SharedLockout {
    redis: RedisState,
    max_failures: u32,
    window: Duration,
    reserve: redis::Script,
    settle: redis::Script,
}

/// An attempt reserved in Redis; settle it with [`SharedLockout::settle`].
#[derive(Debug)]
#[must_use = "an attempt is counted as failed until it is settled"]
pub struct SharedAttempt {
    client_key: String,
    user_key: String,
}

impl SharedLockout {
    pub fn new(redis: &RedisState, max_failures: u32, window: Duration) -> SharedLockout {
        SharedLockout {
            redis: redis.clone(),
            max_failures: max_failures.max(1),
            window,
            reserve: redis::Script::new(RESERVE_SCRIPT),
            settle: redis::Script::new(SETTLE_SCRIPT),
        }
    }

    /// Counts an attempt as a failure unless the client or the user is
    /// locked out; `Ok(Err(_))` says which.
    pub async fn reserve(
        &self,
        client: ClientKey,
        user: &str,
    ) -> Result<Result<SharedAttempt, Locked>, SharedLockoutError> {
        let attempt = SharedAttempt {
            client_key: self.key("client", &client.to_string()),
            user_key: self.key("user", &user.to_lowercase()),
        };
        // Redis refuses PEXPIRE 0; a window under a millisecond is one.
        let window_ms = u64::try_from(self.window.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut invocation = self.reserve.prepare_invoke();
        invocation
            .key(&attempt.client_key)
            .key(&attempt.user_key)
            .arg(self.max_failures)
            .arg(window_ms);
        let mut conn = self.redis.connection();
        let answer: i64 = self
            .bounded("reserve", invocation.invoke_async(&mut conn))
            .await?;
        match answer {
            0 => Ok(Ok(attempt)),
            1 => Ok(Err(Locked::Client)),
            2 => Ok(Err(Locked::User)),
            answer => Err(SharedLockoutError::Unexpected {
                url: self.redis.url().to_owned(),
                answer,
            }),
        }
    }

    /// Ends a reserved attempt.
    pub async fn settle(
        &self,
        attempt: SharedAttempt,
        outcome: Outcome,
    ) -> Result<(), SharedLockoutError> {
        let outcome = match outcome {
            Outcome::Failed => "failed",
            Outcome::Succeeded => "succeeded",
            Outcome::Abandoned => "abandoned",
        };
        let mut invocation = self.settle.prepare_invoke();
        invocation
            .key(&attempt.client_key)
            .key(&attempt.user_key)
            .arg(outcome);
        let mut conn = self.redis.connection();
        let _: i64 = self
            .bounded("settle", invocation.invoke_async(&mut conn))
            .await?;
        Ok(())
    }

    fn key(&self, kind: &str, name: &str) -> String {
        format!("{}:lockout:{kind}:{name}", self.redis.key_prefix())
    }

    async fn bounded<T>(
        &self,
        op: &'static str,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, SharedLockoutError> {
        let url = || self.redis.url().to_owned();
        match tokio::time::timeout(CALL_DEADLINE, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(source)) => Err(SharedLockoutError::Redis {
                url: url(),
                op,
                source,
            }),
            Err(_) => Err(SharedLockoutError::Timeout {
                url: url(),
                op,
                after: CALL_DEADLINE,
            }),
        }
    }
}
