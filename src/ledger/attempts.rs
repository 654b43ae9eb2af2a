//! Counting failed posting attempts, and executing the retry policy's decision for each
//! transfer: try again later, or fail it with `retries_exhausted`.

use sqlx::PgConnection;
use uuid::Uuid;

use crate::retry::{Decision, Failure, RetryPolicy, Wait};

/// Transfers of a failed run that should be tried again.
#[derive(Debug, Default)]
pub struct StillPending {
    pub transfer_ids: Vec<Uuid>,
    /// How long the next run waits: the decision for the most-tried of them (whose backoff
    /// ceiling is the highest).
    pub wait: Wait,
    /// Transfers this call failed with `retries_exhausted`.
    pub exhausted: Vec<Uuid>,
}

/// A transfer's attempt count after this failure was counted. `attempts` is never negative (a
/// CHECK constraint); a negative one would be a decode error rather than read as 0.
#[derive(sqlx::FromRow)]
struct CountedAttempt {
    id: Uuid,
    #[sqlx(try_from = "i32")]
    attempts: u32,
    settling: bool,
}

/// Records that a posting run for `transfer_ids` failed with `failure`, a counted one
/// (transient or unknown; README, "Jobs, retries and crashes"): each still pending transfer
/// gets one more attempt counted, and those for which `policy` then gives up fail with
/// `retries_exhausted` (no entries exist for them: the failed run rolled back). Runs under
/// READ COMMITTED with a status guard, so it cannot race a posting transaction into a second
/// terminal state; the first UPDATE holds the rows' locks until the caller commits.
pub async fn record_failed_attempt(
    conn: &mut PgConnection,
    transfer_ids: &[Uuid],
    error: &str,
    policy: &RetryPolicy,
    failure: Failure,
) -> Result<StillPending, sqlx::Error> {
    // A transfer failed here gets its `transfer.failed` event in this transaction; the event
    // lock comes before the rows' (README, "Events and webhooks").
    crate::events::lock_sequence(conn).await?;
    // A held hold claimed for a capture or void is counted too, but never given up on: it
    // cannot fail for want of attempts (the capture or void was promised), so it is tried
    // again at the policy's longest wait.
    let rows: Vec<CountedAttempt> = sqlx::query_as(
        "UPDATE transfers SET attempts = attempts + 1, last_error = $2, updated_at = now() \
         WHERE id = ANY($1) \
           AND (status = 'pending' OR (status = 'held' AND hold_action IS NOT NULL)) \
         RETURNING id, attempts, status = 'held' AS settling",
    )
    .bind(transfer_ids)
    .bind(error.chars().take(500).collect::<String>())
    .fetch_all(&mut *conn)
    .await?;
    let mut still = StillPending::default();
    let mut most_tried = 0;
    for CountedAttempt {
        id,
        attempts,
        settling,
    } in rows
    {
        let decision = match policy.decide(failure, attempts) {
            Decision::GiveUp if settling => Decision::Retry {
                wait: Wait::jittered(policy.cap, None),
                counted: true,
            },
            decision => decision,
        };
        match decision {
            Decision::Retry { wait, .. } => {
                still.transfer_ids.push(id);
                if attempts >= most_tried {
                    most_tried = attempts;
                    still.wait = wait;
                }
            }
            Decision::GiveUp => still.exhausted.push(id),
        }
    }
    if !still.exhausted.is_empty() {
        sqlx::query(
            "UPDATE transfers SET status = 'failed', failure_code = 'retries_exhausted', \
               failed_at = now() \
             WHERE id = ANY($1) AND status = 'pending'",
        )
        .bind(&still.exhausted)
        .execute(&mut *conn)
        .await?;
        crate::events::transfer::record_changes(conn, &still.exhausted).await?;
        metrics::counter!("ferry_transfers_failed_total", "code" => "retries_exhausted")
            .increment(still.exhausted.len() as u64);
    }
    Ok(still)
}
