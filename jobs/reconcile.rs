//! `reconcile`: run one reconciliation, and the cron tick that schedules one per window
//! (exactly one across replicas: see `reconcile::schedule`).

use apalis::prelude::{BoxDynError, Data};
use apalis_cron::Tick;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tracing::{debug, info};

use crate::alerts::Alerting;
use crate::queue::payloads::Reconcile;
use crate::reconcile::runs::Trigger;
use crate::reconcile::schedule::enqueue_run;
use crate::reconcile::window::window_closed_by;
use crate::reconcile::{self, NoProgress, ReconcileSettings};

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

/// What the cron worker needs.
#[derive(Clone)]
pub struct SchedulerContext {
    pub pool: PgPool,
    pub schedule: cron::Schedule,
}

pub async fn on_tick(tick: Tick, ctx: Data<SchedulerContext>) -> Result<(), BoxDynError> {
    let seconds = i64::try_from(tick.get_timestamp())?;
    let end: DateTime<Utc> = DateTime::from_timestamp(seconds, 0).ok_or("tick out of range")?;
    let window = window_closed_by(&ctx.schedule, end, chrono::Duration::minutes(5));
    // Scheduled runs check every ledger.
    match enqueue_run(&ctx.pool, Trigger::Schedule, window, false, None).await? {
        Some(run) => info!(run_id = %run.id, start = %window.start, "scheduled reconciliation"),
        None => debug!(start = %window.start, "another replica scheduled this window"),
    }
    Ok(())
}
