//! Configuration from the environment, validated once at start-up with messages that name the
//! variable at fault.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use std::sync::Arc;

use crate::alerts::config::AlertConfig;
use crate::failpoint::Failpoint;
use crate::intake::rate_limit::RateLimit;
use crate::intake::serve::{
    CONNECTIONS_MAX_DEFAULT, HEADER_READ_TIMEOUT_MS_DEFAULT, HttpSettings,
    REQUEST_TIMEOUT_MS_DEFAULT,
};
use crate::jobs::WorkerSettings;
use crate::queue::QueueSettings;
use crate::queue::rescue::JOB_RESCUE_AFTER_SECS_DEFAULT;
use crate::queue::table::Retention;
use crate::reconcile::schedule::{RECONCILE_CRON_DEFAULT, parse_schedule};
use crate::reconcile::{FULL_SCAN_EVERY_SECS_DEFAULT, ReconcileSettings, STUCK_AFTER_SECS_DEFAULT};

pub const DATABASE_URL_DEFAULT: &str = "postgres://postgres@localhost:5432/ferry";
pub const REDIS_URL_DEFAULT: &str = "redis://127.0.0.1:6379";
pub const HTTP_ADDR_DEFAULT: &str = "127.0.0.1:8080";
pub const DB_POOL_CONNECTIONS_MAX_DEFAULT: u32 = 16;
pub const DB_ACQUIRE_TIMEOUT_MS_DEFAULT: u64 = 5_000;
/// Intake group commits in flight at once. One: each commit is a single statement, and the
/// next group fills while it runs — measured best on two cores (BENCHMARKS.md: 1 committer
/// 12k accepted/s, 2 → 10k, 4 → 8k at 64 clients).
pub const INTAKE_COMMITTERS_DEFAULT: usize = 1;
/// Longest an API request waits on PostgreSQL (connection, statements, group commit) before
/// it is answered `503 unavailable`: 1.5 s keeps answers during an outage within 2 s (README,
/// HTTP API) and is ~75× intake's p99 (BENCHMARKS.md).
pub const INTAKE_DB_TIMEOUT_MS_DEFAULT: u64 = 1_500;
pub const POSTING_WORKERS_DEFAULT: usize = 2;
/// Jobs a worker holds at once; they wait on the process's one poster, not on connections.
pub const POSTING_CONCURRENCY_DEFAULT: usize = 16;
pub const JOB_FETCH_BATCH_DEFAULT: usize = 16;
/// 5 s × 4 missed = 20 s until an orphaned job runs again (the contract says under 30 s).
pub const WORKER_HEARTBEAT_MS_DEFAULT: u64 = 5_000;
pub const WORKER_MISSED_HEARTBEATS_DEFAULT: usize = 4;
pub const ORPHAN_TIMEOUT_MS_MAX: u64 = 30_000;
/// A shorter rescue bound would take back jobs that are merely waiting for the poster.
pub const JOB_RESCUE_AFTER_SECS_MIN: u64 = 5;
pub const SHUTDOWN_GRACE_MS_DEFAULT: u64 = 10_000;
/// Acknowledged jobs are purged after an hour: apalis's fetch slows with every finished row,
/// and ferry keeps the history in its own tables.
pub const JOB_RETENTION_DONE_SECS_DEFAULT: u64 = 3_600;
/// Dead jobs are the dead-letter record; kept a week.
pub const JOB_RETENTION_DEAD_SECS_DEFAULT: u64 = 7 * 24 * 3_600;
/// Worker registrations not seen for a day are removed.
pub const WORKER_RETENTION_SECS: u64 = 24 * 3_600;

/// Which parts of ferry this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    pub intake: bool,
    pub worker: bool,
    pub scheduler: bool,
}

impl Roles {
    pub const ALL: Roles = Roles {
        intake: true,
        worker: true,
        scheduler: true,
    };
    pub const NONE: Roles = Roles {
        intake: false,
        worker: false,
        scheduler: false,
    };
}

