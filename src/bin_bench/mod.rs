//! `ferry bench`: measured scenarios against throwaway databases on `DATABASE_URL`'s server,
//! printed as tables and optionally written as JSON (README, "Benchmarks").
//!
//! A module of the `ferry` binary, not of the library (ARCHITECTURE.md, `src/bin_bench/`).
//! Scratch databases come from `ferry::harness`, which the integration tests use too; ferry
//! itself runs as `ferry serve` child processes (`processes.rs`), this process being the load
//! generator.

mod baseline;
mod console;
mod growth;
mod holds;
mod latency;
mod openloop;
pub mod pipeline;
mod plot;
mod processes;
pub mod reconcile;
mod soak;
mod stages;
mod steady;
mod throughput;
mod webhooks;
pub mod workload;

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use sqlx::PgPool;

use ferry::db;
use ferry::harness::ScratchDatabase;

/// One measured row.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub scenario: String,
    /// Which run of the bench this was (for the order of a scenario's runs).
    #[serde(skip)]
    pub run: usize,
    pub transfers: u64,
    pub seconds: f64,
    pub transfers_per_sec: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
    pub failed_contention: u64,
    /// Scenario-specific facts (window, ledger size, ...).
    pub note: String,
}

impl Row {
    /// A scenario that did `count` things in `seconds`, with each one's latency (ms, sorted)
    /// as its p50/p99 and no contention failures.
    pub fn measured(
        scenario: &str,
        count: u64,
        seconds: f64,
        sorted_latencies_ms: &[f64],
        note: String,
    ) -> Self {
        Self {
            scenario: scenario.to_owned(),
            run: 0,
            transfers: count,
            seconds,
            transfers_per_sec: count as f64 / seconds.max(f64::EPSILON),
            p50_ms: workload::percentile(sorted_latencies_ms, 50.0),
            p99_ms: workload::percentile(sorted_latencies_ms, 99.0),
            failed_contention: 0,
            note,
        }
    }
}

/// A database for one scenario on `server_url`'s server, created and migrated, with a pool of
/// 8 connections on it.
pub async fn scratch_database(server_url: &str) -> anyhow::Result<(ScratchDatabase, PgPool)> {
    let scratch = ScratchDatabase::create(server_url, "ferry_bench").await?;
    let pool = db::connect(scratch.url(), 8, Duration::from_secs(30)).await?;
    Ok((scratch, pool))
}

/// Asks the server for a checkpoint, so a measurement does not start inside one that earlier
/// writes (a seeded ledger, a saturation run, the previous run) set off: PostgreSQL starts
/// one every `max_wal_size` of WAL (1 GB by default, filled within one saturation run), and
/// while it runs, every page first written after it starts is logged whole, which slows
/// every commit. Needs superuser or `pg_checkpoint`; without either, measurement goes on and
/// the warning says so.
pub async fn checkpoint(pool: &PgPool) {
    if let Err(e) = sqlx::query("CHECKPOINT").execute(pool).await {
        eprintln!("warning: CHECKPOINT refused ({e}); runs may start inside a checkpoint");
    }
}

/// Drops the scratch database, unless `FERRY_BENCH_KEEP_DB` is set (then it is kept for
/// `EXPLAIN ANALYZE` and its URL printed).
pub async fn finish(scratch: ScratchDatabase, pool: PgPool) {
    pool.close().await;
    if std::env::var_os("FERRY_BENCH_KEEP_DB").is_some() {
        eprintln!("kept database {}", scratch.keep());
    }
}

/// What `ferry bench` was asked for (`ferry bench --help`).
#[derive(Debug, Clone)]
pub struct Options {
    /// The least a measured run moves, and the most a warm-up round does.
    pub transfers: u64,
    pub accounts: u32,
    /// Runs of each throughput scenario.
    pub reps: usize,
    pub warmup_secs: f64,
    /// The least a measured run lasts (its size is set from the warm-up's rate).
    pub measure_secs: f64,
    /// How long each offered-load step of `latency` lasts.
    pub step_secs: f64,
    /// The longest wait, before a step, for ferry to post promptly again.
    pub quiet_timeout_secs: f64,
    /// Offered rate of `growth`'s and `soak`'s time-to-posted (single requests).
    pub rate_per_sec: f64,
    /// Entries of `growth`'s large ledger.
    pub ledger_entries: u64,
    pub history_entries: i64,
    pub soak_secs: u64,
    /// `soak`: how long finished jobs are kept before the scheduler purges them.
    pub soak_job_retention_secs: u64,
    pub plot: Option<PathBuf>,
}

