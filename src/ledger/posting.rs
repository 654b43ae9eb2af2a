//! The posting engine: moves pending transfers into the double-entry ledger.
//!
//! One SERIALIZABLE transaction posts a whole batch:
//! 1. `LOCK TABLE ledger_posting_gate` — the only statement PostgreSQL runs in a SERIALIZABLE
//!    transaction *before* fixing its snapshot, so concurrent posters queue here instead of
//!    reading a snapshot that a competitor makes stale (which would end in 40001 under
//!    contention and turn a hot account into a retry storm). Throughput comes from batch size,
//!    not from concurrent posters, which on shared accounts can only fail each other.
//! 2. read the batch's still-`pending` transfers and its `held` holds claimed for a capture or
//!    void (the status guard that makes a redelivered job a no-op), and lock their accounts in
//!    id order (`FOR UPDATE`, also fencing writers outside ferry), in one statement;
//! 3. apply them in memory one by one ([`super::apply`]): move money, place a hold, capture or
//!    void one;
//! 4. write entries (with each account's balance after them), hold lines, balances and
//!    reservations in one statement, checking that the database agrees with the in-memory
//!    result before COMMIT; then statuses, which return each transfer with its anomaly flags;
//! 5. write each transfer's event (`transfer.posted`, `.failed`, `.held`, `.voided`,
//!    `.reversed`; one statement).
//!
//! Six round trips in all, every one under the gate and so paid by every job waiting behind
//! it: `BEGIN` with the session settings and the gate, load (and lock), ledger, statuses,
//! events, `COMMIT` (README, "Jobs, retries and crashes": where a posting transaction's time
//! goes).
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
    AccountDelta, Applied, EntryLine, HoldLine, Instruction, LockedAccount, Outcome,
    PendingTransfer, apply_batch, entries_balance,
};
use crate::domain::{
    AccountId, AccountKey, AccountStatus, Amount, Currency, LedgerName, TransferStatus,
};
use crate::events::{
    self,
    transfer::{FlaggedTransferRow, TransferView},
};
use crate::failpoint::Failpoint;
use crate::retry::{RetryClass, RetryPolicy, classify};

/// Statements that open every posting transaction, `BEGIN` included: one round trip (a simple
/// query), and no snapshot taken before the gate is held. Each round trip under the gate costs
/// every job queued behind it (BENCHMARKS.md, "Where the database's time goes").
///
/// The timeouts stop a stuck poster from holding the gate: a lock wait ends as 55P03
/// (transient), an abandoned open transaction is killed by the server.
///
/// Every statement of a posting transaction looks rows up by key, so each is planned as index
/// probes: O(batch), whatever the size of the ledger. Left to itself the planner hashed all of
/// `accounts` for every batch of a few thousand (measured: 31–66 ms per batch at 100k accounts,
/// growing with the table; 12 ms as index probes — BENCHMARKS.md). Since those plans do not
/// depend on the parameters, each statement is planned once per connection and the plan kept
/// (`force_generic_plan`): PostgreSQL otherwise re-planned every one of them on every call, as
/// a custom plan for its arrays, at 0.2–0.3 ms each under the gate (`pg_stat_statements`:
/// plans = calls), more than most of them took to run for a small batch.
const POSTING_BEGIN: &str = "BEGIN ISOLATION LEVEL SERIALIZABLE; \
     SET LOCAL lock_timeout = '10s'; \
     SET LOCAL idle_in_transaction_session_timeout = '30s'; \
     SET LOCAL enable_seqscan = off; \
     SET LOCAL enable_hashjoin = off; \
     SET LOCAL enable_mergejoin = off; \
     SET LOCAL plan_cache_mode = force_generic_plan; \
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
    pub held: usize,
    pub voided: usize,
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
        metrics::counter!("ferry_transfers_held_total").increment(report.held as u64);
        metrics::counter!("ferry_transfers_voided_total").increment(report.voided as u64);
        info!(
            posted = report.posted,
            failed = report.failed,
            held = report.held,
            voided = report.voided,
            skipped = report.skipped,
            "posted batch"
        );
        Ok(report)
    }

    async fn post_once(&self, transfer_ids: &[Uuid]) -> Result<PostingReport, PostingError> {
        let mut steps = StepTimer::new();
        let mut tx = self.pool.begin_with(POSTING_BEGIN).await?;
        steps.lap(PostingStep::Gate);
        let (transfers, mut accounts) = load_and_lock(&mut tx, transfer_ids).await?;
        steps.lap(PostingStep::Load);
        if transfers.is_empty() {
            tx.commit().await?;
            return Ok(PostingReport {
                skipped: transfer_ids.len(),
                ..PostingReport::default()
            });
        }
        let applied = apply_batch(&mut accounts, &transfers);
        if !entries_balance(&applied.entries) {
            return Err(PostingError::Invariant(
                "batch entries do not sum to zero".into(),
            ));
        }
        write_ledger(&mut tx, &applied, &accounts).await?;
        steps.lap(PostingStep::Ledger);
        let changed = update_statuses(&mut tx, &applied, &transfers).await?;
        steps.lap(PostingStep::Statuses);
        // The gate taken above is the event sequence lock too (README, "Events and webhooks").
        events::transfer::record_views(&mut tx, &changed).await?;
        steps.lap(PostingStep::Events);
        self.failpoint.hit(Failpoint::CrashBeforeCommit);
        tx.commit().await?;
        steps.lap(PostingStep::Commit);
        self.failpoint.hit(Failpoint::CrashAfterCommit);
        debug!(transfers = transfers.len(), steps = %steps, "posting transaction");
        Ok(summarise(&applied, transfers, transfer_ids.len()))
    }
}

