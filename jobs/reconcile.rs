//! `reconcile`: run one reconciliation, and the cron tick that schedules one per window.
//!
//! Every replica's scheduler ticks (apalis-cron fires in each process). A tick creates the
//! run for its window and enqueues its job in one transaction; the run's window start is
//! unique for scheduled runs, so only the first replica's insert succeeds and exactly one run
//! happens per window. The job itself is durable: if its worker dies, another runs it.

use std::str::FromStr;

use apalis::prelude::{BoxDynError, Data};
use apalis_cron::Tick;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tracing::{debug, info};
use uuid::Uuid;

use crate::alerts::Alerting;
use crate::queue::{self, RECONCILE_QUEUE};
use crate::reconcile::runs::{self, Trigger};
use crate::reconcile::window::{Window, window_closed_by};
use crate::reconcile::{self, NoProgress, ReconcileSettings};

/// Default schedule: every five minutes, on the minute (seconds field first).
pub const RECONCILE_CRON_DEFAULT: &str = "0 */5 * * * *";

/// The job payload: which run to execute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reconcile {
    pub run_id: Uuid,
}

#[derive(Clone)]
pub struct ReconcileJobContext {
    pub pool: PgPool,
    pub settings: ReconcileSettings,
    pub alerting: Alerting,
}

pub async fn handle(job: Reconcile, ctx: Data<ReconcileJobContext>) -> Result<(), BoxDynError> {
    reconcile::execute(
        &ctx.pool,
        job.run_id,
        &ctx.settings,
        &ctx.alerting,
        &NoProgress,
    )
    .await?;
    Ok(())
}

/// Creates a run for `window` and enqueues its job; `None` if a scheduled run for that
/// window already exists.
pub async fn enqueue_run(
    pool: &PgPool,
    trigger: Trigger,
    window: Window,
    full_scan: bool,
) -> Result<Option<runs::RunView>, BoxDynError> {
    let mut tx = pool.begin().await?;
    let Some(run) = runs::create(&mut tx, trigger, window, full_scan).await? else {
        return Ok(None);
    };
    queue::enqueue(
        &mut tx,
        RECONCILE_QUEUE,
        &Reconcile { run_id: run.id },
        None,
    )
    .await?;
    tx.commit().await?;
    Ok(Some(run))
}

/// What the cron worker needs.
#[derive(Clone)]
pub struct SchedulerContext {
    pub pool: PgPool,
    pub schedule: cron::Schedule,
}

/// Parses a cron expression (6 or 7 fields, seconds first).
pub fn parse_schedule(expression: &str) -> Result<cron::Schedule, String> {
    cron::Schedule::from_str(expression).map_err(|e| format!("{expression:?}: {e}"))
}

pub async fn on_tick(tick: Tick, ctx: Data<SchedulerContext>) -> Result<(), BoxDynError> {
    let seconds = i64::try_from(tick.get_timestamp())?;
    let end: DateTime<Utc> = DateTime::from_timestamp(seconds, 0).ok_or("tick out of range")?;
    let window = window_closed_by(&ctx.schedule, end, chrono::Duration::minutes(5));
    match enqueue_run(&ctx.pool, Trigger::Schedule, window, false).await? {
        Some(run) => info!(run_id = %run.id, start = %window.start, "scheduled reconciliation"),
        None => debug!(start = %window.start, "another replica scheduled this window"),
    }
    Ok(())
}
