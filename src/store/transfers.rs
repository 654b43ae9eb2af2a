//! Durable, idempotent intake of transfers: the transfer rows and their `post_transfers` job
//! commit in one transaction, so a `202` always means both are on disk.

use std::collections::HashMap;

use backon::Retryable;
use rust_decimal::Decimal;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::domain::{IdempotencyKey, LedgerName, NewTransfer};
pub use crate::events::transfer::{Review, TransferView};
use crate::events::transfer::{TRANSFER_COLUMNS, TransferRow, attach_flags, qualified_columns};
use crate::queue::payloads::PostTransfers;
use crate::queue::{self, POST_TRANSFERS_QUEUE};
use crate::retry::{RetryClass, RetryPolicy, classify};

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
}

impl AcceptError {
    pub(crate) fn retry_class(&self) -> RetryClass {
        match self {
            Self::Database(e) => classify(e),
        }
    }
}

/// A transfer submitted under an API key.
#[derive(Debug, Clone)]
pub struct Submission {
    pub api_key_id: Uuid,
    pub transfer: NewTransfer,
}

/// Stores `submissions` and enqueues one job for the new ones, all in one transaction.
/// Results are in the order given.
pub async fn accept(
    pool: &PgPool,
    submissions: &[Submission],
) -> Result<Vec<Acceptance>, AcceptError> {
    // Two batches inserting the same keys in opposite orders could deadlock (40P01); keys are
    // inserted in sorted order, and a deadlock that slips through is retried like one.
    (|| accept_once(pool, submissions))
        .retry(RetryPolicy::SERIALIZATION.schedule())
        .sleep(tokio::time::sleep)
        .when(|e: &AcceptError| e.retry_class() == RetryClass::Serialization)
        .await
}

async fn accept_once(
    pool: &PgPool,
    submissions: &[Submission],
) -> Result<Vec<Acceptance>, AcceptError> {
    let new_ids: Vec<Uuid> = submissions.iter().map(|_| Uuid::now_v7()).collect();
    let inserted = insert_new_with_job(pool, submissions, &new_ids).await?;
    let missing: Vec<(Uuid, &str)> = submissions
        .iter()
        .map(|s| (s.api_key_id, s.transfer.idempotency_key.as_str()))
        .filter(|(api_key, key)| !inserted.contains_key(&(*api_key, (*key).to_owned())))
        .collect();
    // Keys seen before: their transfers are committed (ON CONFLICT waited for any in-flight
    // insert of the same key) and never deleted, so reading them afterwards is exact.
    let existing = if missing.is_empty() {
        HashMap::new()
    } else {
        find_by_keys(&mut *pool.acquire().await?, &missing).await?
    };
    let results = submissions
        .iter()
        .zip(&new_ids)
        .map(|(submission, new_id)| {
            let identity = (
                submission.api_key_id,
                submission.transfer.idempotency_key.as_str().to_owned(),
            );
            match inserted.get(&identity).or_else(|| existing.get(&identity)) {
                Some(view) if view.id == *new_id => Acceptance::Accepted(view.clone()),
                Some(view) if view.fingerprint == submission.transfer.fingerprint() => {
                    Acceptance::Replayed(view.clone())
                }
                // Missing cannot happen (the row conflicted, so it exists), but if the row
                // vanished the safe answer is to store nothing for this item.
                _ => Acceptance::KeyReused,
            }
        })
        .collect();
    Ok(results)
}

/// Transfers keyed by their identity: (API key, idempotency key).
pub(super) type ByIdentity = HashMap<(Uuid, String), TransferView>;

