//! Delivery rows as a queue (README, "Events and webhooks"). A delivery is claimed by moving
//! its `next_attempt_at` past a lease; the attempt's result is written only if the row still
//! carries that lease (a replay, or a lease that ran out and was taken by another process,
//! makes a late result a no-op). A process killed mid-delivery leaves the row due again when
//! its lease ends: at-least-once, with the same `webhook-id`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::alerts::config::AlertConfig;
pub use crate::alerts::outbox::DeliveryStatus;
use crate::alerts::outbox::{self, OutboxError};
use crate::alerts::payload::Action;
use crate::domain::{EventType, Severity};
#[cfg(doc)]
use crate::events::EventView;

/// A claimed delivery with what sending it needs.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Claimed {
    pub id: i64,
    pub endpoint_id: Uuid,
    /// Counted attempts so far.
    pub attempts: i32,
    pub delivery_created_at: DateTime<Utc>,
    /// The claim's token: the row's `next_attempt_at` while this process holds it.
    pub lease: DateTime<Utc>,
    pub url: String,
    pub secret: String,
    pub event_id: Uuid,
    pub ledger: String,
    pub seq: i64,
    #[sqlx(rename = "type", try_from = "String")]
    pub event_type: EventType,
    pub event_created_at: DateTime<Utc>,
    /// The resource as stored: JSON text, sent as it is.
    pub payload: String,
}

impl Claimed {
    /// The body sent: the event as `GET /v1/events` shows it ([`EventView`]'s fields, in its
    /// order and formats), with the stored payload spliced in as text rather than parsed and
    /// written again for every delivery.
    pub fn body(&self) -> Result<Vec<u8>, serde_json::Error> {
        let text = format!(
            "{{\"id\":{},\"ledger\":{},\"seq\":{},\"type\":{},\"created_at\":{},\"data\":{}}}",
            serde_json::to_string(&self.event_id)?,
            serde_json::to_string(&self.ledger)?,
            self.seq,
            serde_json::to_string(&self.event_type)?,
            serde_json::to_string(&self.event_created_at)?,
            self.payload,
        );
        Ok(text.into_bytes())
    }
}

/// Claims up to `limit` due deliveries of enabled endpoints for `lease`, oldest due first.
pub async fn claim(
    pool: &PgPool,
    limit: i64,
    lease: Duration,
) -> Result<Vec<Claimed>, sqlx::Error> {
    sqlx::query_as(
        "WITH due AS ( \
           SELECT d.id FROM webhook_deliveries d \
           WHERE d.status = 'pending' AND d.next_attempt_at <= now() \
           ORDER BY d.next_attempt_at LIMIT $1 FOR UPDATE OF d SKIP LOCKED \
         ), claimed AS ( \
           UPDATE webhook_deliveries d \
           SET next_attempt_at = clock_timestamp() + make_interval(secs => $2) \
           FROM due WHERE d.id = due.id \
           RETURNING d.id, d.endpoint_id, d.event_id, d.attempts, d.created_at, d.next_attempt_at \
         ) \
         SELECT c.id, c.endpoint_id, c.attempts, c.created_at AS delivery_created_at, \
           c.next_attempt_at AS lease, w.url, w.secret, e.id AS event_id, e.ledger, e.seq, \
           e.type, e.created_at AS event_created_at, e.payload::text AS payload \
         FROM claimed c JOIN webhook_endpoints w ON w.id = c.endpoint_id \
           JOIN events e ON e.id = c.event_id \
         WHERE w.status = 'enabled'",
    )
    .bind(limit)
    .bind(lease.as_secs_f64())
    .fetch_all(pool)
    .await
}

/// What became of one claimed delivery.
#[derive(Debug, Clone)]
pub struct Settled {
    pub id: i64,
    pub lease: DateTime<Utc>,
    pub endpoint_id: Uuid,
    pub event_id: Uuid,
    pub status: DeliveryStatus,
    /// When it is due again (for `Pending`).
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// The HTTP attempt, if one was made (an open circuit makes none).
    pub attempt: Option<Attempt>,
    /// What the endpoint's circuit makes of the attempt (see `send::Outcome`).
    pub breaker_outcome: Option<bool>,
}

