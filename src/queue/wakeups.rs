//! How an idle worker learns that a job is waiting: PostgreSQL notifications, drained
//! whole, with a short re-check and a bounded polling fallback (README, "Jobs, retries and
//! crashes").
//!
//! apalis's `with_pubsub()` polls its LISTEN stream once per worker poll and takes one
//! notification each time. A burst sends each listener one notification per job, far more
//! than the worker polls while every slot is busy, so after the burst the stream always had
//! one ready: it never registered the worker's waker again, and a lone job waited for the
//! next heartbeat — seconds, for as long as the backlog lasted (measured: 4.5 s with the
//! 5 s heartbeat, for minutes; BENCHMARKS.md, "Posted in milliseconds";
//! `docs/upstream/apalis-postgres-pubsub-backlog.md`). [`Wakeups`] is the same LISTEN stream
//! behind apalis's own extension point (`PollWith` and a `PollStrategy`) used so that it
//! cannot stall:
//! - every waiting notification is taken at each poll (one fetch takes up to `fetch_batch`
//!   jobs, so one wake-up is as good as many), which leaves the stream pending and the
//!   worker's waker registered;
//! - a notification that arrives while a fetch is already running may belong to a job that
//!   fetch's snapshot missed; a re-check [`RECHECK`] after the last notification wakes the
//!   worker for one more fetch, so that job does not wait for the fallback;
//! - a fallback wake-up every [`fallback_for`] bounds what is left: notifications lost while
//!   the listener reconnects, jobs due later (retries; PostgreSQL notifies only jobs due
//!   now), a listener that could not connect (it is made again at the next fallback).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use apalis_core::backend::ext::poll_strategy::{PollSnapshot, PollStrategy, PollWith};
use apalis_postgres::{PostgresStorage, Pubsub};
use futures::StreamExt;
use tokio::time::{Instant, Sleep};

use super::POST_TRANSFERS_QUEUE;

/// How long after a notification the worker fetches once more, in case a fetch already under
/// way when it came started before that job committed. A fetch takes 1–2 ms.
pub const RECHECK: Duration = Duration::from_millis(20);
/// Longest an idle posting worker goes without a fetch: what a lost notification can cost.
pub const POSTING_FALLBACK: Duration = Duration::from_millis(250);
/// The same for the other queues (alerts, reconciliation), where a second is nothing.
pub const OTHER_FALLBACK: Duration = Duration::from_secs(1);

/// The fallback interval of `queue`'s workers.
pub fn fallback_for(queue: &str) -> Duration {
    if queue == POST_TRANSFERS_QUEUE {
        POSTING_FALLBACK
    } else {
        OTHER_FALLBACK
    }
}

/// `storage`, woken by [`Wakeups`] on its queue.
pub fn listen<Args>(storage: PostgresStorage<Args>) -> PollWith<PostgresStorage<Args>, Wakeups> {
    let queue = storage.config().queue.to_string();
    let wakeups = Wakeups::new(storage.pool().clone(), queue);
    PollWith::new(storage, wakeups)
}

/// The wake-up strategy of one worker (module docs).
pub struct Wakeups {
    pool: sqlx::PgPool,
    queue: String,
    /// `None` after the stream ended (it could not connect); made again at the next fallback.
    notices: Option<Pubsub>,
    recheck: Option<Pin<Box<Sleep>>>,
    fallback_every: Duration,
    fallback: Pin<Box<Sleep>>,
}

impl Wakeups {
    pub fn new(pool: sqlx::PgPool, queue: String) -> Self {
        let fallback_every = fallback_for(&queue);
        Self {
            notices: Some(Pubsub::new(pool.clone(), queue.clone())),
            pool,
            queue,
            recheck: None,
            fallback_every,
            fallback: Box::pin(tokio::time::sleep(fallback_every)),
        }
    }

    /// Takes every notification waiting; how many there were.
    fn drain_notices(&mut self, cx: &mut Context<'_>) -> usize {
        let mut taken = 0;
        while let Some(notices) = self.notices.as_mut() {
            match notices.poll_next_unpin(cx) {
                Poll::Ready(Some(_)) => taken += 1,
                Poll::Ready(None) => self.notices = None,
                Poll::Pending => break,
            }
        }
        taken
    }
}

impl PollStrategy for Wakeups {
    fn poll_drive(&mut self, cx: &mut Context<'_>, _: &PollSnapshot) -> Poll<Option<()>> {
        let noticed = self.drain_notices(cx);
        let mut woken = noticed > 0;
        if woken {
            metrics::counter!("ferry_worker_wakeups_total", "cause" => "notification").increment(1);
            // After the last of a series: under steady intake every notification wakes the
            // worker anyway; only the last one can be missed.
            let at = Instant::now() + RECHECK;
            match self.recheck.as_mut() {
                Some(recheck) => recheck.as_mut().reset(at),
                None => self.recheck = Some(Box::pin(tokio::time::sleep_until(at))),
            }
        }
        if let Some(recheck) = self.recheck.as_mut()
            && recheck.as_mut().poll(cx).is_ready()
        {
            self.recheck = None;
            woken = true;
        }
        if self.fallback.as_mut().poll(cx).is_ready() {
            if self.notices.is_none() {
                self.notices = Some(Pubsub::new(self.pool.clone(), self.queue.clone()));
                self.drain_notices(cx);
            }
            self.fallback
                .as_mut()
                .reset(Instant::now() + self.fallback_every);
            let _ = self.fallback.as_mut().poll(cx);
            woken = true;
        }
        if woken {
            Poll::Ready(Some(()))
        } else {
            Poll::Pending
        }
    }
}
