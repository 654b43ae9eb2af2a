//! The reconciliation checks (README, "Reconciliation"), each one set-based SQL inside the run's snapshot.
//!
//! The transfer check costs O(window): it looks at transfers whose last change falls in the
//! window, page by page, plus the subjects of findings still open (so an open finding is
//! resolved only when its problem is really gone). The orphan check reads the new entries
//! and, as PostgreSQL plans it, hashes every transfer id: O(ledger), but cheaper than probing
//! the transfers' index once per new entry (1M new entries on a 3M-transfer ledger: 2.2 s
//! against 5.6 s). The balance check costs O(accounts + new entries):
//! per-(ledger, account) sums of entries are kept in `reconciliation_checkpoints` and each run
//! folds in only the entries added since the last one. Entries are append-only (a trigger
//! refuses UPDATE and DELETE), and posting transactions commit one at a time behind
//! `ledger_posting_gate`, so the entries a snapshot sees are exactly those with
//! `id <= max(id)`; a full run (daily, or on demand) rebuilds the sums from scratch.
//!
//! Every check takes the ledger a run covers (`None`: every ledger) and names the ledger of
//! what it finds: an account id is unique only within its ledger, so every join between
//! entries, accounts and transfers matches the ledger too.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::PgConnection;
use sqlx::error::UnexpectedNullError;
use uuid::Uuid;

use super::finding::{FindingKind, Observation};
use crate::domain::transfer::UnknownCode;
use crate::domain::{LedgerName, TransferStatus};
use crate::queue::table;

/// A row of [`transfers`]: a transfer with a problem, or (all but `checked_count` NULL) the
/// one summary row. The status reads back strictly: an unknown one is an error.
#[derive(sqlx::FromRow)]
struct TransferCheckRow {
    id: Option<Uuid>,
    ledger: Option<String>,
    #[sqlx(try_from = "Option<String>")]
    status: NullableStatus,
    entries: Option<i64>,
    debits: Option<i64>,
    credits: Option<i64>,
    mismatched: Option<i64>,
    checked_count: i64,
    /// The summary row's: where the scope's last transfer is, to start the next page after it.
    last_updated_at: Option<DateTime<Utc>>,
    last_id: Option<Uuid>,
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

/// The ledger a run covers as a bind parameter: NULL for every ledger.
fn ledger_param(ledger: Option<&LedgerName>) -> Option<&str> {
    ledger.map(LedgerName::as_str)
}

/// Transfers one statement of the transfer check reads.
#[derive(Debug, Clone, Copy)]
pub enum TransferScope<'a> {
    /// The subjects of open findings changed outside `[from, to)`: those inside are read with
    /// the window's pages.
    Recheck {
        ids: &'a [Uuid],
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    },
    /// The next [`TRANSFER_PAGE_ROWS`] transfers changed in `[from, to)`, in `(updated_at, id)`
    /// order after `after` (from the start when `None`).
    Window {
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        after: Option<Cursor>,
    },
}

impl<'a> TransferScope<'a> {
    /// The statement after this one, given where its page ended (`next` of its
    /// [`TransferPage`]): the rechecked transfers come first, then the window page by page;
    /// `None` once the window's last page is read.
    pub fn following(self, next: Option<Cursor>) -> Option<Self> {
        match (self, next) {
            (Self::Recheck { from, to, .. }, _) => Some(Self::Window {
                from,
                to,
                after: None,
            }),
            (Self::Window { from, to, .. }, Some(after)) => Some(Self::Window {
                from,
                to,
                after: Some(after),
            }),
            (Self::Window { .. }, None) => None,
        }
    }
}

/// Transfers one page of the window's transfer check reads. A page joins its transfers to
/// their entries by index probes, so it costs O(page) however large the ledger; one statement
/// over a 500,000-transfer window merge-joined every entry of a 6M-entry ledger instead
/// (15.3 s against ~0.1 s per page, BENCHMARKS.md, "Reconciliation run time").
pub const TRANSFER_PAGE_ROWS: i64 = 10_000;