/// A step of a posting transaction, timed by `ferry_posting_step_seconds{step}` (README, "Jobs,
/// retries and crashes"); `ferry bench --scenario latency` prints each one's mean per
/// transaction. Each is one round trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostingStep {
    /// `BEGIN`, the preamble, and the wait for `ledger_posting_gate`.
    Gate,
    /// The postable transfers and their accounts, locked.
    Load,
    /// Entries, hold lines, balances and reservations (one statement).
    Ledger,
    /// Statuses, returning the transfers as their events show them (anomaly flags included).
    Statuses,
    Events,
    Commit,
}

impl PostingStep {
    pub const ALL: [PostingStep; 6] = [
        Self::Gate,
        Self::Load,
        Self::Ledger,
        Self::Statuses,
        Self::Events,
        Self::Commit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gate => "gate",
            Self::Load => "load",
            Self::Ledger => "ledger",
            Self::Statuses => "statuses",
            Self::Events => "events",
            Self::Commit => "commit",
        }
    }
}

/// Where a posting transaction spends its time, for profiling (debug log, and the
/// `ferry_posting_step_seconds` histogram).
struct StepTimer {
    last: Instant,
    laps: Vec<(PostingStep, f64)>,
}

impl StepTimer {
    fn new() -> Self {
        Self {
            last: Instant::now(),
            laps: Vec::new(),
        }
    }

    fn lap(&mut self, step: PostingStep) {
        let now = Instant::now();
        let seconds = (now - self.last).as_secs_f64();
        metrics::histogram!("ferry_posting_step_seconds", "step" => step.as_str()).record(seconds);
        self.laps.push((step, seconds));
        self.last = now;
    }
}

impl std::fmt::Display for StepTimer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (step, seconds) in &self.laps {
            write!(f, "{}={:.1}ms ", step.as_str(), seconds * 1000.0)?;
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
            Outcome::Held => report.held += 1,
            Outcome::Voided => report.voided += 1,
            Outcome::Failed(code) => {
                report.failed += 1;
                metrics::counter!("ferry_transfers_failed_total", "code" => code.as_str())
                    .increment(1);
            }
        }
    }
    report
}

// The posting statements spell "pending" with `TransferStatus::sql_is` so the planner cannot
// match the partial index `transfers_pending_by_age`: with stale statistics it scanned every
// pending transfer per batch (O(backlog), measured 84 ms for 1,200 transfers) instead of
// probing the primary key. A transfer held for review (`in_review`) is not posted until a reviewer
// approves it; a `held` hold is taken only once a capture or void is claimed on it.
fn postable(alias: &str) -> String {
    format!(
        "({} OR ({alias}.status = 'held' AND {alias}.hold_action IS NOT NULL))",
        TransferStatus::Pending.sql_is(&format!("{alias}.status"))
    )
}

