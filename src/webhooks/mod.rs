//! Producer webhooks (README, "Events and webhooks"): every event an endpoint subscribes to is
//! delivered to it at least once, signed the Standard Webhooks way, retried with backoff and
//! jitter for up to a day, behind a circuit breaker per endpoint shared by every process.
//!
//! - `fanout.rs`: events → one delivery row per subscribed endpoint (a cursor per endpoint);
//! - `deliveries.rs`: delivery rows as a queue (claim with a lease, settle), endpoint health;
//! - `send.rs`: one HTTP attempt and its classification;
//! - `connections.rs`: how many attempts at once each endpoint's receiver is sent;
//! - `breaker.rs`: the per-endpoint circuit (Redis, with a per-process fallback);
//! - `ssrf.rs`: which URLs and addresses ferry may send to.
//!
//! [`Dispatcher::run`] drives it all in the worker role.

pub mod breaker;
pub mod connections;
pub mod deliveries;
pub mod fanout;
pub mod send;
pub mod ssrf;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use ipnet::IpNet;
use serde::Deserialize;
use sqlx::PgPool;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};
use uuid::Uuid;

use self::breaker::{Breakers, Permit, Transition};
use self::connections::Connections;
use self::deliveries::{Attempt, Claimed, DeliveryStatus, Settled};
use self::send::{Message, Outcome, Sent};
use self::ssrf::UrlPolicy;
use crate::alerts::config::{AlertConfig, decode_webhook_secret};
use crate::alerts::payload::Action;
use crate::redis_slot::RedisSlot;
use crate::retry::{Decision, Failure, RetryPolicy};

/// `[webhooks]` (README, "Configuration").
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookSettings {
    /// Allow `http://` to loopback receivers (development, tests). Never in production.
    pub allow_insecure: bool,
    /// Private networks webhooks may reach anyway (CIDRs), e.g. a receiver in the same VPC.
    #[serde(deserialize_with = "networks")]
    pub allowed_networks: Vec<IpNet>,
    /// How often new events and due deliveries are looked for when there was nothing to do.
    #[serde(rename = "poll_interval_ms", with = "crate::serde_duration::millis")]
    pub poll_interval: Duration,
    /// Deliveries in flight at once, per process.
    pub concurrency: usize,
    /// One attempt's limit, connection included.
    #[serde(rename = "timeout_ms", with = "crate::serde_duration::millis")]
    pub timeout: Duration,
    /// Backoff ceiling after the first failed attempt; it doubles per attempt…
    #[serde(rename = "retry_base_ms", with = "crate::serde_duration::millis")]
    pub retry_base: Duration,
    /// …up to this.
    #[serde(rename = "retry_cap_secs", with = "crate::serde_duration::secs")]
    pub retry_cap: Duration,
    /// A delivery still failing this long after its event is given up (`failed`).
    #[serde(rename = "give_up_after_secs", with = "crate::serde_duration::secs")]
    pub give_up_after: Duration,
    /// An endpoint failing this long without a single success is disabled, with an alert.
    #[serde(rename = "disable_after_secs", with = "crate::serde_duration::secs")]
    pub disable_after: Duration,
    pub breaker: breaker::BreakerSettings,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            allow_insecure: false,
            allowed_networks: Vec::new(),
            // Event lag is at most about this when idle (BENCHMARKS.md: lag p99 at 1,000/s).
            poll_interval: Duration::from_millis(100),
            concurrency: 64,
            timeout: Duration::from_secs(10),
            // Ceilings of 5 s, 10 s, 20 s, … 1 h, 1 h, …, each wait drawn below its ceiling:
            // at least 33 attempts in a day (README).
            retry_base: Duration::from_secs(5),
            retry_cap: Duration::from_secs(3_600),
            give_up_after: Duration::from_secs(24 * 3_600),
            disable_after: Duration::from_secs(3 * 24 * 3_600),
            breaker: breaker::BreakerSettings::default(),
        }
    }
}

fn networks<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    let texts: Vec<String> = Vec::deserialize(d)?;
    texts
        .iter()
        .map(|t| parse_network(t).map_err(serde::de::Error::custom))
        .collect()
}

/// A CIDR (`10.0.0.0/8`) or a single address.
pub fn parse_network(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{text:?} is not a network (CIDR such as 10.0.0.0/8)"))
}

impl WebhookSettings {
    pub fn url_policy(&self) -> UrlPolicy {
        UrlPolicy {
            allow_insecure: self.allow_insecure,
            allowed_networks: self.allowed_networks.clone(),
        }
    }

