//! `ferry bench`: measured scenarios against throwaway databases on `DATABASE_URL`'s server,
//! printed as a table and optionally written as JSON rows.
//!
//! A module of the `ferry` binary, not of the library (ARCHITECTURE.md, `src/bin_bench/`).
//! Scratch databases and ferry run in-process come from `ferry::harness`, which the
//! integration tests use too.

mod baseline;
mod holds;
pub mod pipeline;
pub mod reconcile;
mod webhooks;
pub mod workload;

use std::time::Duration;

use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use ferry::db;
use ferry::harness::ScratchDatabase;

/// One measured row.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub scenario: String,
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

/// Drops the scratch database, unless `FERRY_BENCH_KEEP_DB` is set (then it is kept for
/// `EXPLAIN ANALYZE` and its URL printed).
pub async fn finish(scratch: ScratchDatabase, pool: PgPool) {
    pool.close().await;
    if std::env::var_os("FERRY_BENCH_KEEP_DB").is_some() {
        eprintln!("kept database {}", scratch.keep());
    }
}

/// Every scenario, in the order `all` runs them (`soak`, which runs for minutes, only by name).
/// A scenario ending in [`ANOMALY_OFF`] is the same run with anomaly detection off, for its
/// cost (README, "Anomaly detection"); one ending in [`REVIEW`], with every rule set to
/// `review`, for the cost of judging before posting.
pub const SCENARIOS: [&str; 15] = [
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
    "reconcile",
];

/// The suffix of the scenarios run with anomaly detection off.
pub const ANOMALY_OFF: &str = "-anomaly-off";
/// The suffix of the scenarios run with every anomaly rule set to `review`.
pub const REVIEW: &str = "-review";

/// Runs `scenario` (or all) with `transfers` transfers, each in a database of its own.
pub async fn run(
    config: &ferry::config::Config,
    scenario: &str,
    transfers: u64,
    accounts: u32,
    soak_secs: u64,
    history_entries: i64,
) -> anyhow::Result<Vec<Row>> {
    let chosen: Vec<&str> = match scenario {
        "all" => SCENARIOS.to_vec(),
        one if SCENARIOS.contains(&one) || one == "soak" => vec![one],
        other => anyhow::bail!(
            "unknown scenario {other:?} (scenarios: {}, all)",
            SCENARIOS.join(", ")
        ),
    };
    let mut rows = Vec::new();
    for name in chosen {
        eprintln!("running {name} with {transfers} transfers");
        let row = match name {
            "reconcile" => {
                reconcile::run(&config.database.url, transfers, &config.reconcile).await?
            }
            _ => vec![
                run_transfer_scenario(
                    config,
                    name,
                    (transfers, accounts, history_entries),
                    soak_secs,
                )
                .await?,
            ],
        };
        rows.extend(row);
    }
    Ok(rows)
}

/// `sizes`: transfers, accounts, and the `balance-at` history's entries.
async fn run_transfer_scenario(
    config: &ferry::config::Config,
    name: &str,
    sizes: (u64, u32, i64),
    soak_secs: u64,
) -> anyhow::Result<Row> {
    let (transfers, accounts, history_entries) = sizes;
    use workload::{Shape, plan, seed_accounts};
    let scenario = name;
    let mut config = config.clone();
    let name = if let Some(base) = name.strip_suffix(ANOMALY_OFF) {
        config.anomaly.enabled = false;
        base
    } else if let Some(base) = name.strip_suffix(REVIEW) {
        let review = ferry::domain::RuleAction::Review;
        let anomaly = &mut config.anomaly;
        anomaly.velocity.action = review;
        anomaly.large_amount.action = review;
        anomaly.failed_streak.action = review;
        anomaly.duplicate_amount.action = review;
        base
    } else {
        name
    };
    if name.contains("webhook") {
        // The receiver is on loopback, in this process.
        config.webhooks.allow_insecure = true;
    }
    let config = &config;
    let shape = if name.ends_with("hot") {
        Shape::Hot
    } else {
        Shape::Uniform
    };
    let planned = plan(shape, transfers, accounts, 20_261_121);
    let (scratch, pool) = scratch_database(&config.database.url).await?;
    // Measure, then drop the scratch database whatever happened.
    let result = async {
        seed_accounts(&pool, accounts).await?;
        let row = if name.starts_with("baseline") {
            let pool = db::connect(
                scratch.url(),
                baseline::BASELINE_CONNECTIONS,
                Duration::from_secs(30),
            )
            .await?;
            let api_key = Uuid::now_v7();
            sqlx::query(
                "INSERT INTO api_keys (id, name, key_hash, scopes) \
                 VALUES ($1, 'baseline', $2, '{admin}')",
            )
            .bind(api_key)
            .bind(api_key.as_bytes().to_vec())
            .execute(&pool)
            .await?;
            let row = baseline::run(name, &pool, api_key, &planned).await;
            pool.close().await;
            row?
        } else {
            let posting = if name == "intake" {
                pipeline::Posting::Afterwards
            } else {
                pipeline::Posting::Concurrent
            };
            let ferry = pipeline::BenchedFerry::start(config, scratch.url(), posting).await?;
            let row = if name.starts_with("intake") {
                pipeline::intake(name, &ferry, &planned).await
            } else if name == "uniform-webhook" {
                webhooks::uniform(name, &ferry, &planned).await
            } else if name == "hold-capture" {
                holds::hold_capture(name, &ferry, &planned, holds::Captures::Batched).await
            } else if name == "hold-capture-single" {
                holds::hold_capture(name, &ferry, &planned, holds::Captures::Single).await
            } else if name == "balance-at" {
                holds::balance_at(name, &ferry, history_entries).await
            } else if name == "webhook-lag" {
                webhooks::lag(name, &ferry, &planned).await
            } else if name == "soak" {
                pipeline::soak(&ferry, &planned, Duration::from_secs(soak_secs)).await
            } else {
                pipeline::batched(name, &ferry, &planned).await
            };
            ferry.stop();
            tokio::time::sleep(Duration::from_millis(200)).await;
            row?
        };
        anyhow::Ok(row)
    }
    .await;
    finish(scratch, pool).await;
    result.map(|row| Row {
        scenario: scenario.to_owned(),
        ..row
    })
}

/// Prints rows as an aligned table.
pub fn print_table(rows: &[Row]) {
    println!(
        "{:<22} {:>10} {:>9} {:>12} {:>8} {:>8} {:>10}  note",
        "scenario", "transfers", "seconds", "transfers/s", "p50 ms", "p99 ms", "contention"
    );
    for row in rows {
        let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
        println!(
            "{:<22} {:>10} {:>9.3} {:>12.0} {:>8} {:>8} {:>10}  {}",
            row.scenario,
            row.transfers,
            row.seconds,
            row.transfers_per_sec,
            ms(row.p50_ms),
            ms(row.p99_ms),
            row.failed_contention,
            row.note
        );
    }
}
