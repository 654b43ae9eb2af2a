//! Throughput scenarios, repeated (README, "Benchmarks"): each run has a scratch database of
//! its own, a warm-up on it, then a measured part sized to last at least `measure_secs`.
//! Runs are interleaved — every chosen scenario once, then again in reverse order — so a
//! scenario and the baseline it is compared with see the same drift of a shared machine.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use uuid::Uuid;

use super::processes::{BenchedFerry, ChildSettings, Layout};
use super::workload::{PlannedTransfer, Planner, Shape, seed_accounts};
use super::{Options, Row, baseline, holds, pipeline, webhooks};
use ferry::db;

/// Transfers per warm-up round (fewer when `--transfers` is smaller).
pub const WARMUP_ROUND_TRANSFERS: u64 = 2_000;
/// The measured part is sized from the warm-up's rate with this margin, so it lasts at least
/// `measure_secs` even if the warmed-up system is faster than the warm-up measured.
pub const SIZING_MARGIN: f64 = 1.3;
/// Seed of every plan: the baseline and ferry move the same transfers.
const PLAN_SEED: u64 = 20_261_121;

/// What one scenario measures, with what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// One SERIALIZABLE transaction per transfer, in this process.
    Baseline,
    /// HTTP batches, first request to last posted.
    Batched,
    /// Batched with one webhook endpoint subscribed.
    BatchedWebhook,
    /// Single requests from 64 clients, accepted/s.
    Intake(pipeline::Posting),
    HoldCapture(holds::Captures),
}

/// How `name` is run: its kind, shape, ferry processes and their settings.
struct Setup {
    kind: Kind,
    shape: Shape,
    layout: Layout,
    settings: ChildSettings,
}

fn setup(name: &str, review_config: &std::path::Path) -> anyhow::Result<Setup> {
    let mut settings = ChildSettings::default();
    let mut base = name;
    if let Some(stripped) = name.strip_suffix(super::ANOMALY_OFF) {
        settings = settings.with_env("FERRY_ANOMALY_ENABLED", "false");
        base = stripped;
    } else if let Some(stripped) = name.strip_suffix(super::REVIEW) {
        settings.config_file = Some(review_config.to_owned());
        base = stripped;
    }
    let mut layout = Layout::IntakeAndWorker;
    let kind = match base {
        "baseline-uniform" | "baseline-hot" => Kind::Baseline,
        "uniform" | "hot" => Kind::Batched,
        "uniform-webhook" => {
            // The receiver is on loopback, in the bench's process.
            settings = settings.with_env("FERRY_WEBHOOKS_ALLOW_INSECURE", "true");
            Kind::BatchedWebhook
        }
        "hold-capture" => Kind::HoldCapture(holds::Captures::Batched),
        "hold-capture-single" => Kind::HoldCapture(holds::Captures::Single),
        "intake" => {
            layout = Layout::IntakeOnly;
            Kind::Intake(pipeline::Posting::Afterwards)
        }
        "intake-while-posting" => Kind::Intake(pipeline::Posting::Concurrent),
        other => match other
            .strip_prefix("scale-out-")
            .and_then(|n| n.parse::<usize>().ok())
        {
            Some(workers) if workers > 0 => {
                layout = Layout::IntakePlusWorkers(workers);
                Kind::Batched
            }
            _ => anyhow::bail!("{name} is not a throughput scenario"),
        },
    };
    let shape = if base.ends_with("hot") {
        Shape::Hot
    } else {
        Shape::Uniform
    };
    Ok(Setup {
        kind,
        shape,
        layout,
        settings,
    })
}

