//! Everything ferry reads or writes in apalis's own tables (`apalis.jobs`, `apalis.workers`)
//! besides what apalis does itself: which transfers a live job still carries, dead jobs for
//! reconciliation to report, and purging what apalis never deletes. With the job insert
//! (`insert_job_sql`) and the rescuer, these are the only places that know apalis's schema.

use std::time::Duration;

use serde::Deserialize;
use sqlx::PgConnection;
use uuid::Uuid;

use super::POST_TRANSFERS_QUEUE;
use super::payloads::PostTransfers;

/// Of `transfer_ids`, those no live posting job carries: the job is gone, apalis gave up on it
/// (out of attempts or killed), or it has been locked longer than `job_rescue_after` (held by
/// a worker that lost it, which the rescuer is about to take back).
pub async fn transfers_without_live_job(
    conn: &mut PgConnection,
    transfer_ids: &[Uuid],
    job_rescue_after: Duration,
) -> Result<Vec<Uuid>, sqlx::Error> {
    // Each live job's payload is parsed once per call and anti-joined by hash; a correlated
    // `? s.id` test would parse every live job again for every stuck transfer, and the run
    // calls this once per page of stuck transfers, after enqueueing the previous pages' jobs.
    let carried_sql = format!(
        "WITH carried AS MATERIALIZED ( \
           SELECT t.id FROM apalis.jobs j, \
             LATERAL (SELECT {ids_of_job} AS ids) p, \
             jsonb_array_elements_text(CASE WHEN jsonb_typeof(p.ids) = 'array' \
               THEN p.ids ELSE '[]' END) AS t(id) \
           WHERE j.job_type = $2 AND j.status IN ('Pending', 'Queued', 'Running', 'Failed') \
             AND (j.status <> 'Failed' OR j.attempts < j.max_attempts) \
             AND (j.status NOT IN ('Queued', 'Running') \
                  OR j.lock_at >= now() - make_interval(secs => $3))) \
         SELECT s.id FROM unnest($1::uuid[]) AS s(id) \
         WHERE NOT EXISTS (SELECT 1 FROM carried c WHERE c.id = s.id::text)",
        ids_of_job = PostTransfers::SQL_IDS_OF_JOB_J
    );
    sqlx::query_scalar(sqlx::AssertSqlSafe(carried_sql))
        .bind(transfer_ids)
        .bind(POST_TRANSFERS_QUEUE)
        .bind(job_rescue_after.as_secs_f64())
        .fetch_all(&mut *conn)
        .await
}

/// A job apalis gave up on: exhausted (`Failed` at its attempt limit) or `Killed`.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct DeadJob {
    /// apalis's job id (a ULID).
    pub id: String,
    /// The queue, e.g. `ferry.post_transfers`.
    pub queue: String,
    /// `Failed` (out of attempts) or `Killed`.
    pub status: String,
    pub attempts: i32,
    /// The last attempt's result as apalis recorded it (JSON text).
    pub last_result: Option<String>,
    /// When it died (apalis's `done_at`, else when it last ran).
    pub died_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// The SQL condition for a dead job; `purge_finished` keeps dead jobs for a week by it.
const DEAD: &str = "(status = 'Killed' OR (status = 'Failed' AND attempts >= max_attempts))";
const DEAD_JOB_COLUMNS: &str = "id, job_type AS queue, status, attempts, \
    last_result::text AS last_result, coalesce(done_at, run_at) AS died_at";

/// Up to `limit` dead jobs with ids after `after`, by id.
pub async fn dead_jobs(
    conn: &mut PgConnection,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<DeadJob>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {DEAD_JOB_COLUMNS} FROM apalis.jobs \
         WHERE {DEAD} AND id > coalesce($1, '') ORDER BY id LIMIT $2"
    )))
    .bind(after)
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(conn)
    .await
}

/// What became of a request to retry or discard a dead job.
#[derive(Debug)]
pub enum DeadJobChange {
    /// Done; the job as it was while dead.
    Changed(DeadJob),
    /// No job has this id.
    NotFound,
    /// The job exists but is not dead (still running, retried already, or done).
    NotDead,
}

/// Puts dead job `id` back in its queue with its attempts reset, as if just enqueued: its
/// work is idempotent (a posting job skips transfers that are already terminal).
pub async fn retry_dead(conn: &mut PgConnection, id: &str) -> Result<DeadJobChange, sqlx::Error> {
    let retried: Option<DeadJob> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "WITH dead AS (SELECT {DEAD_JOB_COLUMNS} FROM apalis.jobs WHERE id = $1 AND {DEAD} \
           FOR UPDATE) \
         UPDATE apalis.jobs j SET status = 'Pending', attempts = 0, run_at = now(), \
           lock_by = NULL, lock_at = NULL, done_at = NULL, last_result = NULL \
         FROM dead WHERE j.id = dead.id \
         RETURNING dead.*"
    )))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    change_outcome(conn, id, retried).await
}

