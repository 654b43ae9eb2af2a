//! Ledgers (README, "Ledgers and authorization"): created by an admin key or the CLI, never
//! renamed or deleted (triggers), each creation recorded in the audit trail in its transaction.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};

use super::audit::{self, Actor, AuditAction};
use crate::domain::LedgerName;

/// A ledger as the API shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[schema(as = Ledger)]
pub struct LedgerView {
    #[schema(pattern = "^[a-z0-9_-]{1,64}$", example = "shop-eu")]
    pub name: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum CreateLedgerError {
    #[error("ledger {0} already exists")]
    Exists(LedgerName),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Creates `name`; an existing ledger is [`CreateLedgerError::Exists`] and changes nothing.
pub async fn create(
    pool: &PgPool,
    name: &LedgerName,
    actor: &Actor,
) -> Result<LedgerView, CreateLedgerError> {
    let mut tx = pool.begin().await?;
    let created = insert(&mut tx, name, actor)
        .await?
        .ok_or_else(|| CreateLedgerError::Exists(name.clone()))?;
    tx.commit().await?;
    Ok(created)
}

/// Creates `name` unless it exists, in the caller's transaction; whether it was created.
pub async fn ensure(
    conn: &mut PgConnection,
    name: &LedgerName,
    actor: &Actor,
) -> Result<bool, sqlx::Error> {
    Ok(insert(conn, name, actor).await?.is_some())
}

/// Inserts the ledger and its `ledger.created` event; `None` (and no event) if it exists.
async fn insert(
    conn: &mut PgConnection,
    name: &LedgerName,
    actor: &Actor,
) -> Result<Option<LedgerView>, sqlx::Error> {
    let created = sqlx::query_as::<_, LedgerView>(
        "INSERT INTO ledgers (name) VALUES ($1) ON CONFLICT (name) DO NOTHING \
         RETURNING name, created_at",
    )
    .bind(name.as_str())
    .fetch_optional(&mut *conn)
    .await?;
    if created.is_some() {
        let event = actor.event(
            AuditAction::LedgerCreated,
            Some(name),
            audit::target::ledger(name),
            serde_json::json!({}),
        );
        audit::record(&mut *conn, &event).await?;
    }
    Ok(created)
}

/// Ledgers by name, after `after` (the last name of the previous page).
pub async fn list(
    pool: &PgPool,
    limit: i64,
    after: Option<&LedgerName>,
) -> Result<Vec<LedgerView>, sqlx::Error> {
    sqlx::query_as::<_, LedgerView>(
        "SELECT name, created_at FROM ledgers WHERE $1::text IS NULL OR name > $1 \
         ORDER BY name LIMIT $2",
    )
    .bind(after.map(LedgerName::as_str))
    .bind(limit)
    .fetch_all(pool)
    .await
}
