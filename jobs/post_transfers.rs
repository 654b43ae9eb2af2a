//! `post_transfers`: post the transfers accepted in one intake commit.
//!
//! Delivery is at-least-once; posting is idempotent per transfer (status guard + one entry per
//! side), so a redelivered job, one re-run after a crash between COMMIT and ack, or one the
//! rescuer took back from a worker that was in fact still running it, is a no-op.
//!
//! Failures, by retry class (`crate::retry`):
//! - database unreachable: waited out in-process for up to 20 s, then the job is rescheduled
//!   a few seconds out. No attempt is counted: an outage is not the transfers' fault, and
//!   counting it would fail them `retries_exhausted` after a long enough outage.
//! - transient or unknown: this run ends; attempts are counted on the transfers and a new job
//!   is scheduled with exponential backoff and full jitter, in one transaction.

use apalis::prelude::{BoxDynError, Data};
use backon::Retryable;
use serde::{Deserialize, Serialize};
use tracing::{error, warn};
use uuid::Uuid;

use crate::alerts::{Alerting, outbox, retries_exhausted_event};
use crate::ledger::PostingError;
use crate::ledger::attempts::record_failed_attempt;
use crate::ledger::combiner::PostingCombiner;
use crate::queue::{self, POST_TRANSFERS_QUEUE};
use crate::retry::{
    RetryClass, full_jitter_delay, is_unavailable, next_retry_delay, outage_backoff,
    outage_reschedule_delay,
};

/// Most transfers one job carries (the batch endpoint's limit).
pub const TRANSFERS_PER_JOB_MAX: usize = 1000;

/// The job payload: ids of pending transfers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostTransfers {
    pub transfer_ids: Vec<Uuid>,
}

/// What the handler needs, shared by all runs.
#[derive(Clone)]
pub struct PostingJobContext {
    pub poster: PostingCombiner,
    pub pool: sqlx::PgPool,
    pub alerting: Alerting,
}

pub async fn handle(job: PostTransfers, ctx: Data<PostingJobContext>) -> Result<(), BoxDynError> {
    let posted = (|| ctx.poster.post(job.transfer_ids.clone()))
        .retry(outage_backoff())
        .sleep(tokio::time::sleep)
        .when(|e| matches!(&**e, PostingError::Database(db) if is_unavailable(db)))
        .notify(|e, delay| warn!(error = %e, ?delay, "database unavailable; posting waits"))
        .await;
    match posted {
        Ok(()) => Ok(()),
        Err(e) => reschedule_after(&ctx, &job, &e).await,
    }
}

async fn reschedule_after(
    ctx: &PostingJobContext,
    job: &PostTransfers,
    cause: &PostingError,
) -> Result<(), BoxDynError> {
    let counts_attempt = match cause.retry_class() {
        RetryClass::Unknown => {
            error!(error = ?cause, "posting failed with an unrecognised error");
            true
        }
        RetryClass::Unavailable => {
            warn!(error = %cause, "posting could not reach the database; rescheduling");
            false
        }
        RetryClass::Transient | RetryClass::Serialization => {
            warn!(error = %cause, "posting failed; rescheduling");
            true
        }
    };
    let cause_text = error_chain(cause);
    let reschedule_uncounted = || async {
        let next = job.clone();
        let delay = outage_reschedule_delay(&mut rand::rng());
        let mut conn = ctx.pool.acquire().await?;
        queue::enqueue(&mut conn, POST_TRANSFERS_QUEUE, &next, Some(delay)).await?;
        Ok::<_, BoxDynError>(())
    };
    let reschedule_counted = || async {
        let mut tx = ctx.pool.begin().await?;
        let still = record_failed_attempt(&mut tx, &job.transfer_ids, &cause_text).await?;
        for transfer_id in &still.exhausted {
            let event = retries_exhausted_event(*transfer_id, &cause_text);
            outbox::raise(&mut tx, &ctx.alerting.config, &event, None).await?;
        }
        if !still.transfer_ids.is_empty() {
            let delay = next_retry_delay(still.attempts_max, &mut rand::rng());
            let next = PostTransfers {
                transfer_ids: still.transfer_ids,
            };
            queue::enqueue(&mut tx, POST_TRANSFERS_QUEUE, &next, Some(delay)).await?;
        }
        tx.commit().await?;
        Ok::<_, BoxDynError>(())
    };
    // The database may still be unreachable; if it stays so, this run fails and the job is
    // taken back by orphan recovery or the rescuer (queue::rescue) and runs again.
    let backoff = (0..4).map(|n| full_jitter_delay(n, 200, 5_000, &mut rand::rng()));
    if counts_attempt {
        reschedule_counted
            .retry(backoff)
            .sleep(tokio::time::sleep)
            .await
    } else {
        reschedule_uncounted
            .retry(backoff)
            .sleep(tokio::time::sleep)
            .await
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
