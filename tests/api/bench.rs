//! A small run of every `ferry bench` scenario through the real binary, so the benchmark
//! cannot rot.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::server_url;

/// Runs `ferry bench ARGS --json PATH` with the tests' settings; returns the JSON rows and the
/// printed table. Panics, with the bench's stderr, unless it succeeds.
async fn ferry_bench(args: &[&str]) -> (Vec<Value>, String) {
    let json = std::env::temp_dir().join(format!("ferry-bench-{}.json", uuid::Uuid::new_v4()));
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"));
    // Only the settings below, whatever this process was started with.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("FERRY_") {
            command.env_remove(name);
        }
    }
    command
        .arg("bench")
        .args(args)
        .arg("--json")
        .arg(&json)
        // The scenarios make and drop databases of their own on this server.
        .env("DATABASE_URL", format!("{}/postgres", server_url()))
        .env("REDIS_URL", "redis://127.0.0.1:6379")
        // As `helpers::test_config`: generous timeouts (parallel tests share two cores with
        // builds) and a fast heartbeat.
        .env("FERRY_INTAKE_DB_TIMEOUT_MS", "5000")
        .env("FERRY_DB_ACQUIRE_TIMEOUT_MS", "10000")
        .env("FERRY_WORKER_HEARTBEAT_MS", "1000")
        .env("FERRY_WORKER_MISSED_HEARTBEATS", "2")
        .env("FERRY_SHUTDOWN_GRACE_MS", "2000")
        .env("RUST_LOG", "warn")
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(900), command.output())
        .await
        .expect("ferry bench finishes")
        .expect("ferry bench runs");
    let table = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "ferry bench {args:?} failed:\n{}\n{table}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rows = std::fs::read(&json).expect("JSON rows written");
    let _ = std::fs::remove_file(&json);
    (serde_json::from_slice(&rows).expect("JSON rows"), table)
}

fn scenario(row: &Value) -> &str {
    row["scenario"].as_str().expect("scenario")
}

#[tokio::test]
async fn every_bench_scenario_runs_and_reports_a_row() {
    let (rows, table) = ferry_bench(&[
        "--scenario",
        "all",
        "--transfers",
        "300",
        "--accounts",
        "500",
        "--soak-secs",
        "1",
        "--history-entries",
        "3000",
    ])
    .await;
    let names: Vec<&str> = rows.iter().map(scenario).collect();
    assert_eq!(
        names,
        [
            "baseline-uniform",
            "uniform",
            "hold-capture",
            "hold-capture-single",
            "balance-at",
            "uniform-anomaly-off",
            "uniform-review",
            "uniform-webhook",
            "webhook-lag",
            "baseline-hot",
            "hot",
            "intake",
            "intake-while-posting",
            "intake-while-posting-anomaly-off",
            "reconcile-full"
        ]
    );
    for row in &rows {
        let positive = |key: &str| row[key].as_f64().is_some_and(|v| v > 0.0);
        assert!(
            positive("seconds") && positive("transfers_per_sec"),
            "{row}"
        );
        // `balance-at` counts its reads.
        let moved = if scenario(row) == "balance-at" {
            2000
        } else {
            300
        };
        assert_eq!(row["transfers"], moved, "{row}");
    }
    for row in rows.iter().filter(|r| !scenario(r).starts_with("baseline")) {
        assert_eq!(row["failed_contention"], 0, "{row}");
    }
    for intake in rows.iter().filter(|r| {
        let name = scenario(r);
        name.starts_with("intake")
            || name.contains("webhook")
            || name.starts_with("hold-capture")
            || name == "balance-at"
    }) {
        let (p50, p99) = (intake["p50_ms"].as_f64(), intake["p99_ms"].as_f64());
        assert!(p50.is_some() && p99 >= p50, "{intake}");
    }
    for key in [
        "scenario",
        "transfers",
        "seconds",
        "transfers_per_sec",
        "failed_contention",
    ] {
        assert!(rows[0].get(key).is_some(), "missing {key}");
    }
    // The table: a header, then one line per row in the same order.
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines.first().is_some_and(|l| l.starts_with("scenario")),
        "{table}"
    );
    assert_eq!(lines.len(), rows.len() + 1, "{table}");
    for (line, name) in lines[1..].iter().zip(&names) {
        assert!(line.starts_with(&format!("{name} ")), "{table}");
    }
}

#[tokio::test]
async fn the_soak_scenario_reports_memory_at_start_and_end() {
    let (rows, _) = ferry_bench(&[
        "--scenario",
        "soak",
        "--transfers",
        "200",
        "--accounts",
        "500",
        "--soak-secs",
        "1",
    ])
    .await;
    assert_eq!(rows.len(), 1);
    assert!(rows[0]["transfers"].as_u64() >= Some(200), "{}", rows[0]);
    let note = rows[0]["note"].as_str().expect("note");
    assert!(note.contains("RSS MiB at start"), "{}", rows[0]);
    assert!(!note.contains('?'), "RSS not read: {}", rows[0]);
}