/// Reads the batch's postable transfers, in acceptance order, and locks the accounts they name
/// — one statement, one round trip under the gate. The accounts are locked in (ledger, id)
/// order, as every other writer of account rows does (`locked`, evaluated once before any row
/// is returned); each transfer row then carries its two accounts as that lock left them (a row
/// changed since the transaction's snapshot fails the `FOR UPDATE` with 40001, so what is read
/// is what is locked). An account that does not exist in the transfer's ledger reads as NULLs.
async fn load_and_lock(
    tx: &mut Transaction<'_, Postgres>,
    transfer_ids: &[Uuid],
) -> Result<(Vec<PendingTransfer>, HashMap<AccountKey, LockedAccount>), PostingError> {
    let account_columns = |alias: &str| {
        [
            "no",
            "currency",
            "balance",
            "pending_debits",
            "pending_credits",
            "allow_overdraft",
            "status",
        ]
        .iter()
        .map(|column| format!("{alias}.{column} AS {alias}_{column}"))
        .collect::<Vec<_>>()
        .join(", ")
    };
    let rows: Vec<PendingRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "WITH pending AS MATERIALIZED ( \
           SELECT id, ledger, from_account, to_account, amount, currency, status, mode, \
             hold_action, capture_amount, created_at FROM transfers t \
           WHERE id = ANY($1) AND {postable} \
         ), locked AS MATERIALIZED ( \
           SELECT a.no FROM accounts a \
           JOIN (SELECT ledger, from_account AS id FROM pending \
                 UNION SELECT ledger, to_account FROM pending) AS k \
             ON a.ledger = k.ledger AND a.id = k.id \
           ORDER BY a.ledger, a.id FOR UPDATE OF a \
         ) \
         SELECT p.id, p.ledger, p.from_account, p.to_account, p.amount, p.currency, p.status, \
           p.mode, p.hold_action, p.capture_amount, \
           (extract(epoch FROM p.created_at) * 1000)::bigint AS accepted_at_ms, {from}, {to} \
         FROM pending p \
         LEFT JOIN accounts f ON f.ledger = p.ledger AND f.id = p.from_account \
         LEFT JOIN accounts t ON t.ledger = p.ledger AND t.id = p.to_account \
         WHERE (SELECT count(*) FROM locked) >= 0 \
         ORDER BY p.created_at, p.id",
        postable = postable("t"),
        from = account_columns("f"),
        to = account_columns("t"),
    )))
    .bind(transfer_ids)
    .fetch_all(&mut **tx)
    .await?;
    let mut transfers = Vec::with_capacity(rows.len());
    let mut accounts = HashMap::new();
    for row in rows {
        let transfer = PendingTransfer::try_from(row.transfer)?;
        for (key, columns) in [
            (&transfer.from_account, row.from),
            (&transfer.to_account, row.to),
        ] {
            if let Some(account) = columns.locked()? {
                accounts.insert(key.clone(), account);
            }
        }
        transfers.push(transfer);
    }
    Ok((transfers, accounts))
}

/// A transfer as [`load_and_lock`] reads it, with its two accounts.
struct PendingRow {
    transfer: PendingTransferRow,
    from: AccountColumns,
    to: AccountColumns,
}

impl<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> for PendingRow {
    fn from_row(row: &'r sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            transfer: PendingTransferRow::from_row(row)?,
            from: AccountColumns::read(row, "f")?,
            to: AccountColumns::read(row, "t")?,
        })
    }
}

/// An account's columns as [`load_and_lock`] reads them (prefixed `f_` or `t_`); all NULL
/// when the account does not exist in the transfer's ledger.
struct AccountColumns {
    no: Option<i64>,
    currency: Option<String>,
    balance: Option<Decimal>,
    pending_debits: Option<Decimal>,
    pending_credits: Option<Decimal>,
    allow_overdraft: Option<bool>,
    status: Option<String>,
}

impl AccountColumns {
    fn read(row: &sqlx::postgres::PgRow, alias: &str) -> Result<Self, sqlx::Error> {
        use sqlx::Row;
        let column = |name: &str| format!("{alias}_{name}");
        Ok(Self {
            no: row.try_get(column("no").as_str())?,
            currency: row.try_get(column("currency").as_str())?,
            balance: row.try_get(column("balance").as_str())?,
            pending_debits: row.try_get(column("pending_debits").as_str())?,
            pending_credits: row.try_get(column("pending_credits").as_str())?,
            allow_overdraft: row.try_get(column("allow_overdraft").as_str())?,
            status: row.try_get(column("status").as_str())?,
        })
    }

