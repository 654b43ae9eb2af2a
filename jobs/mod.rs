//! The job catalogue: one module per job kind, and the one place that registers workers.
//!
//! | job | queue | does |
//! |---|---|---|
//! | [`post_transfers`] | `ferry.post_transfers` | posts accepted transfers to the ledger |
//! | [`reconcile`] | `ferry.reconcile` | runs one reconciliation; a cron tick schedules one per window |
//! | [`deliver_alert`] | `ferry.deliver_alert` | one delivery attempt of one alert to one sink |

pub mod deliver_alert;
pub mod post_transfers;
pub mod reconcile;

use apalis::prelude::{Monitor, WorkerBuilder, WorkerBuilderExt};
use apalis_cron::CronScheduler;
use apalis_postgres::PostgresStorage;
use sqlx::PgPool;

use crate::alerts::outbox::DeliverAlert;
use crate::queue::{self, ALERTS_QUEUE, POST_TRANSFERS_QUEUE, QueueSettings, RECONCILE_QUEUE};
use deliver_alert::AlertJobContext;
use post_transfers::{PostTransfers, PostingJobContext};
use reconcile::{Reconcile, ReconcileJobContext, SchedulerContext};

/// Reconciliation runs one at a time anyway (they take turns on a lock).
const RECONCILE_CONCURRENCY: usize = 1;
/// Alert deliveries in flight per process (each waits on a remote HTTP server).
const ALERT_DELIVERY_CONCURRENCY: usize = 8;

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
    alerting: AlertJobContext,
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
    let alert_pool = pool.clone();
    let alert_settings = settings.clone();
    let alert_name = queue::worker_name("alerts", 0);
    monitor = monitor.register(move |_restarts| {
        let backend = PostgresStorage::<DeliverAlert>::new(&alert_pool)
            .with_config(alert_settings.queue.backend_config(ALERTS_QUEUE))
            .with_pubsub();
        WorkerBuilder::new(alert_name.as_str())
            .backend(backend)
            .concurrency(ALERT_DELIVERY_CONCURRENCY)
            .data(alerting.clone())
            .build(deliver_alert::handle)
    });
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
