//! How an idle worker learns that a job is waiting: one LISTEN per process for every queue,
//! each notification waking one idle worker of its queue, with a bounded polling fallback
//! (README, "Jobs, retries and crashes").
//!
//! apalis's `with_pubsub()` gives every worker a LISTEN connection of its own and takes one
//! notification per worker poll. Two costs followed:
//! - a burst sends each listener one notification per job, far more than a busy worker polls,
//!   so after the burst the stream always had one ready, never registered the worker's waker
//!   again, and a lone job waited for the next heartbeat — seconds, for as long as the backlog
//!   lasted (BENCHMARKS.md, "Posted in milliseconds";
//!   `docs/upstream/apalis-postgres-pubsub-backlog.md`);
//! - every listener gets every queue's notifications (one channel, filtered by job type after
//!   parsing), and every idle worker of a queue fetches on each of them: with two posting
//!   workers a lone job cost three fetches, two of them empty (issue 26, "Eighth sitting").
//!
//! [`WakeupHub`] is one listener per process: it reads each notification once and wakes one
//! idle worker of that queue ([`Notify::notify_one`]; with none idle, the next to ask for work
//! fetches at once). The notification arrives after the job's commit, so the fetch it causes
//! sees the job: a fetch already running when it came needs no re-check. [`Wakeups`], each
//! worker's `PollStrategy` behind apalis's `PollWith` extension point, also fetches at least
//! every [`fallback_for`] while idle, and is woken once more [`ACK_PICKUP`] after a
//! notification (apalis records finished jobs only when the worker is polled). The fallback
//! bounds what is left — notifications lost while the listener reconnects, jobs due later
//! (retries; PostgreSQL notifies only jobs due now).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use apalis_core::backend::ext::poll_strategy::{PollSnapshot, PollStrategy, PollWith};
use apalis_postgres::PostgresStorage;
use sqlx::postgres::PgListener;
use tokio::sync::{Notify, futures::OwnedNotified};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::POST_TRANSFERS_QUEUE;

/// How long after a notification's wake-up the worker is woken once more. apalis records a
/// finished job (`Done`, `handle_result`) only when its worker is next polled, and a job
/// usually finishes within this: without it, the acknowledgement of the last job before a
/// pause waited for the fallback. Under load the next notification comes sooner and this never
/// fires.
pub const ACK_PICKUP: Duration = Duration::from_millis(20);
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

/// The channel apalis-postgres 1.0.0's insert trigger notifies, for every queue, with a JSON
/// payload naming the job's queue (`job_type`) and id.
const JOB_INSERT_CHANNEL: &str = "apalis::job::insert";
/// Wait before connecting the listener again after it failed.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

/// `storage`, woken by `hub` on its queue.
pub fn listen<Args>(
    storage: PostgresStorage<Args>,
    hub: &WakeupHub,
) -> PollWith<PostgresStorage<Args>, Wakeups> {
    let queue = storage.config().queue.to_string();
    let wakeups = Wakeups::new(hub.notify_for(&queue), fallback_for(&queue));
    PollWith::new(storage, wakeups)
}

/// One LISTEN connection per process, waking one idle worker of a job's queue per
/// notification (module docs). A queue's wake-up is made when its first worker asks for it.
#[derive(Clone)]
pub struct WakeupHub {
    queues: Arc<Mutex<HashMap<String, Arc<Notify>>>>,
}

impl WakeupHub {
    /// Listens for jobs until `stopping` is cancelled or the pool closes; the task is
    /// `tasks`'s.
    pub fn start(pool: sqlx::PgPool, tasks: &TaskTracker, stopping: CancellationToken) -> Self {
        let hub = Self {
            queues: Arc::default(),
        };
        tasks.spawn(hub.clone().run(pool, stopping));
        hub
    }

    /// The wake-up of `queue`'s workers (each waits on it through [`Wakeups`]).
    pub fn notify_for(&self, queue: &str) -> Arc<Notify> {
        self.queues().entry(queue.to_owned()).or_default().clone()
    }

