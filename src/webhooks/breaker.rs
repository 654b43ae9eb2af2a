//! A circuit breaker per webhook endpoint, shared by every ferry process through Redis
//! (README, "Events and webhooks"). The seed's parameters: open after 5 consecutive failures,
//! half-open after 30 s (one probe at a time), closed again after 2 successes.
//!
//! The machine is [`BreakerState`]'s pure methods; Redis only stores the state, changed with
//! compare-and-set, so two processes never both act on a stale state. While Redis cannot be
//! reached each process keeps its own states with the same machine, and goes back to the
//! shared ones when Redis answers again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use redis::Script;
use serde::{Deserialize, Serialize};
use tracing::debug;
use uuid::Uuid;

use crate::redis_slot::RedisSlot;

/// `[webhooks.breaker]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerSettings {
    /// Consecutive failed attempts that open the circuit.
    pub failures_to_open: u32,
    /// How long an open circuit refuses calls before a probe is let through.
    #[serde(rename = "open_ms", with = "crate::serde_duration::millis")]
    pub open: Duration,
    /// Successful probes that close a half-open circuit.
    pub successes_to_close: u32,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        // The seed's circuit breaker.
        Self {
            failures_to_open: 5,
            open: Duration::from_secs(30),
            successes_to_close: 2,
        }
    }
}

/// Deliveries sent at once to an endpoint whose circuit has seen no failure: enough to keep a
/// healthy receiver busy, few enough that a receiver that just went down takes at most this
/// many failures before its circuit opens.
pub const HEALTHY_BUDGET: usize = 16;

/// How long a probe may be out before another process may probe instead (a process that died
/// mid-probe must not wedge the circuit half-open).
const PROBE_LEASE_MS: i64 = 30_000;

/// A circuit's state, as stored in Redis (JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum BreakerState {
    Closed { failures: u32 },
    Open { until_ms: i64 },
    HalfOpen { successes: u32, probe_until_ms: i64 },
}

impl Default for BreakerState {
    fn default() -> Self {
        Self::Closed { failures: 0 }
    }
}

/// What a caller may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Closed: send up to `budget` deliveries at once, then ask again. A circuit that has
    /// seen failures lets through only as many as could fail before it opens, so an endpoint
    /// that goes down takes few more than the 5 failures that open it.
    Allowed { budget: usize },
    /// Half-open: send one delivery; it decides.
    Probe,
    /// Open (or a probe is out): send nothing before `retry_in`.
    Rejected { retry_in: Duration },
}

/// A change worth an alert and a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Opened,
    Closed,
}

impl BreakerState {
    /// The gauge value: 0 closed, 1 half-open, 2 open.
    pub fn gauge(self) -> f64 {
        match self {
            Self::Closed { .. } => 0.0,
            Self::HalfOpen { .. } => 1.0,
            Self::Open { .. } => 2.0,
        }
    }

    /// May a call be made at `now_ms`? Returns the permit and the state after handing it out.
    pub fn permit(self, now_ms: i64, settings: &BreakerSettings) -> (Permit, Self) {
        match self {
            Self::Closed { failures: 0 } => (
                Permit::Allowed {
                    budget: HEALTHY_BUDGET,
                },
                self,
            ),
            Self::Closed { failures } => (
                Permit::Allowed {
                    budget: settings.failures_to_open.saturating_sub(failures).max(1) as usize,
                },
                self,
            ),
            Self::Open { until_ms } if now_ms < until_ms => (
                Permit::Rejected {
                    retry_in: millis(until_ms - now_ms),
                },
                self,
            ),
            Self::Open { .. } => (
                Permit::Probe,
                Self::HalfOpen {
                    successes: 0,
                    probe_until_ms: now_ms + PROBE_LEASE_MS,
                },
            ),
            Self::HalfOpen { probe_until_ms, .. } if now_ms < probe_until_ms => (
                Permit::Rejected {
                    retry_in: millis(probe_until_ms - now_ms).min(Duration::from_secs(1)),
                },
                self,
            ),
            Self::HalfOpen { successes, .. } => (
                Permit::Probe,
                Self::HalfOpen {
                    successes,
                    probe_until_ms: now_ms + PROBE_LEASE_MS,
                },
            ),
        }
    }

