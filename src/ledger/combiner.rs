//! One poster per process: jobs waiting to post at the same time share one transaction.
//!
//! Posting transactions already queue on `ledger_posting_gate`, so two jobs of one process
//! posting concurrently would only wait for each other; merging them instead turns N commits
//! (N WAL flushes, N gate hand-offs) into one. Each job still learns its own fate: on a
//! transient error every job reschedules its own transfers; if a merged batch breaks an
//! invariant, its jobs are posted one by one so one bad transfer cannot hold back the others.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use super::posting::{PostedTransfer, PostingEngine, PostingError};

/// Most transfers one merged posting transaction carries.
pub const MERGED_TRANSFERS_MAX: usize = 4_000;
/// Jobs waiting for the poster; beyond this, handlers wait for room.
pub const WAITING_JOBS_MAX: usize = 256;
/// How long the poster waits for more jobs after the first of a batch. Every posting
/// transaction pays a fixed cost (gate, five statements, a WAL flush); under steady intake of
/// small jobs, a short wait merges several of them into one transaction.
pub const LINGER_MS: u64 = 10;

/// What became of a job's transfers (those it moved to a terminal status, in posting order),
/// or why none moved.
pub type PostingOutcome = Result<Vec<PostedTransfer>, Arc<PostingError>>;

struct Waiting {
    transfer_ids: Vec<Uuid>,
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

    /// Posts `transfer_ids`, possibly together with other jobs' transfers.
    pub async fn post(&self, transfer_ids: Vec<Uuid>) -> PostingOutcome {
        let (reply, outcome) = oneshot::channel();
        let stopped = || Arc::new(PostingError::Stopped);
        self.queue
            .send(Waiting {
                transfer_ids,
                reply,
            })
            .await
            .map_err(|_| stopped())?;
        outcome.await.map_err(|_| stopped())?
    }
}

async fn run_poster(engine: PostingEngine, mut receiver: mpsc::Receiver<Waiting>) {
    while let Some(first) = receiver.recv().await {
        let linger_until = tokio::time::Instant::now() + Duration::from_millis(LINGER_MS);
        let mut merged = first.transfer_ids.len();
        let mut group = vec![first];
        while merged < MERGED_TRANSFERS_MAX {
            match tokio::time::timeout_at(linger_until, receiver.recv()).await {
                Ok(Some(next)) => {
                    merged += next.transfer_ids.len();
                    group.push(next);
                }
                // Linger over, or the process is stopping: post what is here.
                Ok(None) | Err(_) => break,
            }
        }
        post_group(&engine, group).await;
    }
}

async fn post_group(engine: &PostingEngine, group: Vec<Waiting>) {
    metrics::histogram!("ferry_posting_jobs_per_transaction").record(group.len() as f64);
    let ids: Vec<Uuid> = group
        .iter()
        .flat_map(|w| w.transfer_ids.iter().copied())
        .collect();
    match engine.post(&ids).await {
        Ok(report) => reply_each(group, report.outcomes),
        Err(PostingError::Invariant(_)) if group.len() > 1 => {
            for waiting in group {
                let outcome = engine.post(&waiting.transfer_ids).await;
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
