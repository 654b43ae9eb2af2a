//! The posting engine: moves pending transfers into the double-entry ledger.
//!
//! One SERIALIZABLE transaction posts a whole batch:
//! 1. `LOCK TABLE ledger_posting_gate` — the only statement PostgreSQL runs in a SERIALIZABLE
//!    transaction *before* fixing its snapshot, so concurrent posters queue here instead of
//!    reading a snapshot that a competitor makes stale (which would end in 40001 under
//!    contention and turn a hot account into a retry storm). Throughput comes from batch size,
//!    not from concurrent posters, which on shared accounts can only fail each other.
//! 2. read the batch's still-`pending` transfers (the status guard that makes a redelivered job
//!    a no-op), lock their accounts in id order (`FOR UPDATE`, also fencing writers outside
//!    ferry);
//! 3. apply the transfers in memory one by one ([`super::apply`]);
//! 4. write entries, balances and statuses in three set-based statements, checking that the
//!    database agrees with the in-memory result before COMMIT;
//! 5. write each transfer's `transfer.posted` / `transfer.failed` event (one statement).
//!
//! A serialization failure re-runs the whole transaction (backon, full jitter, 10 tries).

use std::collections::HashMap;
use std::time::Instant;

use backon::Retryable;
use rust_decimal::Decimal;
use sqlx::{PgPool, Postgres, Transaction};
use tracing::{debug, info, warn};
use uuid::Uuid;

use super::apply::{
    Applied, LockedAccount, Outcome, PendingTransfer, apply_batch, entries_balance,
};
use crate::domain::{AccountId, AccountKey, AccountStatus, Amount, Currency, LedgerName};
use crate::events::{self, transfer::TransferRow};
use crate::failpoint::Failpoint;
use crate::retry::{RetryClass, RetryPolicy, classify};

/// Statements that open every posting transaction (one round trip, no snapshot taken).
/// The timeouts stop a stuck poster from holding the gate: a lock wait ends as 55P03
/// (transient), an abandoned open transaction is killed by the server.
/// Every statement of a posting transaction looks rows up by key, so each is planned as index
/// probes: O(batch), whatever the size of the ledger. Left to itself the planner hashed all of
/// `accounts` for every batch of a few thousand (measured: 31–66 ms per batch at 100k accounts,
/// growing with the table; 12 ms as index probes — BENCHMARKS.md).
const POSTING_PREAMBLE: &str = "SET LOCAL lock_timeout = '10s'; \
     SET LOCAL idle_in_transaction_session_timeout = '30s'; \
     SET LOCAL enable_seqscan = off; \
     SET LOCAL enable_hashjoin = off; \
     SET LOCAL enable_mergejoin = off; \
     LOCK TABLE ledger_posting_gate IN EXCLUSIVE MODE";

#[derive(Debug, thiserror::Error)]
pub enum PostingError {
    #[error("database error while posting")]
    Database(#[from] sqlx::Error),
    /// The database disagreed with the in-memory result; the transaction was rolled back.
    #[error("ledger invariant violated: {0}")]
    Invariant(String),
    /// The process is shutting down; the job is re-run elsewhere.
    #[error("posting stopped: the process is shutting down")]
    Stopped,
}

impl PostingError {
    pub fn retry_class(&self) -> RetryClass {
        match self {
            Self::Database(e) => classify(e),
            Self::Invariant(_) => RetryClass::Unknown,
            // Not the transfers' fault: no attempt is counted.
            Self::Stopped => RetryClass::Unavailable,
        }
    }
}

/// What one call to [`PostingEngine::post`] did.
#[derive(Debug, Default, Clone)]
pub struct PostingReport {
    pub posted: usize,
    pub failed: usize,
    /// Already terminal (a redelivered job) or not found.
    pub skipped: usize,
    pub serialization_retries: usize,
    /// Each transfer this call moved to a terminal status, in posting order.
    pub outcomes: Vec<PostedTransfer>,
}

/// A transfer as posting read it, and what became of it.
#[derive(Debug, Clone)]
pub struct PostedTransfer {
    pub transfer: PendingTransfer,
    pub outcome: Outcome,
}

#[derive(Clone)]
pub struct PostingEngine {
    pool: PgPool,
    failpoint: Failpoint,
}

impl PostingEngine {
    pub fn new(pool: PgPool, failpoint: Failpoint) -> Self {
        Self { pool, failpoint }
    }