/// Makes the run's transaction join by index probes only (`true`), for the transfer check's
/// pages, or lets the planner choose again (`false`). A page joins a few thousand transfers
/// to their entries, but with statistics older than the table's growth (a table that grew
/// since its last ANALYZE) the planner merge-joined every entry of the ledger into each page:
/// in a soak at 1,500 transfers/s one 5-minute run took over 2 minutes (BENCHMARKS.md,
/// "Fourth sitting"). Posting plans its statements the same way (`src/ledger/`).
pub async fn join_by_index_probes(conn: &mut PgConnection, only: bool) -> Result<(), sqlx::Error> {
    let enabled = if only { "off" } else { "on" };
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "SET LOCAL enable_hashjoin = {enabled}; SET LOCAL enable_mergejoin = {enabled}"
    )))
    .execute(conn)
    .await?;
    Ok(())
}

/// What one statement of the transfer check found: the problems, how many transfers it looked
/// at, and where the window's next page starts (`None`: this was its last, or a recheck).
pub struct TransferPage {
    pub observations: Vec<Observation>,
    pub checked: i64,
    pub next: Option<Cursor>,
}

/// Transfer-level problems among transfers of `ledger` (every ledger when `None`) in `scope`.
/// A posted transfer's two entries must be in its own ledger: an entry in another one counts
/// as not matching it. `updated_at >= cursor` repeats the row comparison in a form the
/// `updated_at` index can start from, so each page costs O(page), not a rescan of the pages
/// before it.
pub async fn transfers(
    conn: &mut PgConnection,
    ledger: Option<&LedgerName>,
    scope: TransferScope<'_>,
) -> Result<TransferPage, sqlx::Error> {
    const CHANGED_IN_WINDOW: &str = "updated_at >= $1 AND updated_at < $2";
    let (which, from, to, ids, after, limit) = match scope {
        TransferScope::Recheck { ids, from, to } => (
            format!("id = ANY($3) AND NOT ({CHANGED_IN_WINDOW})"),
            from,
            to,
            Some(ids),
            None,
            None,
        ),
        TransferScope::Window { from, to, after } => (
            format!("$3::uuid[] IS NULL AND {CHANGED_IN_WINDOW}"),
            from,
            to,
            None,
            after,
            Some(TRANSFER_PAGE_ROWS),
        ),
    };
    let rows = sqlx::query_as::<_, TransferCheckRow>(sqlx::AssertSqlSafe(format!(
        "WITH scope AS MATERIALIZED ( \
           SELECT id, ledger, status, coalesce(captured_amount, amount) AS amount, currency, \
             from_account, to_account, updated_at FROM transfers \
           WHERE ($4::text IS NULL OR ledger = $4) AND {which} \
             AND updated_at >= coalesce($5, '-infinity'::timestamptz) \
             AND (updated_at, id) > (coalesce($5, '-infinity'::timestamptz), \
                                     coalesce($6, '00000000-0000-0000-0000-000000000000'::uuid)) \
           ORDER BY updated_at, id LIMIT $7), \
         checked AS ( \
           SELECT s.id, s.ledger, s.status, \
             count(e.id) AS entries, \
             count(e.id) FILTER (WHERE e.side = 'debit') AS debits, \
             count(e.id) FILTER (WHERE e.side = 'credit') AS credits, \
             count(e.id) FILTER (WHERE (e.side = 'debit' \
                 AND (a.id IS DISTINCT FROM s.from_account OR e.amount <> -s.amount)) \
               OR (e.side = 'credit' \
                 AND (a.id IS DISTINCT FROM s.to_account OR e.amount <> s.amount)) \
               OR e.currency <> s.currency OR a.ledger IS DISTINCT FROM s.ledger) AS mismatched \
           FROM scope s LEFT JOIN entries e ON e.transfer_id = s.id \
             LEFT JOIN accounts a ON a.no = e.account_no \
           GROUP BY s.id, s.ledger, s.status), \
         last AS (SELECT updated_at, id FROM scope ORDER BY updated_at DESC, id DESC LIMIT 1) \
         SELECT id, ledger, status, entries, debits, credits, mismatched, \
           (SELECT count(*) FROM scope) AS checked_count, \
           NULL::timestamptz AS last_updated_at, NULL::uuid AS last_id \
         FROM checked \
         WHERE debits > 1 OR credits > 1 \
            OR (status <> 'posted' AND entries > 0) \
            OR (status = 'posted' AND (debits <> 1 OR credits <> 1 OR mismatched > 0)) \
         UNION ALL \
         SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, (SELECT count(*) FROM scope), \
           (SELECT updated_at FROM last), (SELECT id FROM last)"
    )))
    .bind(from)
    .bind(to)
    .bind(ids)
    .bind(ledger_param(ledger))
    .bind(after.map(|c| c.since))
    .bind(after.map(|c| c.id))
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    let mut page = TransferPage {
        observations: Vec::new(),
        checked: 0,
        next: None,
    };
    for row in rows {
        page.checked = row.checked_count;
        if let (Some(since), Some(id)) = (row.last_updated_at, row.last_id) {
            page.next = Some(Cursor { since, id });
        }
        page.observations.extend(row.observation()?);
    }
    if limit.is_none_or(|limit| page.checked < limit) {
        page.next = None;
    }
    Ok(page)
}

