//! Per-API-key rate limiting in Redis (GCRA), failing open.
//!
//! Redis holds only what may be lost (README, "Configuration"): if Redis is slow or down, requests are let
//! through and the failure is counted, so a Redis outage never stops a transfer.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tracing::warn;
use uuid::Uuid;

use crate::redis_slot::RedisSlot;

/// Longest a limit check may take before the request is let through.
pub const REDIS_TIMEOUT_MS: u64 = 50;

/// Generic cell rate algorithm: one key per API key holding the "theoretical arrival time".
/// Returns {allowed (1/0), milliseconds until allowed}.
const GCRA: &str = r"
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local interval_ms = tonumber(ARGV[1])
local burst_ms = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now_ms)
if tat < now_ms then tat = now_ms end
local new_tat = tat + interval_ms
local allow_at = new_tat - burst_ms
if allow_at > now_ms then return {0, math.ceil(allow_at - now_ms)} end
redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil(new_tat - now_ms) + 1)
return {1, 0}
";

/// `[redis]`: the rate limiter's Redis, the only one ferry uses.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSettings {
    /// `REDIS_URL`.
    pub url: String,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".to_owned(),
        }
    }
}

/// `[rate_limit]`: requests per second and burst allowed per API key; `per_sec = 0` disables
/// limiting.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimit {
    pub per_sec: u32,
    pub burst: u32,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            // Off unless asked for; `burst` matters only once `per_sec` is set.
            per_sec: 0,
            burst: 100,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    Limited { retry_after: Duration },
}

#[derive(Clone)]
pub struct RateLimiter {
    limit: RateLimit,
    connection: RedisSlot,
    script: Arc<redis::Script>,
}

impl RateLimiter {
    /// Connects in the background (a task on `tasks` that gives up when `stopping` is
    /// cancelled); until connected (or when disabled) every request passes.
    pub async fn start(
        redis_url: &str,
        limit: RateLimit,
        tasks: &tokio_util::task::TaskTracker,
        stopping: &tokio_util::sync::CancellationToken,
    ) -> Result<Self, redis::RedisError> {
        // Disabled, it never connects: every request passes without a Redis round trip.
        let connection = if limit.per_sec > 0 {
            RedisSlot::connect(redis_url, REDIS_TIMEOUT_MS, "rate limiter", tasks, stopping).await?
        } else {
            RedisSlot::default()
        };
        let limiter = Self {
            limit,
            connection,
            script: Arc::new(redis::Script::new(GCRA)),
        };
        Ok(limiter)
    }

    /// Counts one request against `api_key_id`'s budget.
    pub async fn check(&self, api_key_id: Uuid) -> Decision {
        if self.limit.per_sec == 0 {
            return Decision::Allowed;
        }
        let Some(mut connection) = self.connection.get().await else {
            metrics::counter!("ferry_rate_limiter_unavailable_total").increment(1);
            return Decision::Allowed;
        };
        let interval_ms = 1_000.0 / f64::from(self.limit.per_sec);
        let burst_ms = interval_ms * f64::from(self.limit.burst.max(1));
        let mut invocation = self.script.key(format!("ferry:ratelimit:{api_key_id}"));
        invocation.arg(interval_ms).arg(burst_ms);
        let call = invocation.invoke_async::<(i64, i64)>(&mut connection);
        match tokio::time::timeout(Duration::from_millis(REDIS_TIMEOUT_MS), call).await {
            Ok(Ok((1, _))) => Decision::Allowed,
            Ok(Ok((_, wait_ms))) => Decision::Limited {
                retry_after: Duration::from_millis(u64::try_from(wait_ms).unwrap_or(0)),
            },
            Ok(Err(e)) => {
                metrics::counter!("ferry_rate_limiter_unavailable_total").increment(1);
                warn!(error = %e, "rate limit check failed; letting the request through");
                Decision::Allowed
            }
            Err(_) => {
                metrics::counter!("ferry_rate_limiter_unavailable_total").increment(1);
                Decision::Allowed
            }
        }
    }
}
