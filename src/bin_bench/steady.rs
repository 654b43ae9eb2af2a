//! `steady`: single requests at one fixed offered rate (`--rate`), `--reps` steps of
//! `--step-secs` on one ferry (`--roles intake,worker`), each after the same settle as
//! `latency`'s steps, with the CPU time ferry and PostgreSQL spent per transfer.
//!
//! Why a fixed rate: `latency` reads its target at a fraction of a saturation it measures in
//! the same run, so two builds are compared at different offered rates, and a change that
//! raises saturation is measured under more load (BENCHMARKS.md, issue 26, fifth sitting).
//! Two builds run here at one rate, alternated, compare time to posted at equal load, and the
//! CPU per transfer is a steadier figure than a p99: it is what fixed costs per request, per
//! job and per fetch add up to.

use std::time::Instant;

use serde::Serialize;

use super::Options;
use super::latency;
use super::openloop::{self, Mode, Step};
use super::processes::{BenchedFerry, ChildSettings, Layout, SeededFerry};
use super::workload::{Planner, Shape};

/// One step and what it cost.
#[derive(Debug, Clone, Serialize)]
pub struct SteadyStep {
    #[serde(flatten)]
    pub step: Step,
    /// CPU time (user + system) of the ferry process per 1,000 transfers sent in the step.
    pub ferry_cpu_ms_per_1k: f64,
    /// The same for every PostgreSQL process on this machine (the server the bench uses is
    /// local; exited backends count through the postmaster's children's times).
    pub postgres_cpu_ms_per_1k: f64,
}

pub async fn run(
    config: &ferry::config::Config,
    options: &Options,
) -> anyhow::Result<Vec<SteadyStep>> {
    anyhow::ensure!(options.reps > 0, "steady needs at least one rep");
    let seeded = SeededFerry::start(
        config,
        options.accounts,
        Layout::IntakeAndWorker,
        ChildSettings::default(),
    )
    .await?;
    let measured = steps(&seeded.ferry, options).await;
    seeded.finish().await;
    let steps = measured?;
    print(&steps);
    Ok(steps)
}

async fn steps(ferry: &BenchedFerry, options: &Options) -> anyhow::Result<Vec<SteadyStep>> {
    let mut planner = Planner::new(Shape::Uniform, options.accounts, 11);
    // A warm-up at the same rate: connections made, plans cached, pages read.
    let warmup_secs = options.warmup_secs.max(1.0);
    openloop::step(
        ferry,
        &mut planner,
        Mode::Single,
        options.rate_per_sec,
        warmup_secs,
    )
    .await?;
    let mut measured = Vec::with_capacity(options.reps);
    for rep in 0..options.reps {
        let quiet_after = latency::settle(ferry, &mut planner, options).await?;
        let ferry_before = cpu_ms(&ferry.pids());
        let postgres_before = cpu_ms(&postgres_pids());
        let started = Instant::now();
        let mut step = openloop::step(
            ferry,
            &mut planner,
            Mode::Single,
            options.rate_per_sec,
            options.step_secs,
        )
        .await?;
        let ferry_ms = cpu_ms(&ferry.pids()) - ferry_before;
        let postgres_ms = cpu_ms(&postgres_pids()) - postgres_before;
        step.label = format!("rep {}", rep + 1);
        step.quiet_after_secs = quiet_after.as_secs_f64();
        let per_1k = 1_000.0 / (step.sent.max(1) as f64);
        eprintln!(
            "  rep {}: {:.0}/s offered, to posted p99 {:.1} ms ({:.0}s)",
            rep + 1,
            step.offered_per_sec,
            step.to_posted.p99_ms,
            started.elapsed().as_secs_f64()
        );
        measured.push(SteadyStep {
            step,
            ferry_cpu_ms_per_1k: ferry_ms * per_1k,
            postgres_cpu_ms_per_1k: postgres_ms * per_1k,
        });
    }
    Ok(measured)
}

fn print(steps: &[SteadyStep]) {
    // The steps' own table, stage histograms and posting transactions, as `latency` prints
    // them; then what each step cost.
    let plain: Vec<Step> = steps.iter().map(|s| s.step.clone()).collect();
    latency::print_steps(&plain, &Default::default());
    println!(
        "{:<8} {:>18} {:>22}",
        "step", "ferry CPU ms/1k", "PostgreSQL CPU ms/1k"
    );
    for s in steps {
        println!(
            "{:<8} {:>18.0} {:>22.0}",
            s.step.label, s.ferry_cpu_ms_per_1k, s.postgres_cpu_ms_per_1k,
        );
    }
    let median = |of: fn(&SteadyStep) -> f64| {
        let mut values: Vec<f64> = steps.iter().map(of).collect();
        values.sort_by(f64::total_cmp);
        super::median_of(&values).unwrap_or_default()
    };
    println!(
        "median of {} steps at {:.0}/s: to posted p99 {:.1} ms, p99.9 {:.1} ms; CPU per 1k: \
         ferry {:.0} ms, PostgreSQL {:.0} ms",
        steps.len(),
        steps.first().map_or(0.0, |s| s.step.offered_per_sec),
        median(|s| s.step.to_posted.p99_ms),
        median(|s| s.step.to_posted.p999_ms),
        median(|s| s.ferry_cpu_ms_per_1k),
        median(|s| s.postgres_cpu_ms_per_1k),
    );
}

/// Every process whose command is `postgres` (the server and its backends).
fn postgres_pids() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == "postgres")
        })
        .collect()
}

/// CPU time of `pids` and of their exited, waited-for children, in ms (Linux `/proc/PID/stat`:
/// utime, stime, cutime, cstime in clock ticks of 10 ms, as on every Linux this runs on).
fn cpu_ms(pids: &[u32]) -> f64 {
    const MS_PER_TICK: f64 = 10.0;
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .map(|stat| {
            // The command (field 2) is in parentheses and may hold spaces: count from after it.
            let after_command = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
            after_command
                .split_whitespace()
                .skip(11)
                .take(4)
                .filter_map(|ticks| ticks.parse::<f64>().ok())
                .sum::<f64>()
        })
        .sum::<f64>()
        * MS_PER_TICK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_of_this_process_is_read_and_grows_with_work() {
        let me = [std::process::id()];
        let before = cpu_ms(&me);
        let spin_until = Instant::now() + std::time::Duration::from_millis(120);
        let mut spins = 0u64;
        while Instant::now() < spin_until {
            spins = std::hint::black_box(spins.wrapping_add(1));
        }
        let spent = cpu_ms(&me) - before;
        assert!(
            spent >= 50.0,
            "120 ms of spinning read as {spent} ms of CPU"
        );
    }
}
