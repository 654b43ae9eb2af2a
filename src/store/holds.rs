//! Captures and voids of holds (README, "Holds, reversals and balance history"): each request
//! *claims* the settlement on its hold (`transfers.hold_action`) and enqueues the posting job
//! that carries it out, in one transaction; the posting engine then moves the money or
//! releases the reservation. The claim is a guarded UPDATE of a `held` row with no claim yet,
//! so when a capture, a void and expiry race for one hold, exactly one claims it and the others
//! are told `transfer_not_held`.

use backon::Retryable;
use rust_decimal::Decimal;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::transfers::AcceptError;
use crate::domain::{Amount, IdempotencyKey};
use crate::events::transfer::{TRANSFER_COLUMNS, TransferRow, TransferView, attach_flags};
use crate::queue::payloads::PostTransfers;
use crate::queue::{self, POST_TRANSFERS_QUEUE};
use crate::retry::{RetryClass, RetryPolicy, classify};

/// What a settlement request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// Move `amount` (all of the hold when `None`) and release the rest.
    Capture { amount: Option<Amount> },
    /// Release the reservation; no money moves.
    Void,
}

impl Settlement {
    pub fn action(self) -> &'static str {
        match self {
            Self::Capture { .. } => "capture",
            Self::Void => "void",
        }
    }

    fn amount(self) -> Option<Decimal> {
        match self {
            Self::Capture { amount } => amount.map(|a| a.value()),
            Self::Void => None,
        }
    }
}

/// A capture or void of the hold `transfer_id`, under an API key and idempotency key.
#[derive(Debug, Clone)]
pub struct SettleRequest {
    pub api_key_id: Uuid,
    pub idempotency_key: IdempotencyKey,
    pub transfer_id: Uuid,
    pub settlement: Settlement,
}

impl SettleRequest {
    /// Tells a replay (same request under the same key) from reuse of the key.
    fn fingerprint(&self) -> Vec<u8> {
        let canonical = serde_json::json!({
            "transfer_id": self.transfer_id,
            "action": self.settlement.action(),
            "amount": self.settlement.amount().map(|a| a.normalize().to_string()),
        });
        Sha256::digest(canonical.to_string().as_bytes()).to_vec()
    }
}

/// What became of one settlement request.
#[derive(Debug, Clone)]
pub enum SettleOutcome {
    /// Claimed, with its posting job: the hold as it now is (still `held`, its settlement set).
    Accepted(TransferView),
    /// The key was used before for this same request: the hold as it is now.
    Replayed(TransferView),
    /// The key was used before for another request; nothing was stored.
    KeyReused,
    /// No such transfer under this API key.
    NotFound,
    /// Not an open hold: why.
    NotHeld(String),
    /// A capture of more than the hold holds.
    ExceedsHold(String),
}

/// Commits a group of settlement requests in one transaction, with one posting job for those
/// claimed. Outcomes in the order given.
pub async fn settle(
    pool: &PgPool,
    requests: &[SettleRequest],
) -> Result<Vec<SettleOutcome>, AcceptError> {
    // Two groups claiming the same holds in opposite orders can deadlock (40P01): retried.
    (|| settle_once(pool, requests))
        .retry(RetryPolicy::SERIALIZATION.schedule())
        .sleep(tokio::time::sleep)
        .when(|e: &AcceptError| {
            let AcceptError::Database(db) = e;
            classify(db) == RetryClass::Serialization
        })
        .await
}

/// Where each request stands inside the group's transaction.
enum Step {
    Claimed,
    Replayed,
    Done(SettleOutcome),
}

async fn settle_once(
    pool: &PgPool,
    requests: &[SettleRequest],
) -> Result<Vec<SettleOutcome>, AcceptError> {
    let mut tx = pool.begin().await?;
    let mut steps = Vec::with_capacity(requests.len());
    let mut claimed = Vec::new();
    for request in requests {
        let step = settle_one(&mut tx, request).await?;
        if matches!(step, Step::Claimed) {
            claimed.push(request.transfer_id);
        }
        steps.push(step);
    }
    enqueue_posting(&mut tx, &claimed).await?;
    let ids: Vec<Uuid> = requests.iter().map(|r| r.transfer_id).collect();
    let views = read_views(&mut tx, &ids).await?;
    tx.commit().await?;
    Ok(steps
        .into_iter()
        .zip(requests)
        .map(|(step, request)| {
            let view = || views.get(&request.transfer_id).cloned();
            match step {
                Step::Done(outcome) => outcome,
                Step::Claimed => view().map_or(SettleOutcome::NotFound, SettleOutcome::Accepted),
                Step::Replayed => view().map_or(SettleOutcome::NotFound, SettleOutcome::Replayed),
            }
        })
        .collect())
}