/// Where a run sends its transfers.
enum Target<'a> {
    Baseline(&'a PgPool),
    Ferry(&'a BenchedFerry),
}

/// Runs every scenario of `names` `options.reps` times, interleaved; the runs of each, in
/// the order of `names`.
pub async fn repeated(
    config: &ferry::config::Config,
    names: &[&str],
    options: &Options,
) -> anyhow::Result<Vec<(String, Vec<Row>)>> {
    let review_config = ReviewConfig::write()?;
    let mut runs: Vec<(String, Vec<Row>)> = names
        .iter()
        .map(|n| ((*n).to_owned(), Vec::new()))
        .collect();
    // The measured size of each scenario, fixed by its first run so every run does the same.
    let mut sizes: HashMap<String, u64> = HashMap::new();
    let mut run = 0;
    for rep in 0..options.reps {
        let order: Vec<usize> = if rep % 2 == 0 {
            (0..names.len()).collect()
        } else {
            (0..names.len()).rev().collect()
        };
        for index in order {
            let name = names[index];
            eprintln!("run {}/{} of {name}", rep + 1, options.reps);
            let setup = setup(name, &review_config.path)?;
            let mut row = run_once(config, name, &setup, options, &mut sizes).await?;
            row.run = run;
            run += 1;
            eprintln!(
                "  {name}: {:.0}/s ({} in {:.1}s)",
                row.transfers_per_sec, row.transfers, row.seconds
            );
            runs[index].1.push(row);
        }
    }
    Ok(runs)
}

/// One run: a scratch database, its accounts, ferry (or the baseline's pool), warm-up, then
/// the measured part.
async fn run_once(
    config: &ferry::config::Config,
    name: &str,
    setup: &Setup,
    options: &Options,
    sizes: &mut HashMap<String, u64>,
) -> anyhow::Result<Row> {
    let (scratch, pool) = super::scratch_database(&config.database.url).await?;
    let result = async {
        seed_accounts(&pool, options.accounts).await?;
        super::checkpoint(&pool).await;
        let mut planner = Planner::new(setup.shape, options.accounts, PLAN_SEED);
        if setup.kind == Kind::Baseline {
            let pool = db::connect(
                scratch.url(),
                baseline::BASELINE_CONNECTIONS,
                Duration::from_secs(30),
            )
            .await?;
            baseline::create_schema(&pool, options.accounts).await?;
            let target = Target::Baseline(&pool);
            let measured =
                warm_then_measure(name, setup.kind, &target, &mut planner, options, sizes).await;
            pool.close().await;
            measured
        } else {
            let ferry =
                BenchedFerry::start(scratch.url(), setup.layout, setup.settings.clone()).await?;
            let target = Target::Ferry(&ferry);
            let measured =
                warm_then_measure(name, setup.kind, &target, &mut planner, options, sizes).await;
            ferry.stop().await;
            measured
        }
    }
    .await;
    super::finish(scratch, pool).await;
    result
}

/// A warm-up and a measured `uniform` run (batches, first request to last posted) on a
/// ferry already started, with transfers from `planner` (for `growth`).
pub async fn uniform_on(
    name: &str,
    ferry: &BenchedFerry,
    planner: &mut Planner,
    options: &Options,
    sizes: &mut HashMap<String, u64>,
) -> anyhow::Result<Row> {
    let target = Target::Ferry(ferry);
    warm_then_measure(name, Kind::Batched, &target, planner, options, sizes).await
}

/// Warm-up rounds for `options.warmup_secs`, then a measured run sized by the warm-up's rate
/// (or, for a scenario run before, the size of its first run).
async fn warm_then_measure(
    name: &str,
    kind: Kind,
    target: &Target<'_>,
    planner: &mut Planner,
    options: &Options,
    sizes: &mut HashMap<String, u64>,
) -> anyhow::Result<Row> {
    let round = options.transfers.min(WARMUP_ROUND_TRANSFERS);
    let warmup_started = Instant::now();
    let mut warm_rate;
    loop {
        let warmup = drive(name, kind, target, &planner.take(round)).await?;
        warm_rate = warmup.transfers_per_sec;
        if warmup_started.elapsed().as_secs_f64() >= options.warmup_secs {
            break;
        }
    }
    let size = *sizes.entry(name.to_owned()).or_insert_with(|| {
        let for_duration = (warm_rate * options.measure_secs * SIZING_MARGIN).ceil() as u64;
        for_duration.max(options.transfers)
    });
    let mut row = drive(name, kind, target, &planner.take(size)).await?;
    row.note = format!(
        "{}; after {:.1}s of warm-up",
        row.note,
        warmup_started.elapsed().as_secs_f64() - row.seconds
    );
    Ok(row)
}

async fn drive(
    name: &str,
    kind: Kind,
    target: &Target<'_>,
    transfers: &[PlannedTransfer],
) -> anyhow::Result<Row> {
    match (target, kind) {
        (Target::Baseline(pool), _) => baseline::run(name, pool, transfers).await,
        (Target::Ferry(ferry), Kind::Batched | Kind::Baseline) => {
            pipeline::batched(name, ferry, transfers).await
        }
        (Target::Ferry(ferry), Kind::BatchedWebhook) => {
            webhooks::uniform(name, ferry, transfers).await
        }
        (Target::Ferry(ferry), Kind::Intake(posting)) => {
            pipeline::intake(name, ferry, posting, transfers).await
        }
        (Target::Ferry(ferry), Kind::HoldCapture(captures)) => {
            holds::hold_capture(name, ferry, transfers, captures).await
        }
    }
}

/// The `FERRY_CONFIG` file of the `-review` scenarios: every anomaly rule set to `review`.
struct ReviewConfig {
    path: std::path::PathBuf,
}

impl ReviewConfig {
    fn write() -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!("ferry-bench-review-{}.toml", Uuid::new_v4()));
        // Every rule at its default thresholds (the file replaces whole tables), acting by review.
        let rules = ferry::anomaly::settings::RuleSettings::default();
        let (velocity, streak, duplicate) =
            (rules.velocity, rules.failed_streak, rules.duplicate_amount);
        let text = format!(
            "[anomaly.velocity]\ncount = {}\nwindow_secs = {}\naction = \"review\"\n\
             [anomaly.large_amount]\naction = \"review\"\n\
             [anomaly.failed_streak]\ncount = {}\naction = \"review\"\n\
             [anomaly.duplicate_amount]\ncount = {}\nwindow_secs = {}\naction = \"review\"\n",
            velocity.count,
            velocity.window_secs,
            streak.count,
            duplicate.count,
            duplicate.window_secs
        );
        std::fs::write(&path, text)?;
        Ok(Self { path })
    }
}

impl Drop for ReviewConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