    /// Counted attempts back off exponentially with full jitter; the limit is time
    /// (`give_up_after`), not a count.
    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            base: self.retry_base,
            cap: self.retry_cap,
            attempts_max: u32::MAX,
            uncounted_wait_max: Duration::from_secs(1),
            total_wait_max: None,
        }
    }

    /// How long a claimed delivery is this process's: longer than any attempt can take.
    fn lease(&self) -> Duration {
        (self.timeout * 3).max(Duration::from_secs(5))
    }
}

/// Fans events out and delivers them, in the worker role.
pub struct Dispatcher {
    pool: PgPool,
    settings: WebhookSettings,
    policy: Arc<UrlPolicy>,
    client: reqwest::Client,
    breakers: Breakers,
    /// Paces endpoints whose receivers close connections (`connections.rs`).
    connections: Connections,
    alerts: Arc<AlertConfig>,
    in_flight: Arc<Semaphore>,
    /// Batches writing their results at once: however many endpoints are being delivered to,
    /// the dispatcher holds few of the pool's connections, and posting keeps the rest.
    writing: Semaphore,
}

/// Connections the dispatcher's result writes may hold at once (fan-out and claiming hold one
/// each besides).
const WRITERS_MAX: usize = 2;

impl Dispatcher {
    /// `namespace` keeps the breakers of databases sharing one Redis apart.
    pub fn new(
        pool: PgPool,
        settings: WebhookSettings,
        redis: RedisSlot,
        namespace: &str,
        alerts: Arc<AlertConfig>,
    ) -> Arc<Self> {
        let policy = Arc::new(settings.url_policy());
        let client = send::client(policy.clone(), settings.timeout);
        Arc::new(Self {
            breakers: Breakers::new(settings.breaker, redis, namespace),
            connections: Connections::default(),
            in_flight: Arc::new(Semaphore::new(settings.concurrency.max(1))),
            writing: Semaphore::new(WRITERS_MAX),
            pool,
            policy,
            client,
            alerts,
            settings,
        })
    }

    /// Runs fan-out and delivery until `stopping`; attempts in flight finish (or are taken back
    /// by their lease running out).
    pub async fn run(self: Arc<Self>, tasks: TaskTracker, stopping: CancellationToken) {
        info!("webhook dispatcher running");
        let fanning = tasks.spawn(self.clone().fan_out_loop(stopping.clone()));
        let batches = TaskTracker::new();
        loop {
            let busy = self.deliver_due(&batches).await;
            if stopping.is_cancelled() {
                break;
            }
            if !busy {
                tokio::select! {
                    () = tokio::time::sleep(self.settings.poll_interval) => {}
                    () = stopping.cancelled() => break,
                }
            }
        }
        batches.close();
        batches.wait().await;
        let _ = fanning.await;
    }

    async fn fan_out_loop(self: Arc<Self>, stopping: CancellationToken) {
        loop {
            let more = match fanout::fan_out(&self.pool).await {
                Ok((created, more)) => {
                    metrics::counter!("ferry_webhook_deliveries_created_total").increment(created);
                    more
                }
                Err(error) => {
                    warn!(%error, "webhook fan-out failed; retrying");
                    false
                }
            };
            if !more {
                tokio::select! {
                    () = tokio::time::sleep(self.settings.poll_interval) => {}
                    () = stopping.cancelled() => return,
                }
            } else if stopping.is_cancelled() {
                return;
            }
        }
    }

