//! The audit trail (README, "Ledgers and authorization"): one append-only `audit_events` row
//! per administrative act, written in the act's own transaction so an act and its record
//! commit together or not at all. The table refuses UPDATE, DELETE and TRUNCATE (trigger).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

use crate::domain::{LedgerName, stored_as_text};

/// What was done: a closed set, stored as text and read back strictly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum AuditAction {
    #[serde(rename = "api_key.created")]
    ApiKeyCreated,
    #[serde(rename = "api_key.revoked")]
    ApiKeyRevoked,
    #[serde(rename = "ledger.created")]
    LedgerCreated,
    #[serde(rename = "account.created")]
    AccountCreated,
    #[serde(rename = "account.frozen")]
    AccountFrozen,
    #[serde(rename = "account.unfrozen")]
    AccountUnfrozen,
    #[serde(rename = "account.closed")]
    AccountClosed,
    #[serde(rename = "reconciliation.started")]
    ReconciliationStarted,
    #[serde(rename = "transfer.approved")]
    TransferApproved,
    #[serde(rename = "transfer.rejected")]
    TransferRejected,
    #[serde(rename = "webhook_endpoint.created")]
    WebhookEndpointCreated,
    #[serde(rename = "webhook_endpoint.deleted")]
    WebhookEndpointDeleted,
    #[serde(rename = "webhook_endpoint.replayed")]
    WebhookEndpointReplayed,
    #[serde(rename = "job.retried")]
    JobRetried,
    #[serde(rename = "job.discarded")]
    JobDiscarded,
    #[serde(rename = "console.signed_in")]
    ConsoleSignedIn,
}

impl AuditAction {
    pub const ALL: [AuditAction; 16] = [
        Self::ApiKeyCreated,
        Self::ApiKeyRevoked,
        Self::LedgerCreated,
        Self::AccountCreated,
        Self::AccountFrozen,
        Self::AccountUnfrozen,
        Self::AccountClosed,
        Self::ReconciliationStarted,
        Self::TransferApproved,
        Self::TransferRejected,
        Self::WebhookEndpointCreated,
        Self::WebhookEndpointDeleted,
        Self::WebhookEndpointReplayed,
        Self::JobRetried,
        Self::JobDiscarded,
        Self::ConsoleSignedIn,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ApiKeyCreated => "api_key.created",
            Self::ApiKeyRevoked => "api_key.revoked",
            Self::LedgerCreated => "ledger.created",
            Self::AccountCreated => "account.created",
            Self::AccountFrozen => "account.frozen",
            Self::AccountUnfrozen => "account.unfrozen",
            Self::AccountClosed => "account.closed",
            Self::ReconciliationStarted => "reconciliation.started",
            Self::TransferApproved => "transfer.approved",
            Self::TransferRejected => "transfer.rejected",
            Self::WebhookEndpointCreated => "webhook_endpoint.created",
            Self::WebhookEndpointDeleted => "webhook_endpoint.deleted",
            Self::WebhookEndpointReplayed => "webhook_endpoint.replayed",
            Self::JobRetried => "job.retried",
            Self::JobDiscarded => "job.discarded",
            Self::ConsoleSignedIn => "console.signed_in",
        }
    }
}

stored_as_text!(AuditAction, "audit action", AuditAction::ALL);

/// `audit_events.target` values: what was acted on, as `<kind>:<id>`.
pub mod target {
    use uuid::Uuid;

    use crate::domain::LedgerName;

    pub fn api_key(id: Uuid) -> String {
        format!("api_key:{id}")
    }

    pub fn ledger(name: &LedgerName) -> String {
        format!("ledger:{name}")
    }

    /// An account; its ledger is the event's `ledger`.
    pub fn account(id: &str) -> String {
        format!("account:{id}")
    }

    pub fn reconciliation(id: Uuid) -> String {
        format!("reconciliation:{id}")
    }

    pub fn transfer(id: Uuid) -> String {
        format!("transfer:{id}")
    }

    pub fn webhook_endpoint(id: Uuid) -> String {
        format!("webhook_endpoint:{id}")
    }