#[derive(Debug, Clone)]
pub struct Attempt {
    /// `delivered`, `retry`, `failed` (the last try) or `gone`.
    pub outcome: &'static str,
    pub status_code: Option<u16>,
    pub error: Option<String>,
    pub duration: Duration,
}

/// Writes the results of claimed deliveries and their attempts, in one statement; a result
/// whose claim was lost is dropped, its attempt still listed.
pub async fn settle(pool: &PgPool, settled: &[Settled]) -> Result<(), sqlx::Error> {
    if settled.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = settled.iter().map(|s| s.id).collect();
    let leases: Vec<DateTime<Utc>> = settled.iter().map(|s| s.lease).collect();
    let statuses: Vec<&str> = settled.iter().map(|s| s.status.as_str()).collect();
    let next: Vec<Option<DateTime<Utc>>> = settled.iter().map(|s| s.next_attempt_at).collect();
    let attempted: Vec<bool> = settled.iter().map(|s| s.attempt.is_some()).collect();
    let errors: Vec<Option<&str>> = settled
        .iter()
        .map(|s| s.attempt.as_ref().and_then(|a| a.error.as_deref()))
        .collect();
    let tried: Vec<&Settled> = settled.iter().filter(|s| s.attempt.is_some()).collect();
    let attempt = |s: &&Settled| {
        s.attempt.clone().unwrap_or(Attempt {
            outcome: "retry",
            status_code: None,
            error: None,
            duration: Duration::ZERO,
        })
    };
    let a_ids: Vec<i64> = tried.iter().map(|s| s.id).collect();
    let a_endpoints: Vec<Uuid> = tried.iter().map(|s| s.endpoint_id).collect();
    let a_events: Vec<Uuid> = tried.iter().map(|s| s.event_id).collect();
    let a_outcomes: Vec<&str> = tried.iter().map(|s| attempt(s).outcome).collect();
    let a_codes: Vec<Option<i32>> = tried
        .iter()
        .map(|s| attempt(s).status_code.map(i32::from))
        .collect();
    let a_errors: Vec<Option<String>> = tried.iter().map(|s| attempt(s).error).collect();
    let a_durations: Vec<i32> = tried
        .iter()
        .map(|s| i32::try_from(attempt(s).duration.as_millis()).unwrap_or(i32::MAX))
        .collect();
    sqlx::query(
        "WITH r AS ( \
           SELECT * FROM unnest($1::int8[], $2::timestamptz[], $3::text[], $4::timestamptz[], \
             $5::bool[], $6::text[]) AS r(id, lease, status, next_at, attempted, error) \
         ), settled AS ( \
           UPDATE webhook_deliveries d SET status = r.status, \
             next_attempt_at = coalesce(r.next_at, d.next_attempt_at), \
             attempts = d.attempts + r.attempted::int, \
             delivered_at = CASE WHEN r.status = 'delivered' THEN now() END, \
             last_error = CASE WHEN r.status = 'delivered' THEN NULL \
                          ELSE coalesce(r.error, d.last_error) END \
           FROM r WHERE d.id = r.id AND d.next_attempt_at = r.lease RETURNING d.id \
         ) \
         INSERT INTO webhook_attempts (delivery_id, endpoint_id, event_id, outcome, status_code, \
           error, duration_ms) \
         SELECT a.* FROM unnest($7::int8[], $8::uuid[], $9::uuid[], $10::text[], $11::int4[], \
           $12::text[], $13::int4[]) AS a(delivery_id, endpoint_id, event_id, outcome, \
           status_code, error, duration_ms) \
         JOIN webhook_deliveries d ON d.id = a.delivery_id",
    )
    .bind(&ids)
    .bind(&leases)
    .bind(&statuses)
    .bind(&next)
    .bind(&attempted)
    .bind(&errors)
    .bind(&a_ids)
    .bind(&a_endpoints)
    .bind(&a_events)
    .bind(&a_outcomes)
    .bind(&a_codes)
    .bind(&a_errors)
    .bind(&a_durations)
    .execute(pool)
    .await?;
    Ok(())
}