/// Throughput scenarios, in the order `all` runs them; each is repeated and compared.
pub const THROUGHPUT: [&str; 12] = [
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
];
/// Scenarios measured once per `all` (latencies of reads and of deliveries, run times).
pub const ONCE: [&str; 4] = [
    "balance-at",
    "webhook-lag",
    "webhook-lag-close",
    "reconcile",
];
/// Scenarios run only by name: each takes minutes.
pub const BY_NAME: [&str; 6] = [
    "latency",
    "steady",
    "growth",
    "scale-out",
    "soak",
    "console",
];

/// The suffix of the scenarios run with anomaly detection off.
pub const ANOMALY_OFF: &str = "-anomaly-off";
/// The suffix of the scenarios run with every anomaly rule set to `review`.
pub const REVIEW: &str = "-review";

/// The scenario a throughput scenario's ratio is taken against (its median over the other's),
/// run with it whenever it is run.
pub fn compared_with(scenario: &str) -> Option<&'static str> {
    match scenario {
        "uniform" => Some("baseline-uniform"),
        "hot" => Some("baseline-hot"),
        "hold-capture" | "hold-capture-single" | "uniform-review" | "uniform-webhook" => {
            Some("uniform")
        }
        "uniform-anomaly-off" => Some("uniform"),
        "intake-while-posting-anomaly-off" => Some("intake-while-posting"),
        "scale-out-2" | "scale-out-4" => Some("scale-out-1"),
        "growth-large" => Some("growth-empty"),
        _ => None,
    }
}

/// The throughput scenarios of `list` (one, or several separated by commas: one run,
/// interleaved, so their figures compare) with what each is compared with, transitively,
/// baselines first, each once; `None` if a name is not a throughput scenario.
pub fn throughput_runs(list: &str) -> Option<Vec<&'static str>> {
    let mut names: Vec<&'static str> = Vec::new();
    for one in list.split(',') {
        let one = THROUGHPUT.iter().find(|name| **name == one)?;
        let mut chain = vec![*one];
        while let Some(other) = chain.last().and_then(|n| compared_with(n)) {
            chain.push(other);
        }
        for name in chain.into_iter().rev() {
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    Some(names)
}

/// Every table and series a bench run produced.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub rows: Vec<Summary>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub latency_steps: Vec<openloop::Step>,
    /// `latency`: each mode's saturation and its steps as fractions of it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency: Option<latency::Curves>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub soak: Option<soak::Soak>,
    /// `steady`: each step at the fixed rate, with CPU per transfer.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub steady: Vec<steady::SteadyStep>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub console_timings: Vec<console::Timing>,
}

/// Runs `scenario` (or all).
pub async fn run(
    config: &ferry::config::Config,
    scenario: &str,
    options: &Options,
) -> anyhow::Result<Report> {
    // The bench's clients are reqwest's, built with no crypto provider of their own; ferry's
    // alert client installs the same one (in ferry's processes).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut report = Report::default();
    if let Some(names) = throughput_runs(scenario) {
        report.rows = summarize(throughput::repeated(config, &names, options).await?);
        return Ok(report);
    }
    match scenario {
        "all" => {
            let runs = throughput::repeated(config, &THROUGHPUT, options).await?;
            report.rows = summarize(runs);
            for name in ONCE {
                report.rows.extend(run_once(config, name, options).await?);
            }
        }
        "latency" => {
            let measured = latency::run(config, options).await?;
            report.rows = summarize(
                measured
                    .saturation_rows
                    .into_iter()
                    .map(|row| (row.scenario.clone(), vec![row]))
                    .collect(),
            );
            report.latency_steps = measured.steps;
            report.latency = Some(measured.curves);
        }
        "growth" => {
            let (rows, steps) = growth::run(config, options).await?;
            report.rows = rows;
            report.latency_steps = steps;
        }
        "scale-out" => {
            let names = ["scale-out-1", "scale-out-2", "scale-out-4"];
            report.rows = summarize(throughput::repeated(config, &names, options).await?);
        }
        "soak" => report.soak = Some(soak::run(config, options).await?),
        "steady" => report.steady = steady::run(config, options).await?,
        "console" => report.console_timings = console::run(config, options).await?,
        one if ONCE.contains(&one) => report.rows = run_once(config, one, options).await?,
        other => anyhow::bail!(
            "unknown scenario {other:?} (scenarios: {}, {}, {}, all)",
            THROUGHPUT.join(", "),
            ONCE.join(", "),
            BY_NAME.join(", ")
        ),
    }
    Ok(report)
}