    /// An apalis job, by its id.
    pub fn job(id: &str) -> String {
        format!("job:{id}")
    }
}

/// Who acted: the API key of the request (and the request's id), or an operator on the host
/// through the CLI (both `None`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Actor {
    pub key_id: Option<Uuid>,
    pub request_id: Option<String>,
}

impl Actor {
    /// An operator acting through the CLI: no key, no request.
    pub fn operator() -> Self {
        Self::default()
    }

    /// The event of `action` on `target` done by this actor.
    pub fn event(
        &self,
        action: AuditAction,
        ledger: Option<&LedgerName>,
        target: String,
        detail: serde_json::Value,
    ) -> AuditEvent {
        AuditEvent {
            actor_key_id: self.key_id,
            action,
            ledger: ledger.cloned(),
            target,
            request_id: self.request_id.clone(),
            detail,
        }
    }
}

/// One administrative act, as recorded. `detail` must never hold a secret.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    /// `None` when an operator acted through the CLI.
    pub actor_key_id: Option<Uuid>,
    pub action: AuditAction,
    pub ledger: Option<LedgerName>,
    pub target: String,
    pub request_id: Option<String>,
    pub detail: serde_json::Value,
}

/// Appends `event`; pass the act's transaction so both commit together. Returns the event's id.
pub async fn record<'e, E: PgExecutor<'e>>(
    executor: E,
    event: &AuditEvent,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO audit_events (actor_key_id, action, ledger, target, request_id, detail) \
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
    )
    .bind(event.actor_key_id)
    .bind(event.action.as_str())
    .bind(event.ledger.as_ref().map(LedgerName::as_str))
    .bind(&event.target)
    .bind(event.request_id.as_deref())
    .bind(&event.detail)
    .fetch_one(executor)
    .await
}

/// An audit event as the API shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[schema(as = AuditEvent)]
pub struct AuditEventView {
    /// Increases with every event; pass the last one seen as `after` for the next page.
    #[schema(minimum = 1)]
    pub id: i64,
    pub at: DateTime<Utc>,
    /// The API key that acted; `null` when an operator acted through the CLI.
    pub actor_key_id: Option<Uuid>,
    #[sqlx(try_from = "String")]
    pub action: AuditAction,
    /// The ledger acted in; `null` for global acts (an admin key, reconciliation).
    pub ledger: Option<String>,
    /// What was acted on: `api_key:<id>`, `ledger:<name>`, `account:<id>`,
    /// `reconciliation:<id>`.
    pub target: String,
    /// The `X-Request-Id` of the request that acted; `null` for the CLI.
    pub request_id: Option<String>,
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

/// Events with an id above `after`, oldest first (README, "Ledgers and authorization").
/// Which audit events to list: after an event id, of one ledger, of one action.
#[derive(Debug, Default)]
pub struct AuditFilter {
    pub after: Option<i64>,
    pub ledger: Option<LedgerName>,
    pub action: Option<AuditAction>,
}

pub async fn list(
    pool: &PgPool,
    filter: &AuditFilter,
    limit: i64,
) -> Result<Vec<AuditEventView>, sqlx::Error> {
    sqlx::query_as::<_, AuditEventView>(
        "SELECT id, at, actor_key_id, action, ledger, target, request_id, detail \
         FROM audit_events \
         WHERE id > $1 AND ($3::text IS NULL OR ledger = $3) AND ($4::text IS NULL OR action = $4) \
         ORDER BY id LIMIT $2",
    )
    .bind(filter.after.unwrap_or(0))
    .bind(limit)
    .bind(filter.ledger.as_ref().map(LedgerName::as_str))
    .bind(filter.action.map(AuditAction::as_str))
    .fetch_all(pool)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_read_back_strictly_and_serialize_as_stored() {
        for action in AuditAction::ALL {
            assert_eq!(AuditAction::parse_known(action.as_str()), Ok(action));
            assert_eq!(
                serde_json::to_value(action).expect("serializes"),
                serde_json::Value::String(action.as_str().to_owned())
            );
        }
        assert!(AuditAction::parse_known("api_key.deleted").is_err());
    }
}
