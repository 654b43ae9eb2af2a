//! The reconciliation checks (README, "Reconciliation"), each one set-based SQL inside the run's snapshot.
//!
//! Transfer-level checks cost O(window): they look at transfers whose last change falls in
//! the window, plus the subjects of findings still open (so an open finding is resolved only
//! when its problem is really gone). The balance check costs O(accounts + new entries):
//! per-account sums of entries are kept in `reconciliation_checkpoints` and each run folds in
//! only the entries added since the last one. Entries are append-only (a trigger refuses
//! UPDATE and DELETE), and posting transactions commit one at a time behind
//! `ledger_posting_gate`, so the entries a snapshot sees are exactly those with
//! `id <= max(id)`; a full run (daily, or on demand) rebuilds the sums from scratch.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::PgConnection;
use sqlx::error::UnexpectedNullError;
use uuid::Uuid;

use super::finding::{FindingKind, Observation};
use crate::domain::TransferStatus;
use crate::domain::transfer::UnknownCode;
use crate::queue::table;

/// A row of [`transfers`]: a transfer with a problem, or (all but `checked_count` NULL) the
/// one summary row. The status reads back strictly: an unknown one is an error.
#[derive(sqlx::FromRow)]
struct TransferCheckRow {
    id: Option<Uuid>,
    #[sqlx(try_from = "Option<String>")]
    status: NullableStatus,
    entries: Option<i64>,
    debits: Option<i64>,
    credits: Option<i64>,
    mismatched: Option<i64>,
    checked_count: i64,
}

/// The `status` column of [`TransferCheckRow`], NULL only in the summary row.
struct NullableStatus(Option<TransferStatus>);

impl TryFrom<Option<String>> for NullableStatus {
    type Error = UnknownCode;
    fn try_from(status: Option<String>) -> Result<Self, Self::Error> {
        status.map(TransferStatus::try_from).transpose().map(Self)
    }
}

/// A column that is NULL only in a summary row, read from a row that is not one: NULL is the
/// same error as decoding NULL into a non-null type.
fn present<T>(value: Option<T>, column: &str) -> Result<T, sqlx::Error> {
    value.ok_or_else(|| sqlx::Error::ColumnDecode {
        index: column.to_owned(),
        source: Box::new(UnexpectedNullError),
    })
}

/// Transfer-level problems among transfers changed in `[from, to)` or listed in `recheck`.
/// Returns the observations and how many transfers were looked at.
pub async fn transfers(
    conn: &mut PgConnection,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    recheck: &[Uuid],
) -> Result<(Vec<Observation>, i64), sqlx::Error> {
    let rows = sqlx::query_as::<_, TransferCheckRow>(
        "WITH scope AS MATERIALIZED ( \
           SELECT id, status, amount, currency, from_account, to_account FROM transfers \
           WHERE (updated_at >= $1 AND updated_at < $2) OR id = ANY($3)), \
         checked AS ( \
           SELECT s.id, s.status, \
             count(e.id) AS entries, \
             count(e.id) FILTER (WHERE e.side = 'debit') AS debits, \
             count(e.id) FILTER (WHERE e.side = 'credit') AS credits, \
             count(e.id) FILTER (WHERE \
               (e.side = 'debit' AND (e.account_id <> s.from_account OR e.amount <> -s.amount)) \
               OR (e.side = 'credit' AND (e.account_id <> s.to_account OR e.amount <> s.amount)) \
               OR e.currency <> s.currency) AS mismatched \
           FROM scope s LEFT JOIN entries e ON e.transfer_id = s.id \
           GROUP BY s.id, s.status) \
         SELECT id, status, entries, debits, credits, mismatched, \
           (SELECT count(*) FROM scope) AS checked_count \
         FROM checked \
         WHERE debits > 1 OR credits > 1 \
            OR (status <> 'posted' AND entries > 0) \
            OR (status = 'posted' AND (debits <> 1 OR credits <> 1 OR mismatched > 0)) \
         UNION ALL \
         SELECT NULL, NULL, NULL, NULL, NULL, NULL, (SELECT count(*) FROM scope)",
    )
    .bind(from)
    .bind(to)
    .bind(recheck)
    .fetch_all(&mut *conn)
    .await?;
    let mut checked = 0;
    let mut found = Vec::new();
    for row in rows {
        checked = row.checked_count;
        found.extend(row.observation()?);
    }
    Ok((found, checked))
}

impl TransferCheckRow {
    /// The finding this row reports; `None` for the summary row.
    fn observation(self) -> Result<Option<Observation>, sqlx::Error> {
        let Some(id) = self.id else {
            return Ok(None);
        };
        let status = present(self.status.0, "status")?;
        let entries = present(self.entries, "entries")?;
        let debits = present(self.debits, "debits")?;
        let credits = present(self.credits, "credits")?;
        let mismatched = present(self.mismatched, "mismatched")?;
        let (kind, detail) = if debits > 1 || credits > 1 {
            (
                FindingKind::DoublePosted,
                format!(
                    "{} transfer has {debits} debits and {credits} credits",
                    status.as_str()
                ),
            )
        } else if status != TransferStatus::Posted {
            (
                FindingKind::FailedWithEntries,
                format!("{} transfer has {entries} ledger entries", status.as_str()),
            )
        } else {
            (
                FindingKind::PostedWithoutEntries,
                format!(
                    "posted transfer has {debits} debits and {credits} credits \
                     ({mismatched} not matching its accounts, amount or currency)"
                ),
            )
        };
        Ok(Some(Observation::about_transfer(kind, id, detail)))
    }
}