/// A scenario measured once: its rows as summaries of one run each.
async fn run_once(
    config: &ferry::config::Config,
    name: &str,
    options: &Options,
) -> anyhow::Result<Vec<Summary>> {
    eprintln!("running {name}");
    let rows = match name {
        "reconcile" => {
            reconcile::run(&config.database.url, options.transfers, &config.reconcile).await?
        }
        "balance-at" | "webhook-lag" | "webhook-lag-close" => {
            vec![read_or_deliver(config, name, options).await?]
        }
        other => anyhow::bail!("{other} is not measured once"),
    };
    Ok(summarize(
        rows.into_iter()
            .map(|row| (row.scenario.clone(), vec![row]))
            .collect(),
    ))
}

/// `balance-at` or `webhook-lag(-close)` on a scratch database of their own.
async fn read_or_deliver(
    config: &ferry::config::Config,
    name: &str,
    options: &Options,
) -> anyhow::Result<Row> {
    use processes::{ChildSettings, Layout, SeededFerry};
    let mut settings = ChildSettings::default();
    if name.starts_with("webhook-lag") {
        // The receiver is on loopback, in this process.
        settings = settings.with_env("FERRY_WEBHOOKS_ALLOW_INSECURE", "true");
    }
    let seeded =
        SeededFerry::start(config, options.accounts, Layout::IntakeAndWorker, settings).await?;
    let row = if name == "balance-at" {
        holds::balance_at(name, &seeded.ferry, options.history_entries).await
    } else {
        let plan = workload::Planner::new(workload::Shape::Uniform, options.accounts, 1)
            .take(options.transfers);
        let connections = if name == "webhook-lag-close" {
            webhooks::Connections::Closed
        } else {
            webhooks::Connections::KeptAlive
        };
        webhooks::lag(name, &seeded.ferry, &plan, connections).await
    };
    seeded.finish().await;
    row
}

/// A scenario's runs, summed up: the median run's figures, the spread of its rates, and the
/// ratio of its median to the median of what it is compared with.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub scenario: String,
    pub reps: usize,
    /// Of the median run.
    pub transfers: u64,
    pub seconds: f64,
    /// Median over the runs.
    pub transfers_per_sec: f64,
    pub min_per_sec: f64,
    pub max_per_sec: f64,
    /// Every run's rate, in run order.
    pub runs_per_sec: Vec<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compared_with: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
    /// Of the median run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
    /// Over every run.
    pub failed_contention: u64,
    pub note: String,
}

/// One summary per scenario, in the order given; ratios where the compared scenario ran too.
pub fn summarize(runs: Vec<(String, Vec<Row>)>) -> Vec<Summary> {
    let mut summaries: Vec<Summary> = runs
        .into_iter()
        .filter_map(|(scenario, mut rows)| {
            rows.sort_by(|a, b| a.transfers_per_sec.total_cmp(&b.transfers_per_sec));
            let rates: Vec<f64> = rows.iter().map(|r| r.transfers_per_sec).collect();
            let median = rows.get(rows.len() / 2)?.clone();
            Some(Summary {
                reps: rows.len(),
                transfers: median.transfers,
                seconds: median.seconds,
                transfers_per_sec: median_of(&rates)?,
                min_per_sec: *rates.first()?,
                max_per_sec: *rates.last()?,
                runs_per_sec: rows_in_run_order(&rows),
                compared_with: None,
                ratio: None,
                p50_ms: median.p50_ms,
                p99_ms: median.p99_ms,
                failed_contention: rows.iter().map(|r| r.failed_contention).sum(),
                note: median.note,
                scenario,
            })
        })
        .collect();
    let medians: Vec<(String, f64)> = summaries
        .iter()
        .map(|s| (s.scenario.clone(), s.transfers_per_sec))
        .collect();
    for summary in &mut summaries {
        let other = compared_with(&summary.scenario);
        if let Some((name, median)) = medians.iter().find(|(n, _)| Some(n.as_str()) == other) {
            summary.compared_with = Some(name.clone());
            summary.ratio = Some(summary.transfers_per_sec / median.max(f64::EPSILON));
        }
    }
    summaries
}

