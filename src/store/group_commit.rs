//! Group commit for single requests: single transfers (`POST /v1/transfers`), and captures and
//! voids of holds.
//!
//! Concurrent requests are queued here and committed together: one transaction, one
//! `post_transfers` job for the whole group (README, "Jobs, retries and crashes"). A lone
//! request commits at once; under load, requests arriving while a commit is in flight form the
//! next group. Each request still gets its own outcome, and its answer only after its group's
//! COMMIT. Why: one commit (one WAL flush) and one job per request caps intake and posting at
//! a few hundred per second on two cores; grouped, both scale with load.
//!
//! A group that already has company when its committer takes it (requests arrived during the
//! previous commit: intake is busy) waits a little for more ([`GroupPacing`]): while requests
//! keep coming, up to [`GroupPacing::linger`], until it holds [`LINGER_GROUP_LEN`]. Every
//! group costs the same fixed work however small it is — a statement, a commit, a job to
//! insert, fetch and acknowledge, a screening — and at a few thousand single requests a
//! second those fixed costs, paid per group of ten, filled the machine that the same requests
//! in groups of thirty leave room on (README, "Jobs, retries and crashes"; BENCHMARKS.md,
//! issue 26, "Ninth sitting"). A lone request still commits at once. A producer sending from
//! N connections in a loop fills a group with all N and then waits the gap for nobody: from
//! [`LINGER_GROUP_LEN`] connections on it never waits, with fewer it pays the gap per group.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::PgPool;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::time::Instant;

use super::transfers::{self, AcceptError, Acceptance, Submission};

/// Most requests one group commit carries (and so one job).
pub const GROUP_LEN_MAX: usize = crate::queue::payloads::TRANSFERS_PER_JOB_MAX;
/// Requests waiting for a committer; beyond this, callers wait for room (backpressure).
pub const QUEUE_LEN_MAX: usize = 4 * GROUP_LEN_MAX;
/// A lingering group commits once it holds this many requests: past it the fixed costs are
/// spread thin, and waiting longer would only add latency.
pub const LINGER_GROUP_LEN: usize = 32;
/// A lingering group commits once no request came for this long.
pub const LINGER_GAP: Duration = Duration::from_millis(2);

/// How groups are formed and committed.
#[derive(Debug, Clone, Copy)]
pub struct GroupPacing {
    /// Group commits in flight at once.
    pub committers: usize,
    /// Longest one commit may take before its requests are answered `503`.
    pub timeout: Duration,
    /// Longest a group with company waits for more requests (zero: never).
    pub linger: Duration,
    /// See [`LINGER_GAP`].
    pub linger_gap: Duration,
    /// See [`LINGER_GROUP_LEN`].
    pub linger_group_len: usize,
}

impl GroupPacing {
    pub fn new(committers: usize, timeout: Duration, linger: Duration) -> Self {
        Self {
            committers,
            timeout,
            linger,
            linger_gap: LINGER_GAP,
            linger_group_len: LINGER_GROUP_LEN,
        }
    }
}

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
        pacing: GroupPacing,
        tasks: &tokio_util::task::TaskTracker,
    ) -> Self {
        Self::start(pool, pacing, tasks, |pool, submissions| {
            Box::pin(async move { transfers::accept(&pool, &submissions).await })
        })
    }
}

