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
use sqlx::PgPool;
use tracing::{debug, info, warn};
use uuid::Uuid;

use super::apply::{Applied, Outcome, PendingTransfer, apply_batch, entries_balance};
use super::load::load_and_lock;
use super::write::{update_statuses, write_ledger};
use crate::events;
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