    /// Claims as many due deliveries as there is room for and starts them, one task per
    /// endpoint; true if it claimed a full batch (more may be due).
    async fn deliver_due(self: &Arc<Self>, batches: &TaskTracker) -> bool {
        let room = self.in_flight.available_permits();
        if room == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            return true;
        }
        let claimed = match deliveries::claim(&self.pool, room as i64, self.settings.lease()).await
        {
            Ok(claimed) => claimed,
            Err(error) => {
                warn!(%error, "claiming webhook deliveries failed; retrying");
                return false;
            }
        };
        let full = claimed.len() == room;
        let mut by_endpoint: HashMap<Uuid, Vec<Claimed>> = HashMap::new();
        for delivery in claimed {
            by_endpoint
                .entry(delivery.endpoint_id)
                .or_default()
                .push(delivery);
        }
        for (endpoint_id, batch) in by_endpoint {
            let permits = u32::try_from(batch.len()).unwrap_or(u32::MAX);
            let Ok(permit) = self.in_flight.clone().acquire_many_owned(permits).await else {
                return false;
            };
            let this = self.clone();
            batches.spawn(async move {
                this.deliver_batch(endpoint_id, batch).await;
                drop(permit);
            });
        }
        full
    }

    /// Delivers one endpoint's claimed deliveries as its circuit allows — a permit per chunk,
    /// each chunk's outcomes fed back before the next — and records it all.
    async fn deliver_batch(&self, endpoint_id: Uuid, mut batch: Vec<Claimed>) {
        batch.sort_by_key(|d| std::cmp::Reverse(d.seq));
        let mut settled = Vec::with_capacity(batch.len());
        let mut wait = Duration::ZERO;
        // Attempts start no later than this (each then ends within the timeout): a slow
        // endpoint must not outlive the claim's lease, chunks and paced attempts
        // (`connections.rs`) included.
        let start_by = tokio::time::Instant::now() + self.settings.lease() / 2;
        while !batch.is_empty() && tokio::time::Instant::now() < start_by {
            let permit = self.breakers.permit(endpoint_id, now_ms()).await;
            let chunk_len = match permit {
                Permit::Allowed { budget } => budget,
                Permit::Probe => 1,
                Permit::Rejected { retry_in } => {
                    wait = retry_in;
                    break;
                }
            };
            let chunk = batch.split_off(batch.len().saturating_sub(chunk_len));
            let attempted = self.attempt_all(chunk, start_by).await;
            self.feed_breaker(endpoint_id, &attempted).await;
            settled.extend(attempted);
        }
        // Deliveries the circuit holds back wait — counted nothing, dropped nothing.
        settled.extend(batch.into_iter().map(|delivery| held_back(&delivery, wait)));
        let Ok(_writer) = self.writing.acquire().await else {
            return;
        };
        if let Err(error) = deliveries::settle(&self.pool, &settled).await {
            warn!(%error, %endpoint_id, "webhook delivery results not recorded; they will be retried");
        }
        self.after_attempts(endpoint_id, &settled).await;
    }

    /// Sends each delivery once, a few at a time (fewer to a receiver that closes
    /// connections: `connections.rs`).
    async fn attempt_all(
        &self,
        batch: Vec<Claimed>,
        start_by: tokio::time::Instant,
    ) -> Vec<Settled> {
        futures::stream::iter(batch)
            .map(|delivery| self.attempt(delivery, start_by))
            .buffer_unordered(16)
            .collect()
            .await
    }

    /// One attempt, if it can start by `start_by`; otherwise the delivery waits, uncounted.
    async fn attempt(&self, delivery: Claimed, start_by: tokio::time::Instant) -> Settled {
        let admitting = self.connections.admit(delivery.endpoint_id);
        let Ok(_admission) = tokio::time::timeout_at(start_by, admitting).await else {
            return held_back(&delivery, Duration::ZERO);
        };
        let message_id = delivery.event_id.to_string();
        let signing = decode_webhook_secret(&delivery.secret).and_then(|key| {
            let body = delivery
                .body()
                .map_err(|e| format!("the event does not serialize: {e}"))?;
            Ok((key, body))
        });
        let Sent {
            outcome, duration, ..
        } = match signing {
            Ok((key, body)) => {
                let message = Message {
                    url: &delivery.url,
                    key: &key,
                    message_id: &message_id,
                    body: &body,
                };
                let sent = send::send(&self.client, &self.policy, &message).await;
                self.connections.learn(delivery.endpoint_id, sent.reuse);
                sent
            }
            Err(e) => Sent {
                outcome: Outcome::Retry {
                    status: None,
                    retry_after: None,
                    error: format!("not sent: {e}"),
                    trips_breaker: false,
                },
                duration: Duration::ZERO,
                reuse: None,
            },
        };
        metrics::counter!("ferry_webhook_deliveries_total", "outcome" => outcome.label())
            .increment(1);
        let (status, next_attempt_at, label) = match &outcome {
            Outcome::Delivered { .. } => {
                let lag = Utc::now() - delivery.event_created_at;
                metrics::histogram!("ferry_webhook_delivery_lag_seconds")
                    .record(lag.as_seconds_f64().max(0.0));
                (DeliveryStatus::Delivered, None, "delivered")
            }
            // The endpoint is disabled after this batch; the delivery waits with the others.
            Outcome::Gone { .. } => (
                DeliveryStatus::Pending,
                Some(after(self.settings.lease())),
                "gone",
            ),
            Outcome::Retry { retry_after, .. } => self.retry_decision(&delivery, *retry_after),
        };
        Settled {
            id: delivery.id,
            lease: delivery.lease,
            endpoint_id: delivery.endpoint_id,
            event_id: delivery.event_id,
            status,
            next_attempt_at,
            attempt: Some(Attempt {
                outcome: label,
                status_code: outcome.status(),
                error: match &outcome {
                    Outcome::Retry { error, .. } => Some(error.clone()),
                    Outcome::Gone { status } => Some(format!("HTTP {status}: gone")),
                    Outcome::Delivered { .. } => None,
                },
                duration,
            }),
            breaker_outcome: outcome.breaker_outcome(),
        }
    }

    /// When a failed delivery is tried again, or that it is given up.
    fn retry_decision(
        &self,
        delivery: &Claimed,
        retry_after: Option<Duration>,
    ) -> (DeliveryStatus, Option<DateTime<Utc>>, &'static str) {
        let attempt = u32::try_from(delivery.attempts + 1).unwrap_or(u32::MAX);
        let policy = self.settings.retry_policy();
        let Decision::Retry { wait, .. } = policy.decide(
            Failure::Transient {
                not_before: retry_after,
            },
            attempt,
        ) else {
            return (DeliveryStatus::Failed, None, "failed");
        };
        let wait = wait.sample(&mut rand::rng());
        let next = after(wait);
        let give_up_at = delivery.delivery_created_at
            + chrono::Duration::from_std(self.settings.give_up_after)
                .unwrap_or(chrono::Duration::MAX);
        if next > give_up_at {
            metrics::counter!("ferry_webhook_deliveries_given_up_total").increment(1);
            return (DeliveryStatus::Failed, None, "failed");
        }
        (DeliveryStatus::Pending, Some(next), "retry")
    }

    /// Feeds a chunk's attempts to the endpoint's circuit, alerting on a change.
    async fn feed_breaker(&self, endpoint_id: Uuid, settled: &[Settled]) {
        let breaker_outcomes: Vec<bool> =
            settled.iter().filter_map(|s| s.breaker_outcome).collect();
        if breaker_outcomes.is_empty() {
            return;
        }
        let (transition, state) = self
            .breakers
            .record(endpoint_id, &breaker_outcomes, now_ms())
            .await;
        metrics::gauge!("ferry_webhook_breaker_state", "endpoint" => endpoint_id.to_string())
            .set(state.gauge());
        let Some(transition) = transition else {
            return;
        };
        let last_error = settled
            .iter()
            .rev()
            .find_map(|s| s.attempt.as_ref()?.error.as_deref())
            .unwrap_or("");
        let (action, label) = match transition {
            Transition::Opened => (Action::Trigger, "opened"),
            Transition::Closed => (Action::Resolve, "closed"),
        };
        warn!(%endpoint_id, transition = label, "webhook endpoint circuit changed");
        metrics::counter!("ferry_webhook_breaker_transitions_total", "transition" => label)
            .increment(1);
        let alerted =
            deliveries::circuit_alert(&self.pool, &self.alerts, endpoint_id, action, last_error);
        if let Err(error) = alerted.await {
            warn!(%error, "the alert about a webhook circuit could not be raised");
        }
    }

    /// Notes the endpoint's health, and disables it if it is gone or has failed for too long.
    async fn after_attempts(&self, endpoint_id: Uuid, settled: &[Settled]) {
        let tried: Vec<&Attempt> = settled.iter().filter_map(|s| s.attempt.as_ref()).collect();
        if tried.is_empty() {
            return;
        }
        let gone = tried.iter().any(|a| a.outcome == "gone");
        let succeeded = tried.iter().any(|a| a.outcome == "delivered");
        let reason = if gone {
            Some("the receiver answered 410 Gone".to_owned())
        } else {
            match deliveries::note_health(&self.pool, endpoint_id, succeeded).await {
                Ok(Some(since))
                    if since
                        < Utc::now()
                            - chrono::Duration::from_std(self.settings.disable_after)
                                .unwrap_or(chrono::Duration::MAX) =>
                {
                    Some(format!("every attempt since {since} failed"))
                }
                Ok(_) => None,
                Err(error) => {
                    warn!(%error, %endpoint_id, "webhook endpoint health not recorded");
                    None
                }
            }
        };
        if let Some(reason) = reason {
            match deliveries::disable(&self.pool, &self.alerts, endpoint_id, &reason).await {
                Ok(true) => warn!(%endpoint_id, reason, "webhook endpoint disabled"),
                Ok(false) => {}
                Err(error) => warn!(%error, %endpoint_id, "webhook endpoint could not be disabled"),
            }
        }
    }
}

/// A delivery not attempted this time (its circuit is open, or it could not start in time):
/// due again after `wait` and a little jitter, its attempts not counted.
fn held_back(delivery: &Claimed, wait: Duration) -> Settled {
    let jitter = Duration::from_millis(rand::random_range(0..=250));
    Settled {
        id: delivery.id,
        lease: delivery.lease,
        endpoint_id: delivery.endpoint_id,
        event_id: delivery.event_id,
        status: DeliveryStatus::Pending,
        next_attempt_at: Some(after(wait + jitter)),
        attempt: None,
        breaker_outcome: None,
    }
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn after(wait: Duration) -> DateTime<Utc> {
    Utc::now() + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX)
}
