//! Webhook endpoints as the API manages them (README, "Events and webhooks"): registered with
//! a signing secret shown once, listed, deleted and replayed, each act with its audit event in
//! one transaction. Delivering to them is the `webhooks` module's.

use base64::Engine;
use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::audit::{self, Actor, AuditAction};
use crate::domain::{EventType, LedgerName};

/// Random bytes in a new endpoint's signing secret (Standard Webhooks: 24 to 64).
const SECRET_BYTES: usize = 32;

/// An endpoint as the API shows it (its secret only when created).
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[schema(as = WebhookEndpoint)]
pub struct EndpointView {
    pub id: Uuid,
    #[schema(example = "default")]
    pub ledger: String,
    #[schema(example = "https://hooks.example.com/ferry")]
    pub url: String,
    #[sqlx(try_from = "Vec<String>")]
    pub event_types: EventTypes,
    /// `enabled`, or `disabled` (after `410 Gone` or three days of failures; see
    /// `disabled_reason`). A disabled endpoint's deliveries wait; none is dropped.
    #[schema(pattern = "^(enabled|disabled)$")]
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
    /// Every attempt since then has failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failing_since: Option<DateTime<Utc>>,
    /// Events up to this `seq` have been turned into deliveries.
    pub fanned_out_through: i64,
    /// Deliveries not yet made (waiting, retrying, or held by an open circuit).
    pub pending_deliveries: i64,
    pub created_at: DateTime<Utc>,
    /// The signing secret (`whsec_…`): only in the answer that creates the endpoint.
    #[sqlx(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// The event types an endpoint takes, read back strictly.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
#[serde(transparent)]
pub struct EventTypes(pub Vec<EventType>);

impl TryFrom<Vec<String>> for EventTypes {
    type Error = crate::domain::UnknownValue;
    fn try_from(names: Vec<String>) -> Result<Self, Self::Error> {
        names
            .iter()
            .map(|n| EventType::parse_known(n))
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

const ENDPOINT_COLUMNS: &str = "w.id, w.ledger, w.url, w.event_types, w.status, \
    w.disabled_reason, w.failing_since, w.fanned_out_through, w.created_at, \
    (SELECT count(*) FROM webhook_deliveries d \
       WHERE d.endpoint_id = w.id AND d.status = 'pending') AS pending_deliveries";

/// A checked endpoint to register.
pub struct NewEndpoint {
    pub ledger: LedgerName,
    /// Already checked against the SSRF policy.
    pub url: String,
    pub event_types: Vec<EventType>,
}

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("webhook endpoint not found")]
    NotFound,
    #[error("ledger {0} does not exist")]
    LedgerNotFound(LedgerName),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Registers an endpoint: it receives the ledger's events from now on (earlier ones by
/// replay). Returns it with its secret.
pub async fn create(
    pool: &PgPool,
    endpoint: &NewEndpoint,
    actor: &Actor,
) -> Result<EndpointView, EndpointError> {
    let mut secret_bytes = [0u8; SECRET_BYTES];
    rand::rng().fill_bytes(&mut secret_bytes);
    let secret = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(secret_bytes)
    );
    let id = Uuid::now_v7();
    let types: Vec<&str> = endpoint.event_types.iter().map(|t| t.as_str()).collect();
    let mut tx = pool.begin().await?;
    let ledger_exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM ledgers WHERE name = $1)")
            .bind(endpoint.ledger.as_str())
            .fetch_one(&mut *tx)
            .await?;
    if !ledger_exists {
        return Err(EndpointError::LedgerNotFound(endpoint.ledger.clone()));
    }
    let through = crate::events::last_seq(&mut *tx, &endpoint.ledger).await?;
    sqlx::query(
        "INSERT INTO webhook_endpoints (id, ledger, url, event_types, secret, \
           fanned_out_through, created_by) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(id)
    .bind(endpoint.ledger.as_str())
    .bind(&endpoint.url)
    .bind(&types)
    .bind(&secret)
    .bind(through)
    .bind(actor.key_id)
    .execute(&mut *tx)
    .await?;
    let event = actor.event(
        AuditAction::WebhookEndpointCreated,
        Some(&endpoint.ledger),
        audit::target::webhook_endpoint(id),
        serde_json::json!({"url": endpoint.url, "event_types": types}),
    );
    audit::record(&mut *tx, &event).await?;
    tx.commit().await?;
    let mut view = get(pool, id, Some(&endpoint.ledger))
        .await?
        .ok_or(EndpointError::NotFound)?;
    view.secret = Some(secret);
    Ok(view)
}

/// An endpoint of `ledger` (any when `None`: an admin key).
pub async fn get(
    pool: &PgPool,
    id: Uuid,
    ledger: Option<&LedgerName>,
) -> Result<Option<EndpointView>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints w \
         WHERE w.id = $1 AND ($2::text IS NULL OR w.ledger = $2)"
    )))
    .bind(id)
    .bind(ledger.map(LedgerName::as_str))
    .fetch_optional(pool)
    .await
}