impl FromStr for Roles {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut roles = Roles::NONE;
        for role in s.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            match role {
                "intake" => roles.intake = true,
                "worker" => roles.worker = true,
                "scheduler" => roles.scheduler = true,
                "all" => roles = Roles::ALL,
                other => {
                    return Err(format!(
                        "unknown role {other:?} (roles: intake, worker, scheduler, all)"
                    ));
                }
            }
        }
        if roles == Roles::NONE {
            return Err("at least one role is needed (intake, worker, scheduler, all)".into());
        }
        Ok(roles)
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub database_url: String,
    pub redis_url: String,
    pub http_addr: SocketAddr,
    pub roles: Roles,
    pub db_pool_connections_max: u32,
    pub db_acquire_timeout_ms: u64,
    /// Intake group commits in flight at once.
    pub intake_committers: usize,
    /// Longest a request waits on the database before `503 unavailable`.
    pub intake_db_timeout_ms: u64,
    /// Header-read and request timeouts, connection limit.
    pub http: HttpSettings,
    pub workers: WorkerSettings,
    pub shutdown_grace_ms: u64,
    /// Requests per second and burst per API key, kept in Redis; 0 disables.
    pub rate_limit: RateLimit,
    /// Cron expression (seconds first) of scheduled reconciliation.
    pub reconcile_cron: String,
    pub reconcile: ReconcileSettings,
    /// Alert sinks from the TOML file named by `FERRY_CONFIG` (none without it).
    pub alerts: Arc<AlertConfig>,
    pub failpoint: Failpoint,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {variable}: {reason}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub reason: String,
}

impl Config {
    /// Reads `FERRY_*`, `DATABASE_URL` and `REDIS_URL`.
    pub fn from_env() -> Result<Self, ConfigError> {
        let config = Self {
            database_url: var("DATABASE_URL", DATABASE_URL_DEFAULT.to_owned())?,
            redis_url: var("REDIS_URL", REDIS_URL_DEFAULT.to_owned())?,
            http_addr: parsed("FERRY_HTTP_ADDR", HTTP_ADDR_DEFAULT)?,
            roles: parsed("FERRY_ROLES", "all")?,
            db_pool_connections_max: num(
                "FERRY_DB_POOL_CONNECTIONS_MAX",
                DB_POOL_CONNECTIONS_MAX_DEFAULT,
            )?,
            db_acquire_timeout_ms: num(
                "FERRY_DB_ACQUIRE_TIMEOUT_MS",
                DB_ACQUIRE_TIMEOUT_MS_DEFAULT,
            )?,
            intake_committers: num("FERRY_INTAKE_COMMITTERS", INTAKE_COMMITTERS_DEFAULT)?,
            intake_db_timeout_ms: num("FERRY_INTAKE_DB_TIMEOUT_MS", INTAKE_DB_TIMEOUT_MS_DEFAULT)?,
            http: http_from_env()?,
            workers: workers_from_env()?,
            shutdown_grace_ms: num("FERRY_SHUTDOWN_GRACE_MS", SHUTDOWN_GRACE_MS_DEFAULT)?,
            rate_limit: RateLimit {
                per_sec: num("FERRY_RATE_LIMIT_PER_SEC", 0)?,
                burst: num("FERRY_RATE_LIMIT_BURST", 100)?,
            },
            reconcile_cron: var("FERRY_RECONCILE_CRON", RECONCILE_CRON_DEFAULT.to_owned())?,
            reconcile: reconcile_from_env()?,
            alerts: Arc::new(load_alerts()?),
            failpoint: parsed("FERRY_FAILPOINT", "none")?,
        };
        config.validate()?;
        Ok(config)
    }