async fn settle_one(conn: &mut PgConnection, request: &SettleRequest) -> Result<Step, sqlx::Error> {
    let fingerprint = request.fingerprint();
    // The key first: a concurrent request under the same key waits here for the first to
    // commit, then reads it as a replay.
    let recorded = sqlx::query(
        "INSERT INTO settlement_requests (api_key_id, idempotency_key, request_fingerprint, \
           transfer_id, action, amount) VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (api_key_id, idempotency_key) DO NOTHING",
    )
    .bind(request.api_key_id)
    .bind(request.idempotency_key.as_str())
    .bind(&fingerprint)
    .bind(request.transfer_id)
    .bind(request.settlement.action())
    .bind(request.settlement.amount())
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if recorded == 0 {
        let earlier: Option<Vec<u8>> = sqlx::query_scalar(
            "SELECT request_fingerprint FROM settlement_requests \
             WHERE api_key_id = $1 AND idempotency_key = $2",
        )
        .bind(request.api_key_id)
        .bind(request.idempotency_key.as_str())
        .fetch_optional(&mut *conn)
        .await?;
        return Ok(match earlier {
            Some(earlier) if earlier == fingerprint => Step::Replayed,
            _ => Step::Done(SettleOutcome::KeyReused),
        });
    }
    // An expired hold can no longer be captured (expiry voids it); it can still be voided.
    let claimed = sqlx::query(
        "UPDATE transfers SET hold_action = $3, capture_amount = $4, updated_at = now() \
         WHERE id = $1 AND api_key_id = $2 AND status = 'held' AND hold_action IS NULL \
           AND ($3 = 'void' OR hold_expires_at > now()) \
           AND ($4::numeric IS NULL OR $4 <= amount)",
    )
    .bind(request.transfer_id)
    .bind(request.api_key_id)
    .bind(request.settlement.action())
    .bind(request.settlement.amount())
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if claimed == 1 {
        return Ok(Step::Claimed);
    }
    // Refused: the key was not used after all (a refused request stores nothing).
    sqlx::query("DELETE FROM settlement_requests WHERE api_key_id = $1 AND idempotency_key = $2")
        .bind(request.api_key_id)
        .bind(request.idempotency_key.as_str())
        .execute(&mut *conn)
        .await?;
    Ok(Step::Done(refusal(conn, request).await?))
}

/// One `post_transfers` job for `transfer_ids` (none when empty), in the caller's transaction.
pub(crate) async fn enqueue_posting(
    conn: &mut PgConnection,
    transfer_ids: &[Uuid],
) -> Result<(), sqlx::Error> {
    let job = queue::insert_job_sql(
        POST_TRANSFERS_QUEUE,
        PostTransfers::SQL_FROM_ID_ROWS,
        "unnest($1::uuid[]) AS claimed(id)",
    );
    sqlx::query(sqlx::AssertSqlSafe(job))
        .bind(transfer_ids)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Why a claim matched no row.
async fn refusal(
    conn: &mut PgConnection,
    request: &SettleRequest,
) -> Result<SettleOutcome, sqlx::Error> {
    let row: Option<HoldState> = sqlx::query_as(
        "SELECT status, mode, amount, hold_action, hold_expires_at <= now() AS expired \
         FROM transfers WHERE id = $1 AND api_key_id = $2",
    )
    .bind(request.transfer_id)
    .bind(request.api_key_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(hold) = row else {
        return Ok(SettleOutcome::NotFound);
    };
    let id = request.transfer_id;
    Ok(if hold.mode != "hold" {
        SettleOutcome::NotHeld(format!("transfer {id} is not a hold (mode {})", hold.mode))
    } else if hold.status != "held" {
        SettleOutcome::NotHeld(format!("hold {id} is {}, not held", hold.status))
    } else if let Some(action) = hold.hold_action {
        SettleOutcome::NotHeld(format!("hold {id} is already being settled ({action})"))
    } else if let Some(amount) = request.settlement.amount().filter(|a| *a > hold.amount) {
        SettleOutcome::ExceedsHold(format!(
            "capture amount {amount} exceeds the {} held",
            hold.amount
        ))
    } else if hold.expired == Some(true) {
        SettleOutcome::NotHeld(format!("hold {id} has expired and is being voided"))
    } else {
        SettleOutcome::NotHeld(format!("hold {id} cannot be settled now"))
    })
}

#[derive(sqlx::FromRow)]
struct HoldState {
    status: String,
    mode: String,
    amount: Decimal,
    hold_action: Option<String>,
    expired: Option<bool>,
}

async fn read_views(
    conn: &mut PgConnection,
    ids: &[Uuid],
) -> Result<std::collections::HashMap<Uuid, TransferView>, sqlx::Error> {
    let rows = sqlx::query_as::<_, TransferRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {TRANSFER_COLUMNS} FROM transfers WHERE id = ANY($1)"
    )))
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    let mut views: Vec<TransferView> = rows.into_iter().map(TransferView::from).collect();
    attach_flags(&mut *conn, views.iter_mut()).await?;
    Ok(views.into_iter().map(|v| (v.id, v)).collect())
}
