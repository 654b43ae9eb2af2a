//! The durable queue: apalis on PostgreSQL, so a job commits in the same transaction as the
//! rows it refers to.
//!
//! Settings follow what was verified about apalis 1.0 (README, "Jobs"): every queue named
//! explicitly (the default name is a Rust type path, and renaming a type would strand its
//! jobs), workers named uniquely per process and per restart ([`restart`]), bounded
//! concurrency, pub/sub wake-ups, a heartbeat short enough that an orphaned job is picked up
//! again well inside 30 s, and a rescuer for jobs that run too long under a live name
//! ([`rescue`]).

pub mod payloads;
pub mod rescue;
pub mod restart;
pub mod stages;
pub mod table;
pub mod vacuum;
pub mod wakeups;

use std::time::Duration;

use apalis::prelude::TaskBuilder;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

use crate::retry::{JOB_BACKEND_ATTEMPTS_MAX, POSTING_JOB_ATTEMPTS_MAX};

/// Queue of `post_transfers` jobs.
pub const POST_TRANSFERS_QUEUE: &str = "ferry.post_transfers";
/// Queue of `reconcile` jobs.
pub const RECONCILE_QUEUE: &str = "ferry.reconcile";
/// Queue of `deliver_alert` jobs.
pub const ALERTS_QUEUE: &str = "ferry.deliver_alert";

/// Backend attempts of a job on `queue` (the limits and why: [`crate::retry`]).
pub fn max_attempts_for(queue: &str) -> i32 {
    let attempts = if queue == POST_TRANSFERS_QUEUE {
        POSTING_JOB_ATTEMPTS_MAX
    } else {
        JOB_BACKEND_ATTEMPTS_MAX
    };
    i32::try_from(attempts).unwrap_or(i32::MAX)
}

#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    #[error("could not encode the job payload")]
    Encode(#[from] serde_json::Error),
    #[error("could not insert the job")]
    Database(#[from] apalis_postgres::Error),
}

/// Longest orphan timeout (heartbeat × missed heartbeats) allowed, so an orphaned job runs
/// again quickly (README, "Configuration": ≤ 30 s).
pub const ORPHAN_TIMEOUT_MAX: Duration = Duration::from_secs(30);

/// `[workers.queue]`: how workers poll and prove they are alive (README, "Configuration").
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueSettings {
    /// Jobs fetched per poll; each job already carries many transfers.
    pub fetch_batch: usize,
    #[serde(rename = "heartbeat_ms", with = "crate::serde_duration::millis")]
    pub heartbeat: Duration,
    /// Orphan timeout = `heartbeat × missed_heartbeats`.
    pub missed_heartbeats: usize,
    /// A posting job locked longer than this is rescued ([`rescue`]).
    #[serde(rename = "rescue_after_secs", with = "crate::serde_duration::secs")]
    pub rescue_after: Duration,
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self {
            // Half a worker's slots: one fetch refills them after a transaction's worth of
            // jobs finished, without claiming jobs another worker could start sooner.
            fetch_batch: 32,
            // 5 s × 4 missed = 20 s until an orphaned job runs again, inside
            // `ORPHAN_TIMEOUT_MAX`.
            heartbeat: Duration::from_secs(5),
            missed_heartbeats: 4,
            rescue_after: rescue::RESCUE_AFTER_DEFAULT,
        }
    }
}

impl QueueSettings {
    pub fn orphan_timeout(&self) -> Duration {
        self.heartbeat
            .saturating_mul(u32::try_from(self.missed_heartbeats).unwrap_or(u32::MAX))
    }

    pub fn backend_config(&self, queue: &str) -> apalis_postgres::Config {
        apalis_postgres::Config::default()
            .queue(queue)
            .batch_size(self.fetch_batch)
            .heartbeat_interval(self.heartbeat)
            .missed_heartbeats(self.missed_heartbeats)
            // The fetch (`apalis.get_jobs`) already claims each job for this worker (`Queued`,
            // `lock_by`); locking it again as `Running` when its handler starts is one more
            // row version per job on the queue table, and nothing in ferry tells the two apart
            // (orphan recovery, the rescuer and the console treat both as held).
            .lock_tasks(false)
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
    let attempts_max = usize::try_from(max_attempts_for(queue)).unwrap_or(JOB_BACKEND_ATTEMPTS_MAX);
    let mut task = TaskBuilder::new(serde_json::to_vec(payload)?).max_attempts(attempts_max);
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
    let attempts_max = max_attempts_for(queue);
    format!(
        "INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, \
           priority, metadata) \
         SELECT apalis.generate_ulid(), '{queue}', convert_to(({payload_json})::text, 'UTF8'), \
           'Pending', 0, {attempts_max}, now(), 0, ''::hstore \
         FROM {source} HAVING count(*) > 0"
    )
}

/// A worker name unique to this process and this (re)start, as apalis needs for orphan
/// recovery: a restarted worker must not heartbeat for the jobs its predecessor held.
pub fn worker_name(kind: &str, index: usize, restarts: usize) -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
    format!(
        "ferry-{kind}-{host}-{}-{}-{index}-r{restarts}",
        std::process::id(),
        process_nonce()
    )
}

fn process_nonce() -> &'static str {
    static NONCE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NONCE.get_or_init(|| uuid::Uuid::new_v4().simple().to_string()[..8].to_owned())
}