    /// The locked account; `None` when it does not exist. Its currency is parsed as in
    /// [`PendingTransferRow`], its status strictly (an unknown status fails the batch rather
    /// than moving money).
    fn locked(self) -> Result<Option<LockedAccount>, PostingError> {
        let Some(no) = self.no else {
            return Ok(None);
        };
        let missing = || PostingError::Invariant(format!("account number {no} read incomplete"));
        let status = self.status.ok_or_else(missing)?;
        Ok(Some(LockedAccount {
            no,
            currency: parse_currency(self.currency.ok_or_else(missing)?)?,
            balance: self.balance.ok_or_else(missing)?,
            pending_debits: self.pending_debits.ok_or_else(missing)?,
            pending_credits: self.pending_credits.ok_or_else(missing)?,
            allow_overdraft: self.allow_overdraft.ok_or_else(missing)?,
            status: AccountStatus::try_from(status.clone()).map_err(|_| {
                PostingError::Invariant(format!("account number {no} has status {status:?}"))
            })?,
        }))
    }
}

/// A postable `transfers` row as posting reads it. The currency is parsed after decoding, so a
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
    status: String,
    mode: String,
    hold_action: Option<String>,
    capture_amount: Option<Decimal>,
    accepted_at_ms: i64,
}

impl PendingTransferRow {
    fn instruction(&self) -> Result<Instruction, PostingError> {
        let id = self.id;
        match (
            self.status.as_str(),
            self.mode.as_str(),
            self.hold_action.as_deref(),
        ) {
            ("pending", "transfer", _) => Ok(Instruction::Transfer),
            ("pending", "hold", _) => Ok(Instruction::Hold),
            ("held", "hold", Some("capture")) => Ok(Instruction::Capture {
                amount: self.capture_amount.unwrap_or(self.amount),
            }),
            ("held", "hold", Some("void" | "expire")) => Ok(Instruction::Void),
            (status, mode, action) => Err(PostingError::Invariant(format!(
                "transfer {id} is {status} ({mode}, settlement {action:?}): nothing to post"
            ))),
        }
    }
}

impl TryFrom<PendingTransferRow> for PendingTransfer {
    type Error = PostingError;
    fn try_from(row: PendingTransferRow) -> Result<Self, Self::Error> {
        let instruction = row.instruction()?;
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
            instruction,
        })
    }
}

fn parse_currency(code: String) -> Result<Currency, PostingError> {
    Currency::parse(code.trim())
        .map_err(|e| PostingError::Invariant(format!("stored currency is invalid: {e}")))
}

/// Writes what the batch did to the ledger in one statement (one round trip under the gate):
/// entries (with each account's balance after them), hold lines, and each touched account's
/// balance and reservations; then checks that the database agrees with the in-memory result.
async fn write_ledger(
    tx: &mut Transaction<'_, Postgres>,
    applied: &Applied,
    accounts: &HashMap<AccountKey, LockedAccount>,
) -> Result<(), PostingError> {
    let entries = EntryColumns::of(&applied.entries, accounts)?;
    let hold_lines = HoldLineColumns::of(&applied.hold_lines, accounts)?;
    let balances = BalanceColumns::of(&applied.deltas, accounts)?;
    // `statement_timestamp()`, not the transaction's start: this statement runs under the
    // gate, after the previous holder committed, so within an account `created_at` grows
    // with `id` — what balance-at-an-instant reads rely on. The three parts touch different
    // tables, so running them as one statement's parts (one snapshot) changes nothing they see.
    let written: WrittenLedger = sqlx::query_as(
        "WITH new_entries AS ( \
           INSERT INTO entries (transfer_id, account_no, side, amount, currency, balance_after, \
             created_at) \
           SELECT t.*, statement_timestamp() FROM unnest($1::uuid[], $2::int8[], $3::text[], \
             $4::numeric[], $5::text[], $6::numeric[]) AS t \
           RETURNING 1 \
         ), new_hold_lines AS ( \
           INSERT INTO hold_lines (transfer_id, account_no, kind, pending_debits_after, \
             created_at) \
           SELECT t.*, statement_timestamp() FROM unnest($7::uuid[], $8::int8[], $9::text[], \
             $10::numeric[]) AS t \
           RETURNING 1 \
         ), balances AS ( \
           UPDATE accounts AS a SET balance = a.balance + d.balance, \
             pending_debits = a.pending_debits + d.pending_debits, \
             pending_credits = a.pending_credits + d.pending_credits \
           FROM unnest($11::int8[], $12::numeric[], $13::numeric[], $14::numeric[]) \
             AS d(no, balance, pending_debits, pending_credits) \
           WHERE a.no = d.no RETURNING a.no, a.balance, a.pending_debits, a.pending_credits \
         ) \
         SELECT (SELECT count(*) FROM new_entries) AS entries, \
           (SELECT count(*) FROM new_hold_lines) AS hold_lines, \
           coalesce(array_agg(b.no), '{}') AS nos, \
           coalesce(array_agg(b.balance), '{}') AS balances, \
           coalesce(array_agg(b.pending_debits), '{}') AS pending_debits, \
           coalesce(array_agg(b.pending_credits), '{}') AS pending_credits \
         FROM balances b",
    )
    .bind(&entries.transfer_ids)
    .bind(&entries.account_nos)
    .bind(&entries.sides)
    .bind(&entries.amounts)
    .bind(&entries.currencies)
    .bind(&entries.balances_after)
    .bind(&hold_lines.transfer_ids)
    .bind(&hold_lines.account_nos)
    .bind(&hold_lines.kinds)
    .bind(&hold_lines.pending_debits_after)
    .bind(&balances.nos)
    .bind(&balances.deltas.balance)
    .bind(&balances.deltas.pending_debits)
    .bind(&balances.deltas.pending_credits)
    .fetch_one(&mut **tx)
    .await?;
    expect_rows(
        "entries inserted",
        written.entries as u64,
        applied.entries.len(),
    )?;
    expect_rows(
        "hold lines inserted",
        written.hold_lines as u64,
        applied.hold_lines.len(),
    )?;
    expect_rows(
        "balances updated",
        written.nos.len() as u64,
        balances.nos.len(),
    )?;
    for (n, no) in written.nos.iter().enumerate() {
        let Some((key, computed)) = balances.computed.get(no) else {
            return Err(PostingError::Invariant(format!(
                "account number {no} was updated but not asked for"
            )));
        };
        let stored = AccountDelta {
            balance: written.balances[n],
            pending_debits: written.pending_debits[n],
            pending_credits: written.pending_credits[n],
        };
        if *computed != stored {
            return Err(PostingError::Invariant(format!(
                "account {key}: database has {stored:?} but posting computed {computed:?}"
            )));
        }
    }
    Ok(())
}

