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
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeadJob {
    pub id: String,
    pub queue: String,
    pub status: String,
    pub attempts: i32,
    pub last_result: Option<String>,
}

/// Up to `limit` dead jobs with ids after `after`, by id.
pub async fn dead_jobs(
    conn: &mut PgConnection,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<DeadJob>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, job_type AS queue, status, attempts, last_result::text AS last_result \
         FROM apalis.jobs \
         WHERE (status = 'Killed' OR (status = 'Failed' AND attempts >= max_attempts)) \
           AND id > coalesce($1, '') \
         ORDER BY id LIMIT $2",
    )
    .bind(after)
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
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
    let dead = sqlx::query(
        "DELETE FROM apalis.jobs \
         WHERE (status = 'Killed' OR (status = 'Failed' AND attempts >= max_attempts)) \
           AND coalesce(done_at, run_at) < now() - make_interval(secs => $1)",
    )
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