/// Entries naming one missing transfer.
#[derive(sqlx::FromRow)]
struct OrphanRow {
    transfer_id: Uuid,
    entries: i64,
    accounts: String,
}

/// Entries whose transfer does not exist, grouped by the missing transfer id. Looks at
/// entries after `after_entry_id` (all of them when 0) and at the transfers in `recheck`.
pub async fn orphan_entries(
    conn: &mut PgConnection,
    after_entry_id: i64,
    recheck: &[Uuid],
) -> Result<Vec<Observation>, sqlx::Error> {
    let rows = sqlx::query_as::<_, OrphanRow>(
        "SELECT e.transfer_id, count(*) AS entries, string_agg(e.account_id, ', ') AS accounts \
         FROM entries e LEFT JOIN transfers t ON t.id = e.transfer_id \
         WHERE (e.id > $1 OR e.transfer_id = ANY($2)) AND t.id IS NULL \
         GROUP BY e.transfer_id",
    )
    .bind(after_entry_id)
    .bind(recheck)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            Observation::about_transfer(
                FindingKind::OrphanEntry,
                row.transfer_id,
                format!(
                    "{} entries (accounts {}) name a transfer that does not exist",
                    row.entries, row.accounts
                ),
            )
        })
        .collect())
}

/// Outcome of the balance check.
pub struct BalanceCheck {
    pub observations: Vec<Observation>,
    pub accounts_checked: i64,
    /// The highest entry id now folded into the checkpoints.
    pub entries_through_id: i64,
}

/// A row of [`balances`]: an account whose balance drifted, or (all but `accounts` NULL) the
/// one summary row.
#[derive(sqlx::FromRow)]
struct DriftRow {
    id: Option<String>,
    balance: Option<Decimal>,
    entries_sum: Option<Decimal>,
    accounts: i64,
}

/// Folds entries after `through_id` into the per-account sums (or rebuilds them all when
/// `full`), then compares every balance with its sum and every currency's total with zero.
pub async fn balances(
    conn: &mut PgConnection,
    through_id: i64,
    full: bool,
) -> Result<BalanceCheck, sqlx::Error> {
    let from_id = if full { 0 } else { through_id };
    let new_through: i64 =
        sqlx::query_scalar("SELECT coalesce(max(id), $1) FROM entries WHERE id > $1")
            .bind(from_id)
            .fetch_one(&mut *conn)
            .await?;
    if full {
        sqlx::query("DELETE FROM reconciliation_checkpoints")
            .execute(&mut *conn)
            .await?;
    }
    sqlx::query(
        "INSERT INTO reconciliation_checkpoints (account_id, entries_sum) \
         SELECT account_id, sum(amount) FROM entries WHERE id > $1 AND id <= $2 \
         GROUP BY account_id \
         ON CONFLICT (account_id) DO UPDATE \
           SET entries_sum = reconciliation_checkpoints.entries_sum + EXCLUDED.entries_sum",
    )
    .bind(from_id)
    .bind(new_through)
    .execute(&mut *conn)
    .await?;
    let drifted = sqlx::query_as::<_, DriftRow>(
        "SELECT a.id, a.balance, coalesce(c.entries_sum, 0) AS entries_sum, \
           (SELECT count(*) FROM accounts) AS accounts \
         FROM accounts a LEFT JOIN reconciliation_checkpoints c ON c.account_id = a.id \
         WHERE a.balance <> coalesce(c.entries_sum, 0) \
         UNION ALL SELECT NULL, NULL, NULL, (SELECT count(*) FROM accounts)",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut observations = Vec::new();
    let mut accounts_checked = 0;
    for row in drifted {
        accounts_checked = row.accounts;
        let Some(id) = row.id else {
            continue;
        };
        let balance = present(row.balance, "balance")?;
        let sum = present(row.entries_sum, "entries_sum")?;
        observations.push(Observation::about_account(
            FindingKind::BalanceDrift,
            id,
            format!(
                "balance {balance} but its entries sum to {sum} (difference {})",
                balance - sum
            ),
        ));
    }
    observations.extend(unbalanced_currencies(conn, new_through).await?);
    Ok(BalanceCheck {
        observations,
        accounts_checked,
        entries_through_id: new_through,
    })
}

/// The sum of one currency's entries.
#[derive(sqlx::FromRow)]
struct CurrencyTotal {
    currency: String,
    total: Decimal,
}

/// Currencies whose entries do not sum to zero. Entries of one currency sit only on accounts
/// of that currency, except through corruption, which the transfer checks report.
async fn unbalanced_currencies(
    conn: &mut PgConnection,
    through_id: i64,
) -> Result<Vec<Observation>, sqlx::Error> {
    let rows = sqlx::query_as::<_, CurrencyTotal>(
        "SELECT a.currency, sum(c.entries_sum) AS total \
         FROM reconciliation_checkpoints c JOIN accounts a ON a.id = c.account_id \
         GROUP BY a.currency HAVING sum(c.entries_sum) <> 0",
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|CurrencyTotal { currency, total }| Observation {
            kind: FindingKind::LedgerUnbalanced,
            subject: format!("currency:{}", currency.trim()),
            transfer_id: None,
            account_id: None,
            detail: format!(
                "{} entries sum to {total}, not zero (entries through id {through_id})",
                currency.trim()
            ),
        })
        .collect())
}

