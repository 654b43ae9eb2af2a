//! One poster per process: jobs waiting to post at the same time share one transaction.
//!
//! Posting transactions already queue on `ledger_posting_gate`, so two jobs of one process
//! posting concurrently would only wait for each other; merging them instead turns N commits
//! (N WAL flushes, N gate hand-offs) into one. Each job still learns its own fate: on a
//! transient error every job reschedules its own transfers; if a merged batch breaks an
//! invariant, its jobs are posted one by one so one bad transfer cannot hold back the others.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use super::posting::{PostedTransfer, PostingEngine, PostingError};
use crate::queue::stages::{JobClock, Stage};

/// Most transfers one merged posting transaction carries.
pub const MERGED_TRANSFERS_MAX: usize = 4_000;
/// Jobs waiting for the poster; beyond this, handlers wait for room.
pub const WAITING_JOBS_MAX: usize = 256;

/// What became of a job's transfers (those it moved to a terminal status, in posting order),
/// or why none moved.
pub type PostingOutcome = Result<Vec<PostedTransfer>, Arc<PostingError>>;

struct Waiting {
    transfer_ids: Vec<Uuid>,
    /// For `ferry_transfer_stage_seconds`.
    clock: JobClock,
    reply: oneshot::Sender<PostingOutcome>,
}

/// Handle to this process's poster; cheap to clone.
#[derive(Clone)]
pub struct PostingCombiner {
    queue: mpsc::Sender<Waiting>,
}

impl PostingCombiner {
    /// Starts the poster on `tasks`; it ends once every handle is dropped.
    pub fn start(engine: PostingEngine, tasks: &TaskTracker) -> Self {
        let (queue, receiver) = mpsc::channel(WAITING_JOBS_MAX);
        tasks.spawn(run_poster(engine, receiver));
        Self { queue }
    }

    /// Posts `transfer_ids`, possibly together with other jobs' transfers; records the
    /// posting stages on `clock`.
    pub async fn post(&self, transfer_ids: Vec<Uuid>, clock: JobClock) -> PostingOutcome {
        let (reply, outcome) = oneshot::channel();
        let stopped = || Arc::new(PostingError::Stopped);
        self.queue
            .send(Waiting {
                transfer_ids,
                clock,
                reply,
            })
            .await
            .map_err(|_| stopped())?;
        outcome.await.map_err(|_| stopped())?
    }
}

/// Posts whatever is waiting, at once. No lingering for company: jobs that arrive while a
/// transaction runs wait for it anyway and form the next group, so groups grow with load by
/// themselves, and a lone job posts without delay. (A 10 ms linger used to cost every
/// transaction 10 ms of idle poster, even under load: BENCHMARKS.md, "Posted in
/// milliseconds".)
async fn run_poster(engine: PostingEngine, mut receiver: mpsc::Receiver<Waiting>) {
    while let Some(first) = receiver.recv().await {
        let mut merged = first.transfer_ids.len();
        let mut group = vec![first];
        while merged < MERGED_TRANSFERS_MAX {
            match receiver.try_recv() {
                Ok(next) => {
                    merged += next.transfer_ids.len();
                    group.push(next);
                }
                // Nothing more waiting, or the process is stopping: post what is here.
                Err(_) => break,
            }
        }
        post_group(&engine, group).await;
    }
}

async fn post_group(engine: &PostingEngine, group: Vec<Waiting>) {
    metrics::histogram!("ferry_posting_jobs_per_transaction").record(group.len() as f64);
    record_stage(&group, Stage::PostingStarted);
    let ids: Vec<Uuid> = group
        .iter()
        .flat_map(|w| w.transfer_ids.iter().copied())
        .collect();
    match engine.post(&ids).await {
        Ok(report) => {
            record_stage(&group, Stage::PostingCommitted);
            reply_each(group, report.outcomes);
        }
        Err(PostingError::Invariant(_)) if group.len() > 1 => {
            for waiting in group {
                let outcome = engine.post(&waiting.transfer_ids).await;
                if outcome.is_ok() {
                    waiting.clock.record(Stage::PostingCommitted);
                }
                let _ = waiting
                    .reply
                    .send(outcome.map(|r| r.outcomes).map_err(Arc::new));
            }
        }
        Err(e) => {
            let e = Arc::new(e);
            for waiting in group {
                // A handler that went away (shutdown) is re-run by orphan recovery.
                let _ = waiting.reply.send(Err(e.clone()));
            }
        }
    }
}

fn record_stage(group: &[Waiting], stage: Stage) {
    for waiting in group {
        waiting.clock.record(stage);
    }
}

/// Hands each job the outcomes of its own transfers, keeping the posting order.
fn reply_each(group: Vec<Waiting>, outcomes: Vec<PostedTransfer>) {
    let job_of: HashMap<Uuid, usize> = group
        .iter()
        .enumerate()
        .flat_map(|(job, w)| w.transfer_ids.iter().map(move |id| (*id, job)))
        .collect();
    let mut per_job: Vec<Vec<PostedTransfer>> = group.iter().map(|_| Vec::new()).collect();
    for posted in outcomes {
        if let Some(&job) = job_of.get(&posted.transfer.id) {
            per_job[job].push(posted);
        }
    }
    for (waiting, outcomes) in group.into_iter().zip(per_job) {
        let _ = waiting.reply.send(Ok(outcomes));
    }
}