impl TransferCheckRow {
    /// The finding this row reports; `None` for the summary row.
    fn observation(self) -> Result<Option<Observation>, sqlx::Error> {
        let Some(id) = self.id else {
            return Ok(None);
        };
        let ledger = LedgerName::from_trusted(present(self.ledger, "ledger")?);
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
                     ({mismatched} not matching its accounts, amount, currency or ledger)"
                ),
            )
        };
        Ok(Some(Observation::about_transfer(kind, ledger, id, detail)))
    }
}

/// Entries of one ledger naming one missing transfer; `ledger` is NULL for entries whose
/// account does not exist either (they are in no ledger).
#[derive(sqlx::FromRow)]
struct OrphanRow {
    ledger: Option<String>,
    transfer_id: Uuid,
    entries: i64,
    accounts: String,
}

/// Entries of `ledger` (every ledger when `None`) whose transfer does not exist, grouped by
/// their ledger and the missing transfer id. Looks at entries after `after_entry_id` (all of
/// them when 0) and at the transfers in `recheck`.
pub async fn orphan_entries(
    conn: &mut PgConnection,
    ledger: Option<&LedgerName>,
    after_entry_id: i64,
    recheck: &[Uuid],
) -> Result<Vec<Observation>, sqlx::Error> {
    let rows = sqlx::query_as::<_, OrphanRow>(
        "SELECT a.ledger, e.transfer_id, count(*) AS entries, \
           string_agg(coalesce(a.id, 'number ' || e.account_no), ', ') AS accounts \
         FROM entries e LEFT JOIN transfers t ON t.id = e.transfer_id \
           LEFT JOIN accounts a ON a.no = e.account_no \
         WHERE (e.id > $1 OR e.transfer_id = ANY($2)) AND t.id IS NULL \
           AND ($3::text IS NULL OR a.ledger = $3) \
         GROUP BY a.ledger, e.transfer_id",
    )
    .bind(after_entry_id)
    .bind(recheck)
    .bind(ledger_param(ledger))
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            Observation::about_transfer(
                FindingKind::OrphanEntry,
                row.ledger.map(LedgerName::from_trusted),
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
    /// The highest entry id the compared sums include. A run over every ledger has folded the
    /// entries up to it into the checkpoints and stores it as the new watermark; a run over one
    /// ledger folds nothing (see [`balances`]).
    pub entries_through_id: i64,
}

/// A row of [`balances`]: an account whose balance drifted, entries on an account number no
/// account has (`ledger`, `id` and `balance` NULL), or (all but `accounts` NULL) the one
/// summary row.
#[derive(sqlx::FromRow)]
struct DriftRow {
    ledger: Option<String>,
    id: Option<String>,
    account_no: Option<i64>,
    balance: Option<Decimal>,
    entries_sum: Option<Decimal>,
    accounts: i64,
}

impl DriftRow {
    /// The drift this row reports; `None` for the summary row (which carries only the count).
    fn observation(self) -> Result<Option<Observation>, sqlx::Error> {
        let sum = self.entries_sum.unwrap_or_default();
        match (self.id, self.account_no) {
            (None, None) => Ok(None),
            // Entries whose account number matches no account: they are in no ledger, so only
            // a run over every ledger sees them.
            (None, Some(no)) => Ok(Some(Observation {
                kind: FindingKind::BalanceDrift,
                ledger: None,
                subject: format!("account_no:{no}"),
                transfer_id: None,
                account_id: None,
                detail: format!("no account has number {no}, yet entries name it (sum {sum})"),
            })),
            (Some(id), _) => {
                let ledger = LedgerName::from_trusted(present(self.ledger, "ledger")?);
                let balance = present(self.balance, "balance")?;
                Ok(Some(Observation::about_account(
                    FindingKind::BalanceDrift,
                    ledger,
                    id,
                    format!(
                        "balance {balance} but its entries sum to {sum} (difference {})",
                        balance - sum
                    ),
                )))
            }
        }
    }
}

/// The per-(ledger, account) sums a run over every ledger compares with: the checkpoints,
/// which it has just brought up to everything its snapshot sees.
const SUMS_ALL_LEDGERS: &str = "SELECT account_no, entries_sum FROM reconciliation_checkpoints";
/// The sums a run over ledger $1 compares with: that ledger's checkpoints (entries up to the
/// watermark $2) plus its entries after the watermark, added up here and not stored. The
/// watermark is shared by every ledger, and the orphan check of the next run over every
/// ledger starts from it: moving it after looking at one ledger would skip the entries of the
/// others (ARCHITECTURE.md, `src/reconcile/`).
const SUMS_ONE_LEDGER: &str = "SELECT account_no, sum(entries_sum) AS entries_sum FROM ( \
       SELECT c.account_no, c.entries_sum FROM accounts a \
         JOIN reconciliation_checkpoints c ON c.account_no = a.no WHERE a.ledger = $1 \
       UNION ALL \
       SELECT e.account_no, e.amount FROM accounts a \
         JOIN entries e ON e.account_no = a.no WHERE a.ledger = $1 AND e.id > $2) u \
     GROUP BY account_no";

/// Compares every balance of `ledger` (every ledger when `None`) with the sum of its entries,
/// and every (ledger, currency) total with zero: each ledger must balance on its own, so money
/// that crossed from one ledger into another shows as two unbalanced ledgers.
///
/// Over every ledger, it first folds the entries after `through_id` into the checkpoints (or
/// rebuilds them all when `full`). Over one ledger, it moves no watermark: `full` rebuilds
/// only that ledger's checkpoints, up to the unchanged `through_id`, and newer entries are
/// added on the fly.
pub async fn balances(
    conn: &mut PgConnection,
    ledger: Option<&LedgerName>,
    through_id: i64,
    full: bool,
) -> Result<BalanceCheck, sqlx::Error> {
    let from_id = if full && ledger.is_none() {
        0
    } else {
        through_id
    };
    let new_through: i64 =
        sqlx::query_scalar("SELECT coalesce(max(id), $1) FROM entries WHERE id > $1")
            .bind(from_id)
            .fetch_one(&mut *conn)
            .await?;
    let sums = match ledger {
        None => {
            fold_entries(conn, from_id, new_through, full).await?;
            SUMS_ALL_LEDGERS
        }
        Some(ledger) => {
            if full {
                rebuild_ledger_sums(conn, ledger, through_id).await?;
            }
            SUMS_ONE_LEDGER
        }
    };
    let drifted = sqlx::query_as::<_, DriftRow>(sqlx::AssertSqlSafe(format!(
        "WITH sums AS ({sums}) \
         SELECT a.ledger, a.id, s.account_no, a.balance, \
           coalesce(s.entries_sum, 0) AS entries_sum, \
           (SELECT count(*) FROM accounts WHERE $1::text IS NULL OR ledger = $1) AS accounts \
         FROM (SELECT no, ledger, id, balance FROM accounts \
               WHERE $1::text IS NULL OR ledger = $1) a \
         FULL JOIN sums s ON s.account_no = a.no \
         WHERE a.no IS NULL OR a.balance <> coalesce(s.entries_sum, 0) \
         UNION ALL SELECT NULL, NULL, NULL, NULL, NULL, \
           (SELECT count(*) FROM accounts WHERE $1::text IS NULL OR ledger = $1)"
    )))
    .bind(ledger_param(ledger))
    .bind(through_id)
    .fetch_all(&mut *conn)
    .await?;
    let accounts_checked = drifted.last().map_or(0, |row| row.accounts);
    let mut observations = drifted
        .into_iter()
        .filter_map(|row| row.observation().transpose())
        .collect::<Result<Vec<_>, _>>()?;
    observations.extend(unbalanced_currencies(conn, ledger, sums, through_id, new_through).await?);
    Ok(BalanceCheck {
        observations,
        accounts_checked,
        entries_through_id: new_through,
    })
}

/// Folds the entries in `(from_id, through_id]` into the checkpoints of every ledger, after
/// emptying them when `full`.
async fn fold_entries(
    conn: &mut PgConnection,
    from_id: i64,
    through_id: i64,
    full: bool,
) -> Result<(), sqlx::Error> {
    if full {
        sqlx::query("DELETE FROM reconciliation_checkpoints")
            .execute(&mut *conn)
            .await?;
    }
    sqlx::query(
        "INSERT INTO reconciliation_checkpoints (account_no, entries_sum) \
         SELECT account_no, sum(amount) FROM entries WHERE id > $1 AND id <= $2 \
         GROUP BY account_no \
         ON CONFLICT (account_no) DO UPDATE \
           SET entries_sum = reconciliation_checkpoints.entries_sum + EXCLUDED.entries_sum",
    )
    .bind(from_id)
    .bind(through_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Rebuilds `ledger`'s checkpoints from its entries up to the shared watermark `through_id`,
/// so they hold what a run over every ledger would have folded (entries edited by hand
/// included), and the other ledgers' checkpoints and the watermark stay as they are.
async fn rebuild_ledger_sums(
    conn: &mut PgConnection,
    ledger: &LedgerName,
    through_id: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "DELETE FROM reconciliation_checkpoints c USING accounts a \
         WHERE a.no = c.account_no AND a.ledger = $1",
    )
    .bind(ledger.as_str())
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO reconciliation_checkpoints (account_no, entries_sum) \
         SELECT e.account_no, sum(e.amount) FROM accounts a \
           JOIN entries e ON e.account_no = a.no \
         WHERE a.ledger = $1 AND e.id <= $2 GROUP BY e.account_no",
    )
    .bind(ledger.as_str())
    .bind(through_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The sum of one ledger's entries in one currency.
#[derive(sqlx::FromRow)]
struct CurrencyTotal {
    ledger: String,
    currency: String,
    total: Decimal,
}

/// (ledger, currency) pairs whose entries do not sum to zero, from the same `sums` as the
/// balances. Entries of one currency sit only on accounts of that currency, except through
/// corruption, which the transfer checks report.
async fn unbalanced_currencies(
    conn: &mut PgConnection,
    ledger: Option<&LedgerName>,
    sums: &str,
    watermark: i64,
    through_id: i64,
) -> Result<Vec<Observation>, sqlx::Error> {
    let rows = sqlx::query_as::<_, CurrencyTotal>(sqlx::AssertSqlSafe(format!(
        "WITH sums AS ({sums}) \
         SELECT a.ledger, a.currency, sum(s.entries_sum) AS total \
         FROM sums s JOIN accounts a ON a.no = s.account_no \
         WHERE $1::text IS NULL OR a.ledger = $1 \
         GROUP BY a.ledger, a.currency HAVING sum(s.entries_sum) <> 0"
    )))
    .bind(ledger_param(ledger))
    .bind(watermark)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |CurrencyTotal {
                 ledger,
                 currency,
                 total,
             }| Observation {
                kind: FindingKind::LedgerUnbalanced,
                subject: format!("currency:{}", currency.trim()),
                detail: format!(
                    "{} entries of ledger {ledger} sum to {total}, not zero \
                     (entries through id {through_id})",
                    currency.trim()
                ),
                ledger: Some(LedgerName::from_trusted(ledger)),
                transfer_id: None,
                account_id: None,
            },
        )
        .collect())
}

/// Rows the listing checks ([`waiting`], [`dead_jobs`]) read per query. They page with
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

/// Transfers a listing check finds waiting too long: pending (`stuck_pending`, since
/// accepted), held for review (`stale_review`, since held: a held transfer's `updated_at`), or
/// a hold still held past its expiry (`expired_hold`, since it expired).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    Pending,
    InReview,
    ExpiredHold,
}

