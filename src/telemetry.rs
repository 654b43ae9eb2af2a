//! Logs (tracing) and metrics (Prometheus, every name prefixed `ferry_`).

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;

/// Histogram buckets for `*_seconds` metrics: 1 ms to 10 s.
const SECONDS_BUCKETS: [f64; 14] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
];

/// Buckets of `ferry_transfer_stage_seconds`: finer where the targets are (tens of ms), so a
/// bench step's p99 can be read off them (`ferry bench --scenario latency`).
const STAGE_BUCKETS: [f64; 22] = [
    0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Logs to stderr; `RUST_LOG` filters (default `default_level`: see
/// `Command::default_log_level`), `FERRY_LOG_FORMAT=json` for JSON lines.
pub fn init_logging(default_level: tracing::Level) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter_or(default_level))
        .with_writer(std::io::stderr);
    let result = if std::env::var("FERRY_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    // Already initialised (tests start several apps in one process): keep the first.
    drop(result);
}

/// Logs for tests: written through libtest's capture, so `cargo test` shows a test's logs
/// only when that test fails (`--nocapture` shows them all). Same filter as
/// [`init_logging`] for `serve`; the first call in a process wins.
pub fn init_test_logging() {
    let result = tracing_subscriber::fmt()
        .with_env_filter(env_filter_or(tracing::Level::INFO))
        .with_test_writer()
        .try_init();
    drop(result);
}

/// `RUST_LOG`, or `default_level` when unset or invalid.
fn env_filter_or(default_level: tracing::Level) -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::default().add_directive(LevelFilter::from_level(default_level).into())
    })
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    // A full name is matched before a suffix.
                    Matcher::Full("ferry_transfer_stage_seconds".into()),
                    &STAGE_BUCKETS,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("seconds".into()), &SECONDS_BUCKETS)
                })
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed; metrics then go there instead.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}
