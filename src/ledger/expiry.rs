//! Hold expiry (README, "Holds, reversals and balance history"): every worker process looks
//! once a second for holds past `hold_expires_at` and claims their void (`hold_action =
//! 'expire'`) with one posting job per claimed batch, in one statement. The claim is the same
//! guarded UPDATE a void request makes (`held`, no claim yet), and rows are taken with `FOR
//! UPDATE SKIP LOCKED`: however many replicas run this, each hold is voided once, and a capture
//! or void claimed first wins over expiry. Posting then releases the reservation (`voided`).

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::queue::payloads::PostTransfers;
use crate::queue::{self, POST_TRANSFERS_QUEUE};

/// How often expiry looks: an index probe on the held holds' expiry index, so voiding lands
/// within about a second of expiry plus posting (the promise is 60 s).
pub const EXPIRY_INTERVAL_MS: u64 = 1_000;
/// Most holds one claim (and one posting job) carries.
pub const EXPIRY_BATCH_MAX: i64 = 1_000;

/// Runs until `stopping` is cancelled.
pub async fn run(pool: PgPool, stopping: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(EXPIRY_INTERVAL_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stopping.cancelled() => return,
        }
        match claim_expired(&pool).await {
            Ok(0) => {}
            Ok(claimed) => info!(claimed, "expired holds claimed for voiding"),
            // Retried on the next tick: the holds stay `held` until a claim commits.
            Err(e) => warn!(error = %e, "claiming expired holds failed"),
        }
    }
}

/// Claims every hold past its expiry that nothing has claimed yet, in batches; returns how
/// many.
pub async fn claim_expired(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let job = queue::insert_job_sql(
        POST_TRANSFERS_QUEUE,
        PostTransfers::SQL_FROM_ID_ROWS,
        "claimed",
    );
    let statement = format!(
        "WITH due AS ( \
           SELECT id FROM transfers \
           WHERE status = 'held' AND hold_action IS NULL AND hold_expires_at <= now() \
           ORDER BY hold_expires_at, id LIMIT $1 FOR UPDATE SKIP LOCKED), \
         claimed AS ( \
           UPDATE transfers t SET hold_action = 'expire', updated_at = now() FROM due \
           WHERE t.id = due.id RETURNING t.id), \
         job AS ({job}) \
         SELECT count(*) FROM claimed"
    );
    let mut total = 0u64;
    loop {
        let claimed: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(statement.clone()))
            .bind(EXPIRY_BATCH_MAX)
            .fetch_one(pool)
            .await?;
        total += u64::try_from(claimed).unwrap_or(0);
        metrics::counter!("ferry_holds_expired_total")
            .increment(u64::try_from(claimed).unwrap_or(0));
        if claimed < EXPIRY_BATCH_MAX {
            return Ok(total);
        }
    }
}
