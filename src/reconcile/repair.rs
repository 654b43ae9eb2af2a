//! Self-healing and housekeeping done by each run.

use std::time::Duration;

use sqlx::PgConnection;
use uuid::Uuid;

use crate::queue::payloads::{PostTransfers, TRANSFERS_PER_JOB_MAX};
use crate::queue::{self, EnqueueError, POST_TRANSFERS_QUEUE};

/// Re-enqueues the `stuck` transfers that no live job carries (the job is gone, apalis gave
/// up on it, or it has been locked longer than `job_rescue_after` — held by a worker that lost
/// it, which the rescuer is about to take back). Transfers a live job still carries are left
/// to it; posting is idempotent either way. Returns how many transfers were re-driven.
pub async fn redrive(
    conn: &mut PgConnection,
    stuck: &[Uuid],
    job_rescue_after: Duration,
) -> Result<usize, EnqueueError> {
    if stuck.is_empty() {
        return Ok(0);
    }
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
    let orphaned: Vec<Uuid> = sqlx::query_scalar(sqlx::AssertSqlSafe(carried_sql))
        .bind(stuck)
        .bind(POST_TRANSFERS_QUEUE)
        .bind(job_rescue_after.as_secs_f64())
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| EnqueueError::Database(e.into()))?;
    for chunk in orphaned.chunks(TRANSFERS_PER_JOB_MAX) {
        let job = PostTransfers {
            transfer_ids: chunk.to_vec(),
        };
        queue::enqueue(conn, POST_TRANSFERS_QUEUE, &job, None).await?;
    }
    if !orphaned.is_empty() {
        metrics::counter!("ferry_transfers_redriven_total").increment(orphaned.len() as u64);
        tracing::warn!(
            transfers = orphaned.len(),
            "re-drove stuck transfers whose job was gone"
        );
    }
    Ok(orphaned.len())
}

/// How long finished jobs are kept.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Acknowledged jobs: their history lives in ferry's own tables.
    pub done: Duration,
    /// Dead jobs, kept longer as the dead-letter record `job_dead` findings point to.
    pub dead: Duration,
    /// Worker registrations not seen for this long.
    pub workers: Duration,
}

/// Deletes finished apalis jobs past their retention (apalis never deletes them, and its
/// fetch slows with every finished row) and long-gone worker registrations.
pub async fn purge_finished_jobs(
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
