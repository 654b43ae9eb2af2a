//! Settings are validated once at start, and a bad one is reported by its variable's name.

use std::time::Duration;

use ferry::config::{Config, Roles};

use crate::helpers::test_config;

/// A change to the test settings.
type Change = Box<dyn FnOnce(&mut Config)>;

fn broken_by(change: impl FnOnce(&mut Config)) -> Option<&'static str> {
    let mut config = test_config("postgres://unused/db", Roles::ALL);
    change(&mut config);
    config.validate().err().map(|e| e.variable)
}

#[test]
fn the_test_settings_are_valid() {
    assert_eq!(broken_by(|_| {}), None);
}

#[test]
fn each_broken_rule_names_its_variable() {
    let cases: Vec<(&str, Change)> = vec![
        (
            "FERRY_DB_POOL_CONNECTIONS_MAX",
            Box::new(|c| c.db_pool_connections_max = 3),
        ),
        (
            "FERRY_INTAKE_COMMITTERS",
            Box::new(|c| c.intake_committers = 0),
        ),
        (
            "FERRY_INTAKE_DB_TIMEOUT_MS",
            Box::new(|c| c.intake_db_timeout_ms = 99),
        ),
        (
            "FERRY_HTTP_HEADER_READ_TIMEOUT_MS",
            Box::new(|c| c.http.header_read_timeout_ms = 99),
        ),
        (
            "FERRY_HTTP_REQUEST_TIMEOUT_MS",
            Box::new(|c| c.http.request_timeout_ms = c.intake_db_timeout_ms),
        ),
        (
            "FERRY_HTTP_CONNECTIONS_MAX",
            Box::new(|c| c.http.connections_max = 0),
        ),
        (
            "FERRY_POSTING_WORKERS",
            Box::new(|c| c.workers.posting_workers = 0),
        ),
        (
            "FERRY_POSTING_CONCURRENCY",
            Box::new(|c| c.workers.posting_concurrency = 0),
        ),
        (
            "FERRY_POSTING_WORKERS",
            Box::new(|c| c.workers.posting_workers = 7),
        ),
        (
            "FERRY_RECONCILE_CRON",
            Box::new(|c| c.reconcile_cron = "every minute".into()),
        ),
        (
            "FERRY_STUCK_PENDING_SECS",
            Box::new(|c| c.reconcile.stuck_after = Duration::from_secs(59)),
        ),
        (
            "FERRY_JOB_RETENTION_DONE_SECS",
            Box::new(|c| c.reconcile.retention.dead = Duration::ZERO),
        ),
        (
            "FERRY_JOB_FETCH_BATCH",
            Box::new(|c| c.workers.queue.fetch_batch = 0),
        ),
        (
            "FERRY_WORKER_HEARTBEAT_MS",
            Box::new(|c| c.workers.queue.missed_heartbeats = 1),
        ),
        (
            "FERRY_JOB_RESCUE_AFTER_SECS",
            Box::new(|c| c.workers.queue.rescue_after = Duration::from_secs(4)),
        ),
        (
            "FERRY_WORKER_HEARTBEAT_MS",
            Box::new(|c| c.workers.queue.heartbeat_ms = 20_000),
        ),
    ];
    for (variable, change) in cases {
        assert_eq!(broken_by(change), Some(variable), "{variable}");
    }
    // A worker-less process needs no posting workers.
    assert_eq!(
        broken_by(|c| {
            c.roles = Roles {
                intake: true,
                worker: false,
                scheduler: false,
            };
            c.workers.posting_workers = 0;
        }),
        None
    );
}
