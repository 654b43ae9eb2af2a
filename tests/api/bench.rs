//! A small run of every `ferry bench` scenario, so the benchmark cannot rot.

use ferry::config::Roles;

use crate::helpers::{server_url, test_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bench_scenario_runs_and_reports_a_row() {
    // The scenarios make and drop databases of their own on this server.
    let config = test_config(&format!("{}/postgres", server_url()), Roles::ALL);
    let rows = ferry::bench::run(&config, "all", 300, 500, 1)
        .await
        .expect("bench runs");
    let names: Vec<&str> = rows.iter().map(|r| r.scenario.as_str()).collect();
    assert_eq!(
        names,
        [
            "baseline-uniform",
            "uniform",
            "baseline-hot",
            "hot",
            "intake",
            "intake-while-posting",
            "reconcile-full"
        ]
    );
    for row in &rows {
        assert!(row.seconds > 0.0 && row.transfers_per_sec > 0.0, "{row:?}");
        assert_eq!(row.transfers, 300, "{row:?}");
    }
    for row in rows.iter().filter(|r| !r.scenario.starts_with("baseline")) {
        assert_eq!(row.failed_contention, 0, "{row:?}");
    }
    for intake in &rows[4..6] {
        assert!(
            intake.p50_ms.is_some() && intake.p99_ms >= intake.p50_ms,
            "{intake:?}"
        );
    }
    let json = serde_json::to_value(&rows).expect("json");
    for key in [
        "scenario",
        "transfers",
        "seconds",
        "transfers_per_sec",
        "failed_contention",
    ] {
        assert!(json[0].get(key).is_some(), "missing {key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_soak_scenario_reports_memory_at_start_and_end() {
    let config = test_config(&format!("{}/postgres", server_url()), Roles::ALL);
    let rows = ferry::bench::run(&config, "soak", 200, 500, 1)
        .await
        .expect("soak runs");
    assert_eq!(rows.len(), 1);
    assert!(rows[0].transfers >= 200, "{:?}", rows[0]);
    assert!(rows[0].note.contains("RSS MiB at start"), "{:?}", rows[0]);
    assert!(!rows[0].note.contains('?'), "RSS not read: {:?}", rows[0]);
}
