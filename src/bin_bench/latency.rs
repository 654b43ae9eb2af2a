//! `latency`: what producers feel as load rises (README, "Benchmarks"). For single requests,
//! then for batches of 100, on one ferry (`ferry serve --roles intake,worker`):
//! 1. saturation: a closed-loop run (64 single-request clients, or 8 batch clients) for at
//!    least `measure_secs`, first request to last posted, after a warm-up;
//! 2. open-loop steps at fixed fractions of that rate (`openloop.rs`), each `step_secs`
//!    long, each measuring intake latency and time to posted.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::Options;
use super::openloop::{self, Mode, Step};
use super::pipeline::{self, DRAIN_TIMEOUT, Posting};
use super::plot::{Panel, Series};
use super::processes::{BenchedFerry, ChildSettings, Layout};
use super::throughput;
use super::workload::{PlannedTransfer, Planner, Shape, seed_accounts};

/// Offered load of each step, as a fraction of the saturation rate measured in the same run.
pub const STEP_FRACTIONS: [f64; 8] = [0.1, 0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25];
/// The step the time-to-posted target is read at (README: p99 ≤ 100 ms at half saturation).
pub const TARGET_FRACTION: f64 = 0.5;
/// Quiet, before a step: a probe transfer posts within this…
pub const QUIET_POSTED_MS: f64 = 100.0;
/// …sent this often…
const PROBE_INTERVAL: Duration = Duration::from_millis(200);

/// The steps of both modes, in order; draws them into `options.plot` if asked.
pub async fn run(config: &ferry::config::Config, options: &Options) -> anyhow::Result<Vec<Step>> {
    let mut steps = Vec::new();
    let mut saturation = HashMap::new();
    // Each mode on a database and processes of its own: the last steps overload ferry, and
    // what an overload leaves behind (a long queue, a slow job fetch until the purge) is not
    // what the next mode's first steps should measure.
    for mode in [Mode::Single, Mode::Batch] {
        let (scratch, pool) = super::scratch_database(&config.database.url).await?;
        let result = async {
            seed_accounts(&pool, options.accounts).await?;
            let ferry = BenchedFerry::start(
                scratch.url(),
                Layout::IntakeAndWorker,
                ChildSettings::default(),
            )
            .await?;
            let measured = curve(&ferry, mode, options).await;
            ferry.stop().await;
            measured
        }
        .await;
        super::finish(scratch, pool).await;
        let (mode_steps, rate) = result?;
        steps.extend(mode_steps);
        saturation.insert(mode, rate);
    }
    print_steps(&steps, &saturation);
    if let Some(at_target) = steps.iter().find(|s| {
        s.mode == Mode::Single
            && saturation
                .get(&Mode::Single)
                .is_some_and(|sat| (s.offered_per_sec / sat - TARGET_FRACTION).abs() < 1e-9)
    }) {
        println!(
            "single requests at {:.0}% of saturation ({:.0}/s): time to posted p99 {:.1} ms \
             (target ≤ 100 ms)",
            TARGET_FRACTION * 100.0,
            at_target.offered_per_sec,
            at_target.to_posted.p99_ms
        );
    }
    if let Some(path) = &options.plot {
        let panels: Vec<Panel> = [Mode::Single, Mode::Batch]
            .into_iter()
            .map(|mode| panel(&steps, mode, saturation.get(&mode).copied()))
            .collect();
        super::plot::write_svg(
            path,
            "ferry: latency against offered load (open loop; 2 cores, PostgreSQL on the same host)",
            &panels,
        )?;
        eprintln!("plot written to {}", path.display());
    }
    Ok(steps)
}

