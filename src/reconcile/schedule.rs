//! When reconciliation runs: the cron schedule, and creating a run together with its job.
//!
//! Every replica's scheduler ticks (apalis-cron fires in each process). A tick creates the run
//! for its window and enqueues its job in one transaction; the run's window start is unique
//! for scheduled runs, so only the first replica's insert succeeds and exactly one run happens
//! per window. The job itself is durable: if its worker dies, another runs it.

use std::str::FromStr;

use sqlx::PgPool;

use super::runs::{self, CreateRunError, RunView, Trigger};
use super::window::Window;
use crate::domain::LedgerName;
use crate::queue::payloads::Reconcile;
use crate::queue::{self, EnqueueError, RECONCILE_QUEUE};

/// Default schedule: every five minutes, on the minute (seconds field first).
pub const RECONCILE_CRON_DEFAULT: &str = "0 */5 * * * *";

#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("ledger {0} does not exist")]
    UnknownLedger(LedgerName),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Enqueue(#[from] EnqueueError),
}

impl From<CreateRunError> for ScheduleError {
    fn from(e: CreateRunError) -> Self {
        match e {
            CreateRunError::UnknownLedger(ledger) => Self::UnknownLedger(ledger),
            CreateRunError::Database(e) => Self::Database(e),
        }
    }
}

/// Parses a cron expression (6 or 7 fields, seconds first).
pub fn parse_schedule(expression: &str) -> Result<cron::Schedule, String> {
    cron::Schedule::from_str(expression).map_err(|e| format!("{expression:?}: {e}"))
}

/// Creates a run over `ledger` (every ledger when `None`) for `window` and enqueues its job;
/// `None` if a scheduled run for that window already exists.
pub async fn enqueue_run(
    pool: &PgPool,
    trigger: Trigger,
    window: Window,
    full_scan: bool,
    ledger: Option<&LedgerName>,
) -> Result<Option<RunView>, ScheduleError> {
    let mut tx = pool.begin().await?;
    let run = enqueue_run_in(&mut tx, trigger, window, full_scan, ledger).await?;
    tx.commit().await?;
    Ok(run)
}

/// [`enqueue_run`] inside the caller's transaction, so what the caller records about the run
/// (the audit event of an on-demand run) commits with it or not at all.
pub async fn enqueue_run_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    trigger: Trigger,
    window: Window,
    full_scan: bool,
    ledger: Option<&LedgerName>,
) -> Result<Option<RunView>, ScheduleError> {
    let Some(run) = runs::create(tx, trigger, window, full_scan, ledger).await? else {
        return Ok(None);
    };
    queue::enqueue(tx, RECONCILE_QUEUE, &Reconcile { run_id: run.id }, None).await?;
    Ok(Some(run))
}