    /// Refuses settings that would make ferry silently misbehave; the first rule broken is
    /// reported, naming its variable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Err(reason) = parse_schedule(&self.reconcile_cron) {
            return Err(ConfigError {
                variable: "FERRY_RECONCILE_CRON",
                reason,
            });
        }
        let (workers, queue, http) = (&self.workers, &self.workers.queue, &self.http);
        let retention = &self.reconcile.retention;
        // (broken, variable, why)
        let rules = [
            (
                self.db_pool_connections_max < 4,
                "FERRY_DB_POOL_CONNECTIONS_MAX",
                "must be at least 4",
            ),
            (
                self.intake_committers == 0,
                "FERRY_INTAKE_COMMITTERS",
                "must be at least 1",
            ),
            (
                self.intake_db_timeout_ms < 100,
                "FERRY_INTAKE_DB_TIMEOUT_MS",
                "must be at least 100",
            ),
            (
                http.header_read_timeout_ms < 100,
                "FERRY_HTTP_HEADER_READ_TIMEOUT_MS",
                "must be at least 100",
            ),
            // A request waiting on the database must get its `503` before the request
            // timeout turns it into a `408`.
            (
                http.request_timeout_ms <= self.intake_db_timeout_ms,
                "FERRY_HTTP_REQUEST_TIMEOUT_MS",
                "must be longer than FERRY_INTAKE_DB_TIMEOUT_MS",
            ),
            (
                http.connections_max == 0,
                "FERRY_HTTP_CONNECTIONS_MAX",
                "must be at least 1",
            ),
            (
                workers.posting_workers == 0 && self.roles.worker,
                "FERRY_POSTING_WORKERS",
                "must be at least 1 for the worker role",
            ),
            (
                workers.posting_concurrency == 0,
                "FERRY_POSTING_CONCURRENCY",
                "must be at least 1",
            ),
            // Each worker fetches, acks and heartbeats; the poster holds one more connection.
            (
                workers.posting_workers * 2 + 2 >= self.db_pool_connections_max as usize,
                "FERRY_POSTING_WORKERS",
                "posting workers × 2 + 2 must stay below the pool size",
            ),
            (
                self.reconcile.stuck_after < Duration::from_secs(60),
                "FERRY_STUCK_PENDING_SECS",
                "must be at least 60",
            ),
            (
                retention.done.is_zero() || retention.dead.is_zero(),
                "FERRY_JOB_RETENTION_DONE_SECS",
                "retention must be above zero",
            ),
            (
                queue.fetch_batch == 0,
                "FERRY_JOB_FETCH_BATCH",
                "must be at least 1",
            ),
            (
                queue.heartbeat_ms < 100 || queue.missed_heartbeats < 2,
                "FERRY_WORKER_HEARTBEAT_MS",
                "heartbeat must be ≥ 100 ms and missed heartbeats ≥ 2",
            ),
            (
                queue.rescue_after < Duration::from_secs(JOB_RESCUE_AFTER_SECS_MIN),
                "FERRY_JOB_RESCUE_AFTER_SECS",
                "must be at least 5 (posting jobs that run this long are taken back)",
            ),
            (
                queue.orphan_timeout() > Duration::from_millis(ORPHAN_TIMEOUT_MS_MAX),
                "FERRY_WORKER_HEARTBEAT_MS",
                "heartbeat × missed heartbeats must stay within 30 s so orphans recover quickly",
            ),
        ];
        match rules.into_iter().find(|(broken, ..)| *broken) {
            Some((_, variable, reason)) => Err(ConfigError {
                variable,
                reason: reason.to_owned(),
            }),
            None => Ok(()),
        }
    }

    pub fn db_acquire_timeout(&self) -> Duration {
        Duration::from_millis(self.db_acquire_timeout_ms)
    }

    pub fn intake_db_timeout(&self) -> Duration {
        Duration::from_millis(self.intake_db_timeout_ms)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}

fn var(variable: &'static str, default: String) -> Result<String, ConfigError> {
    match std::env::var(variable) {
        Ok(value) if !value.trim().is_empty() => Ok(value),
        Ok(_) | Err(std::env::VarError::NotPresent) => Ok(default),
        Err(std::env::VarError::NotUnicode(_)) => Err(ConfigError {
            variable,
            reason: "not valid UTF-8".into(),
        }),
    }
}

fn load_alerts() -> Result<AlertConfig, ConfigError> {
    let path = std::env::var_os("FERRY_CONFIG").map(std::path::PathBuf::from);
    AlertConfig::load(path.as_deref()).map_err(|e| ConfigError {
        variable: "FERRY_CONFIG",
        reason: e.to_string(),
    })
}

