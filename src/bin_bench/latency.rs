//! `latency`: what producers feel as load rises (README, "Benchmarks"). For single requests,
//! then for batches of 100, on one ferry (`ferry serve --roles intake,worker`):
//! 1. saturation: a closed-loop run (64 single-request clients, or 8 batch clients) for at
//!    least `measure_secs`, first request to last posted, after a warm-up;
//! 2. open-loop steps at fixed fractions of that rate (`openloop.rs`), each `step_secs`
//!    long, each measuring intake latency and time to posted.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::openloop::{self, Mode, Percentiles, Step};
use super::pipeline::{self, DRAIN_TIMEOUT, Posting};
use super::plot::{Panel, Series};
use super::processes::{BenchedFerry, ChildSettings, Layout, SeededFerry};
use super::throughput;
use super::workload::{PlannedTransfer, Planner, Shape};
use super::{Options, Row};

/// Offered load of each step, as a fraction of the saturation rate measured in the same run.
pub const STEP_FRACTIONS: [f64; 8] = [0.1, 0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25];
/// The step the time-to-posted target is read at (README: p99 ≤ 100 ms at half saturation).
pub const TARGET_FRACTION: f64 = 0.5;
/// Quiet, before a step: a probe transfer posts within this…
pub const QUIET_POSTED_MS: f64 = 100.0;
/// …sent this often…
const PROBE_INTERVAL: Duration = Duration::from_millis(200);

/// What a `latency` run measured: every step in order, each mode's saturation run, and the
/// curves a script reads from `--json` (`latency`).
pub struct Measured {
    pub steps: Vec<Step>,
    /// The closed-loop saturation runs, single requests first.
    pub saturation_rows: Vec<Row>,
    pub curves: Curves,
}