/// Notes whether an endpoint's attempts just succeeded: a success clears `failing_since`, a
/// batch of failures starts it (if not started). Returns when it has been failing since. A
/// healthy endpoint's row is not written at all (fan-out locks that row every tick).
pub async fn note_health(
    pool: &PgPool,
    endpoint_id: Uuid,
    succeeded: bool,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE webhook_endpoints SET failing_since = \
           CASE WHEN $2 THEN NULL ELSE coalesce(failing_since, now()) END \
         WHERE id = $1 AND (failing_since IS NOT NULL OR NOT $2) RETURNING failing_since",
    )
    .bind(endpoint_id)
    .bind(succeeded)
    .fetch_optional(pool)
    .await
    .map(Option::flatten)
}

/// Disables an endpoint (its pending deliveries stay, parked, none dropped) and raises a
/// `critical` alert, in one transaction. Returns false if it was not enabled.
pub async fn disable(
    pool: &PgPool,
    alerts: &AlertConfig,
    endpoint_id: Uuid,
    reason: &str,
) -> Result<bool, OutboxError> {
    let mut tx = pool.begin().await?;
    let disabled: Option<(String, String)> = sqlx::query_as(
        "UPDATE webhook_endpoints SET status = 'disabled', disabled_reason = $2, \
           disabled_at = now() WHERE id = $1 AND status = 'enabled' RETURNING ledger, url",
    )
    .bind(endpoint_id)
    .bind(reason)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((ledger, _url)) = disabled else {
        return Ok(false);
    };
    // Parked at the end of the due index, so the claim never scans past them (not `infinity`:
    // chrono cannot hold it).
    sqlx::query(
        "UPDATE webhook_deliveries SET next_attempt_at = now() + interval '100 years' \
         WHERE endpoint_id = $1 AND status = 'pending'",
    )
    .bind(endpoint_id)
    .execute(&mut *tx)
    .await?;
    let event = outbox::event(
        format!("ferry:webhook:{endpoint_id}:disabled"),
        Action::Trigger,
        "webhooks.endpoint_disabled".into(),
        Severity::Critical,
        format!("webhook endpoint {endpoint_id} (ledger {ledger}) was disabled: {reason}"),
        json!({"endpoint_id": endpoint_id, "ledger": ledger, "reason": reason}),
    );
    outbox::raise(&mut tx, alerts, &event, None).await?;
    tx.commit().await?;
    metrics::counter!("ferry_webhook_endpoints_disabled_total").increment(1);
    Ok(true)
}

/// Raises the alert of an endpoint's circuit opening (`Trigger`) or closing (`Resolve`).
pub async fn circuit_alert(
    pool: &PgPool,
    alerts: &AlertConfig,
    endpoint_id: Uuid,
    action: Action,
    last_error: &str,
) -> Result<(), OutboxError> {
    let summary = match action {
        Action::Trigger => format!(
            "webhook endpoint {endpoint_id} is failing; its circuit is open and deliveries wait: {last_error}"
        ),
        Action::Resolve => {
            format!("webhook endpoint {endpoint_id} recovered; its circuit is closed")
        }
    };
    let event = outbox::event(
        format!("ferry:webhook:{endpoint_id}:circuit"),
        action,
        "webhooks.endpoint_circuit".into(),
        Severity::Critical,
        summary,
        json!({"endpoint_id": endpoint_id, "last_error": last_error}),
    );
    let mut conn = pool.acquire().await?;
    outbox::raise(&mut conn, alerts, &event, None).await?;
    Ok(())
}