/// What [`write_ledger`]'s statement reports: rows inserted, and each updated account's
/// balance and reservations as stored (arrays of one length, in no particular order).
#[derive(sqlx::FromRow)]
struct WrittenLedger {
    entries: i64,
    hold_lines: i64,
    nos: Vec<i64>,
    balances: Vec<Decimal>,
    pending_debits: Vec<Decimal>,
    pending_credits: Vec<Decimal>,
}

/// The batch's entries as the statement's column arrays.
struct EntryColumns<'a> {
    transfer_ids: Vec<Uuid>,
    account_nos: Vec<i64>,
    sides: Vec<&'a str>,
    amounts: Vec<Decimal>,
    currencies: Vec<&'a str>,
    balances_after: Vec<Decimal>,
}

impl<'a> EntryColumns<'a> {
    fn of(
        entries: &'a [EntryLine],
        accounts: &HashMap<AccountKey, LockedAccount>,
    ) -> Result<Self, PostingError> {
        Ok(Self {
            transfer_ids: entries.iter().map(|e| e.transfer_id).collect(),
            account_nos: entries
                .iter()
                .map(|e| locked(accounts, &e.account).map(|a| a.no))
                .collect::<Result<_, _>>()?,
            sides: entries.iter().map(|e| e.side.as_str()).collect(),
            amounts: entries.iter().map(|e| e.amount).collect(),
            currencies: entries.iter().map(|e| e.currency.code()).collect(),
            balances_after: entries.iter().map(|e| e.balance_after).collect(),
        })
    }
}

/// Reservation history: one line on the source account for each hold placed or released.
struct HoldLineColumns {
    transfer_ids: Vec<Uuid>,
    account_nos: Vec<i64>,
    kinds: Vec<&'static str>,
    pending_debits_after: Vec<Decimal>,
}

impl HoldLineColumns {
    fn of(
        lines: &[HoldLine],
        accounts: &HashMap<AccountKey, LockedAccount>,
    ) -> Result<Self, PostingError> {
        Ok(Self {
            transfer_ids: lines.iter().map(|l| l.transfer_id).collect(),
            account_nos: lines
                .iter()
                .map(|l| locked(accounts, &l.account).map(|a| a.no))
                .collect::<Result<_, _>>()?,
            kinds: lines.iter().map(|l| l.kind.as_str()).collect(),
            pending_debits_after: lines.iter().map(|l| l.pending_debits_after).collect(),
        })
    }
}

/// Each touched account's net change as column arrays, and what posting computed it is left
/// at (`apply_batch` left the locked accounts as the batch leaves them), by account number.
struct BalanceColumns<'a> {
    nos: Vec<i64>,
    deltas: DeltaColumns,
    computed: HashMap<i64, (&'a AccountKey, AccountDelta)>,
}

