//! `post_transfers`: post the transfers accepted in one intake commit.
//!
//! Delivery is at-least-once; posting is idempotent per transfer (status guard + one entry per
//! side), so a redelivered job, one re-run after a crash between COMMIT and ack, or one the
//! rescuer took back from a worker that was in fact still running it, is a no-op.
//!
//! Once posted, the transfers this run moved are judged by the anomaly rules (README, "Anomaly
//! detection"): after the commit, so posting never waits on Redis; a run that finds nothing
//! left to post judges nothing, so no transfer is judged twice by a redelivered job. Where a
//! ledger sets a rule to `review`, its transfers are judged before posting too, and those a
//! review rule trips wait in `in_review` (posting passes them by); only that step waits on
//! Redis, at most its timeout.
//!
//! Failures, by retry class (`crate::retry`; README, "Jobs, retries and crashes"), each
//! handled by executing [`RetryPolicy::POSTING_JOB`]'s decision:
//! - database unreachable: waited out in-process ([`RetryPolicy::OUTAGE_WAIT`], up to 20 s),
//!   then the job is rescheduled a few seconds out. No attempt is counted: an outage is not the
//!   transfers' fault, and counting it would fail them `retries_exhausted` after a long enough
//!   outage.
//! - transient or unknown: this run ends; attempts are counted on the transfers and a new job
//!   is scheduled with exponential backoff and full jitter, in one transaction; transfers out
//!   of attempts fail with `retries_exhausted` instead.

use apalis::prelude::{BoxDynError, Data, TaskId};
use backon::Retryable;
use tracing::{error, warn};

use crate::alerts::{Alerting, outbox, retries_exhausted_event};
use crate::anomaly::rules::Candidate;
use crate::anomaly::screen::Screener;
use crate::ledger::apply::{Instruction, Outcome};
use crate::ledger::attempts::record_failed_attempt;
use crate::ledger::combiner::PostingCombiner;
use crate::ledger::{PostedTransfer, PostingError};
use crate::queue::payloads::PostTransfers;
use crate::queue::stages::{JobClock, Stage};
use crate::queue::{self, POST_TRANSFERS_QUEUE};
use crate::retry::{Decision, RetryClass, RetryPolicy, Wait, is_unavailable};

/// What the handler needs, shared by all runs.
#[derive(Clone)]
pub struct PostingJobContext {
    pub poster: PostingCombiner,
    pub pool: sqlx::PgPool,
    pub alerting: Alerting,
    /// Anomaly detection, just after posting; it never holds posting back (README, "Anomaly
    /// detection").
    pub screener: Screener,
}

pub async fn handle(
    job: PostTransfers,
    ctx: Data<PostingJobContext>,
    id: TaskId,
) -> Result<(), BoxDynError> {
    let clock = JobClock::of(&id, job.transfer_ids.len());
    clock.record(Stage::Fetched);
    ctx.screener
        .hold_for_review(&ctx.pool, &job.transfer_ids)
        .await;
    let posted = (|| ctx.poster.post(job.transfer_ids.clone(), clock))
        .retry(RetryPolicy::OUTAGE_WAIT.schedule())
        .sleep(tokio::time::sleep)
        .when(|e| matches!(&**e, PostingError::Database(db) if is_unavailable(db)))
        .notify(|e, delay| warn!(error = %e, ?delay, "database unavailable; posting waits"))
        .await;
    match posted {
        Ok(outcomes) => {
            // Captures and voids settle a hold that was judged when it was placed.
            let judged: Vec<(Candidate, bool)> = outcomes
                .iter()
                .filter(|posted| {
                    matches!(
                        posted.transfer.instruction,
                        Instruction::Transfer | Instruction::Hold
                    )
                })
                .map(candidate)
                .collect();
            ctx.screener.judge(&ctx.pool, &judged).await;
            clock.record(Stage::Handled);
            Ok(())
        }
        Err(e) => reschedule_after(&ctx, &job, &e).await,
    }
}

/// A posted or failed transfer as the anomaly rules see it (`true`: it failed). Rules are
/// about money leaving its source account.
fn candidate(posted: &PostedTransfer) -> (Candidate, bool) {
    let transfer = &posted.transfer;
    let candidate = Candidate {
        transfer_id: transfer.id,
        account: transfer.from_account.clone(),
        amount: transfer.amount.value(),
        currency: transfer.amount.currency(),
        accepted_at_ms: transfer.accepted_at_ms,
    };
    (candidate, matches!(posted.outcome, Outcome::Failed(_)))
}

async fn reschedule_after(
    ctx: &PostingJobContext,
    job: &PostTransfers,
    cause: &PostingError,
) -> Result<(), BoxDynError> {
    let class = cause.retry_class();
    match class {
        RetryClass::Unknown => error!(error = ?cause, "posting failed with an unrecognised error"),
        RetryClass::Unavailable => {
            warn!(error = %cause, "posting could not reach the database; rescheduling");
        }
        RetryClass::Transient | RetryClass::Serialization => {
            warn!(error = %cause, "posting failed; rescheduling");
        }
    }
    let policy = RetryPolicy::POSTING_JOB;
    let failure = class.failure();
    let cause_text = error_chain(cause);
    let reschedule_uncounted = |wait: Wait| async move {
        let next = job.clone();
        let delay = wait.sample(&mut rand::rng());
        let mut conn = ctx.pool.acquire().await?;
        queue::enqueue(&mut conn, POST_TRANSFERS_QUEUE, &next, Some(delay)).await?;
        Ok::<_, BoxDynError>(())
    };
    // Which transfers are out of attempts depends on each one's count, so the policy decides
    // per transfer, inside the transaction that counts.
    let reschedule_counted = || async {
        let mut tx = ctx.pool.begin().await?;
        let still =
            record_failed_attempt(&mut tx, &job.transfer_ids, &cause_text, &policy, failure)
                .await?;
        for transfer_id in &still.exhausted {
            let event = retries_exhausted_event(*transfer_id, &cause_text);
            outbox::raise(&mut tx, &ctx.alerting.config, &event, None).await?;
        }
        if !still.transfer_ids.is_empty() {
            let delay = still.wait.sample(&mut rand::rng());
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
    let backoff = RetryPolicy::POSTING_RESCHEDULE.schedule();
    // Before counting, the attempt number is unknown and only matters to a counted failure:
    // that one is decided again per transfer once counted (`record_failed_attempt`), which also
    // fails every transfer if the policy gives up outright.
    match policy.decide(failure, 0) {
        Decision::Retry {
            counted: false,
            wait,
        } => {
            (|| reschedule_uncounted(wait))
                .retry(backoff)
                .sleep(tokio::time::sleep)
                .await
        }
        Decision::Retry { counted: true, .. } | Decision::GiveUp => {
            reschedule_counted
                .retry(backoff)
                .sleep(tokio::time::sleep)
                .await
        }
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