/// Rows the listing checks ([`stuck_pending`], [`dead_jobs`]) read per query. They page with
/// a keyset through every matching row instead of stopping at a limit: a truncated list would
/// leave real problems unreported, and `findings` would resolve the ones it no longer saw.
/// The run records and alerts each page before reading the next, so memory stays bounded by
/// the page however many problems there are.
pub const PAGE_ROWS: usize = 1000;

/// One page of a listing check and where the next page starts (`None`: this was the last).
pub struct Page<C> {
    pub observations: Vec<Observation>,
    pub next: Option<C>,
}

/// Where the next page of [`stuck_pending`] starts: after this `(created_at, id)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StuckCursor {
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
}

/// A transfer still pending.
#[derive(Clone, Copy, sqlx::FromRow)]
struct StuckRow {
    id: Uuid,
    created_at: DateTime<Utc>,
    attempts: i32,
}

/// One page of transfers pending since before `older_than`, oldest first, after `after`.
/// `created_at >= cursor` repeats the row comparison in a form the partial pending index can
/// start from, so each page costs O(page), not a rescan of the pages before it.
pub async fn stuck_pending(
    conn: &mut PgConnection,
    older_than: DateTime<Utc>,
    after: Option<StuckCursor>,
) -> Result<Page<StuckCursor>, sqlx::Error> {
    let rows = sqlx::query_as::<_, StuckRow>(
        "SELECT id, created_at, attempts FROM transfers \
         WHERE status = 'pending' AND created_at < $1 \
           AND created_at >= coalesce($2, '-infinity'::timestamptz) \
           AND (created_at, id) > (coalesce($2, '-infinity'::timestamptz), \
                                   coalesce($3, '00000000-0000-0000-0000-000000000000'::uuid)) \
         ORDER BY created_at, id LIMIT $4",
    )
    .bind(older_than)
    .bind(after.map(|c| c.created_at))
    .bind(after.map(|c| c.id))
    .bind(PAGE_ROWS as i64)
    .fetch_all(&mut *conn)
    .await?;
    let mut next = None;
    let mut observations = Vec::with_capacity(rows.len());
    for row in &rows {
        let StuckRow {
            id,
            created_at: created,
            attempts,
        } = *row;
        observations.push(Observation::about_transfer(
            FindingKind::StuckPending,
            id,
            format!("pending since {created} after {attempts} attempts"),
        ));
        next = Some(StuckCursor {
            created_at: created,
            id,
        });
    }
    Ok(Page {
        observations,
        next: next.filter(|_| rows.len() == PAGE_ROWS),
    })
}

/// One page of jobs apalis gave up on (exhausted `Failed`, or `Killed`), by id after `after`.
pub async fn dead_jobs(
    conn: &mut PgConnection,
    after: Option<&str>,
) -> Result<Page<String>, sqlx::Error> {
    let rows = table::dead_jobs(conn, after, PAGE_ROWS).await?;
    let mut next = None;
    let mut observations = Vec::with_capacity(rows.len());
    for job in &rows {
        let last: String = job
            .last_result
            .as_deref()
            .unwrap_or_default()
            .chars()
            .take(300)
            .collect();
        observations.push(Observation {
            kind: FindingKind::JobDead,
            subject: format!("job:{}", job.id),
            transfer_id: None,
            account_id: None,
            detail: format!(
                "{} job {} after {} attempts: {last}",
                job.queue, job.status, job.attempts
            ),
        });
        next = Some(job.id.clone());
    }
    Ok(Page {
        observations,
        next: next.filter(|_| rows.len() == PAGE_ROWS),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_stored_status_is_an_error_and_null_only_marks_the_summary_row() {
        assert!(matches!(
            NullableStatus::try_from(None),
            Ok(NullableStatus(None))
        ));
        assert!(matches!(
            NullableStatus::try_from(Some("posted".to_owned())),
            Ok(NullableStatus(Some(TransferStatus::Posted)))
        ));
        assert!(NullableStatus::try_from(Some("archived".to_owned())).is_err());
        assert!(present(None::<i64>, "entries").is_err());
    }
}
