//! Counting failed posting attempts and giving up after [`JOB_ATTEMPTS_MAX`].

use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::retry::JOB_ATTEMPTS_MAX;

/// Transfers of a failed run that should be tried again.
#[derive(Debug, Default)]
pub struct StillPending {
    pub transfer_ids: Vec<Uuid>,
    /// The highest attempt count among them, which sets the next delay.
    pub attempts_max: i32,
    /// Transfers this call failed with `retries_exhausted`.
    pub exhausted: Vec<Uuid>,
}

/// Records that a posting run for `transfer_ids` failed with a transient error: each still
/// pending transfer gets one more attempt counted, and those that reach the limit fail with
/// `retries_exhausted` (no entries exist for them: the failed run rolled back). Runs under
/// READ COMMITTED with a status guard, so it cannot race a posting transaction into a second
/// terminal state.
pub async fn record_failed_attempt(
    conn: &mut PgConnection,
    transfer_ids: &[Uuid],
    error: &str,
) -> Result<StillPending, sqlx::Error> {
    let rows = sqlx::query(
        "UPDATE transfers SET attempts = attempts + 1, last_error = $2, updated_at = now(), \
           status = CASE WHEN attempts + 1 >= $3 THEN 'failed' ELSE 'pending' END, \
           failure_code = CASE WHEN attempts + 1 >= $3 THEN 'retries_exhausted' END, \
           failed_at = CASE WHEN attempts + 1 >= $3 THEN now() END \
         WHERE id = ANY($1) AND status = 'pending' RETURNING id, status, attempts",
    )
    .bind(transfer_ids)
    .bind(error.chars().take(500).collect::<String>())
    .bind(JOB_ATTEMPTS_MAX)
    .fetch_all(conn)
    .await?;
    let mut still = StillPending::default();
    for row in rows {
        let status: String = row.try_get("status")?;
        if status == "pending" {
            still.transfer_ids.push(row.try_get("id")?);
            still.attempts_max = still.attempts_max.max(row.try_get("attempts")?);
        } else {
            still.exhausted.push(row.try_get("id")?);
        }
    }
    if !still.exhausted.is_empty() {
        metrics::counter!("ferry_transfers_failed_total", "code" => "retries_exhausted")
            .increment(still.exhausted.len() as u64);
    }
    Ok(still)
}