    /// Posts the given transfers; idempotent per transfer.
    #[tracing::instrument(skip_all, fields(batch_len = transfer_ids.len()))]
    pub async fn post(&self, transfer_ids: &[Uuid]) -> Result<PostingReport, PostingError> {
        let started = Instant::now();
        let mut retries = 0usize;
        let mut report = (|| self.post_once(transfer_ids))
            .retry(RetryPolicy::SERIALIZATION.schedule())
            .sleep(tokio::time::sleep)
            .when(|e: &PostingError| e.retry_class() == RetryClass::Serialization)
            .notify(|e, delay| {
                retries += 1;
                metrics::counter!("ferry_posting_serialization_retries_total").increment(1);
                warn!(error = %e, ?delay, "posting lost a serialization race; retrying");
            })
            .await?;
        report.serialization_retries = retries;
        metrics::histogram!("ferry_posting_batch_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("ferry_posting_batch_size").record(transfer_ids.len() as f64);
        metrics::counter!("ferry_transfers_posted_total").increment(report.posted as u64);
        info!(
            posted = report.posted,
            failed = report.failed,
            skipped = report.skipped,
            "posted batch"
        );
        Ok(report)
    }

    async fn post_once(&self, transfer_ids: &[Uuid]) -> Result<PostingReport, PostingError> {
        let mut steps = StepTimer::new();
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL SERIALIZABLE")
            .await?;
        sqlx::raw_sql(POSTING_PREAMBLE).execute(&mut *tx).await?;
        steps.lap("gate");
        let transfers = load_pending(&mut tx, transfer_ids).await?;
        steps.lap("load");
        if transfers.is_empty() {
            tx.commit().await?;
            return Ok(PostingReport {
                skipped: transfer_ids.len(),
                ..PostingReport::default()
            });
        }
        let mut accounts = lock_accounts(&mut tx, &transfers).await?;
        steps.lap("lock");
        let applied = apply_batch(&mut accounts, &transfers);
        if !entries_balance(&applied.entries) {
            return Err(PostingError::Invariant(
                "batch entries do not sum to zero".into(),
            ));
        }
        insert_entries(&mut tx, &applied, &accounts).await?;
        steps.lap("entries");
        update_balances(&mut tx, &applied, &accounts).await?;
        steps.lap("balances");
        let changed = update_statuses(&mut tx, &applied).await?;
        steps.lap("statuses");
        // The gate taken above is the event sequence lock too (README, "Events and webhooks").
        events::transfer::record_rows(&mut tx, changed).await?;
        steps.lap("events");
        self.failpoint.hit(Failpoint::CrashBeforeCommit);
        tx.commit().await?;
        steps.lap("commit");
        self.failpoint.hit(Failpoint::CrashAfterCommit);
        debug!(transfers = transfers.len(), steps = %steps, "posting transaction");
        Ok(summarise(&applied, transfers, transfer_ids.len()))
    }
}

/// Where a posting transaction spends its time, for profiling (debug log, and the
/// `ferry_posting_step_seconds` histogram).
struct StepTimer {
    last: Instant,
    laps: Vec<(&'static str, f64)>,
}

impl StepTimer {
    fn new() -> Self {
        Self {
            last: Instant::now(),
            laps: Vec::new(),
        }
    }