/// One mode's saturation rate, then its steps.
async fn curve(
    ferry: &BenchedFerry,
    mode: Mode,
    options: &Options,
) -> anyhow::Result<(Vec<Step>, f64)> {
    let mut planner = Planner::new(Shape::Uniform, options.accounts, 7);
    let rate = saturation_rate(ferry, &mut planner, mode, options).await?;
    eprintln!("{} saturation: {rate:.0} transfers/s", mode.as_str());
    let mut steps = Vec::new();
    for fraction in STEP_FRACTIONS {
        let quiet_after = settle(ferry, &mut planner, options).await?;
        let mut step = openloop::step(
            ferry,
            &mut planner,
            mode,
            rate * fraction,
            options.step_secs,
        )
        .await?;
        step.quiet_after_secs = quiet_after.as_secs_f64();
        eprintln!(
            "  {:>4.0}% {:>7.0}/s offered, {:>7.0}/s achieved, to posted p99 {:.1} ms \
             (quiet after {:.1}s)",
            fraction * 100.0,
            step.offered_per_sec,
            step.achieved_per_sec,
            step.to_posted.p99_ms,
            step.quiet_after_secs
        );
        steps.push(step);
    }
    Ok((steps, rate))
}

/// Closed-loop transfers/s, first request to last posted, after a warm-up.
pub async fn saturation_rate(
    ferry: &BenchedFerry,
    planner: &mut Planner,
    mode: Mode,
    options: &Options,
) -> anyhow::Result<f64> {
    let name = format!("saturation-{}", mode.as_str());
    match mode {
        Mode::Batch => {
            let mut sizes = HashMap::new();
            let row = throughput::uniform_on(&name, ferry, planner, options, &mut sizes).await?;
            Ok(row.transfers_per_sec)
        }
        Mode::Single => {
            let warmup = planner.take(options.transfers.min(throughput::WARMUP_ROUND_TRANSFERS));
            let started = Instant::now();
            pipeline::intake(&name, ferry, Posting::Concurrent, &warmup).await?;
            let warm_rate = warmup.len() as f64 / started.elapsed().as_secs_f64();
            let size = ((warm_rate * options.measure_secs * throughput::SIZING_MARGIN) as u64)
                .max(options.transfers);
            let measured = planner.take(size);
            let started = Instant::now();
            // `intake` returns once every accepted transfer is posted.
            pipeline::intake(&name, ferry, Posting::Concurrent, &measured).await?;
            Ok(measured.len() as f64 / started.elapsed().as_secs_f64())
        }
    }
}