    /// Records the outcomes of the calls made under a permit, in order.
    pub fn record(
        self,
        outcomes: &[bool],
        now_ms: i64,
        settings: &BreakerSettings,
    ) -> (Self, Option<Transition>) {
        let mut state = self;
        let mut transition = None;
        let open_ms = i64::try_from(settings.open.as_millis()).unwrap_or(i64::MAX / 2);
        for &ok in outcomes {
            state = match (state, ok) {
                (Self::Closed { .. }, true) => Self::Closed { failures: 0 },
                (Self::Closed { failures }, false) if failures + 1 >= settings.failures_to_open => {
                    transition = Some(Transition::Opened);
                    Self::Open {
                        until_ms: now_ms + open_ms,
                    }
                }
                (Self::Closed { failures }, false) => Self::Closed {
                    failures: failures + 1,
                },
                (Self::HalfOpen { successes, .. }, true)
                    if successes + 1 >= settings.successes_to_close =>
                {
                    transition = Some(Transition::Closed);
                    Self::Closed { failures: 0 }
                }
                (Self::HalfOpen { successes, .. }, true) => Self::HalfOpen {
                    successes: successes + 1,
                    probe_until_ms: 0,
                },
                (Self::HalfOpen { .. }, false) => Self::Open {
                    until_ms: now_ms + open_ms,
                },
                // A call let through before the circuit opened: already accounted for.
                (open @ Self::Open { .. }, _) => open,
            };
        }
        if transition == Some(Transition::Opened) && matches!(state, Self::Closed { .. }) {
            // Opened and closed again within one batch cannot happen (closing needs probes),
            // but never report a transition the state does not show.
            transition = None;
        }
        (state, transition)
    }
}