/// A ledger's endpoints, oldest first, after `after`.
pub async fn list(
    pool: &PgPool,
    ledger: &LedgerName,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<EndpointView>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints w \
         WHERE w.ledger = $1 AND ($2::uuid IS NULL OR w.id > $2) ORDER BY w.id LIMIT $3"
    )))
    .bind(ledger.as_str())
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Deletes an endpoint with its deliveries and attempts.
pub async fn delete(
    pool: &PgPool,
    id: Uuid,
    ledger: Option<&LedgerName>,
    actor: &Actor,
) -> Result<(), EndpointError> {
    let mut tx = pool.begin().await?;
    let deleted: Option<(String, String)> = sqlx::query_as(
        "DELETE FROM webhook_endpoints WHERE id = $1 AND ($2::text IS NULL OR ledger = $2) \
         RETURNING ledger, url",
    )
    .bind(id)
    .bind(ledger.map(LedgerName::as_str))
    .fetch_optional(&mut *tx)
    .await?;
    let (endpoint_ledger, url) = deleted.ok_or(EndpointError::NotFound)?;
    let event = actor.event(
        AuditAction::WebhookEndpointDeleted,
        Some(&LedgerName::from_trusted(endpoint_ledger)),
        audit::target::webhook_endpoint(id),
        serde_json::json!({"url": url}),
    );
    audit::record(&mut *tx, &event).await?;
    tx.commit().await?;
    Ok(())
}

/// Sends again every event after `after` that the endpoint subscribes to and has been fanned
/// out (later ones come anyway): delivered ones are due again at once, with the same
/// `webhook-id`. Returns how many were scheduled.
pub async fn replay(
    pool: &PgPool,
    id: Uuid,
    ledger: Option<&LedgerName>,
    after: i64,
    actor: &Actor,
) -> Result<u64, EndpointError> {
    let mut tx = pool.begin().await?;
    // Locked: fan-out skips it meanwhile, so the cursor read here stays put.
    let endpoint: Option<(String, i64)> = sqlx::query_as(
        "SELECT ledger, fanned_out_through FROM webhook_endpoints \
         WHERE id = $1 AND ($2::text IS NULL OR ledger = $2) FOR UPDATE",
    )
    .bind(id)
    .bind(ledger.map(LedgerName::as_str))
    .fetch_optional(&mut *tx)
    .await?;
    let (endpoint_ledger, through) = endpoint.ok_or(EndpointError::NotFound)?;
    let scheduled = sqlx::query(
        "INSERT INTO webhook_deliveries (endpoint_id, event_id) \
         SELECT w.id, e.id FROM webhook_endpoints w \
           JOIN events e ON e.ledger = w.ledger AND e.seq > $2 AND e.seq <= w.fanned_out_through \
             AND e.type = ANY(w.event_types) \
         WHERE w.id = $1 \
         ON CONFLICT (endpoint_id, event_id) DO UPDATE SET status = 'pending', \
           next_attempt_at = now(), delivered_at = NULL",
    )
    .bind(id)
    .bind(after)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let event = actor.event(
        AuditAction::WebhookEndpointReplayed,
        Some(&LedgerName::from_trusted(endpoint_ledger)),
        audit::target::webhook_endpoint(id),
        serde_json::json!({"after": after, "through": through, "scheduled": scheduled}),
    );
    audit::record(&mut *tx, &event).await?;
    tx.commit().await?;
    Ok(scheduled)
}

/// One HTTP attempt, as the API lists it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[schema(as = WebhookAttempt)]
pub struct AttemptView {
    /// Increasing; the listing's cursor.
    pub id: i64,
    pub event_id: Uuid,
    pub attempted_at: DateTime<Utc>,
    /// `delivered`, `retry` (will be tried again), `failed` (given up) or `gone` (410).
    #[schema(pattern = "^(delivered|retry|failed|gone)$")]
    pub outcome: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub duration_ms: i32,
}

/// A page of an endpoint's attempts, newest first, below `before`.
pub async fn attempts(
    pool: &PgPool,
    endpoint_id: Uuid,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<AttemptView>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, event_id, attempted_at, outcome, status_code, error, duration_ms \
         FROM webhook_attempts WHERE endpoint_id = $1 AND ($2::bigint IS NULL OR id < $2) \
         ORDER BY id DESC LIMIT $3",
    )
    .bind(endpoint_id)
    .bind(before)
    .bind(limit)
    .fetch_all(pool)
    .await
}