/// Waits for the queue to drain, checkpoints, then until ferry is quiet again: a probe
/// transfer, sent every [`PROBE_INTERVAL`], posts within [`QUIET_POSTED_MS`] three times in a
/// row (or `options.quiet_timeout_secs` pass). Returns how long that last wait took.
///
/// Why the probes: after a burst, transfers keep taking seconds to post for a while even with
/// the queue empty (measured: up to tens of seconds after a saturation run; BENCHMARKS.md), and
/// a step measured then would show the burst's aftermath, not its own load.
pub async fn settle(
    ferry: &BenchedFerry,
    planner: &mut Planner,
    options: &Options,
) -> anyhow::Result<Duration> {
    let quiet_timeout = Duration::from_secs_f64(options.quiet_timeout_secs);
    ferry.drain(DRAIN_TIMEOUT).await?;
    super::checkpoint(ferry.pool()).await;
    let started = Instant::now();
    let mut prompt_in_a_row = 0;
    while prompt_in_a_row < 3 && started.elapsed() < quiet_timeout {
        let probe = planner.take(1);
        let posted_ms = probe_posted_ms(ferry, &probe[0], quiet_timeout).await?;
        if posted_ms <= QUIET_POSTED_MS {
            prompt_in_a_row += 1;
        } else {
            prompt_in_a_row = 0;
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
    Ok(started.elapsed())
}

/// Sends one transfer and waits for it to post; how long that took, in ms.
async fn probe_posted_ms(
    ferry: &BenchedFerry,
    t: &PlannedTransfer,
    timeout: Duration,
) -> anyhow::Result<f64> {
    let sent = Instant::now();
    let response = ferry
        .client()
        .post(format!("{}/v1/transfers", ferry.base_url))
        .bearer_auth(&ferry.api_key)
        .header("Idempotency-Key", &t.key)
        .json(&pipeline::single(t))
        .send()
        .await?
        .error_for_status()?;
    let body: serde_json::Value = response.json().await?;
    let id: uuid::Uuid = body["id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no transfer id in {body}"))?;
    loop {
        let status: String = sqlx::query_scalar("SELECT status FROM transfers WHERE id = $1")
            .bind(id)
            .fetch_one(ferry.pool())
            .await?;
        if status != "pending" {
            return Ok(sent.elapsed().as_secs_f64() * 1e3);
        }
        if sent.elapsed() > timeout {
            return Ok(f64::INFINITY);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn panel(steps: &[Step], mode: Mode, saturation: Option<f64>) -> Panel {
    let of_mode: Vec<&Step> = steps.iter().filter(|s| s.mode == mode).collect();
    let line = |label: &str, pick: fn(&Step) -> f64| Series {
        label: label.to_owned(),
        points: of_mode
            .iter()
            .map(|s| (s.offered_per_sec, pick(s)))
            .collect(),
    };
    Panel {
        title: match mode {
            Mode::Single => "single requests (POST /v1/transfers)".to_owned(),
            Mode::Batch => "batches of 100 (POST /v1/transfers/batch)".to_owned(),
        },
        series: vec![
            line("intake p50", |s| s.intake.p50_ms),
            line("intake p99", |s| s.intake.p99_ms),
            line("intake p99.9", |s| s.intake.p999_ms),
            line("to posted p50", |s| s.to_posted.p50_ms),
            line("to posted p99", |s| s.to_posted.p99_ms),
            line("to posted p99.9", |s| s.to_posted.p999_ms),
        ],
        saturation_per_sec: saturation,
    }
}

/// Prints the steps as a table, with each step's load as a share of its mode's saturation.
pub fn print_steps(steps: &[Step], saturation: &HashMap<Mode, f64>) {
    println!(
        "{:<14} {:<7} {:>9} {:>6} {:>9} {:>7} {:>7} {:>9} {:>9} {:>9} {:>10} {:>10} {:>10} {:>8}",
        "against",
        "mode",
        "offered/s",
        "load",
        "posted/s",
        "errors",
        "unposted",
        "in p50",
        "in p99",
        "in p99.9",
        "post p50",
        "post p99",
        "post p99.9",
        "quiet s"
    );
    for s in steps {
        let load = saturation.get(&s.mode).map_or_else(
            || "-".to_owned(),
            |sat| format!("{:.0}%", 100.0 * s.offered_per_sec / sat),
        );
        println!(
            "{:<14} {:<7} {:>9.0} {:>6} {:>9.0} {:>7} {:>7} {:>9.1} {:>9.1} {:>9.1} {:>10.1} {:>10.1} {:>10.1} {:>8.1}",
            if s.label.is_empty() { "-" } else { &s.label },
            s.mode.as_str(),
            s.offered_per_sec,
            load,
            s.achieved_per_sec,
            s.errors,
            s.unposted,
            s.intake.p50_ms,
            s.intake.p99_ms,
            s.intake.p999_ms,
            s.to_posted.p50_ms,
            s.to_posted.p99_ms,
            s.to_posted.p999_ms,
            s.quiet_after_secs
        );
    }
    println!(
        "(latencies in ms, from each request's scheduled send; load = offered ÷ the mode's \
         closed-loop saturation; quiet s = wait before the step until probe transfers posted \
         within 100 ms)"
    );
    println!(
        "where the time went, by ferry's stage histograms (p50/p99 ms since the job's commit):"
    );
    for s in steps {
        println!(
            "{:<14} {:<7} {:>9.0}  {}",
            if s.label.is_empty() { "-" } else { &s.label },
            s.mode.as_str(),
            s.offered_per_sec,
            super::stages::summary(&s.stages)
        );
    }
}
