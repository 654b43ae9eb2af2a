//! Settings are read once at start — defaults, then the `FERRY_CONFIG` file, then the
//! environment — and validated; a bad one is reported by its variable's name (and file key).

use std::collections::HashMap;
use std::time::Duration;

use ferry::config::{Config, ConfigError, Roles, Sources};

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
            Box::new(|c| c.database.pool_connections_max = 3),
        ),
        (
            "FERRY_INTAKE_COMMITTERS",
            Box::new(|c| c.intake.committers = 0),
        ),
        (
            "FERRY_INTAKE_DB_TIMEOUT_MS",
            Box::new(|c| c.intake.db_timeout = Duration::from_millis(99)),
        ),
        (
            "FERRY_INTAKE_GROUP_LINGER_MS",
            Box::new(|c| c.intake.group_linger = Duration::from_millis(101)),
        ),
        (
            "FERRY_HTTP_HEADER_READ_TIMEOUT_MS",
            Box::new(|c| c.http.header_read_timeout = Duration::from_millis(99)),
        ),
        (
            "FERRY_HTTP_REQUEST_TIMEOUT_MS",
            Box::new(|c| c.http.request_timeout = c.intake.db_timeout + c.intake.group_linger),
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
            Box::new(|c| c.reconcile.cron = "every minute".into()),
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
            Box::new(|c| c.workers.queue.heartbeat = Duration::from_secs(20)),
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

/// Settings from `file` and the variables in `env`, as `Config::load` reads them from the
/// process — without touching this process's environment, which other tests share.
fn load(file: Option<&str>, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect();
    Config::from_sources(Sources {
        file,
        env: &|name| env.get(name).cloned(),
        roles: None,
    })
}

#[test]
fn without_file_or_variables_the_defaults_hold_and_are_valid() {
    let config = load(None, &[]).expect("defaults are valid");
    assert_eq!(config.http.request_timeout, Duration::from_secs(15));
    assert_eq!(config.intake.db_timeout, Duration::from_millis(1_500));
    assert_eq!(config.roles, Roles::ALL);
    assert!(config.alerts.sinks.is_empty());
}

#[test]
fn a_file_sets_a_value_in_its_section() {
    let config = load(
        Some(
            "roles = \"worker\"\n\n\
             [http]\nconnections_max = 64\n\n\
             [workers.queue]\nfetch_batch = 4\n\n\
             [reconcile.retention]\ndone_secs = 120\n",
        ),
        &[],
    )
    .expect("valid file");
    assert_eq!(config.http.connections_max, 64);
    assert_eq!(config.workers.queue.fetch_batch, 4);
    assert_eq!(config.reconcile.retention.done, Duration::from_secs(120));
    assert!(config.roles.worker && !config.roles.intake);
    // What the file leaves out keeps its default.
    assert_eq!(config.http.request_timeout, Duration::from_secs(15));
}

#[test]
fn duration_fields_read_the_unit_their_key_names() {
    let config = load(
        Some(
            "[http]\nrequest_timeout_ms = 2500\n\n\
             [reconcile]\nstuck_pending_secs = 90\n\n\
             [alerts.breaker]\nopen_ms = 1500\n",
        ),
        &[],
    )
    .expect("valid file");
    assert_eq!(config.http.request_timeout, Duration::from_millis(2_500));
    assert_eq!(config.reconcile.stuck_after, Duration::from_secs(90));
    assert_eq!(config.alerts.breaker.open, Duration::from_millis(1_500));
    // The variables take the same numbers.
    let config = load(None, &[("FERRY_HTTP_REQUEST_TIMEOUT_MS", "2500")]).expect("valid");
    assert_eq!(config.http.request_timeout, Duration::from_millis(2_500));
}

#[test]
fn a_variable_overrides_the_file() {
    let file = "[http]\nrequest_timeout_ms = 15000\n\n[workers]\nposting_workers = 3\n";
    let config = load(
        Some(file),
        &[
            ("FERRY_HTTP_REQUEST_TIMEOUT_MS", "4000"),
            // Empty counts as unset: the file's value stands.
            ("FERRY_POSTING_WORKERS", " "),
        ],
    )
    .expect("valid");
    assert_eq!(config.http.request_timeout, Duration::from_secs(4));
    assert_eq!(config.workers.posting_workers, 3);
    // `serve --roles` beats both.
    let config = Config::from_sources(Sources {
        file: Some("roles = \"intake\"\n"),
        env: &|name| (name == "FERRY_ROLES").then(|| "worker".to_owned()),
        roles: Some(Roles::ALL),
    })
    .expect("valid");
    assert_eq!(config.roles, Roles::ALL);
}

#[test]
fn an_unknown_key_in_the_file_is_an_error_naming_it() {
    let err = load(Some("[http]\nrequest_timeout_mss = 15000\n"), &[]).expect_err("typo");
    assert_eq!(err.variable, "FERRY_CONFIG");
    assert!(err.reason.contains("request_timeout_mss"), "{err}");
    assert!(err.reason.starts_with("line 2:"), "{err}");
    let err = load(Some("[htp]\naddr = \"127.0.0.1:1\"\n"), &[]).expect_err("section");
    assert!(err.reason.contains("htp"), "{err}");
    let err = load(Some("[alerts]\nsink = []\n"), &[]).expect_err("alerts key");
    assert!(err.reason.contains("`sink`"), "{err}");
}

#[test]
fn a_bad_value_names_its_variable_and_file_key() {
    let err = load(None, &[("FERRY_HTTP_REQUEST_TIMEOUT_MS", "soon")]).expect_err("not a number");
    assert_eq!(err.variable, "FERRY_HTTP_REQUEST_TIMEOUT_MS");
    // A rule broken by a value from the file names where it can be set in either.
    let err = load(Some("[http]\nrequest_timeout_ms = 1000\n"), &[]).expect_err("too short");
    assert_eq!(err.variable, "FERRY_HTTP_REQUEST_TIMEOUT_MS");
    assert!(
        err.to_string()
            .contains("`http.request_timeout_ms` in FERRY_CONFIG"),
        "{err}"
    );
}

#[test]
fn alert_sinks_share_the_file_and_their_errors_keep_secrets() {
    let file = "[http]\nconnections_max = 8\n\n\
                [[alerts.sinks]]\nkind = \"pagerduty\"\nrouting_key = \"${PD_KEY}\"\n";
    let config = load(Some(file), &[("PD_KEY", "routing-key-1")]).expect("valid");
    assert_eq!(config.http.connections_max, 8);
    assert_eq!(config.alerts.sinks.len(), 1);
    let err = load(Some(file), &[]).expect_err("PD_KEY unset");
    assert_eq!(err.variable, "FERRY_CONFIG");
    assert!(err.reason.contains("alerts.sinks[0] (pagerduty)"), "{err}");
    assert!(err.reason.contains("PD_KEY"), "{err}");
}

#[test]
fn anomaly_thresholds_come_from_the_file_and_a_bad_one_is_named() {
    let config = load(
        Some(
            "[anomaly.velocity]\ncount = 9\nwindow_secs = 30\n\n\
             [anomaly.ledgers.shop.failed_streak]\ncount = 2\n",
        ),
        &[("FERRY_ANOMALY_ENABLED", "false")],
    )
    .expect("valid file");
    assert!(!config.anomaly.enabled, "the environment wins");
    let shop = config
        .anomaly
        .rules_for(&ferry::domain::LedgerName::parse("shop").expect("name"));
    assert_eq!((shop.velocity.count, shop.failed_streak.count), (9, 2));
    let error = load(
        Some("[anomaly.ledgers.shop.velocity]\ncount = 1\nwindow_secs = 5\n"),
        &[],
    )
    .expect_err("a count of one is refused");
    assert_eq!(error.variable, "FERRY_CONFIG");
    assert_eq!(
        error.reason,
        "anomaly.ledgers.shop.velocity.count must be at least 2"
    );
    let unknown = load(Some("[anomaly.velocity]\ncount = 5\nwindow = 60\n"), &[])
        .expect_err("an unknown key is refused");
    assert!(unknown.to_string().contains("window"), "{unknown}");
}
