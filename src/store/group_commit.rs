//! Group commit for single requests: single transfers (`POST /v1/transfers`), and captures and
//! voids of holds.
//!
//! Concurrent requests are queued here and committed together: one transaction, one
//! `post_transfers` job for the whole group (README, "Jobs, retries and crashes"). A lone
//! request commits at once; under load, requests arriving while a commit is in flight form the
//! next group. Each request still gets its own outcome, and its answer only after its group's
//! COMMIT. Why: one commit (one WAL flush) and one job per request caps intake and posting at
//! a few hundred per second on two cores; grouped, both scale with load.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::PgPool;
use tokio::sync::{Mutex, mpsc, oneshot};

use super::transfers::{self, AcceptError, Acceptance, Submission};

/// Most requests one group commit carries (and so one job).
pub const GROUP_LEN_MAX: usize = crate::queue::payloads::TRANSFERS_PER_JOB_MAX;
/// Requests waiting for a committer; beyond this, callers wait for room (backpressure).
pub const QUEUE_LEN_MAX: usize = 4 * GROUP_LEN_MAX;

/// Commits one group of requests in one transaction; outcomes in the order given.
pub type CommitGroup<I, O> = fn(PgPool, Vec<I>) -> BoxFuture<'static, Result<Vec<O>, AcceptError>>;

type Reply<O> = Result<O, SubmitError>;

struct Pending<I, O> {
    item: I,
    reply: oneshot::Sender<Reply<O>>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum SubmitError {
    #[error("transfer intake is shutting down")]
    Closed,
    /// The group's commit did not finish within the committer's deadline; whether it
    /// committed is unknown (a retry with the same idempotency key finds out).
    #[error("the database did not answer within the intake timeout")]
    Unavailable,
    #[error(transparent)]
    Accept(Arc<AcceptError>),
}

/// Handle to the committers of one kind of request; cheap to clone.
pub struct GroupCommitter<I = Submission, O = Acceptance> {
    queue: mpsc::Sender<Pending<I, O>>,
}

impl<I, O> Clone for GroupCommitter<I, O> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
        }
    }
}

impl GroupCommitter {
    /// The committers of single transfers: [`transfers::accept`].
    pub fn for_transfers(
        pool: PgPool,
        committers: usize,
        timeout: Duration,
        tasks: &tokio_util::task::TaskTracker,
    ) -> Self {
        Self::start(pool, committers, timeout, tasks, |pool, submissions| {
            Box::pin(async move { transfers::accept(&pool, &submissions).await })
        })
    }
}

impl<I: Send + 'static, O: Send + 'static> GroupCommitter<I, O> {
    /// Starts `committers` tasks on `tasks` that drain the queue in groups, each committed by
    /// `commit` within `timeout`. They end once every handle is dropped.
    pub fn start(
        pool: PgPool,
        committers: usize,
        timeout: Duration,
        tasks: &tokio_util::task::TaskTracker,
        commit: CommitGroup<I, O>,
    ) -> Self {
        let (queue, receiver) = mpsc::channel(QUEUE_LEN_MAX);
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..committers.max(1) {
            tasks.spawn(run_committer(
                pool.clone(),
                receiver.clone(),
                timeout,
                commit,
            ));
        }
        Self { queue }
    }

    /// Stores one request durably (with its job) and returns its outcome.
    pub async fn submit(&self, item: I) -> Result<O, SubmitError> {
        let (reply, outcome) = oneshot::channel();
        self.queue
            .send(Pending { item, reply })
            .await
            .map_err(|_| SubmitError::Closed)?;
        outcome.await.map_err(|_| SubmitError::Closed)?
    }
}

async fn run_committer<I, O>(
    pool: PgPool,
    receiver: Arc<Mutex<mpsc::Receiver<Pending<I, O>>>>,
    timeout: Duration,
    commit: CommitGroup<I, O>,
) {
    loop {
        let group = {
            let mut receiver = receiver.lock().await;
            let Some(first) = receiver.recv().await else {
                return;
            };
            let mut group = vec![first];
            while group.len() < GROUP_LEN_MAX {
                match receiver.try_recv() {
                    Ok(next) => group.push(next),
                    Err(_) => break,
                }
            }
            group
        };
        commit_group(&pool, group, timeout, commit).await;
    }
}

async fn commit_group<I, O>(
    pool: &PgPool,
    mut group: Vec<Pending<I, O>>,
    timeout: Duration,
    commit: CommitGroup<I, O>,
) {
    // A request whose caller is gone — answered `503` after waiting out the intake timeout
    // while an earlier group hung on the database, or disconnected — is not stored: its
    // client was told nothing was accepted, and may never retry.
    group.retain(|p| !p.reply.is_closed());
    if group.is_empty() {
        return;
    }
    metrics::histogram!("ferry_intake_group_size").record(group.len() as f64);
    let (items, replies): (Vec<I>, Vec<oneshot::Sender<Reply<O>>>) =
        group.into_iter().map(|p| (p.item, p.reply)).unzip();
    // Bounded so a connection that stopped answering cannot hold every later group; the
    // statement may still commit after this gives up, which is why the answer is `503` and
    // not a refusal.
    let failure = match tokio::time::timeout(timeout, commit(pool.clone(), items)).await {
        Ok(Ok(outcomes)) => {
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                // The client may have gone away; its transfer is committed all the same.
                let _ = reply.send(Ok(outcome));
            }
            return;
        }
        Ok(Err(e)) => SubmitError::Accept(Arc::new(e)),
        Err(_) => SubmitError::Unavailable,
    };
    for reply in replies {
        let _ = reply.send(Err(failure.clone()));
    }
}
