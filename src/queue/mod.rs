//! The durable queue: apalis on PostgreSQL, so a job commits in the same transaction as the
//! rows it refers to.
//!
//! Settings follow `shared/reference/apalis-notes.md`: every queue named explicitly (the
//! default name is a Rust type path, and renaming a type would strand its jobs), workers
//! named uniquely per process, bounded concurrency, pub/sub wake-ups, and a heartbeat short
//! enough that an orphaned job is picked up again well inside 30 s.

use std::time::Duration;

use apalis::prelude::TaskBuilder;
use serde::Serialize;
use sqlx::PgConnection;

/// Queue of `post_transfers` jobs.
pub const POST_TRANSFERS_QUEUE: &str = "ferry.post_transfers";
/// Queue of `reconcile` jobs.
pub const RECONCILE_QUEUE: &str = "ferry.reconcile";
/// Queue of `deliver_alert` jobs.
pub const ALERTS_QUEUE: &str = "ferry.deliver_alert";

/// Backend-level attempts of one job. Transient failures are rescheduled by ferry itself with
/// backoff (apalis-postgres retries immediately); this only bounds a job whose handler cannot
/// reach the database at all, which reconciliation then re-drives.
pub const JOB_BACKEND_ATTEMPTS_MAX: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    #[error("could not encode the job payload")]
    Encode(#[from] serde_json::Error),
    #[error("could not insert the job")]
    Database(#[from] apalis_postgres::Error),
}

/// How workers poll and prove they are alive.
#[derive(Debug, Clone)]
pub struct QueueSettings {
    /// Jobs fetched per poll; each job already carries many transfers.
    pub fetch_batch: usize,
    pub heartbeat_ms: u64,
    /// Orphan timeout = `heartbeat_ms × missed_heartbeats`.
    pub missed_heartbeats: usize,
}

impl QueueSettings {
    pub fn orphan_timeout(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms * self.missed_heartbeats as u64)
    }

    pub fn backend_config(&self, queue: &str) -> apalis_postgres::Config {
        apalis_postgres::Config::default()
            .queue(queue)
            .batch_size(self.fetch_batch)
            .heartbeat_interval(Duration::from_millis(self.heartbeat_ms))
            .missed_heartbeats(self.missed_heartbeats)
    }
}

/// Adds a job to `queue` on the caller's connection or transaction: if the caller rolls
/// back, the job was never there.
pub async fn enqueue(
    conn: &mut PgConnection,
    queue: &str,
    payload: &impl Serialize,
    delay: Option<Duration>,
) -> Result<(), EnqueueError> {
    let mut task =
        TaskBuilder::new(serde_json::to_vec(payload)?).max_attempts(JOB_BACKEND_ATTEMPTS_MAX);
    if let Some(delay) = delay {
        // apalis stores whole seconds; round up so a job never runs before its delay is over.
        let due = std::time::SystemTime::now() + delay;
        let due_secs = due
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() + u64::from(d.subsec_nanos() > 0));
        task = task.run_at_timestamp(due_secs);
    }
    apalis_postgres::queries::push_tasks(conn, queue, vec![task.build()]).await?;
    Ok(())
}

/// An `INSERT INTO apalis.jobs` of one job on `queue`, due now, for use as a CTE: its
/// payload is the SQL expression `payload_json` (JSON, as apalis's codec reads it) aggregated
/// over `source`, and it inserts nothing when `source` has no rows. It lets a caller write rows
/// and the job that refers to them in one statement — one round trip, atomic without an
/// explicit transaction. Mirrors apalis-postgres's `queries/task/sink.sql` (ULID ids from
/// `apalis.generate_ulid()`, empty metadata); the pipeline tests run jobs inserted this way.
pub fn insert_job_sql(queue: &'static str, payload_json: &str, source: &str) -> String {
    format!(
        "INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, \
           priority, metadata) \
         SELECT apalis.generate_ulid(), '{queue}', convert_to(({payload_json})::text, 'UTF8'), \
           'Pending', 0, {JOB_BACKEND_ATTEMPTS_MAX}, now(), 0, ''::hstore \
         FROM {source} HAVING count(*) > 0"
    )
}

/// A worker name unique to this process, as apalis needs for orphan recovery.
pub fn worker_name(kind: &str, index: usize) -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
    format!(
        "ferry-{kind}-{host}-{}-{}-{index}",
        std::process::id(),
        process_nonce()
    )
}

fn process_nonce() -> &'static str {
    static NONCE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NONCE.get_or_init(|| uuid::Uuid::new_v4().simple().to_string()[..8].to_owned())
}