    fn lap(&mut self, step: &'static str) {
        let now = Instant::now();
        let seconds = (now - self.last).as_secs_f64();
        metrics::histogram!("ferry_posting_step_seconds", "step" => step).record(seconds);
        self.laps.push((step, seconds));
        self.last = now;
    }
}

impl std::fmt::Display for StepTimer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (step, seconds) in &self.laps {
            write!(f, "{step}={:.1}ms ", seconds * 1000.0)?;
        }
        Ok(())
    }
}

fn summarise(
    applied: &Applied,
    transfers: Vec<PendingTransfer>,
    requested: usize,
) -> PostingReport {
    let mut report = PostingReport {
        skipped: requested - applied.outcomes.len(),
        ..PostingReport::default()
    };
    let outcomes: HashMap<Uuid, Outcome> = applied.outcomes.iter().copied().collect();
    report.outcomes = transfers
        .into_iter()
        .filter_map(|transfer| {
            let outcome = *outcomes.get(&transfer.id)?;
            Some(PostedTransfer { transfer, outcome })
        })
        .collect();
    for (_, outcome) in &applied.outcomes {
        match outcome {
            Outcome::Posted => report.posted += 1,
            Outcome::Failed(code) => {
                report.failed += 1;
                metrics::counter!("ferry_transfers_failed_total", "code" => code.as_str())
                    .increment(1);
            }
        }
    }
    report
}

// The posting statements spell "pending" as `status NOT IN ('in_review', 'posted', 'failed')`
// (the same thing under the table's CHECK) so the planner cannot match the partial index
// `transfers_pending_by_age`: with stale statistics it scanned every pending transfer per
// batch (O(backlog), measured 84 ms for 1,200 transfers) instead of probing the primary key.
// A transfer held for review (`in_review`) is not posted until a reviewer approves it.
async fn load_pending(
    tx: &mut Transaction<'_, Postgres>,
    transfer_ids: &[Uuid],
) -> Result<Vec<PendingTransfer>, PostingError> {
    let rows: Vec<PendingTransferRow> = sqlx::query_as(
        "SELECT id, ledger, from_account, to_account, amount, currency, \
           (extract(epoch FROM created_at) * 1000)::bigint AS accepted_at_ms FROM transfers \
         WHERE id = ANY($1) AND status NOT IN ('in_review', 'posted', 'failed') \
         ORDER BY created_at, id",
    )
    .bind(transfer_ids)
    .fetch_all(&mut **tx)
    .await?;
    rows.into_iter().map(PendingTransfer::try_from).collect()
}

/// A pending `transfers` row as posting reads it. The currency is parsed after decoding, so a
/// stored currency this version does not know is [`PostingError::Invariant`] (which the
/// combiner answers by posting each job's transfers on their own), not a decode error.
#[derive(sqlx::FromRow)]
struct PendingTransferRow {
    id: Uuid,
    ledger: String,
    from_account: String,
    to_account: String,
    amount: Decimal,
    currency: String,
    accepted_at_ms: i64,
}

impl TryFrom<PendingTransferRow> for PendingTransfer {
    type Error = PostingError;
    fn try_from(row: PendingTransferRow) -> Result<Self, Self::Error> {
        let currency = parse_currency(row.currency)?;
        let id = row.id;
        // Both accounts are looked up in the transfer's own ledger: an id that exists only in
        // another ledger is not found, so no transfer can move another ledger's money.
        let ledger = LedgerName::from_trusted(row.ledger);
        let account = |id: String| AccountKey::new(ledger.clone(), AccountId::from_trusted(id));
        Ok(Self {
            id,
            from_account: account(row.from_account),
            to_account: account(row.to_account),
            amount: Amount::new(row.amount, currency).map_err(|e| {
                PostingError::Invariant(format!("transfer {id} holds a bad amount: {e}"))
            })?,
            accepted_at_ms: row.accepted_at_ms,
        })
    }
}

async fn lock_accounts(
    tx: &mut Transaction<'_, Postgres>,
    transfers: &[PendingTransfer],
) -> Result<HashMap<AccountKey, LockedAccount>, PostingError> {
    let mut keys: Vec<&AccountKey> = transfers
        .iter()
        .flat_map(|t| [&t.from_account, &t.to_account])
        .collect();
    keys.sort_unstable();
    keys.dedup();
    let (ledgers, ids): (Vec<&str>, Vec<&str>) = keys
        .into_iter()
        .map(|k| (k.ledger.as_str(), k.id.as_str()))
        .unzip();
    // Locked in (ledger, id) order, as every other writer of account rows does.
    let rows: Vec<LockedAccountRow> = sqlx::query_as(
        "SELECT a.ledger, a.id, a.no, a.currency, a.balance, a.allow_overdraft, a.status \
         FROM accounts a JOIN unnest($1::text[], $2::text[]) AS k(ledger, id) \
           ON a.ledger = k.ledger AND a.id = k.id \
         ORDER BY a.ledger, a.id FOR UPDATE OF a",
    )
    .bind(&ledgers)
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await?;
    rows.into_iter()
        .map(|row| {
            let key = AccountKey::new(
                LedgerName::from_trusted(row.ledger),
                AccountId::from_trusted(row.id),
            );
            let account = LockedAccount {
                no: row.no,
                currency: parse_currency(row.currency)?,
                balance: row.balance,
                allow_overdraft: row.allow_overdraft,
                status: row.status,
            };
            Ok((key, account))
        })
        .collect()
}

/// An `accounts` row locked for posting; its currency is parsed as in [`PendingTransferRow`],
/// its status strictly (an unknown status fails the batch rather than moving money).
#[derive(sqlx::FromRow)]
struct LockedAccountRow {
    ledger: String,
    id: String,
    no: i64,
    currency: String,
    balance: Decimal,
    allow_overdraft: bool,
    #[sqlx(try_from = "String")]
    status: AccountStatus,
}

fn parse_currency(code: String) -> Result<Currency, PostingError> {
    Currency::parse(code.trim())
        .map_err(|e| PostingError::Invariant(format!("stored currency is invalid: {e}")))
}

async fn insert_entries(
    tx: &mut Transaction<'_, Postgres>,
    applied: &Applied,
    accounts: &HashMap<AccountKey, LockedAccount>,
) -> Result<(), PostingError> {
    if applied.entries.is_empty() {
        return Ok(());
    }
    let transfer_ids: Vec<Uuid> = applied.entries.iter().map(|e| e.transfer_id).collect();
    let account_nos = applied
        .entries
        .iter()
        .map(|e| locked(accounts, &e.account).map(|a| a.no))
        .collect::<Result<Vec<i64>, _>>()?;
    let sides: Vec<&str> = applied.entries.iter().map(|e| e.side.as_str()).collect();
    let amounts: Vec<Decimal> = applied.entries.iter().map(|e| e.amount).collect();
    let currencies: Vec<&str> = applied.entries.iter().map(|e| e.currency.code()).collect();
    let inserted = sqlx::query(
        "INSERT INTO entries (transfer_id, account_no, side, amount, currency) \
         SELECT * FROM unnest($1::uuid[], $2::int8[], $3::text[], $4::numeric[], $5::text[])",
    )
    .bind(&transfer_ids)
    .bind(&account_nos)
    .bind(&sides)
    .bind(&amounts)
    .bind(&currencies)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    expect_rows("entries inserted", inserted, applied.entries.len())
}

/// A locked account; an entry or delta on an account posting did not lock is an invariant
/// violation (apply only moves money between locked accounts).
fn locked<'a>(
    accounts: &'a HashMap<AccountKey, LockedAccount>,
    key: &AccountKey,
) -> Result<&'a LockedAccount, PostingError> {
    accounts
        .get(key)
        .ok_or_else(|| PostingError::Invariant(format!("account {key} was not locked")))
}

