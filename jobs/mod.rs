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

use std::sync::Arc;
use std::time::Duration;

use apalis::prelude::{Backend, BackendExt, Monitor, WorkerBuilder, WorkerBuilderExt};
use apalis_core::backend::ext::lifecycle::BeforeStart;
use apalis_cron::CronScheduler;
use apalis_postgres::PostgresStorage;
use serde::Deserialize;
use sqlx::PgPool;
use tracing::info;

use crate::queue::payloads::{DeliverAlert, PostTransfers, Reconcile};
use crate::queue::restart::RestartBackoff;
use crate::queue::{self, ALERTS_QUEUE, POST_TRANSFERS_QUEUE, QueueSettings, RECONCILE_QUEUE};
use deliver_alert::AlertJobContext;
use post_transfers::PostingJobContext;
use reconcile::{ReconcileJobContext, SchedulerContext};

/// Reconciliation runs one at a time anyway (they take turns on a lock).
const RECONCILE_CONCURRENCY: usize = 1;
/// Alert deliveries in flight per process (each waits on a remote HTTP server).
const ALERT_DELIVERY_CONCURRENCY: usize = 8;

/// `[workers]`: how many posting workers run in this process and how many jobs each runs at
/// once; `[workers.queue]` is how they poll (README, "Configuration").
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerSettings {
    pub posting_workers: usize,
    pub posting_concurrency: usize,
    pub queue: QueueSettings,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            posting_workers: 2,
            // Jobs a worker holds at once; they wait on the process's one poster, not on
            // connections. At 16, 32 slots of ~110 ms each capped single requests near
            // 3,500/s and throughput fell past saturation (3,000/s at 125 % offered); at 64 it
            // held 4,200–5,100/s (BENCHMARKS.md, "Posted in milliseconds").
            posting_concurrency: 64,
            queue: QueueSettings::default(),
        }
    }
}

/// One worker slot's restart policy: a new name per start ([`queue::worker_name`]) and a pause
/// before each restart ([`RestartBackoff`]), counted in `ferry_worker_restarts_total`.
struct Slot {
    kind: &'static str,
    index: usize,
    backoff: Arc<RestartBackoff>,
}

impl Slot {
    fn new(kind: &'static str, index: usize) -> Self {
        Self {
            kind,
            index,
            backoff: Arc::default(),
        }
    }

    /// The name of this slot's worker after `restarts` restarts.
    fn name(&self, restarts: usize) -> String {
        queue::worker_name(self.kind, self.index, restarts)
    }

    /// `backend`, made to wait out this restart's pause before it registers and polls.
    fn paced<B: Backend>(&self, backend: B, restarts: usize) -> BeforeStart<B, B::Error> {
        let delay = if restarts == 0 {
            Duration::ZERO
        } else {
            metrics::counter!("ferry_worker_restarts_total", "worker_kind" => self.kind)
                .increment(1);
            let delay = self.backoff.next_delay(&mut rand::rng());
            info!(
                worker_kind = self.kind,
                restarts,
                ?delay,
                "worker restarts after a pause"
            );
            delay
        };
        backend.before_start(move |_| async move {
            tokio::time::sleep(delay).await;
            Ok(())
        })
    }
}

/// Registers the job workers (the `worker` role) on `monitor`.
pub fn register_workers(
    mut monitor: Monitor,
    pool: &PgPool,
    settings: &WorkerSettings,
    posting: PostingJobContext,
    reconciling: ReconcileJobContext,
    alerting: AlertJobContext,
    wakeups: &queue::wakeups::WakeupHub,
) -> Monitor {
    for index in 0..settings.posting_workers {
        let pool = pool.clone();
        let settings = settings.clone();
        let posting = posting.clone();
        let slot = Slot::new("posting", index);
        let wakeups = wakeups.clone();
        monitor = monitor.register(move |restarts| {
            let backend = queue::wakeups::listen(
                PostgresStorage::<PostTransfers>::new(&pool)
                    .with_config(settings.queue.backend_config(POST_TRANSFERS_QUEUE)),
                &wakeups,
            );
            WorkerBuilder::new(slot.name(restarts).as_str())
                .backend(slot.paced(backend, restarts))
                .concurrency(settings.posting_concurrency)
                .data(posting.clone())
                .build(post_transfers::handle)
        });
    }
    let alert_pool = pool.clone();
    let alert_settings = settings.clone();
    let alert_slot = Slot::new("alerts", 0);
    let alert_wakeups = wakeups.clone();
    monitor = monitor.register(move |restarts| {
        let backend = queue::wakeups::listen(
            PostgresStorage::<DeliverAlert>::new(&alert_pool)
                .with_config(alert_settings.queue.backend_config(ALERTS_QUEUE)),
            &alert_wakeups,
        );
        WorkerBuilder::new(alert_slot.name(restarts).as_str())
            .backend(alert_slot.paced(backend, restarts))
            .concurrency(ALERT_DELIVERY_CONCURRENCY)
            .data(alerting.clone())
            .build(deliver_alert::handle)
    });
    let pool = pool.clone();
    let settings = settings.clone();
    let slot = Slot::new("reconcile", 0);
    let wakeups = wakeups.clone();
    monitor.register(move |restarts| {
        let backend = queue::wakeups::listen(
            PostgresStorage::<Reconcile>::new(&pool)
                .with_config(settings.queue.backend_config(RECONCILE_QUEUE).batch_size(1)),
            &wakeups,
        );
        WorkerBuilder::new(slot.name(restarts).as_str())
            .backend(slot.paced(backend, restarts))
            .concurrency(RECONCILE_CONCURRENCY)
            .data(reconciling.clone())
            .build(reconcile::handle)
    })
}

/// Registers the reconciliation scheduler (the `scheduler` role) on `monitor`.
pub fn register_scheduler(monitor: Monitor, scheduler: SchedulerContext) -> Monitor {
    let slot = Slot::new("reconcile-cron", 0);
    monitor.register(move |restarts| {
        WorkerBuilder::new(slot.name(restarts).as_str())
            .backend(slot.paced(CronScheduler::new(scheduler.schedule.clone()), restarts))
            .data(scheduler.clone())
            .build(reconcile::on_tick)
    })
}
