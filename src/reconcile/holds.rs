//! The checks holds and reversals add (README, "Reconciliation"): every account's pending sums
//! against its open holds (`hold_drift`), and every reversed transfer against its reversals
//! (`over_reversed`). Holds held past expiry are listed by `checks::waiting`
//! (`expired_hold`).

use rust_decimal::Decimal;
use sqlx::PgConnection;
use uuid::Uuid;

use super::finding::{FindingKind, Observation};
use crate::domain::LedgerName;

/// An account whose `pending_debits` or `pending_credits` differ from the sums of the holds
/// open on it (status `held`, as source or destination).
#[derive(sqlx::FromRow)]
struct DriftRow {
    ledger: String,
    id: String,
    pending_debits: Decimal,
    pending_credits: Decimal,
    open_debits: Decimal,
    open_credits: Decimal,
}

/// Accounts of `ledger` (every ledger when `None`) whose reservations drifted from their open
/// holds. Reads the accounts once and the held holds through their partial index.
pub async fn hold_drift(
    conn: &mut PgConnection,
    ledger: Option<&LedgerName>,
) -> Result<Vec<Observation>, sqlx::Error> {
    let rows: Vec<DriftRow> = sqlx::query_as(
        "WITH open AS ( \
           SELECT ledger, from_account, to_account, amount FROM transfers \
           WHERE status = 'held' AND ($1::text IS NULL OR ledger = $1)), \
         debits AS (SELECT ledger, from_account AS id, sum(amount) AS total FROM open \
           GROUP BY 1, 2), \
         credits AS (SELECT ledger, to_account AS id, sum(amount) AS total FROM open \
           GROUP BY 1, 2) \
         SELECT a.ledger, a.id, a.pending_debits, a.pending_credits, \
           coalesce(d.total, 0) AS open_debits, coalesce(c.total, 0) AS open_credits \
         FROM accounts a \
           LEFT JOIN debits d ON d.ledger = a.ledger AND d.id = a.id \
           LEFT JOIN credits c ON c.ledger = a.ledger AND c.id = a.id \
         WHERE ($1::text IS NULL OR a.ledger = $1) \
           AND (a.pending_debits <> coalesce(d.total, 0) \
                OR a.pending_credits <> coalesce(c.total, 0))",
    )
    .bind(ledger.map(LedgerName::as_str))
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            Observation::about_account(
                FindingKind::HoldDrift,
                LedgerName::from_trusted(row.ledger),
                row.id,
                format!(
                    "pending_debits {} but open holds from it sum to {}; pending_credits {} \
                     but open holds to it sum to {}",
                    row.pending_debits, row.open_debits, row.pending_credits, row.open_credits
                ),
            )
        })
        .collect())
}

/// A reversed transfer whose reversals (those not failed) take back more than it moved, or
/// whose `reversed_amount` disagrees with them.
#[derive(sqlx::FromRow)]
struct ReversedRow {
    id: Uuid,
    ledger: String,
    moved: Decimal,
    reversed_amount: Decimal,
    reversals_sum: Decimal,
}

/// Transfers of `ledger` (every ledger when `None`) over-reversed. Reads the reversals through
/// their partial index: O(reversals), not O(transfers).
pub async fn over_reversed(
    conn: &mut PgConnection,
    ledger: Option<&LedgerName>,
) -> Result<Vec<Observation>, sqlx::Error> {
    let rows: Vec<ReversedRow> = sqlx::query_as(
        "WITH sums AS ( \
           SELECT reverses AS id, sum(amount) FILTER (WHERE status <> 'failed') AS total \
           FROM transfers WHERE reverses IS NOT NULL AND ($1::text IS NULL OR ledger = $1) \
           GROUP BY reverses) \
         SELECT t.id, t.ledger, coalesce(t.captured_amount, t.amount) AS moved, \
           t.reversed_amount, coalesce(s.total, 0) AS reversals_sum \
         FROM sums s JOIN transfers t ON t.id = s.id \
         WHERE coalesce(s.total, 0) > coalesce(t.captured_amount, t.amount) \
            OR coalesce(s.total, 0) <> t.reversed_amount",
    )
    .bind(ledger.map(LedgerName::as_str))
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            Observation::about_transfer(
                FindingKind::OverReversed,
                LedgerName::from_trusted(row.ledger),
                row.id,
                format!(
                    "moved {} but its reversals not failed sum to {} (reversed_amount {})",
                    row.moved, row.reversals_sum, row.reversed_amount
                ),
            )
        })
        .collect())
}
