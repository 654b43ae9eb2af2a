//! A reviewer's decision on a transfer held for review (README, "Anomaly detection"):
//! approve → back to `pending` with a new posting job; reject → `failed`
//! `rejected_in_review`. Each decision commits with its audit event (and the job), and is
//! idempotent: deciding again the same way returns the transfer as it is now.

use sqlx::PgPool;
use uuid::Uuid;

use super::audit::{self, Actor, AuditAction};
use super::transfers::{self, TransferView};
use crate::domain::{LedgerName, ReviewDecision, TransferStatus};
use crate::queue::payloads::PostTransfers;
use crate::queue::{self, EnqueueError, POST_TRANSFERS_QUEUE};

#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// No such transfer in the reviewer's ledger.
    #[error("transfer not found")]
    NotFound,
    /// Not waiting for review, and not decided this way before (e.g. approving a rejected
    /// transfer, or one never held).
    #[error("transfer is {}, not in review", .0.as_str())]
    NotInReview(TransferStatus),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Enqueue(#[from] EnqueueError),
}

/// Approves or rejects transfer `id` of `ledger` (any ledger when `None`: an admin key).
pub async fn decide(
    pool: &PgPool,
    id: Uuid,
    ledger: Option<&LedgerName>,
    decision: ReviewDecision,
    actor: &Actor,
) -> Result<TransferView, ReviewError> {
    let mut tx = pool.begin().await?;
    // A rejection writes its `transfer.failed` event; the event lock comes before the row's.
    crate::events::lock_sequence(&mut tx).await?;
    // The row lock orders two reviewers, and a reviewer and the posting step that holds it.
    let current: Option<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT ledger, status, review FROM transfers \
         WHERE id = $1 AND ($2::text IS NULL OR ledger = $2) FOR UPDATE",
    )
    .bind(id)
    .bind(ledger.map(LedgerName::as_str))
    .fetch_optional(&mut *tx)
    .await?;
    let (transfer_ledger, status, review) = current.ok_or(ReviewError::NotFound)?;
    let status = TransferStatus::try_from(status).map_err(|e| sqlx::Error::Decode(e.into()))?;
    if review.as_deref() == Some(decision.as_str()) {
        tx.rollback().await?;
        return view(pool, id, ledger).await;
    }
    if status != TransferStatus::InReview {
        return Err(ReviewError::NotInReview(status));
    }
    let (update, action) = match decision {
        ReviewDecision::Approved => (
            "UPDATE transfers SET status = 'pending', review = 'approved', reviewed_at = now(), \
               reviewed_by = $2, updated_at = now() WHERE id = $1",
            AuditAction::TransferApproved,
        ),
        ReviewDecision::Rejected => (
            "UPDATE transfers SET status = 'failed', failure_code = 'rejected_in_review', \
               failed_at = now(), review = 'rejected', reviewed_at = now(), reviewed_by = $2, \
               updated_at = now() WHERE id = $1",
            AuditAction::TransferRejected,
        ),
    };
    sqlx::query(update)
        .bind(id)
        .bind(actor.key_id)
        .execute(&mut *tx)
        .await?;
    match decision {
        ReviewDecision::Approved => {
            let job = PostTransfers {
                transfer_ids: vec![id],
            };
            queue::enqueue(&mut tx, POST_TRANSFERS_QUEUE, &job, None).await?;
        }
        ReviewDecision::Rejected => {
            crate::events::transfer::record_changes(&mut tx, &[id]).await?;
        }
    }
    let ledger_name = LedgerName::from_trusted(transfer_ledger);
    let event = actor.event(
        action,
        Some(&ledger_name),
        audit::target::transfer(id),
        serde_json::json!({"from": status.as_str(), "decision": decision.as_str()}),
    );
    audit::record(&mut *tx, &event).await?;
    tx.commit().await?;
    metrics::counter!("ferry_reviews_total", "decision" => decision.as_str()).increment(1);
    view(pool, id, ledger).await
}

async fn view(
    pool: &PgPool,
    id: Uuid,
    ledger: Option<&LedgerName>,
) -> Result<TransferView, ReviewError> {
    transfers::get_in_ledger(pool, id, ledger)
        .await?
        .ok_or(ReviewError::NotFound)
}