/// The steps of both modes, in order; draws them into `options.plot` if asked.
pub async fn run(config: &ferry::config::Config, options: &Options) -> anyhow::Result<Measured> {
    let mut steps = Vec::new();
    let mut saturation = HashMap::new();
    let mut saturation_rows = Vec::new();
    // Each mode on a database and processes of its own: the last steps overload ferry, and
    // what an overload leaves behind (a long queue, a slow job fetch until the purge) is not
    // what the next mode's first steps should measure.
    for mode in [Mode::Single, Mode::Batch] {
        let seeded = SeededFerry::start(
            config,
            options.accounts,
            Layout::IntakeAndWorker,
            ChildSettings::default(),
        )
        .await?;
        let measured = curve(&seeded.ferry, mode, options).await;
        seeded.finish().await;
        let (mode_steps, row) = measured?;
        steps.extend(mode_steps);
        saturation.insert(mode, row.transfers_per_sec);
        saturation_rows.push(row);
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
    let curves = curves(&steps, &saturation);
    Ok(Measured {
        steps,
        saturation_rows,
        curves,
    })
}

/// The `latency` scenario in `--json`: for each mode, the saturation it measured and every
/// step as a fraction of it, so a script can find the step the target is read at (BENCHMARKS.md,
/// "The latency scenario's JSON").
#[derive(Debug, Clone, Serialize)]
pub struct Curves {
    /// The fraction of saturation whose p99 time to posted is the target ([`TARGET_FRACTION`]).
    pub target_fraction: f64,
    /// Single requests first, then batches; a mode whose saturation was not measured is left
    /// out.
    pub modes: Vec<Curve>,
}

/// One mode's curve.
#[derive(Debug, Clone, Serialize)]
pub struct Curve {
    pub mode: Mode,
    /// Closed-loop transfers/s, first request to last posted (the plot's "saturation" line).
    pub saturation_per_sec: f64,
    /// In the order run: offered load rising.
    pub steps: Vec<CurveStep>,
}

/// One step of a curve.
#[derive(Debug, Clone, Serialize)]
pub struct CurveStep {
    /// Offered load ÷ the mode's saturation: one of [`STEP_FRACTIONS`] exactly (`0.5` is the
    /// target's step).
    pub fraction_of_saturation: f64,
    pub offered_per_sec: f64,
    /// Transfers posted per second in the step.
    pub achieved_per_sec: f64,
    /// From each transfer's scheduled send to its `transfer.posted` event.
    pub to_posted: Percentiles,
    /// From each request's scheduled send to its answer.
    pub intake: Percentiles,
    pub errors: u64,
    pub unposted: u64,
    /// The wait before the step for ferry to post promptly again.
    pub quiet_after_secs: f64,
}

/// Builds [`Curves`] from the measured steps and each mode's saturation (pure: tested without
/// running the bench).
pub fn curves(steps: &[Step], saturation: &HashMap<Mode, f64>) -> Curves {
    let modes = [Mode::Single, Mode::Batch]
        .into_iter()
        .filter_map(|mode| {
            let saturation_per_sec = *saturation.get(&mode)?;
            let steps = steps
                .iter()
                .filter(|s| s.mode == mode)
                .map(|s| CurveStep {
                    fraction_of_saturation: fraction_of(s.offered_per_sec, saturation_per_sec),
                    offered_per_sec: s.offered_per_sec,
                    achieved_per_sec: s.achieved_per_sec,
                    to_posted: s.to_posted,
                    intake: s.intake,
                    errors: s.errors,
                    unposted: s.unposted,
                    quiet_after_secs: s.quiet_after_secs,
                })
                .collect();
            Some(Curve {
                mode,
                saturation_per_sec,
                steps,
            })
        })
        .collect();
    Curves {
        target_fraction: TARGET_FRACTION,
        modes,
    }
}

/// `offered ÷ saturation`, given as the planned fraction when it is one (the division of the
/// product it was planned as leaves rounding noise: 0.49999999999999994 for 0.5).
fn fraction_of(offered_per_sec: f64, saturation_per_sec: f64) -> f64 {
    let fraction = offered_per_sec / saturation_per_sec.max(f64::EPSILON);
    STEP_FRACTIONS
        .into_iter()
        .find(|planned| (fraction - planned).abs() < 1e-9)
        .unwrap_or(fraction)
}

/// One mode's saturation run, then its steps.
async fn curve(
    ferry: &BenchedFerry,
    mode: Mode,
    options: &Options,
) -> anyhow::Result<(Vec<Step>, Row)> {
    let mut planner = Planner::new(Shape::Uniform, options.accounts, 7);
    let saturation = saturation_rate(ferry, &mut planner, mode, options).await?;
    let rate = saturation.transfers_per_sec;
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
    Ok((steps, saturation))
}

/// Closed-loop transfers/s, first request to last posted, after a warm-up: a row named
/// `saturation-single` or `saturation-batch`.
pub async fn saturation_rate(
    ferry: &BenchedFerry,
    planner: &mut Planner,
    mode: Mode,
    options: &Options,
) -> anyhow::Result<Row> {
    let name = format!("saturation-{}", mode.as_str());
    match mode {
        Mode::Batch => {
            let mut sizes = HashMap::new();
            let mut row =
                throughput::uniform_on(&name, ferry, planner, options, &mut sizes).await?;
            row.note = "closed loop, batches of 100 from 8 clients".to_owned();
            Ok(row)
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
            Ok(Row::measured(
                &name,
                measured.len() as u64,
                started.elapsed().as_secs_f64(),
                &[],
                "closed loop, single requests from 64 clients".to_owned(),
            ))
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
    print_per_step(
        steps,
        "where the time went, by ferry's stage histograms (p50/p99 ms since the job's commit):",
        |s| super::stages::summary(&s.stages),
    );
    print_per_step(
        steps,
        "posting transactions, mean ms per step (`ferry_posting_step_seconds`):",
        |s| super::stages::posting_summary(&s.posting_steps),
    );
}

/// A heading, then one line per step: label, mode, offered rate and `what` of it.
fn print_per_step(steps: &[Step], heading: &str, what: impl Fn(&Step) -> String) {
    println!("{heading}");
    for s in steps {
        println!(
            "{:<14} {:<7} {:>9.0}  {}",
            if s.label.is_empty() { "-" } else { &s.label },
            s.mode.as_str(),
            s.offered_per_sec,
            what(s)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A step at `fraction` of `saturation`, offered as `curve` plans it (rate × fraction),
    /// with its time to posted p99 a marker of which step it is.
    fn step(mode: Mode, saturation: f64, fraction: f64) -> Step {
        let ms = |p99_ms| Percentiles {
            p50_ms: 1.0,
            p99_ms,
            p999_ms: p99_ms + 1.0,
            max_ms: p99_ms + 2.0,
        };
        Step {
            label: String::new(),
            mode,
            offered_per_sec: saturation * fraction,
            sent: 10,
            achieved_per_sec: saturation * fraction * 0.9,
            errors: 0,
            unposted: 0,
            intake: ms(5.0),
            to_posted: ms(fraction * 1000.0),
            to_posted_ms: Vec::new(),
            quiet_after_secs: 0.5,
            stages: Vec::new(),
            posting_steps: Vec::new(),
        }
    }

    #[test]
    fn the_json_names_each_modes_saturation_and_each_steps_fraction_of_it() {
        // Rates whose products leave rounding noise (2761 × 0.5 ÷ 2761 is not exactly 0.5
        // for every rate), as measured ones do.
        let saturation = HashMap::from([(Mode::Single, 2761.3), (Mode::Batch, 3760.7)]);
        let steps: Vec<Step> = [Mode::Single, Mode::Batch]
            .into_iter()
            .flat_map(|mode| STEP_FRACTIONS.map(|fraction| step(mode, saturation[&mode], fraction)))
            .collect();
        let json = serde_json::to_value(curves(&steps, &saturation)).expect("serializes");

        assert_eq!(json["target_fraction"], 0.5);
        let modes = json["modes"].as_array().expect("modes");
        assert_eq!(modes.len(), 2);
        for (curve, (mode, rate)) in modes.iter().zip([("single", 2761.3), ("batch", 3760.7)]) {
            assert_eq!(curve["mode"], mode);
            assert_eq!(curve["saturation_per_sec"], rate);
            let fractions: Vec<f64> = curve["steps"]
                .as_array()
                .expect("steps")
                .iter()
                .map(|s| s["fraction_of_saturation"].as_f64().expect("a number"))
                .collect();
            assert_eq!(fractions, STEP_FRACTIONS);
            let half = curve["steps"]
                .as_array()
                .and_then(|steps| steps.iter().find(|s| s["fraction_of_saturation"] == 0.5))
                .expect("the target's step");
            assert_eq!(half["offered_per_sec"], rate * 0.5);
            assert_eq!(half["achieved_per_sec"], rate * 0.5 * 0.9);
            assert_eq!(half["to_posted"]["p50_ms"], 1.0);
            assert_eq!(half["to_posted"]["p99_ms"], 500.0);
            assert_eq!(half["to_posted"]["p999_ms"], 501.0);
            assert_eq!(half["intake"]["p99_ms"], 5.0);
            assert_eq!(half["errors"], 0);
            assert_eq!(half["unposted"], 0);
        }
    }

    #[test]
    fn a_mode_without_a_measured_saturation_is_left_out() {
        let saturation = HashMap::from([(Mode::Batch, 100.0)]);
        let steps = vec![
            step(Mode::Single, 50.0, 0.5),
            step(Mode::Batch, 100.0, 0.25),
        ];
        let built = curves(&steps, &saturation);
        assert_eq!(built.modes.len(), 1);
        assert_eq!(built.modes[0].mode, Mode::Batch);
        assert_eq!(built.modes[0].steps.len(), 1);
        assert_eq!(built.modes[0].steps[0].fraction_of_saturation, 0.25);
    }
}