impl Waiting {
    fn status(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::InReview => "in_review",
            Self::ExpiredHold => "held",
        }
    }

    /// The column that says since when; each status has a partial index on it.
    fn since_column(self) -> &'static str {
        match self {
            Self::Pending => "created_at",
            Self::InReview => "updated_at",
            Self::ExpiredHold => "hold_expires_at",
        }
    }
}

/// Where the next page of a keyset-paged check ([`waiting`], [`transfers`]) starts: after
/// this `(since, id)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub since: DateTime<Utc>,
    pub id: Uuid,
}

/// A transfer still waiting.
#[derive(Clone, sqlx::FromRow)]
struct WaitingRow {
    id: Uuid,
    ledger: String,
    since: DateTime<Utc>,
    attempts: i32,
}

/// One page of transfers of `ledger` (every ledger when `None`) waiting (`which`) since before
/// `older_than`, oldest first, after `after`. `since >= cursor` repeats the row comparison in
/// a form the status's partial index can start from, so each page costs O(page), not a
/// rescan of the pages before it.
pub async fn waiting(
    conn: &mut PgConnection,
    which: Waiting,
    ledger: Option<&LedgerName>,
    older_than: DateTime<Utc>,
    after: Option<Cursor>,
) -> Result<Page<Cursor>, sqlx::Error> {
    let since = which.since_column();
    let rows = sqlx::query_as::<_, WaitingRow>(sqlx::AssertSqlSafe(format!(
        "SELECT id, ledger, {since} AS since, attempts FROM transfers \
         WHERE status = $6 AND {since} < $1 AND ($5::text IS NULL OR ledger = $5) \
           AND {since} >= coalesce($2, '-infinity'::timestamptz) \
           AND ({since}, id) > (coalesce($2, '-infinity'::timestamptz), \
                                coalesce($3, '00000000-0000-0000-0000-000000000000'::uuid)) \
         ORDER BY {since}, id LIMIT $4"
    )))
    .bind(older_than)
    .bind(after.map(|c| c.since))
    .bind(after.map(|c| c.id))
    .bind(PAGE_ROWS as i64)
    .bind(ledger_param(ledger))
    .bind(which.status())
    .fetch_all(&mut *conn)
    .await?;
    let page_full = rows.len() == PAGE_ROWS;
    let next = rows.last().map(|row| Cursor {
        since: row.since,
        id: row.id,
    });
    let observations = rows
        .into_iter()
        .map(|row| {
            let (kind, detail) = match which {
                Waiting::Pending => (
                    FindingKind::StuckPending,
                    format!(
                        "pending since {} after {} attempts",
                        row.since, row.attempts
                    ),
                ),
                Waiting::InReview => (
                    FindingKind::StaleReview,
                    format!("in review since {}", row.since),
                ),
                Waiting::ExpiredHold => (
                    FindingKind::ExpiredHold,
                    format!("held past its expiry at {}", row.since),
                ),
            };
            Observation::about_transfer(kind, LedgerName::from_trusted(row.ledger), row.id, detail)
        })
        .collect();
    Ok(Page {
        observations,
        next: next.filter(|_| page_full),
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
        // A job is about no one ledger: a posting job is not bound to one (group commit puts
        // concurrent requests of many API keys in one job).
        observations.push(Observation {
            kind: FindingKind::JobDead,
            ledger: None,
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
