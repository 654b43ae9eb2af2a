//! Reversals (README, "Holds, reversals and balance history"): a new transfer the other way,
//! linked to the original by `reverses`, accepted with its posting job like any transfer.
//!
//! The original's row is locked first, so reversals of one transfer queue; each reserves its
//! amount on the original (`reversed_amount`, by a trigger in the same statement that inserts
//! it) and a CHECK refuses the one that would take back more than the original moved. A
//! reversal that later fails gives its share back (a trigger too), so the database holds the
//! rule however many requests race.

use backon::Retryable;
use rust_decimal::Decimal;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::transfers::{AcceptError, Acceptance, find_by_keys};
use crate::domain::{Amount, IdempotencyKey};
use crate::events::transfer::{TRANSFER_COLUMNS, TransferRow, TransferView, format_amount};
use crate::queue::payloads::PostTransfers;
use crate::queue::{self, POST_TRANSFERS_QUEUE};
use crate::retry::{RetryClass, RetryPolicy};

/// A reversal of `original` under an API key and idempotency key.
#[derive(Debug, Clone)]
pub struct ReverseRequest {
    pub api_key_id: Uuid,
    pub idempotency_key: IdempotencyKey,
    pub original: Uuid,
    /// How much to take back; all that earlier reversals left when `None`.
    pub amount: Option<Amount>,
    pub reference: Option<String>,
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

impl ReverseRequest {
    fn fingerprint(&self) -> Vec<u8> {
        let canonical = serde_json::json!({
            "reverses": self.original,
            "amount": self.amount.map(|a| a.value().normalize().to_string()),
            "reference": self.reference,
            "metadata": self.metadata,
        });
        Sha256::digest(canonical.to_string().as_bytes()).to_vec()
    }
}

/// What became of a reversal request.
#[derive(Debug, Clone)]
pub enum ReverseOutcome {
    /// Accepted, replayed, or the key reused (as for a transfer).
    Transfer(Box<Acceptance>),
    /// No such transfer under this API key.
    NotFound,
    /// The original did not move money, or has nothing (or not that much) left to reverse.
    NotReversible(String),
}

pub async fn reverse(
    pool: &PgPool,
    request: &ReverseRequest,
) -> Result<ReverseOutcome, AcceptError> {
    (|| reverse_once(pool, request))
        .retry(RetryPolicy::SERIALIZATION.schedule())
        .sleep(tokio::time::sleep)
        .when(|e: &AcceptError| e.retry_class() == RetryClass::Serialization)
        .await
}

/// The original as a reversal needs it.
#[derive(sqlx::FromRow)]
struct Original {
    ledger: String,
    status: String,
    from_account: String,
    to_account: String,
    currency: String,
    /// What it moved: the captured amount of a captured hold.
    moved: Decimal,
    reversed_amount: Decimal,
}

async fn reverse_once(
    pool: &PgPool,
    request: &ReverseRequest,
) -> Result<ReverseOutcome, AcceptError> {
    let mut tx = pool.begin().await?;
    let original: Option<Original> = sqlx::query_as(
        "SELECT ledger, status, from_account, to_account, currency, \
           coalesce(captured_amount, amount) AS moved, reversed_amount \
         FROM transfers WHERE id = $1 AND api_key_id = $2 FOR UPDATE",
    )
    .bind(request.original)
    .bind(request.api_key_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(original) = original else {
        return Ok(ReverseOutcome::NotFound);
    };
    let fingerprint = request.fingerprint();
    // After the lock: a concurrent request under the same key for this original has committed.
    if let Some(view) = find_by_key(&mut tx, request).await? {
        return Ok(ReverseOutcome::Transfer(Box::new(
            if view.fingerprint == fingerprint {
                Acceptance::Replayed(view)
            } else {
                Acceptance::KeyReused
            },
        )));
    }
    let id = request.original;
    if original.status != "posted" {
        return Ok(ReverseOutcome::NotReversible(format!(
            "transfer {id} is {}: only a posted transfer moved money to give back",
            original.status
        )));
    }
    let left = original.moved - original.reversed_amount;
    let amount = request.amount.map_or(left, |a| a.value());
    let shown = |value| format_amount(&original.currency, value);
    if left <= Decimal::ZERO {
        return Ok(ReverseOutcome::NotReversible(format!(
            "transfer {id} is already reversed in full"
        )));
    }
    if amount > left {
        return Ok(ReverseOutcome::NotReversible(format!(
            "reversing {} would take back more than transfer {id} moved: {} left to reverse",
            shown(amount),
            shown(left)
        )));
    }
    let job = queue::insert_job_sql(
        POST_TRANSFERS_QUEUE,
        PostTransfers::SQL_FROM_ID_ROWS,
        "inserted",
    );
    let inserted: Option<TransferRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "WITH inserted AS ( \
           INSERT INTO transfers (id, api_key_id, idempotency_key, request_fingerprint, \
             from_account, to_account, amount, currency, reference, metadata, ledger, reverses) \
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
           ON CONFLICT (api_key_id, idempotency_key) DO NOTHING \
           RETURNING {TRANSFER_COLUMNS}), \
         job AS ({job}) \
         SELECT * FROM inserted"
    )))
    .bind(Uuid::now_v7())
    .bind(request.api_key_id)
    .bind(request.idempotency_key.as_str())
    .bind(&fingerprint)
    .bind(&original.to_account)
    .bind(&original.from_account)
    .bind(amount)
    .bind(original.currency.trim())
    .bind(&request.reference)
    .bind(serde_json::Value::Object(request.metadata.clone()))
    .bind(&original.ledger)
    .bind(request.original)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = inserted else {
        // The key was taken meanwhile by a request for another transfer (the insert waited for
        // it to commit): answer from it. Nothing of this request is committed.
        let view = find_by_key(&mut tx, request).await?;
        return Ok(ReverseOutcome::Transfer(Box::new(match view {
            Some(view) if view.fingerprint == fingerprint => Acceptance::Replayed(view),
            _ => Acceptance::KeyReused,
        })));
    };
    tx.commit().await?;
    metrics::counter!("ferry_reversals_accepted_total").increment(1);
    Ok(ReverseOutcome::Transfer(Box::new(Acceptance::Accepted(
        TransferView::from(row),
    ))))
}

/// The transfer already created under the request's key, read in the caller's transaction.
async fn find_by_key(
    conn: &mut PgConnection,
    request: &ReverseRequest,
) -> Result<Option<TransferView>, sqlx::Error> {
    let identity = (request.api_key_id, request.idempotency_key.as_str());
    Ok(find_by_keys(conn, &[identity])
        .await?
        .remove(&(identity.0, identity.1.to_owned())))
}