/// Inserts the submissions whose keys are new and one `post_transfers` job listing exactly
/// those, in one statement: one round trip, and the rows and their job commit together.
async fn insert_new_with_job(
    pool: &PgPool,
    submissions: &[Submission],
    new_ids: &[Uuid],
) -> Result<ByIdentity, sqlx::Error> {
    let mut order: Vec<usize> = (0..submissions.len()).collect();
    order.sort_by(|a, b| {
        let (a, b) = (&submissions[*a], &submissions[*b]);
        (a.api_key_id, &a.transfer.idempotency_key)
            .cmp(&(b.api_key_id, &b.transfer.idempotency_key))
    });
    let column = |f: &dyn Fn(&NewTransfer) -> String| -> Vec<String> {
        order.iter().map(|i| f(&submissions[*i].transfer)).collect()
    };
    let ids: Vec<Uuid> = order.iter().map(|i| new_ids[*i]).collect();
    let api_keys: Vec<Uuid> = order.iter().map(|i| submissions[*i].api_key_id).collect();
    let transfers: Vec<&NewTransfer> = order.iter().map(|i| &submissions[*i].transfer).collect();
    let fingerprints: Vec<Vec<u8>> = transfers.iter().map(|t| t.fingerprint()).collect();
    let amounts: Vec<Decimal> = transfers.iter().map(|t| t.amount.value()).collect();
    let references: Vec<Option<String>> = transfers.iter().map(|t| t.reference.clone()).collect();
    let metadata: Vec<serde_json::Value> = transfers
        .iter()
        .map(|t| serde_json::Value::Object(t.metadata.clone()))
        .collect();
    // The payload is `PostTransfers` as serde writes it.
    let job = queue::insert_job_sql(
        POST_TRANSFERS_QUEUE,
        PostTransfers::SQL_FROM_ID_ROWS,
        "inserted",
    );
    let rows = sqlx::query_as::<_, KeyedTransferRow>(sqlx::AssertSqlSafe(format!(
        "WITH inserted AS ( \
           INSERT INTO transfers (id, api_key_id, idempotency_key, request_fingerprint, \
             from_account, to_account, amount, currency, reference, metadata, ledger, mode, \
             hold_expires_in_secs) \
           SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::bytea[], $5::text[], \
             $6::text[], $7::numeric[], $8::text[], $9::text[], $10::jsonb[], $11::text[], \
             $12::text[], $13::int4[]) \
           ON CONFLICT (api_key_id, idempotency_key) DO NOTHING \
           RETURNING api_key_id, {TRANSFER_COLUMNS} \
         ), job AS ({job}) \
         SELECT * FROM inserted"
    )))
    .bind(&ids)
    .bind(&api_keys)
    .bind(column(&|t| t.idempotency_key.as_str().to_owned()))
    .bind(&fingerprints)
    .bind(column(&|t| t.from_account.as_str().to_owned()))
    .bind(column(&|t| t.to_account.as_str().to_owned()))
    .bind(&amounts)
    .bind(column(&|t| t.amount.currency().code().to_owned()))
    .bind(&references)
    .bind(&metadata)
    .bind(column(&|t| t.ledger.as_str().to_owned()))
    .bind(column(&|t| t.mode.as_str().to_owned()))
    .bind(
        transfers
            .iter()
            .map(|t| t.mode.hold_expires_in_secs().map(|secs| secs as i32))
            .collect::<Vec<Option<i32>>>(),
    )
    .fetch_all(pool)
    .await?;
    Ok(by_identity(rows))
}

/// The transfers of these (API key, idempotency key) identities, with their flags; on the
/// caller's connection, so a caller inside a transaction reads what it has locked.
pub(super) async fn find_by_keys(
    conn: &mut PgConnection,
    identities: &[(Uuid, &str)],
) -> Result<ByIdentity, sqlx::Error> {
    if identities.is_empty() {
        return Ok(HashMap::new());
    }
    let (api_keys, keys): (Vec<Uuid>, Vec<&str>) = identities.iter().copied().unzip();
    let rows = sqlx::query_as::<_, KeyedTransferRow>(sqlx::AssertSqlSafe(format!(
        "SELECT t.api_key_id, {} FROM transfers t \
         JOIN unnest($1::uuid[], $2::text[]) AS k(api_key_id, idempotency_key) \
           ON t.api_key_id = k.api_key_id AND t.idempotency_key = k.idempotency_key",
        qualified_columns("t")
    )))
    .bind(&api_keys)
    .bind(&keys)
    .fetch_all(&mut *conn)
    .await?;
    let mut found = by_identity(rows);
    attach_flags(&mut *conn, found.values_mut()).await?;
    Ok(found)
}

