//! The rescuer: takes back posting jobs that have been running too long.
//!
//! apalis recovers a job only when its worker's name stops heartbeating. A worker that lives
//! on while a job it fetched is lost — a handler future dropped when its worker restarted, an
//! ack that never reached a restarting database — keeps the job `Running` under a live name
//! forever. Modelled on River's job rescuer (`maintenance/job_rescuer.go`), every worker
//! process periodically returns any posting job `Queued` or `Running` for longer than
//! `FERRY_JOB_RESCUE_AFTER_SECS` (default 60 s; posting takes milliseconds) to `Pending`,
//! whether or not its worker looks alive. Safe because posting is idempotent per transfer: a
//! rescued job that was in fact still running posts nothing twice, and its late ack is ignored
//! (apalis acks only jobs still locked by the acking worker). Replicas may rescue at once:
//! each job row is claimed with `FOR UPDATE SKIP LOCKED`.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{POST_TRANSFERS_QUEUE, max_attempts_for};

/// Default bound on how long a posting job may run before it is rescued: posting takes
/// milliseconds, so a minute is far past any live job.
pub const RESCUE_AFTER_DEFAULT: Duration = Duration::from_secs(60);
/// A shorter rescue bound would take back jobs that are merely waiting for the poster.
pub const RESCUE_AFTER_MIN: Duration = Duration::from_secs(5);
/// Shortest rescue pass interval; passes run six times per rescue bound.
const RESCUE_INTERVAL_MS_MIN: u64 = 500;
const RESCUE_INTERVAL_MS_MAX: u64 = 10_000;

/// One job taken back.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Rescued {
    pub job_id: String,
    /// The worker that held it.
    pub old_worker: Option<String>,
    /// Backend attempts after this rescue; at the limit the job is left dead for
    /// reconciliation to report and re-drive.
    pub attempts: i32,
    pub dead: bool,
}

/// Returns posting jobs locked longer than `running_longer_than` to the queue (or, out of
/// attempts, leaves them `Failed`), and says which.
pub async fn rescue_stuck_jobs(
    pool: &PgPool,
    running_longer_than: Duration,
) -> Result<Vec<Rescued>, sqlx::Error> {
    let rescued: Vec<Rescued> = sqlx::query_as(
        "WITH stuck AS ( \
           SELECT id, lock_by FROM apalis.jobs \
           WHERE job_type = $1 AND status IN ('Queued', 'Running') \
             AND lock_at < now() - make_interval(secs => $2) \
           FOR UPDATE SKIP LOCKED) \
         UPDATE apalis.jobs j \
         SET status = CASE WHEN j.attempts + 1 >= $3 THEN 'Failed' ELSE 'Pending' END, \
             attempts = j.attempts + 1, lock_by = NULL, lock_at = NULL, \
             done_at = CASE WHEN j.attempts + 1 >= $3 THEN now() END, \
             last_result = jsonb_build_object('Err', format( \
               'rescued by ferry: running longer than %s s under worker %s', $2, stuck.lock_by)) \
         FROM stuck WHERE j.id = stuck.id \
         RETURNING j.id AS job_id, stuck.lock_by AS old_worker, j.attempts, \
           (j.status = 'Failed') AS dead",
    )
    .bind(POST_TRANSFERS_QUEUE)
    .bind(running_longer_than.as_secs_f64())
    .bind(max_attempts_for(POST_TRANSFERS_QUEUE))
    .fetch_all(pool)
    .await?;
    for job in &rescued {
        warn!(
            job_id = %job.job_id,
            old_worker = job.old_worker.as_deref().unwrap_or("-"),
            attempts = job.attempts,
            dead = job.dead,
            "rescued a posting job that ran longer than {} s",
            running_longer_than.as_secs()
        );
    }
    if !rescued.is_empty() {
        metrics::counter!("ferry_jobs_rescued_total", "queue" => POST_TRANSFERS_QUEUE)
            .increment(rescued.len() as u64);
    }
    Ok(rescued)
}

/// Runs rescue passes until `stopping` is cancelled. A pass that fails (the database is away) is
/// logged at debug level and tried again next interval: the outage itself is reported by
/// `/readyz`, the posting workers and their restarts.
pub async fn run_rescuer(pool: PgPool, rescue_after: Duration, stopping: CancellationToken) {
    let interval = (rescue_after / 6).clamp(
        Duration::from_millis(RESCUE_INTERVAL_MS_MIN),
        Duration::from_millis(RESCUE_INTERVAL_MS_MAX),
    );
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Err(error) = rescue_stuck_jobs(&pool, rescue_after).await {
                    debug!(%error, "rescue pass failed");
                }
            }
            () = stopping.cancelled() => return,
        }
    }
}