async fn update_balances(
    tx: &mut Transaction<'_, Postgres>,
    applied: &Applied,
    expected: &HashMap<AccountKey, LockedAccount>,
) -> Result<(), PostingError> {
    if applied.balance_deltas.is_empty() {
        return Ok(());
    }
    let mut nos = Vec::with_capacity(applied.balance_deltas.len());
    let mut deltas = Vec::with_capacity(applied.balance_deltas.len());
    let mut computed = HashMap::with_capacity(applied.balance_deltas.len());
    for (key, delta) in &applied.balance_deltas {
        let account = locked(expected, key)?;
        nos.push(account.no);
        deltas.push(*delta);
        computed.insert(account.no, (key, account.balance));
    }
    let rows: Vec<UpdatedBalance> = sqlx::query_as(
        "UPDATE accounts AS a SET balance = a.balance + d.delta \
         FROM unnest($1::int8[], $2::numeric[]) AS d(no, delta) \
         WHERE a.no = d.no RETURNING a.no, a.balance",
    )
    .bind(&nos)
    .bind(&deltas)
    .fetch_all(&mut **tx)
    .await?;
    expect_rows("balances updated", rows.len() as u64, nos.len())?;
    for row in rows {
        let Some((key, computed)) = computed.get(&row.no) else {
            return Err(PostingError::Invariant(format!(
                "account number {} was updated but not asked for",
                row.no
            )));
        };
        if *computed != row.balance {
            return Err(PostingError::Invariant(format!(
                "account {key}: database balance {} but posting computed {computed}",
                row.balance
            )));
        }
    }
    Ok(())
}

/// An account's balance as the balance UPDATE returns it.
#[derive(sqlx::FromRow)]
struct UpdatedBalance {
    no: i64,
    balance: Decimal,
}

/// Moves the batch's transfers to their outcomes; returns them as they now are, for their
/// events.
async fn update_statuses(
    tx: &mut Transaction<'_, Postgres>,
    applied: &Applied,
) -> Result<Vec<TransferRow>, PostingError> {
    let mut ids = Vec::with_capacity(applied.outcomes.len());
    let mut statuses = Vec::with_capacity(applied.outcomes.len());
    let mut codes: Vec<Option<&str>> = Vec::with_capacity(applied.outcomes.len());
    for (id, outcome) in &applied.outcomes {
        ids.push(*id);
        match outcome {
            Outcome::Posted => {
                statuses.push("posted");
                codes.push(None);
            }
            Outcome::Failed(code) => {
                statuses.push("failed");
                codes.push(Some(code.as_str()));
            }
        }
    }
    let updated: Vec<TransferRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE transfers AS t SET status = u.status, failure_code = u.failure_code, \
           attempts = t.attempts + 1, updated_at = now(), last_error = NULL, \
           posted_at = CASE WHEN u.status = 'posted' THEN now() END, \
           failed_at = CASE WHEN u.status = 'failed' THEN now() END \
         FROM unnest($1::uuid[], $2::text[], $3::text[]) AS u(id, status, failure_code) \
         WHERE t.id = u.id AND t.status NOT IN ('in_review', 'posted', 'failed') \
         RETURNING {}",
        events::transfer::qualified_columns("t")
    )))
    .bind(&ids)
    .bind(&statuses)
    .bind(&codes)
    .fetch_all(&mut **tx)
    .await?;
    expect_rows("transfer statuses updated", updated.len() as u64, ids.len())?;
    Ok(updated)
}

fn expect_rows(what: &str, actual: u64, expected: usize) -> Result<(), PostingError> {
    if actual != expected as u64 {
        return Err(PostingError::Invariant(format!(
            "{what}: {actual} rows, expected {expected}"
        )));
    }
    Ok(())
}