fn http_from_env() -> Result<HttpSettings, ConfigError> {
    Ok(HttpSettings {
        header_read_timeout_ms: num(
            "FERRY_HTTP_HEADER_READ_TIMEOUT_MS",
            HEADER_READ_TIMEOUT_MS_DEFAULT,
        )?,
        request_timeout_ms: num("FERRY_HTTP_REQUEST_TIMEOUT_MS", REQUEST_TIMEOUT_MS_DEFAULT)?,
        connections_max: num("FERRY_HTTP_CONNECTIONS_MAX", CONNECTIONS_MAX_DEFAULT)?,
    })
}

fn workers_from_env() -> Result<WorkerSettings, ConfigError> {
    Ok(WorkerSettings {
        posting_workers: num("FERRY_POSTING_WORKERS", POSTING_WORKERS_DEFAULT)?,
        posting_concurrency: num("FERRY_POSTING_CONCURRENCY", POSTING_CONCURRENCY_DEFAULT)?,
        queue: QueueSettings {
            fetch_batch: num("FERRY_JOB_FETCH_BATCH", JOB_FETCH_BATCH_DEFAULT)?,
            heartbeat_ms: num("FERRY_WORKER_HEARTBEAT_MS", WORKER_HEARTBEAT_MS_DEFAULT)?,
            missed_heartbeats: num(
                "FERRY_WORKER_MISSED_HEARTBEATS",
                WORKER_MISSED_HEARTBEATS_DEFAULT,
            )?,
            rescue_after: secs("FERRY_JOB_RESCUE_AFTER_SECS", JOB_RESCUE_AFTER_SECS_DEFAULT)?,
        },
    })
}

fn reconcile_from_env() -> Result<ReconcileSettings, ConfigError> {
    Ok(ReconcileSettings {
        stuck_after: secs("FERRY_STUCK_PENDING_SECS", STUCK_AFTER_SECS_DEFAULT)?,
        job_rescue_after: secs("FERRY_JOB_RESCUE_AFTER_SECS", JOB_RESCUE_AFTER_SECS_DEFAULT)?,
        full_scan_every: secs(
            "FERRY_RECONCILE_FULL_SCAN_EVERY_SECS",
            FULL_SCAN_EVERY_SECS_DEFAULT,
        )?,
        retention: Retention {
            done: secs(
                "FERRY_JOB_RETENTION_DONE_SECS",
                JOB_RETENTION_DONE_SECS_DEFAULT,
            )?,
            dead: secs(
                "FERRY_JOB_RETENTION_DEAD_SECS",
                JOB_RETENTION_DEAD_SECS_DEFAULT,
            )?,
            workers: Duration::from_secs(WORKER_RETENTION_SECS),
        },
    })
}

/// A number from `variable`, `default` when unset.
fn num<T>(variable: &'static str, default: T) -> Result<T, ConfigError>
where
    T: FromStr + std::fmt::Display,
    T::Err: std::fmt::Display,
{
    parsed(variable, &default.to_string())
}

fn secs(variable: &'static str, default: u64) -> Result<Duration, ConfigError> {
    parsed::<u64>(variable, &default.to_string()).map(Duration::from_secs)
}

fn parsed<T: FromStr>(variable: &'static str, default: &str) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    let text = var(variable, default.to_owned())?;
    text.trim().parse().map_err(|e: T::Err| ConfigError {
        variable,
        reason: format!("{text:?}: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_from_a_comma_list() {
        assert_eq!(
            "intake"
                .parse::<Roles>()
                .map(|r| (r.intake, r.worker, r.scheduler)),
            Ok((true, false, false))
        );
        assert_eq!("worker, intake,scheduler".parse::<Roles>(), Ok(Roles::ALL));
        assert_eq!("all".parse::<Roles>(), Ok(Roles::ALL));
        assert!("".parse::<Roles>().is_err());
        assert!("scheduler2".parse::<Roles>().is_err());
    }
}
