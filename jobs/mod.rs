//! The job catalogue: one module per job kind, and the one place that registers workers.
//!
//! | job | queue | does |
//! |---|---|---|
//! | [`post_transfers`] | `ferry.post_transfers` | posts accepted transfers to the ledger |

pub mod post_transfers;

use apalis::prelude::{Monitor, WorkerBuilder, WorkerBuilderExt};
use apalis_postgres::PostgresStorage;
use sqlx::PgPool;

use crate::queue::{self, POST_TRANSFERS_QUEUE, QueueSettings};
use post_transfers::{PostTransfers, PostingJobContext};

/// How many posting workers run in this process and how many jobs each runs at once.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub posting_workers: usize,
    pub posting_concurrency: usize,
    pub queue: QueueSettings,
}

/// Registers every worker this process runs on `monitor`.
pub fn register_workers(
    mut monitor: Monitor,
    pool: &PgPool,
    settings: &WorkerSettings,
    posting: PostingJobContext,
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
    monitor
}