impl<I: Send + 'static, O: Send + 'static> GroupCommitter<I, O> {
    /// Starts `pacing.committers` tasks on `tasks` that drain the queue in groups, each
    /// committed by `commit` within `pacing.timeout`. They end once every handle is dropped.
    pub fn start(
        pool: PgPool,
        pacing: GroupPacing,
        tasks: &tokio_util::task::TaskTracker,
        commit: CommitGroup<I, O>,
    ) -> Self {
        let (queue, receiver) = mpsc::channel(QUEUE_LEN_MAX);
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..pacing.committers.max(1) {
            tasks.spawn(run_committer(
                pool.clone(),
                receiver.clone(),
                pacing,
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
    pacing: GroupPacing,
    commit: CommitGroup<I, O>,
) {
    loop {
        let group = {
            let mut receiver = receiver.lock().await;
            let Some(first) = receiver.recv().await else {
                return;
            };
            let mut group = vec![first];
            take_waiting(&mut receiver, &mut group, GROUP_LEN_MAX);
            if group.len() > 1 {
                linger(&mut receiver, &mut group, &pacing).await;
            }
            group
        };
        commit_group(&pool, group, pacing.timeout, commit).await;
    }
}

/// Moves what is already waiting into `group`, up to `len_max` in all.
fn take_waiting<T>(receiver: &mut mpsc::Receiver<T>, group: &mut Vec<T>, len_max: usize) {
    while group.len() < len_max {
        match receiver.try_recv() {
            Ok(next) => group.push(next),
            Err(_) => break,
        }
    }
}

/// Lets a busy group gather more requests (module comment): until it holds
/// `pacing.linger_group_len`, no request came for `pacing.linger_gap`, or `pacing.linger` has
/// passed, whichever is first.
async fn linger<T>(receiver: &mut mpsc::Receiver<T>, group: &mut Vec<T>, pacing: &GroupPacing) {
    if pacing.linger.is_zero() {
        return;
    }
    let len_max = pacing.linger_group_len.min(GROUP_LEN_MAX);
    let deadline = Instant::now() + pacing.linger;
    while group.len() < len_max {
        let until = deadline.min(Instant::now() + pacing.linger_gap);
        match tokio::time::timeout_at(until, receiver.recv()).await {
            Ok(Some(next)) => {
                group.push(next);
                take_waiting(receiver, group, len_max);
            }
            // Nobody came in time, or the process is stopping: commit what is here.
            Ok(None) | Err(_) => break,
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Each request learns the size of the group it was committed in; every commit takes
    /// `COMMIT_MS`, so requests sent meanwhile queue up behind it.
    const COMMIT_MS: u64 = 100;

    fn sized_groups(
        pool: PgPool,
        items: Vec<u32>,
    ) -> BoxFuture<'static, Result<Vec<usize>, AcceptError>> {
        let _ = pool;
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(COMMIT_MS)).await;
            Ok(vec![items.len(); items.len()])
        })
    }

    fn committer(linger: Duration, gap: Duration, group_len: usize) -> GroupCommitter<u32, usize> {
        let pool = sqlx::PgPool::connect_lazy("postgres://nobody@127.0.0.1:1/unused")
            .expect("a lazy pool needs no server");
        let pacing = GroupPacing {
            linger_gap: gap,
            linger_group_len: group_len,
            ..GroupPacing::new(1, Duration::from_secs(10), linger)
        };
        GroupCommitter::start(
            pool,
            pacing,
            &tokio_util::task::TaskTracker::new(),
            sized_groups,
        )
    }

    /// A request sent `after_ms` from now: the size of its group, and how long it waited.
    type Sent = tokio::task::JoinHandle<(usize, Duration)>;

    fn send(committer: &GroupCommitter<u32, usize>, after_ms: u64) -> Sent {
        let committer = committer.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(after_ms)).await;
            let sent = Instant::now();
            let size = committer.submit(0).await.expect("committed");
            (size, sent.elapsed())
        })
    }

    /// The first request commits alone; the second and third arrive during its commit and
    /// find each other waiting (a busy intake); the fourth comes 50 ms after those two were
    /// taken.
    fn four_requests(committer: &GroupCommitter<u32, usize>) -> [Sent; 4] {
        [
            send(committer, 0),
            send(committer, 20),
            send(committer, 30),
            send(committer, COMMIT_MS + 50),
        ]
    }

    #[tokio::test]
    async fn a_lone_request_commits_at_once_however_long_the_linger() {
        let committer = committer(Duration::from_secs(5), Duration::from_secs(5), 32);
        let (size, took) = send(&committer, 0).await.unwrap();
        assert_eq!(size, 1);
        assert!(
            took < Duration::from_secs(2),
            "a lone request waited {took:?}"
        );
    }

    #[tokio::test]
    async fn a_busy_group_waits_for_requests_that_keep_coming() {
        let committer = committer(Duration::from_secs(5), Duration::from_millis(400), 32);
        // The second and third linger, take in the fourth, then commit once 400 ms pass
        // with nobody else.
        let [first, second, third, fourth] = four_requests(&committer);
        assert_eq!(first.await.unwrap().0, 1);
        for request in [second, third, fourth] {
            let (size, took) = request.await.unwrap();
            assert_eq!(
                size, 3,
                "lingering took in the request that came within the gap"
            );
            assert!(
                took < Duration::from_secs(3),
                "waited {took:?}: the gap, not the cap, ended it"
            );
        }
    }

    #[tokio::test]
    async fn a_lingering_group_commits_as_soon_as_it_is_full() {
        let committer = committer(Duration::from_secs(5), Duration::from_secs(5), 3);
        let [_first, second, third, fourth] = four_requests(&committer);
        // Full at three: no waiting for the gap or the cap.
        let (size, took) = fourth.await.unwrap();
        assert_eq!(size, 3);
        assert!(
            took < Duration::from_secs(2),
            "a full group waited {took:?}"
        );
        assert_eq!(second.await.unwrap().0, 3);
        assert_eq!(third.await.unwrap().0, 3);
    }

    #[tokio::test]
    async fn no_linger_commits_what_is_waiting() {
        let committer = committer(Duration::ZERO, Duration::from_secs(5), 32);
        let [_first, second, third, fourth] = four_requests(&committer);
        assert_eq!(second.await.unwrap().0, 2);
        assert_eq!(third.await.unwrap().0, 2);
        assert_eq!(fourth.await.unwrap().0, 1);
    }
}