/// Deletes dead job `id` from the dead-letter record. A posting job's transfers that are
/// still pending stay so, and reconciliation reports them (`stuck_pending`).
pub async fn discard_dead(conn: &mut PgConnection, id: &str) -> Result<DeadJobChange, sqlx::Error> {
    let discarded: Option<DeadJob> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "DELETE FROM apalis.jobs WHERE id = $1 AND {DEAD} RETURNING {DEAD_JOB_COLUMNS}"
    )))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    change_outcome(conn, id, discarded).await
}

async fn change_outcome(
    conn: &mut PgConnection,
    id: &str,
    changed: Option<DeadJob>,
) -> Result<DeadJobChange, sqlx::Error> {
    if let Some(job) = changed {
        return Ok(DeadJobChange::Changed(job));
    }
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM apalis.jobs WHERE id = $1)")
            .bind(id)
            .fetch_one(conn)
            .await?;
    Ok(if exists {
        DeadJobChange::NotDead
    } else {
        DeadJobChange::NotFound
    })
}

/// Jobs of one queue in one state.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobCount {
    pub queue: String,
    /// apalis's status; `Failed` at the attempt limit is reported as `Dead`.
    pub status: String,
    pub jobs: i64,
}

/// Jobs by queue and state: the table is bounded by `purge_finished`, so this counts at most
/// a retention period's worth of rows.
pub async fn job_counts(conn: &mut PgConnection) -> Result<Vec<JobCount>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT job_type AS queue, \
           CASE WHEN {DEAD} AND status = 'Failed' THEN 'Dead' ELSE status END AS status, \
           count(*) AS jobs \
         FROM apalis.jobs GROUP BY 1, 2 ORDER BY 1, 2"
    )))
    .fetch_all(conn)
    .await
}

/// A worker registration and its heartbeat.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WorkerView {
    pub id: String,
    pub queue: String,
    pub last_seen: chrono::DateTime<chrono::Utc>,
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Jobs this worker holds locked now.
    pub running: i64,
}

/// Workers seen within `seen_within`, most recently seen first.
pub async fn workers(
    conn: &mut PgConnection,
    seen_within: Duration,
) -> Result<Vec<WorkerView>, sqlx::Error> {
    sqlx::query_as(
        "SELECT w.id, w.worker_type AS queue, w.last_seen, w.started_at, \
           (SELECT count(*) FROM apalis.jobs j WHERE j.lock_by = w.id \
              AND j.status IN ('Queued', 'Running')) AS running \
         FROM apalis.workers w WHERE w.last_seen >= now() - make_interval(secs => $1) \
         ORDER BY w.last_seen DESC, w.id LIMIT 200",
    )
    .bind(seen_within.as_secs_f64())
    .fetch_all(conn)
    .await
}

/// `[reconcile.retention]`: how long finished jobs, and producer events, are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Retention {
    /// Acknowledged jobs: their history lives in ferry's own tables.
    #[serde(rename = "done_secs", with = "crate::serde_duration::secs")]
    pub done: Duration,
    /// Dead jobs, kept longer as the dead-letter record `job_dead` findings point to.
    #[serde(rename = "dead_secs", with = "crate::serde_duration::secs")]
    pub dead: Duration,
    /// Producer events (and with them their webhook deliveries and attempts).
    #[serde(rename = "events_secs", with = "crate::serde_duration::secs")]
    pub events: Duration,
    /// Worker registrations not seen for this long; not a setting.
    #[serde(skip)]
    pub workers: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            // An hour: apalis's fetch slows with every finished row, and ferry keeps the
            // history in its own tables.
            done: Duration::from_secs(3_600),
            // The dead-letter record; kept a week.
            dead: Duration::from_secs(7 * 24 * 3_600),
            // 30 days: a producer that was down for weeks can still catch up from its cursor;
            // webhook retries end after a day, so nothing undelivered is purged.
            events: Duration::from_secs(30 * 24 * 3_600),
            // Registrations not seen for a day are removed.
            workers: Duration::from_secs(24 * 3_600),
        }
    }
}

/// Deletes finished apalis jobs past their retention (apalis never deletes them, and its
/// fetch slows with every finished row) and long-gone worker registrations.
pub async fn purge_finished(
    conn: &mut PgConnection,
    retention: Retention,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM apalis.jobs WHERE status = 'Done' AND done_at < now() - make_interval(secs => $1)",
    )
    .bind(retention.done.as_secs_f64())
    .execute(&mut *conn)
    .await?
    .rows_affected();
    let dead = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM apalis.jobs \
         WHERE {DEAD} AND coalesce(done_at, run_at) < now() - make_interval(secs => $1)"
    )))
    .bind(retention.dead.as_secs_f64())
    .execute(&mut *conn)
    .await?
    .rows_affected();
    sqlx::query(
        "DELETE FROM apalis.workers w WHERE w.last_seen < now() - make_interval(secs => $1) \
         AND NOT EXISTS (SELECT 1 FROM apalis.jobs j WHERE j.lock_by = w.id)",
    )
    .bind(retention.workers.as_secs_f64())
    .execute(&mut *conn)
    .await?;
    Ok(done + dead)
}