    /// The queues' wake-ups; held only to look one up, never across an await.
    fn queues(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Notify>>> {
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One idle worker of every queue fetches: for notifications that may have been missed.
    fn wake_every_queue(&self) {
        for notify in self.queues().values() {
            notify.notify_one();
        }
    }

    fn wake_for(&self, payload: &str) {
        #[derive(serde::Deserialize)]
        struct Inserted<'a> {
            job_type: &'a str,
        }
        match serde_json::from_str::<Inserted<'_>>(payload) {
            Ok(inserted) => {
                if let Some(notify) = self.queues().get(inserted.job_type) {
                    notify.notify_one();
                }
            }
            // apalis changed what it sends: wake everyone rather than no one.
            Err(error) => {
                tracing::warn!(%error, payload, "unexpected job notification");
                self.wake_every_queue();
            }
        }
    }

    async fn run(self, pool: sqlx::PgPool, stopping: CancellationToken) {
        loop {
            let (interrupted, error) = tokio::select! {
                () = stopping.cancelled() => return,
                interrupted = self.listen(&pool) => interrupted,
            };
            if pool.is_closed() {
                return;
            }
            tracing::warn!(%error, "{interrupted}; workers poll meanwhile, listening again");
            tokio::select! {
                () = stopping.cancelled() => return,
                () = tokio::time::sleep(RECONNECT_AFTER) => {}
            }
        }
    }

    /// Listens and wakes workers until the listener fails; returns what failed.
    async fn listen(&self, pool: &sqlx::PgPool) -> (&'static str, sqlx::Error) {
        let connected = async {
            let mut listener = PgListener::connect_with(pool).await?;
            listener.listen(JOB_INSERT_CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let mut listener = match connected.await {
            Ok(listener) => listener,
            Err(error) => return ("could not listen for job notifications", error),
        };
        // Jobs inserted while no one listened were not announced.
        self.wake_every_queue();
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => self.wake_for(notification.payload()),
                // The connection was lost; the next call makes a new one.
                Ok(None) => self.wake_every_queue(),
                Err(error) => return ("job notifications interrupted", error),
            }
        }
    }
}

/// The wake-up strategy of one worker (module docs).
pub struct Wakeups {
    notify: Arc<Notify>,
    /// Waiting for the hub; made when the worker next asks for work, so only a worker that
    /// asks is one the hub can pick.
    notified: Option<Pin<Box<OwnedNotified>>>,
    /// [`ACK_PICKUP`] after the last notification's wake-up.
    ack_pickup: Option<Pin<Box<Sleep>>>,
    fallback_every: Duration,
    fallback: Pin<Box<Sleep>>,
}

impl Wakeups {
    pub fn new(notify: Arc<Notify>, fallback_every: Duration) -> Self {
        Self {
            notify,
            notified: None,
            ack_pickup: None,
            fallback_every,
            fallback: Box::pin(tokio::time::sleep(fallback_every)),
        }
    }
}

impl PollStrategy for Wakeups {
    fn poll_drive(&mut self, cx: &mut Context<'_>, _: &PollSnapshot) -> Poll<Option<()>> {
        let notify = &self.notify;
        let notified = self
            .notified
            .get_or_insert_with(|| Box::pin(notify.clone().notified_owned()));
        let mut woken = false;
        if notified.as_mut().poll(cx).is_ready() {
            metrics::counter!("ferry_worker_wakeups_total", "cause" => "notification").increment(1);
            woken = true;
            let at = Instant::now() + ACK_PICKUP;
            match self.ack_pickup.as_mut() {
                Some(pickup) => pickup.as_mut().reset(at),
                None => self.ack_pickup = Some(Box::pin(tokio::time::sleep_until(at))),
            }
        }
        if let Some(pickup) = self.ack_pickup.as_mut()
            && pickup.as_mut().poll(cx).is_ready()
        {
            self.ack_pickup = None;
            woken = true;
        }
        if self.fallback.as_mut().poll(cx).is_ready() {
            self.fallback
                .as_mut()
                .reset(Instant::now() + self.fallback_every);
            let _ = self.fallback.as_mut().poll(cx);
            woken = true;
        }
        if woken {
            // Asked again only when the worker next asks for work: a worker that fills its
            // slots from this fetch must not stay the one the hub picks while another is idle
            // (a wake-up it was given but had not seen yet is passed on to the next waiter).
            self.notified = None;
            Poll::Ready(Some(()))
        } else {
            Poll::Pending
        }
    }
}
