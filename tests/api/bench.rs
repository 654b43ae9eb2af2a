//! A small run of every `ferry bench` scenario through the real binary, so the benchmark
//! cannot rot.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::server_url;

/// Runs `ferry bench ARGS --json PATH` with the tests' settings; returns the JSON report and
/// the printed tables. Panics, with the bench's stderr, unless it succeeds.
async fn ferry_bench(args: &[&str]) -> (Value, String) {
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
    let report = std::fs::read(&json).expect("JSON report written");
    let _ = std::fs::remove_file(&json);
    (serde_json::from_slice(&report).expect("JSON report"), table)
}

/// The report's summary rows.
fn rows(report: &Value) -> &[Value] {
    report["rows"].as_array().map_or(&[], Vec::as_slice)
}

fn scenario(row: &Value) -> &str {
    row["scenario"].as_str().expect("scenario")
}

fn number(row: &Value, key: &str) -> f64 {
    row[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} in {row}"))
}

/// Tiny runs: one run each, no warm-up time, no least duration, short waits for quiet.
const QUICK: [&str; 10] = [
    "--quiet-timeout-secs",
    "3",
    "--reps",
    "1",
    "--warmup-secs",
    "0",
    "--measure-secs",
    "0",
    "--accounts",
    "500",
];

#[tokio::test]
async fn every_bench_scenario_runs_and_reports_a_row() {
    let mut args = QUICK.to_vec();
    args.extend([
        "--scenario",
        "all",
        "--transfers",
        "300",
        "--history-entries",
        "3000",
    ]);
    let (report, table) = ferry_bench(&args).await;
    let rows = rows(&report);
    let names: Vec<&str> = rows.iter().map(scenario).collect();
    assert_eq!(
        names,
        [
            "baseline-uniform",
            "uniform",
            "hold-capture",
            "hold-capture-single",
            "uniform-anomaly-off",
            "uniform-review",
            "uniform-webhook",
            "baseline-hot",
            "hot",
            "intake",
            "intake-while-posting",
            "intake-while-posting-anomaly-off",
            "balance-at",
            "webhook-lag",
            "webhook-lag-close",
            "reconcile-full"
        ]
    );
    for row in rows {
        assert!(
            number(row, "seconds") > 0.0 && number(row, "transfers_per_sec") > 0.0,
            "{row}"
        );
        assert_eq!(row["reps"], 1, "{row}");
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
    // Each is compared with what the README says; ratios only where both ran.
    for (name, with) in [
        ("uniform", "baseline-uniform"),
        ("hot", "baseline-hot"),
        ("hold-capture", "uniform"),
        ("intake-while-posting-anomaly-off", "intake-while-posting"),
    ] {
        let row = rows.iter().find(|r| scenario(r) == name).expect(name);
        assert_eq!(row["compared_with"], with, "{row}");
        assert!(number(row, "ratio") > 0.0, "{row}");
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
async fn repeated_runs_report_median_min_max_and_bring_their_baseline() {
    let (report, _) = ferry_bench(&[
        "--scenario",
        "uniform",
        "--reps",
        "3",
        "--warmup-secs",
        "0",
        "--measure-secs",
        "0",
        "--transfers",
        "200",
        "--accounts",
        "300",
    ])
    .await;
    let rows = rows(&report);
    let names: Vec<&str> = rows.iter().map(scenario).collect();
    assert_eq!(names, ["baseline-uniform", "uniform"]);
    for row in rows {
        let runs: Vec<f64> = row["runs_per_sec"]
            .as_array()
            .expect("runs")
            .iter()
            .filter_map(Value::as_f64)
            .collect();
        assert_eq!(runs.len(), 3, "{row}");
        let mut sorted = runs.clone();
        sorted.sort_by(f64::total_cmp);
        assert_eq!(number(row, "min_per_sec"), sorted[0], "{row}");
        assert_eq!(number(row, "max_per_sec"), sorted[2], "{row}");
        assert_eq!(number(row, "transfers_per_sec"), sorted[1], "{row}");
        assert_eq!(row["reps"], 3, "{row}");
    }
    let ratio = number(&rows[1], "ratio");
    let expected = number(&rows[1], "transfers_per_sec") / number(&rows[0], "transfers_per_sec");
    assert!(
        (ratio - expected).abs() < 1e-9,
        "ratio of medians: {}",
        rows[1]
    );
}

/// A step's percentiles are in order, and it lost nothing.
fn assert_step(step: &Value) {
    for measure in ["intake", "to_posted"] {
        let p = &step[measure];
        let (p50, p99, p999, max) = (
            number(p, "p50_ms"),
            number(p, "p99_ms"),
            number(p, "p999_ms"),
            number(p, "max_ms"),
        );
        assert!(
            0.0 < p50 && p50 <= p99 && p99 <= p999 && p999 <= max,
            "{measure} of {step}"
        );
    }
    // Time to posted is from the scheduled send, so never shorter than the answer to it.
    assert!(
        number(&step["to_posted"], "p50_ms") >= number(&step["intake"], "p50_ms") * 0.5,
        "{step}"
    );
    assert_eq!(step["errors"], 0, "{step}");
    assert_eq!(step["unposted"], 0, "{step}");
    assert!(number(step, "achieved_per_sec") > 0.0, "{step}");
}

#[tokio::test]
async fn the_latency_scenario_steps_up_to_saturation_and_draws_the_plot() {
    let plot = std::env::temp_dir().join(format!("ferry-latency-{}.svg", uuid::Uuid::new_v4()));
    let plot_arg = plot.to_string_lossy().into_owned();
    let mut args = QUICK.to_vec();
    args.extend([
        "--scenario",
        "latency",
        "--transfers",
        "300",
        "--step-secs",
        "1",
        "--plot",
        &plot_arg,
    ]);
    let (report, table) = ferry_bench(&args).await;
    let steps = report["latency_steps"].as_array().expect("steps");
    // Eight fractions of saturation per mode, single requests first, offered load rising.
    assert_eq!(steps.len(), 16, "{table}");
    for (mode, of_mode) in ["single", "batch"].iter().zip(steps.chunks(8)) {
        let offered: Vec<f64> = of_mode
            .iter()
            .map(|s| number(s, "offered_per_sec"))
            .collect();
        assert!(offered.windows(2).all(|w| w[0] < w[1]), "{offered:?}");
        for step in of_mode {
            assert_eq!(step["mode"], *mode, "{step}");
            assert_step(step);
            // Issue 26: where the step's posting transactions spent their time, each step of
            // a transaction in the order it runs, from the benched ferry's own histogram.
            let posting = step["posting_steps"].as_array().expect("posting_steps");
            let names: Vec<&str> = posting.iter().filter_map(|s| s["step"].as_str()).collect();
            assert_eq!(
                names,
                ["gate", "load", "ledger", "statuses", "events", "commit"],
                "{step}"
            );
            assert!(posting.iter().all(|s| number(s, "mean_ms") > 0.0), "{step}");
        }
    }
    assert!(
        table.contains("single requests at 50% of saturation"),
        "{table}"
    );
    assert!(
        table.contains("posting transactions, mean ms per step"),
        "{table}"
    );
    // Issue 27: the JSON says what the plot draws — each mode's saturation, and each step as
    // a fraction of it — and the saturation runs are its rows.
    let saturation_rows: Vec<&str> = rows(&report).iter().map(scenario).collect();
    assert_eq!(saturation_rows, ["saturation-single", "saturation-batch"]);
    let latency = &report["latency"];
    assert_eq!(latency["target_fraction"], 0.5, "{latency}");
    let modes = latency["modes"].as_array().expect("latency.modes");
    assert_eq!(modes.len(), 2, "{latency}");
    for ((curve, mode), (row, of_mode)) in modes
        .iter()
        .zip(["single", "batch"])
        .zip(rows(&report).iter().zip(steps.chunks(8)))
    {
        assert_eq!(curve["mode"], mode, "{curve}");
        let saturation = number(curve, "saturation_per_sec");
        assert_eq!(saturation, number(row, "transfers_per_sec"), "{curve}");
        let curve_steps = curve["steps"].as_array().expect("steps");
        let fractions: Vec<f64> = curve_steps
            .iter()
            .map(|s| number(s, "fraction_of_saturation"))
            .collect();
        assert_eq!(
            fractions,
            [0.1, 0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25],
            "{curve}"
        );
        for (step, measured) in curve_steps.iter().zip(of_mode) {
            assert_eq!(
                step["offered_per_sec"], measured["offered_per_sec"],
                "{step}"
            );
            assert_eq!(
                step["achieved_per_sec"], measured["achieved_per_sec"],
                "{step}"
            );
            assert_eq!(step["to_posted"], measured["to_posted"], "{step}");
        }
    }
    let svg = std::fs::read_to_string(&plot).expect("plot written");
    let _ = std::fs::remove_file(&plot);
    assert!(svg.contains("<svg"), "not an SVG");
    for label in ["to posted p99", "intake p99.9", "saturation"] {
        assert!(svg.contains(label), "{label} missing from the plot");
    }
}

/// `steady` (issue 26): every step at the one rate asked for, on one ferry, with the CPU
/// ferry and PostgreSQL spent on it.
#[tokio::test]
async fn the_steady_scenario_holds_one_rate_and_says_what_it_cost() {
    let (report, table) = ferry_bench(&[
        "--scenario",
        "steady",
        "--rate",
        "200",
        "--step-secs",
        "1",
        "--reps",
        "2",
        "--warmup-secs",
        "0",
        "--quiet-timeout-secs",
        "3",
    ])
    .await;
    let steps = report["steady"].as_array().expect("steady");
    assert_eq!(steps.len(), 2, "{table}");
    for (rep, step) in steps.iter().enumerate() {
        assert_eq!(step["label"], format!("rep {}", rep + 1), "{step}");
        assert_eq!(step["mode"], "single", "{step}");
        assert_eq!(number(step, "offered_per_sec"), 200.0, "{step}");
        assert_step(step);
        // Both processes did work in the step: a reading of zero is a broken reading.
        assert!(number(step, "ferry_cpu_ms_per_1k") > 0.0, "{step}");
        assert!(number(step, "postgres_cpu_ms_per_1k") > 0.0, "{step}");
    }
    assert!(table.contains("median of 2 steps at 200/s"), "{table}");
}

#[tokio::test]
async fn growth_and_scale_out_compare_with_their_base() {
    let mut args = QUICK.to_vec();
    args.extend([
        "--scenario",
        "growth",
        "--transfers",
        "200",
        "--ledger-entries",
        "4000",
        "--step-secs",
        "1",
        "--rate",
        "100",
    ]);
    let (growth, _) = ferry_bench(&args).await;
    let grown = rows(&growth);
    assert_eq!(
        grown.iter().map(scenario).collect::<Vec<_>>(),
        ["growth-empty", "growth-large"]
    );
    assert_eq!(grown[1]["compared_with"], "growth-empty");
    assert!(
        grown[1]["note"]
            .as_str()
            .is_some_and(|n| n.starts_with("4000 entries before the run")),
        "{}",
        grown[1]
    );
    let steps = growth["latency_steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 2);
    for step in steps {
        assert_step(step);
    }

    let mut args = QUICK.to_vec();
    args.extend(["--scenario", "scale-out", "--transfers", "200"]);
    let (scale_out, _) = ferry_bench(&args).await;
    let scaled = rows(&scale_out);
    assert_eq!(
        scaled.iter().map(scenario).collect::<Vec<_>>(),
        ["scale-out-1", "scale-out-2", "scale-out-4"]
    );
    for row in &scaled[1..] {
        assert_eq!(row["compared_with"], "scale-out-1", "{row}");
        assert_eq!(row["failed_contention"], 0, "{row}");
    }
}

#[tokio::test]
async fn the_soak_scenario_samples_jobs_memory_and_time_to_posted() {
    let (report, table) = ferry_bench(&[
        "--scenario",
        "soak",
        "--soak-secs",
        "3",
        "--rate",
        "200",
        "--accounts",
        "500",
    ])
    .await;
    let samples = report["soak"]["samples"].as_array().expect("samples");
    assert!(!samples.is_empty(), "{table}");
    for sample in samples {
        assert!(number(sample, "rss_mib") > 1.0, "RSS not read: {sample}");
        assert!(number(sample, "jobs_rows") >= 1.0, "{sample}");
        assert!(number(sample, "jobs_dead_rows") >= 0.0, "{sample}");
        assert!(number(sample, "transfers_dead_rows") >= 0.0, "{sample}");
        assert!(number(sample, "to_posted_p99_ms") > 0.0, "{sample}");
        assert_eq!(sample["errors"], 0, "{sample}");
        assert_eq!(sample["unposted"], 0, "{sample}");
    }
    assert!(table.contains("finished jobs kept 300s"), "{table}");
    // One sample is both windows: the verdict compares it with itself.
    let verdict = &report["soak"]["verdict"];
    assert_eq!(verdict["window_samples"], 1, "{verdict}");
    assert_eq!(verdict["p99_ratio"], 1.0, "{verdict}");
    assert!(number(verdict, "first_window_p99_ms") > 0.0, "{verdict}");
    assert!(number(verdict, "jobs_rows_max") >= 1.0, "{verdict}");
    assert!(
        table.contains("soak verdict: time to posted p99"),
        "{table}"
    );
    assert!(report["soak"]["reconciliations"].is_array(), "{report}");
}

#[tokio::test]
async fn the_console_scenario_times_the_overview_on_an_empty_and_a_seeded_ledger() {
    let (report, table) = ferry_bench(&[
        "--scenario",
        "console",
        "--ledger-entries",
        "20000",
        "--accounts",
        "500",
    ])
    .await;
    let timings = report["console_timings"].as_array().expect("timings");
    assert_eq!(timings.len(), 2, "{table}");
    assert_eq!(timings[0]["ledger"], "empty");
    assert_eq!(timings[0]["entries"], 0);
    assert_eq!(timings[1]["ledger"], "large");
    assert_eq!(timings[1]["entries"], 20_000, "{table}");
    // 10 000 transfers 10 ms apart: the last 50 s hold 5,000 of them.
    assert_eq!(
        number(&timings[1], "transfers_in_window").round(),
        4_999.0,
        "{table}"
    );
    for timing in timings {
        let (p50, p99, max) = (
            number(timing, "p50_ms"),
            number(timing, "p99_ms"),
            number(timing, "max_ms"),
        );
        assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{timing}");
        assert_eq!(timing["samples"], 50);
    }
    assert!(table.contains("p50 ms"), "{table}");
}