/// Transfer rows read back, as the API shows them: with their `flags`.
pub async fn with_flags(
    pool: &PgPool,
    rows: impl IntoIterator<Item = TransferRow>,
) -> Result<Vec<TransferView>, sqlx::Error> {
    let mut views: Vec<TransferView> = rows.into_iter().map(TransferView::from).collect();
    attach_flags(pool, views.iter_mut()).await?;
    Ok(views)
}

fn by_identity(rows: Vec<KeyedTransferRow>) -> ByIdentity {
    rows.into_iter()
        .map(|row| {
            let view = TransferView::from(row.transfer);
            ((row.api_key_id, view.idempotency_key.clone()), view)
        })
        .collect()
}

/// A transfer by id, visible only to the API key that created it.
pub async fn get(
    pool: &PgPool,
    api_key_id: Uuid,
    id: Uuid,
) -> Result<Option<TransferView>, sqlx::Error> {
    let row = sqlx::query_as::<_, TransferRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {TRANSFER_COLUMNS} FROM transfers WHERE id = $1 AND api_key_id = $2"
    )))
    .bind(id)
    .bind(api_key_id)
    .fetch_optional(pool)
    .await?;
    Ok(with_flags(pool, row).await?.pop())
}

/// A transfer by id in `ledger` (in any ledger when `None`): what a reviewer, who did not
/// create it, may see of the transfers of its ledger.
pub async fn get_in_ledger(
    pool: &PgPool,
    id: Uuid,
    ledger: Option<&LedgerName>,
) -> Result<Option<TransferView>, sqlx::Error> {
    let row = sqlx::query_as::<_, TransferRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {TRANSFER_COLUMNS} FROM transfers WHERE id = $1 \
           AND ($2::text IS NULL OR ledger = $2)"
    )))
    .bind(id)
    .bind(ledger.map(LedgerName::as_str))
    .fetch_optional(pool)
    .await?;
    Ok(with_flags(pool, row).await?.pop())
}

/// A page of `ledger`'s transfers held for review, longest held first (they hold since
/// `updated_at`), after the transfer `after`: the review queue. Reads the partial index of
/// transfers in review.
pub async fn in_review(
    pool: &PgPool,
    ledger: &LedgerName,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<TransferView>, sqlx::Error> {
    let rows = sqlx::query_as::<_, TransferRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {TRANSFER_COLUMNS} FROM transfers \
         WHERE status = 'in_review' AND ledger = $1 \
           AND ($2::uuid IS NULL OR (updated_at, id) > \
             (SELECT updated_at, id FROM transfers WHERE id = $2)) \
         ORDER BY updated_at, id LIMIT $3"
    )))
    .bind(ledger.as_str())
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    with_flags(pool, rows).await
}

/// The currencies of the transfers `ids` of this API key (others are left out).
pub async fn currencies(
    pool: &PgPool,
    api_key_id: Uuid,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, String>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT id, trim(currency) FROM transfers WHERE id = ANY($1) AND api_key_id = $2",
    )
    .bind(ids)
    .bind(api_key_id)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().collect())
}

/// The transfer an API key created under `key`.
pub async fn get_by_key(
    pool: &PgPool,
    api_key_id: Uuid,
    key: &IdempotencyKey,
) -> Result<Option<TransferView>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    Ok(find_by_keys(&mut conn, &[(api_key_id, key.as_str())])
        .await?
        .remove(&(api_key_id, key.as_str().to_owned())))
}

/// A transfer row with the API key it belongs to: its identity is (API key, idempotency key).
#[derive(sqlx::FromRow)]
struct KeyedTransferRow {
    api_key_id: Uuid,
    #[sqlx(flatten)]
    transfer: TransferRow,
}
