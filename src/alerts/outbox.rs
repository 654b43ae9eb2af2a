//! Raising alerts durably: the alert row, one delivery per matching sink and a job for each
//! delivery commit in the caller's transaction, next to the change that caused them.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::config::AlertConfig;
use super::payload::{Action, AlertEvent};
use crate::domain::{Severity, UnknownValue};
use crate::queue::payloads::DeliverAlert;
use crate::queue::{self, ALERTS_QUEUE, EnqueueError};

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Enqueue(#[from] EnqueueError),
}

/// Records `event` (always, so `GET /v1/alerts` shows it even with no sinks configured) and
/// schedules its delivery to every sink that takes its severity, except `skip_sink` (a sink
/// does not alert about its own broken circuit). Returns how many deliveries were scheduled.
pub async fn raise(
    conn: &mut PgConnection,
    config: &AlertConfig,
    event: &AlertEvent,
    skip_sink: Option<&str>,
) -> Result<usize, OutboxError> {
    let sinks: Vec<&str> = config
        .sinks
        .iter()
        .filter(|s| s.accepts(event.severity) && Some(s.name.as_str()) != skip_sink)
        .map(|s| s.name.as_str())
        .collect();
    sqlx::query(
        "INSERT INTO alerts (id, dedup_key, action, event_type, severity, summary, details, \
           created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(event.id)
    .bind(&event.dedup_key)
    .bind(event.action.as_str())
    .bind(&event.event_type)
    .bind(event.severity.as_str())
    .bind(&event.summary)
    .bind(&event.details)
    .bind(event.created_at)
    .execute(&mut *conn)
    .await?;
    for sink in &sinks {
        let delivery_id = Uuid::now_v7();
        sqlx::query("INSERT INTO alert_deliveries (id, alert_id, sink) VALUES ($1, $2, $3)")
            .bind(delivery_id)
            .bind(event.id)
            .bind(sink)
            .execute(&mut *conn)
            .await?;
        queue::enqueue(conn, ALERTS_QUEUE, &DeliverAlert { delivery_id }, None).await?;
    }
    metrics::counter!("ferry_alerts_raised_total", "event_type" => event.event_type.clone())
        .increment(1);
    Ok(sinks.len())
}

/// A new alert event with a fresh id, stamped now.
pub fn event(
    dedup_key: String,
    action: Action,
    event_type: String,
    severity: Severity,
    summary: String,
    details: Value,
) -> AlertEvent {
    AlertEvent {
        id: Uuid::now_v7(),
        dedup_key,
        action,
        event_type,
        severity,
        summary,
        details,
        created_at: Utc::now(),
    }
}

/// A delivery with its alert, as the delivery job loads it.
pub struct PendingDelivery {
    pub sink: String,
    pub status: String,
    pub attempts: i32,
    pub event: AlertEvent,
}

/// Where a delivery is: `pending` until `delivered` or `failed` (given up). Alert deliveries
/// and webhook deliveries store it the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    Pending,
    Delivered,
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }
}

impl TryFrom<String> for DeliveryStatus {
    type Error = UnknownValue;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        [Self::Pending, Self::Delivered, Self::Failed]
            .into_iter()
            .find(|s| s.as_str() == text)
            .ok_or_else(|| UnknownValue::new("delivery status", &text))
    }
}

/// A delivery joined with its alert. Stored values of closed sets read back strictly: an
/// unknown one is an error, never a guess.
#[derive(sqlx::FromRow)]
struct PendingDeliveryRow {
    sink: String,
    #[sqlx(try_from = "String")]
    status: DeliveryStatus,
    attempts: i32,
    #[sqlx(flatten)]
    event: AlertEvent,
}

pub async fn load_delivery(
    pool: &PgPool,
    delivery_id: Uuid,
) -> Result<Option<PendingDelivery>, sqlx::Error> {
    let row = sqlx::query_as::<_, PendingDeliveryRow>(
        "SELECT d.sink, d.status, d.attempts, a.id, a.dedup_key, a.action, a.event_type, \
           a.severity, a.summary, a.details, a.created_at \
         FROM alert_deliveries d JOIN alerts a ON a.id = d.alert_id WHERE d.id = $1",
    )
    .bind(delivery_id)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|row| PendingDelivery {
        sink: row.sink,
        status: row.status.as_str().to_owned(),
        attempts: row.attempts,
        event: row.event,
    }))
}

