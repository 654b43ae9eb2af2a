//! The transfers a `review` rule may hold (README, "Anomaly detection"): read before posting,
//! and moved to `in_review` when a review rule trips. A reviewer's decision is the intake's
//! (the store's `reviews` module).

use std::collections::HashSet;

use sqlx::{PgConnection, PgPool};
use tracing::warn;
use uuid::Uuid;

use super::rules::Candidate;
use crate::domain::{AccountId, AccountKey, Currency, LedgerName, TransferStatus};

/// A pending transfer as the review step reads it.
#[derive(sqlx::FromRow)]
struct UnreviewedRow {
    id: Uuid,
    ledger: String,
    from_account: String,
    amount: rust_decimal::Decimal,
    currency: String,
    accepted_at_ms: i64,
}

/// The transfers of `transfer_ids` still pending that no reviewer has decided on: an approved
/// transfer is not held again. "Pending" is spelled as the posting engine spells it
/// ([`TransferStatus::sql_is`]), so the lookup probes the primary key.
pub async fn unreviewed(
    pool: &PgPool,
    transfer_ids: &[Uuid],
) -> Result<Vec<Candidate>, sqlx::Error> {
    let rows: Vec<UnreviewedRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT id, ledger, from_account, amount, currency, \
           (extract(epoch FROM created_at) * 1000)::bigint AS accepted_at_ms FROM transfers \
         WHERE id = ANY($1) AND {} AND review IS NULL \
         ORDER BY created_at, id",
        TransferStatus::Pending.sql_is("status")
    )))
    .bind(transfer_ids)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|row| {
            let currency = Currency::parse(&row.currency)
                .inspect_err(|e| warn!(transfer_id = %row.id, error = %e, "not judged for review"))
                .ok()?;
            let ledger = LedgerName::from_trusted(row.ledger);
            Some(Candidate {
                transfer_id: row.id,
                account: AccountKey::new(ledger, AccountId::from_trusted(row.from_account)),
                amount: row.amount,
                currency,
                accepted_at_ms: row.accepted_at_ms,
            })
        })
        .collect())
}

/// Moves the transfers of `transfer_ids` still pending and never reviewed to `in_review`;
/// returns those it moved. Posting, which locks the same rows, either ran first (the transfer
/// is posted and not held) or finds it in review and passes it by.
pub async fn hold(
    tx: &mut PgConnection,
    transfer_ids: &[Uuid],
) -> Result<HashSet<Uuid>, sqlx::Error> {
    if transfer_ids.is_empty() {
        return Ok(HashSet::new());
    }
    let held: Vec<Uuid> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "UPDATE transfers SET status = 'in_review', updated_at = now() \
         WHERE id = ANY($1) AND {} AND review IS NULL RETURNING id",
        TransferStatus::Pending.sql_is("status")
    )))
    .bind(transfer_ids)
    .fetch_all(&mut *tx)
    .await?;
    Ok(held.into_iter().collect())
}
