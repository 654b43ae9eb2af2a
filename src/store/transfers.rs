//! Durable, idempotent intake of transfers: the transfer rows and their `post_transfers` job
//! commit in one transaction, so a `202` always means both are on disk.

use std::collections::HashMap;

use backon::Retryable;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use super::accounts::format_amount;
use crate::domain::{IdempotencyKey, NewTransfer};
use crate::jobs::post_transfers::PostTransfers;
use crate::ledger::retry::{RetryClass, classify, serialization_backoff};
use crate::queue::{self, EnqueueError, POST_TRANSFERS_QUEUE};

/// A transfer as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct TransferView {
    pub id: Uuid,
    pub idempotency_key: String,
    pub status: String,
    pub from_account: String,
    pub to_account: String,
    pub amount: String,
    pub currency: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    pub metadata: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_code: Option<String>,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub posted_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_at: Option<DateTime<Utc>>,
    #[serde(skip)]
    fingerprint: Vec<u8>,
}

/// What happened to one submitted transfer.
#[derive(Debug, Clone)]
pub enum Acceptance {
    /// New: stored with its job, now pending.
    Accepted(TransferView),
    /// The key was seen before with the same request: here is that transfer as it is now.
    Replayed(TransferView),
    /// The key was seen before with a different request; nothing was stored.
    KeyReused,
}

#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Enqueue(#[from] EnqueueError),
}

impl AcceptError {
    fn retry_class(&self) -> RetryClass {
        match self {
            Self::Database(e) => classify(e),
            Self::Enqueue(EnqueueError::Database(apalis_postgres::Error::Database(e))) => {
                classify(e)
            }
            Self::Enqueue(_) => RetryClass::Unknown,
        }
    }
}

const TRANSFER_COLUMNS: &str = "id, idempotency_key, request_fingerprint, status, from_account, \
    to_account, amount, currency, reference, metadata, failure_code, attempts, created_at, \
    updated_at, posted_at, failed_at";

/// Stores `transfers` for `api_key_id` and enqueues one job for the new ones, all in one
/// transaction. Results are in the order given.
pub async fn accept(
    pool: &PgPool,
    api_key_id: Uuid,
    transfers: &[NewTransfer],
) -> Result<Vec<Acceptance>, AcceptError> {
    // Two batches inserting the same keys in opposite orders could deadlock (40P01); keys are
    // inserted in sorted order, and a deadlock that slips through is retried like one.
    (|| accept_once(pool, api_key_id, transfers))
        .retry(serialization_backoff())
        .sleep(tokio::time::sleep)
        .when(|e: &AcceptError| e.retry_class() == RetryClass::Serialization)
        .await
}

async fn accept_once(
    pool: &PgPool,
    api_key_id: Uuid,
    transfers: &[NewTransfer],
) -> Result<Vec<Acceptance>, AcceptError> {
    let mut tx = pool.begin().await?;
    let new_ids: Vec<Uuid> = transfers.iter().map(|_| Uuid::now_v7()).collect();
    let inserted = insert_new(&mut tx, api_key_id, transfers, &new_ids).await?;
    let missing: Vec<&str> = transfers
        .iter()
        .map(|t| t.idempotency_key.as_str())
        .filter(|key| !inserted.contains_key(*key))
        .collect();
    let existing = find_by_keys(&mut tx, api_key_id, &missing).await?;
    let mut accepted_ids = Vec::new();
    let results = transfers
        .iter()
        .zip(&new_ids)
        .map(|(transfer, new_id)| {
            let key = transfer.idempotency_key.as_str();
            match inserted.get(key).or_else(|| existing.get(key)) {
                Some(view) if view.id == *new_id => {
                    accepted_ids.push(view.id);
                    Acceptance::Accepted(view.clone())
                }
                Some(view) if view.fingerprint == transfer.fingerprint() => {
                    Acceptance::Replayed(view.clone())
                }
                // Missing cannot happen (the row conflicted, so it exists), but if the row
                // vanished the safe answer is to store nothing for this item.
                _ => Acceptance::KeyReused,
            }
        })
        .collect();
    if !accepted_ids.is_empty() {
        let job = PostTransfers {
            transfer_ids: accepted_ids,
        };
        queue::enqueue(&mut tx, POST_TRANSFERS_QUEUE, &job, None).await?;
    }
    tx.commit().await?;
    Ok(results)
}

