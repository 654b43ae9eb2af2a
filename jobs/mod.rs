//! The job catalogue: one module per job kind, and the one place that registers workers.
//!
//! | job | queue | does |
//! |---|---|---|
//! | [`post_transfers`] | `ferry.post_transfers` | posts accepted transfers to the ledger |
//! | [`reconcile`] | `ferry.reconcile` | runs one reconciliation; a cron tick schedules one per window |

pub mod post_transfers;
pub mod reconcile;

use apalis::prelude::{Monitor, WorkerBuilder, WorkerBuilderExt};
use apalis_cron::CronScheduler;
use apalis_postgres::PostgresStorage;
use sqlx::PgPool;

use crate::queue::{self, POST_TRANSFERS_QUEUE, QueueSettings, RECONCILE_QUEUE};
use post_transfers::{PostTransfers, PostingJobContext};
use reconcile::{Reconcile, ReconcileJobContext, SchedulerContext};

/// Reconciliation runs one at a time anyway (they take turns on a lock).
const RECONCILE_CONCURRENCY: usize = 1;

/// How many posting workers run in this process and how many jobs each runs at once.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub posting_workers: usize,
    pub posting_concurrency: usize,
    pub queue: QueueSettings,
}

/// Registers the job workers (the `worker` role) on `monitor`.
pub fn register_workers(
    mut monitor: Monitor,
    pool: &PgPool,
    settings: &WorkerSettings,
    posting: PostingJobContext,
    reconciling: ReconcileJobContext,
) -> Monitor {
    for index in 0..settings.posting_workers {
        let pool = pool.clone();
        let settings = settings.clone();
        let posting = posting.clone();
        let name = queue::worker_name("posting", index);
        monitor = monitor.register(move |_restarts| {
            let backend = PostgresStorage::<PostTransfers>::new(&pool)
                .with_config(settings.queue.backend_config(POST_TRANSFERS_QUEUE))
                .with_pubsub();
            WorkerBuilder::new(name.as_str())
                .backend(backend)
                .concurrency(settings.posting_concurrency)
                .data(posting.clone())
                .build(post_transfers::handle)
        });
    }
    let pool = pool.clone();
    let settings = settings.clone();
    let name = queue::worker_name("reconcile", 0);
    monitor.register(move |_restarts| {
        let backend = PostgresStorage::<Reconcile>::new(&pool)
            .with_config(settings.queue.backend_config(RECONCILE_QUEUE).batch_size(1))
            .with_pubsub();
        WorkerBuilder::new(name.as_str())
            .backend(backend)
            .concurrency(RECONCILE_CONCURRENCY)
            .data(reconciling.clone())
            .build(reconcile::handle)
    })
}

/// Registers the reconciliation scheduler (the `scheduler` role) on `monitor`.
pub fn register_scheduler(monitor: Monitor, scheduler: SchedulerContext) -> Monitor {
    let name = queue::worker_name("reconcile-cron", 0);
    monitor.register(move |_restarts| {
        WorkerBuilder::new(name.as_str())
            .backend(CronScheduler::new(scheduler.schedule.clone()))
            .data(scheduler.clone())
            .build(reconcile::on_tick)
    })
}