fn millis(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// Compare-and-set: writes ARGV[2] if the key still holds ARGV[1] ("" for absent).
const CAS_SCRIPT: &str = r"
local current = redis.call('GET', KEYS[1])
if (current or '') == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0";

/// How often a compare-and-set that lost a race is tried again before the process falls back
/// to its own state for this call.
const CAS_TRIES: usize = 4;

/// The breakers of every endpoint: in Redis, with a per-process fallback.
pub struct Breakers {
    settings: BreakerSettings,
    redis: RedisSlot,
    namespace: String,
    script: Script,
    local: Mutex<HashMap<Uuid, BreakerState>>,
}

impl Breakers {
    /// `namespace` keeps databases sharing one Redis apart.
    pub fn new(settings: BreakerSettings, redis: RedisSlot, namespace: &str) -> Self {
        Self {
            settings,
            redis,
            namespace: namespace.to_owned(),
            script: Script::new(CAS_SCRIPT),
            local: Mutex::new(HashMap::new()),
        }
    }

    pub fn settings(&self) -> &BreakerSettings {
        &self.settings
    }

    /// Asks for a permit for `endpoint` at `now_ms`.
    pub async fn permit(&self, endpoint: Uuid, now_ms: i64) -> Permit {
        let settings = self.settings;
        self.update(endpoint, |state| {
            let (permit, next) = state.permit(now_ms, &settings);
            (next, permit)
        })
        .await
        .0
    }

    /// Records `outcomes` (true: delivered) of calls to `endpoint`; returns the transition, if
    /// any, and the state after.
    pub async fn record(
        &self,
        endpoint: Uuid,
        outcomes: &[bool],
        now_ms: i64,
    ) -> (Option<Transition>, BreakerState) {
        let settings = self.settings;
        let (transition, state) = self
            .update(endpoint, |state| {
                let (next, transition) = state.record(outcomes, now_ms, &settings);
                (next, transition)
            })
            .await;
        (transition, state)
    }

    /// Applies `step` to the endpoint's state: in Redis when it answers (compare-and-set,
    /// retried on a lost race), else in this process.
    async fn update<T: Copy>(
        &self,
        endpoint: Uuid,
        step: impl Fn(BreakerState) -> (BreakerState, T),
    ) -> (T, BreakerState) {
        if let Some(result) = self.update_shared(endpoint, &step).await {
            return result;
        }
        metrics::counter!("ferry_webhook_breaker_fallbacks_total").increment(1);
        let Ok(mut local) = self.local.lock() else {
            let (next, out) = step(BreakerState::default());
            return (out, next);
        };
        let state = local.entry(endpoint).or_default();
        let (next, out) = step(*state);
        *state = next;
        (out, next)
    }

    async fn update_shared<T: Copy>(
        &self,
        endpoint: Uuid,
        step: &impl Fn(BreakerState) -> (BreakerState, T),
    ) -> Option<(T, BreakerState)> {
        let mut connection = self.redis.get().await?;
        let key = format!("ferry:{}:webhook-breaker:{endpoint}", self.namespace);
        // Kept well past any open period, refreshed on every change.
        let ttl_ms = (self.settings.open.as_millis() as u64).max(60_000) * 100;
        for _ in 0..CAS_TRIES {
            let current: Option<String> = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut connection)
                .await
                .inspect_err(|e| debug!(error = %e, "breaker state unreadable"))
                .ok()?;
            let state = current
                .as_deref()
                .and_then(|text| serde_json::from_str(text).ok())
                .unwrap_or_default();
            let (next, out) = step(state);
            if next == state && current.is_some() {
                return Some((out, next));
            }
            let next_text = serde_json::to_string(&next).ok()?;
            let swapped: i64 = self
                .script
                .key(&key)
                .arg(current.as_deref().unwrap_or(""))
                .arg(&next_text)
                .arg(ttl_ms)
                .invoke_async(&mut connection)
                .await
                .ok()?;
            if swapped == 1 {
                return Some((out, next));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTINGS: BreakerSettings = BreakerSettings {
        failures_to_open: 5,
        open: Duration::from_secs(30),
        successes_to_close: 2,
    };

    #[test]
    fn five_consecutive_failures_open_and_a_success_resets_the_count() {
        let closed = BreakerState::default();
        let (state, t) = closed.record(&[false, false, false, false], 0, &SETTINGS);
        assert_eq!((state, t), (BreakerState::Closed { failures: 4 }, None));
        let (state, t) = state.record(&[true, false, false, false, false], 0, &SETTINGS);
        assert_eq!((state, t), (BreakerState::Closed { failures: 4 }, None));
        assert_eq!(
            state.permit(0, &SETTINGS).0,
            Permit::Allowed { budget: 1 },
            "one more failure opens it: one call at a time"
        );
        let (state, t) = state.record(&[false], 1_000, &SETTINGS);
        assert_eq!(t, Some(Transition::Opened));
        assert_eq!(state, BreakerState::Open { until_ms: 31_000 });
    }

    #[test]
    fn open_waits_thirty_seconds_then_lets_one_probe_through_and_two_successes_close() {
        let open = BreakerState::Open { until_ms: 31_000 };
        assert_eq!(
            open.permit(30_999, &SETTINGS).0,
            Permit::Rejected {
                retry_in: Duration::from_millis(1)
            }
        );
        let (permit, half) = open.permit(31_000, &SETTINGS);
        assert_eq!(permit, Permit::Probe);
        assert!(
            matches!(half.permit(31_001, &SETTINGS).0, Permit::Rejected { .. }),
            "one probe at a time"
        );
        let (half, t) = half.record(&[true], 31_100, &SETTINGS);
        assert_eq!(t, None);
        let (permit, half) = half.permit(31_200, &SETTINGS);
        assert_eq!(permit, Permit::Probe);
        let (closed, t) = half.record(&[true], 31_300, &SETTINGS);
        assert_eq!(
            (closed, t),
            (BreakerState::default(), Some(Transition::Closed))
        );
        assert_eq!(
            closed.permit(31_400, &SETTINGS).0,
            Permit::Allowed {
                budget: HEALTHY_BUDGET
            }
        );
    }

    #[test]
    fn a_failed_probe_reopens_and_a_lost_probe_is_retaken_after_its_lease() {
        let (_, half) = BreakerState::Open { until_ms: 0 }.permit(0, &SETTINGS);
        let (reopened, t) = half.record(&[false], 10, &SETTINGS);
        assert_eq!(t, None);
        assert_eq!(reopened, BreakerState::Open { until_ms: 30_010 });
        let (_, half) = BreakerState::Open { until_ms: 0 }.permit(0, &SETTINGS);
        assert!(matches!(
            half.permit(PROBE_LEASE_MS - 1, &SETTINGS).0,
            Permit::Rejected { .. }
        ));
        assert_eq!(half.permit(PROBE_LEASE_MS, &SETTINGS).0, Permit::Probe);
    }

    /// Without Redis (never connected here) each process keeps its own circuits, with the
    /// same machine: five failures open it, and it stays open.
    #[tokio::test]
    async fn without_redis_the_process_keeps_its_own_circuit() {
        let breakers = Breakers::new(SETTINGS, RedisSlot::default(), "test");
        let endpoint = Uuid::now_v7();
        assert_eq!(
            breakers.permit(endpoint, 0).await,
            Permit::Allowed {
                budget: HEALTHY_BUDGET
            }
        );
        let (transition, state) = breakers.record(endpoint, &[false; 5], 0).await;
        assert_eq!(transition, Some(Transition::Opened));
        assert_eq!(state, BreakerState::Open { until_ms: 30_000 });
        assert_eq!(
            breakers.permit(endpoint, 10_000).await,
            Permit::Rejected {
                retry_in: Duration::from_secs(20)
            }
        );
        let other = Uuid::now_v7();
        assert!(matches!(
            breakers.permit(other, 10_000).await,
            Permit::Allowed { .. }
        ));
    }
}