/// An alert's delivery to one sink.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[schema(as = AlertDelivery)]
pub struct DeliveryView {
    pub sink: String,
    /// `pending`, `delivered` or `failed`.
    #[schema(pattern = "^(pending|delivered|failed)$")]
    #[serde(deserialize_with = "known_delivery_status")]
    pub status: String,
    #[schema(minimum = 0)]
    pub attempts: i32,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
}

/// Reads a stored delivery status strictly: an unknown one is an error, never a guess.
fn known_delivery_status<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let text = <String as serde::Deserialize>::deserialize(d)?;
    DeliveryStatus::try_from(text)
        .map(|s| s.as_str().to_owned())
        .map_err(serde::de::Error::custom)
}

/// An alert with its delivery state per sink.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = Alert)]
pub struct AlertView {
    pub id: Uuid,
    pub dedup_key: String,
    /// `trigger` or `resolve`.
    #[schema(pattern = "^(trigger|resolve)$")]
    pub action: String,
    pub event_type: String,
    /// `info`, `medium` or `critical`.
    #[schema(pattern = "^(info|medium|critical)$")]
    pub severity: String,
    pub summary: String,
    pub details: Value,
    pub created_at: DateTime<Utc>,
    pub deliveries: Vec<DeliveryView>,
}

/// Alerts newest first, each with its delivery state per sink.
pub async fn list(
    pool: &PgPool,
    limit: i64,
    before: Option<Uuid>,
) -> Result<Vec<AlertView>, sqlx::Error> {
    let rows = sqlx::query_as::<_, AlertRow>(
        "SELECT a.id, a.dedup_key, a.action, a.event_type, a.severity, a.summary, a.details, \
           a.created_at, coalesce(jsonb_agg(jsonb_build_object( \
             'sink', d.sink, 'status', d.status, 'attempts', d.attempts, \
             'last_status', d.last_status, 'last_error', d.last_error, \
             'next_attempt_at', d.next_attempt_at, 'delivered_at', d.delivered_at) \
             ORDER BY d.sink) FILTER (WHERE d.id IS NOT NULL), '[]') AS deliveries \
         FROM alerts a LEFT JOIN alert_deliveries d ON d.alert_id = a.id \
         WHERE $2::uuid IS NULL OR a.id < $2 \
         GROUP BY a.id ORDER BY a.id DESC LIMIT $1",
    )
    .bind(limit)
    .bind(before)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(AlertView::from).collect())
}

/// An `alerts` row with its deliveries aggregated as JSON.
#[derive(sqlx::FromRow)]
struct AlertRow {
    #[sqlx(flatten)]
    event: AlertEvent,
    #[sqlx(json)]
    deliveries: Vec<DeliveryView>,
}

impl From<AlertRow> for AlertView {
    fn from(AlertRow { event, deliveries }: AlertRow) -> Self {
        Self {
            id: event.id,
            dedup_key: event.dedup_key,
            action: event.action.as_str().to_owned(),
            event_type: event.event_type,
            severity: event.severity.as_str().to_owned(),
            summary: event.summary,
            details: event.details,
            created_at: event.created_at,
            deliveries,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_stored_delivery_status_or_action_is_an_error_not_a_default() {
        assert_eq!(
            DeliveryStatus::try_from("delivered".to_owned()),
            Ok(DeliveryStatus::Delivered)
        );
        assert!(DeliveryStatus::try_from("lost".to_owned()).is_err());
        let view = serde_json::json!({"sink": "s", "status": "lost", "attempts": 0,
            "last_status": null, "last_error": null, "next_attempt_at": null,
            "delivered_at": null});
        assert!(serde_json::from_value::<DeliveryView>(view).is_err());
        assert_eq!(
            Action::try_from("resolve".to_owned()).ok(),
            Some(Action::Resolve)
        );
        assert!(Action::try_from("snooze".to_owned()).is_err());
    }
}