async fn insert_new(
    conn: &mut PgConnection,
    api_key_id: Uuid,
    transfers: &[NewTransfer],
    new_ids: &[Uuid],
) -> Result<HashMap<String, TransferView>, sqlx::Error> {
    let mut order: Vec<usize> = (0..transfers.len()).collect();
    order.sort_by(|a, b| {
        transfers[*a]
            .idempotency_key
            .cmp(&transfers[*b].idempotency_key)
    });
    let pick = |f: &dyn Fn(&NewTransfer) -> String| -> Vec<String> {
        order.iter().map(|i| f(&transfers[*i])).collect()
    };
    let ids: Vec<Uuid> = order.iter().map(|i| new_ids[*i]).collect();
    let fingerprints: Vec<Vec<u8>> = order.iter().map(|i| transfers[*i].fingerprint()).collect();
    let amounts: Vec<Decimal> = order.iter().map(|i| transfers[*i].amount.value()).collect();
    let references: Vec<Option<String>> = order
        .iter()
        .map(|i| transfers[*i].reference.clone())
        .collect();
    let metadata: Vec<serde_json::Value> = order
        .iter()
        .map(|i| serde_json::Value::Object(transfers[*i].metadata.clone()))
        .collect();
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO transfers (id, api_key_id, idempotency_key, request_fingerprint, \
           from_account, to_account, amount, currency, reference, metadata) \
         SELECT u.id, $1, u.key, u.fp, u.from_account, u.to_account, u.amount, u.currency, \
           u.reference, u.metadata \
         FROM unnest($2::uuid[], $3::text[], $4::bytea[], $5::text[], $6::text[], \
           $7::numeric[], $8::text[], $9::text[], $10::jsonb[]) \
           AS u(id, key, fp, from_account, to_account, amount, currency, reference, metadata) \
         ON CONFLICT (api_key_id, idempotency_key) DO NOTHING \
         RETURNING {TRANSFER_COLUMNS}"
    )))
    .bind(api_key_id)
    .bind(&ids)
    .bind(pick(&|t| t.idempotency_key.as_str().to_owned()))
    .bind(&fingerprints)
    .bind(pick(&|t| t.from_account.as_str().to_owned()))
    .bind(pick(&|t| t.to_account.as_str().to_owned()))
    .bind(&amounts)
    .bind(pick(&|t| t.amount.currency().code().to_owned()))
    .bind(&references)
    .bind(&metadata)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|row| transfer_view(row).map(|v| (v.idempotency_key.clone(), v)))
        .collect()
}

async fn find_by_keys(
    conn: &mut PgConnection,
    api_key_id: Uuid,
    keys: &[&str],
) -> Result<HashMap<String, TransferView>, sqlx::Error> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {TRANSFER_COLUMNS} FROM transfers \
         WHERE api_key_id = $1 AND idempotency_key = ANY($2)"
    )))
    .bind(api_key_id)
    .bind(keys)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|row| transfer_view(row).map(|v| (v.idempotency_key.clone(), v)))
        .collect()
}

/// A transfer by id, visible only to the API key that created it.
pub async fn get(
    pool: &PgPool,
    api_key_id: Uuid,
    id: Uuid,
) -> Result<Option<TransferView>, sqlx::Error> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {TRANSFER_COLUMNS} FROM transfers WHERE id = $1 AND api_key_id = $2"
    )))
    .bind(id)
    .bind(api_key_id)
    .fetch_optional(pool)
    .await?;
    row.as_ref().map(transfer_view).transpose()
}

/// The transfer an API key created under `key`.
pub async fn get_by_key(
    pool: &PgPool,
    api_key_id: Uuid,
    key: &IdempotencyKey,
) -> Result<Option<TransferView>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    Ok(find_by_keys(&mut conn, api_key_id, &[key.as_str()])
        .await?
        .remove(key.as_str()))
}

fn transfer_view(row: &PgRow) -> Result<TransferView, sqlx::Error> {
    let currency: String = row.try_get("currency")?;
    let amount: Decimal = row.try_get("amount")?;
    Ok(TransferView {
        id: row.try_get("id")?,
        idempotency_key: row.try_get("idempotency_key")?,
        status: row.try_get("status")?,
        from_account: row.try_get("from_account")?,
        to_account: row.try_get("to_account")?,
        amount: format_amount(&currency, amount),
        currency: currency.trim().to_owned(),
        reference: row.try_get("reference")?,
        metadata: row.try_get("metadata")?,
        failure_code: row.try_get("failure_code")?,
        attempts: row.try_get("attempts")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        posted_at: row.try_get("posted_at")?,
        failed_at: row.try_get("failed_at")?,
        fingerprint: row.try_get("request_fingerprint")?,
    })
}