/// The median of sorted values (the mean of the middle two for an even count).
pub fn median_of(sorted: &[f64]) -> Option<f64> {
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

fn rows_in_run_order(rows: &[Row]) -> Vec<f64> {
    let mut ordered: Vec<&Row> = rows.iter().collect();
    ordered.sort_by_key(|r| r.run);
    ordered.iter().map(|r| r.transfers_per_sec).collect()
}

/// Prints summaries as an aligned table.
pub fn print_table(rows: &[Summary]) {
    println!(
        "{:<34} {:>4} {:>9} {:>8} {:>9} {:>9} {:>9} {:>18} {:>8} {:>8} {:>5}  note",
        "scenario",
        "runs",
        "transfers",
        "seconds",
        "median/s",
        "min/s",
        "max/s",
        "ratio (median)",
        "p50 ms",
        "p99 ms",
        "cont."
    );
    for row in rows {
        let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
        let ratio = match (&row.compared_with, row.ratio) {
            (Some(other), Some(ratio)) => format!("{ratio:.2}× {}", short(other)),
            _ => "-".to_owned(),
        };
        println!(
            "{:<34} {:>4} {:>9} {:>8.2} {:>9.0} {:>9.0} {:>9.0} {:>18} {:>8} {:>8} {:>5}  {}",
            row.scenario,
            row.reps,
            row.transfers,
            row.seconds,
            row.transfers_per_sec,
            row.min_per_sec,
            row.max_per_sec,
            ratio,
            ms(row.p50_ms),
            ms(row.p99_ms),
            row.failed_contention,
            row.note
        );
    }
}

/// A scenario's name cut to fit the ratio column.
fn short(name: &str) -> &str {
    name.get(..name.len().min(11)).unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(scenario: &str, run: usize, per_sec: f64) -> Row {
        Row {
            run,
            ..Row::measured(scenario, 100, 100.0 / per_sec, &[], String::new())
        }
    }

    #[test]
    fn scenarios_named_together_run_with_their_baselines_once() {
        assert_eq!(
            throughput_runs("uniform,hot"),
            Some(vec!["baseline-uniform", "uniform", "baseline-hot", "hot"])
        );
        assert_eq!(
            throughput_runs("uniform-webhook,uniform"),
            Some(vec!["baseline-uniform", "uniform", "uniform-webhook"])
        );
        assert_eq!(throughput_runs("hot"), Some(vec!["baseline-hot", "hot"]));
        assert_eq!(throughput_runs("uniform,latency"), None);
        assert_eq!(throughput_runs("uniform,"), None);
    }

    #[test]
    fn summaries_take_the_median_run_and_ratios_of_medians() {
        let runs = vec![
            (
                "baseline-uniform".to_owned(),
                vec![row("b", 0, 10.0), row("b", 2, 30.0), row("b", 4, 20.0)],
            ),
            (
                "uniform".to_owned(),
                vec![row("u", 1, 100.0), row("u", 3, 500.0), row("u", 5, 120.0)],
            ),
        ];
        let summaries = summarize(runs);
        let uniform = &summaries[1];
        assert!((uniform.transfers_per_sec - 120.0).abs() < 1e-9);
        assert!((uniform.min_per_sec - 100.0).abs() < 1e-9);
        assert!((uniform.max_per_sec - 500.0).abs() < 1e-9);
        assert_eq!(uniform.runs_per_sec.len(), 3);
        assert!(
            (uniform.runs_per_sec[1] - 500.0).abs() < 1e-9,
            "run order kept"
        );
        assert_eq!(uniform.compared_with.as_deref(), Some("baseline-uniform"));
        assert!((uniform.ratio.unwrap_or_default() - 6.0).abs() < 1e-9);
        assert_eq!(summaries[0].ratio, None);
    }

    #[test]
    fn medians_of_even_counts_are_the_middle_mean() {
        assert_eq!(median_of(&[1.0, 2.0, 4.0, 9.0]), Some(3.0));
        assert_eq!(median_of(&[]), None);
    }
}