#[derive(Default)]
struct DeltaColumns {
    balance: Vec<Decimal>,
    pending_debits: Vec<Decimal>,
    pending_credits: Vec<Decimal>,
}

impl<'a> BalanceColumns<'a> {
    fn of(
        deltas: &'a HashMap<AccountKey, AccountDelta>,
        accounts: &HashMap<AccountKey, LockedAccount>,
    ) -> Result<Self, PostingError> {
        let mut columns = Self {
            nos: Vec::with_capacity(deltas.len()),
            deltas: DeltaColumns::default(),
            computed: HashMap::with_capacity(deltas.len()),
        };
        for (key, delta) in deltas {
            let account = locked(accounts, key)?;
            columns.nos.push(account.no);
            columns.deltas.balance.push(delta.balance);
            columns.deltas.pending_debits.push(delta.pending_debits);
            columns.deltas.pending_credits.push(delta.pending_credits);
            let after = AccountDelta {
                balance: account.balance,
                pending_debits: account.pending_debits,
                pending_credits: account.pending_credits,
            };
            columns.computed.insert(account.no, (key, after));
        }
        Ok(columns)
    }
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

/// Moves the batch's transfers to their outcomes; returns them as they now are, as their
/// events show them. A placed hold starts its expiry clock here; a capture records what it moved.
async fn update_statuses(
    tx: &mut Transaction<'_, Postgres>,
    applied: &Applied,
    transfers: &[PendingTransfer],
) -> Result<Vec<TransferView>, PostingError> {
    let captures: HashMap<Uuid, Decimal> = transfers
        .iter()
        .filter_map(|t| match t.instruction {
            Instruction::Capture { amount } => Some((t.id, amount)),
            _ => None,
        })
        .collect();
    let len = applied.outcomes.len();
    let mut ids = Vec::with_capacity(len);
    let mut statuses = Vec::with_capacity(len);
    let mut codes: Vec<Option<&str>> = Vec::with_capacity(len);
    let mut captured: Vec<Option<Decimal>> = Vec::with_capacity(len);
    for (id, outcome) in &applied.outcomes {
        ids.push(*id);
        let (status, code) = match outcome {
            Outcome::Posted => ("posted", None),
            Outcome::Held => ("held", None),
            Outcome::Voided => ("voided", None),
            Outcome::Failed(code) => ("failed", Some(code.as_str())),
        };
        statuses.push(status);
        codes.push(code);
        captured.push(
            captures
                .get(id)
                .copied()
                .filter(|_| *outcome == Outcome::Posted),
        );
    }
    let updated: Vec<FlaggedTransferRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE transfers AS t SET status = u.status, failure_code = u.failure_code, \
           attempts = CASE WHEN t.status = 'pending' THEN t.attempts + 1 ELSE t.attempts END, \
           updated_at = now(), last_error = NULL, \
           posted_at = CASE WHEN u.status = 'posted' THEN now() END, \
           failed_at = CASE WHEN u.status = 'failed' THEN now() END, \
           held_at = CASE WHEN u.status = 'held' THEN now() ELSE t.held_at END, \
           hold_expires_at = CASE WHEN u.status = 'held' \
             THEN now() + t.hold_expires_in_secs * interval '1 second' \
             ELSE t.hold_expires_at END, \
           voided_at = CASE WHEN u.status = 'voided' THEN now() END, \
           captured_amount = u.captured \
         FROM unnest($1::uuid[], $2::text[], $3::text[], $4::numeric[]) \
           AS u(id, status, failure_code, captured) \
         WHERE t.id = u.id AND {} \
         RETURNING {}, {}",
        postable("t"),
        events::transfer::qualified_columns("t"),
        events::transfer::flags_column("t")
    )))
    .bind(&ids)
    .bind(&statuses)
    .bind(&codes)
    .bind(&captured)
    .fetch_all(&mut **tx)
    .await?;
    expect_rows("transfer statuses updated", updated.len() as u64, ids.len())?;
    updated
        .into_iter()
        .map(|row| TransferView::try_from(row).map_err(PostingError::Database))
        .collect()
}

fn expect_rows(what: &str, actual: u64, expected: usize) -> Result<(), PostingError> {
    if actual != expected as u64 {
        return Err(PostingError::Invariant(format!(
            "{what}: {actual} rows, expected {expected}"
        )));
    }
    Ok(())
}
