//! Self-healing done by each run: stuck transfers whose job is gone get a new one.

use std::time::Duration;

use sqlx::PgConnection;
use uuid::Uuid;

use crate::queue::payloads::{PostTransfers, TRANSFERS_PER_JOB_MAX};
use crate::queue::{self, EnqueueError, POST_TRANSFERS_QUEUE, table};

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
    let orphaned = table::transfers_without_live_job(conn, stuck, job_rescue_after)
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
