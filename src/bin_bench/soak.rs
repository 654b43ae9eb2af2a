//! `soak`: ferry with every role — the scheduler reconciling every five minutes and purging
//! finished jobs — under a steady open-loop load of single requests for `--soak-secs`
//! (README, "Benchmarks"). Every [`SAMPLE_SECS`] it records the jobs table's rows and dead
//! tuples, ferry's resident memory and that interval's time to posted: are they flat? The
//! verdict compares the last [`WINDOW_SECS`] with the first.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::Options;
use super::openloop::{self, Mode, Percentiles};
use super::processes::{BenchedFerry, ChildSettings, Layout, SeededFerry};
use super::workload::{Planner, Shape};

/// Length of each sample's open-loop step.
pub const SAMPLE_SECS: f64 = 30.0;
/// The first and the last this long are compared; the first is also the memory's warm-up.
pub const WINDOW_SECS: f64 = 300.0;

#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Since the soak started, at the end of this sample.
    pub elapsed_secs: f64,
    pub offered_per_sec: f64,
    pub achieved_per_sec: f64,
    pub errors: u64,
    pub unposted: u64,
    /// Rows of `apalis.jobs`, and how many of them are finished (`Done`).
    pub jobs_rows: i64,
    pub jobs_done_rows: i64,
    /// Dead tuples of `apalis.jobs` and `transfers` (`pg_stat_user_tables`).
    pub jobs_dead_rows: i64,
    pub transfers_dead_rows: i64,
    /// ferry's resident memory, MiB.
    pub rss_mib: f64,
    pub to_posted_p50_ms: f64,
    pub to_posted_p99_ms: f64,
    pub to_posted_p999_ms: f64,
}

/// What the soak found: every sample, and the last window against the first.
#[derive(Debug, Clone, Serialize)]
pub struct Soak {
    pub samples: Vec<Sample>,
    pub reconciliations: Vec<ReconciliationRun>,
    pub verdict: Verdict,
}

/// The soak's targets, measured (README, "Benchmarks": time to posted must not slide, the
/// queue's table must not grow, memory must be flat once warm).
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// Samples in each compared window.
    pub window_samples: usize,
    pub first_window_p99_ms: f64,
    pub last_window_p99_ms: f64,
    /// Last window's p99 ÷ first's.
    pub p99_ratio: f64,
    pub offered_per_sec: f64,
    pub posted_per_sec: f64,
    pub errors: u64,
    pub unposted: u64,
    pub jobs_rows_max: i64,
    pub jobs_dead_rows_max: i64,
    pub transfers_dead_rows_max: i64,
    /// After the first window (the warm-up): resident memory's least and most, and the
    /// largest departure from the first sample after it, in percent.
    pub rss_after_warmup_min_mib: f64,
    pub rss_after_warmup_max_mib: f64,
    pub rss_after_warmup_drift_pct: f64,
}

impl Verdict {
    fn of(samples: &[(Sample, SampleLatencies)]) -> Option<Self> {
        let window = ((WINDOW_SECS / SAMPLE_SECS) as usize)
            .min(samples.len() / 2)
            .max(1);
        let p99_of = |part: &[(Sample, SampleLatencies)]| {
            let all: Vec<f64> = part.iter().flat_map(|(_, ms)| ms.iter().copied()).collect();
            Percentiles::of(all).map(|p| p.p99_ms)
        };
        let first_window_p99_ms = p99_of(samples.get(..window)?)?;
        let last_window_p99_ms = p99_of(samples.get(samples.len() - window..)?)?;
        let only: Vec<&Sample> = samples.iter().map(|(s, _)| s).collect();
        let mean =
            |f: fn(&Sample) -> f64| only.iter().map(|s| f(s)).sum::<f64>() / only.len() as f64;
        let max = |f: fn(&Sample) -> i64| only.iter().map(|s| f(s)).max().unwrap_or(0);
        let warm: Vec<f64> = only.iter().skip(window).map(|s| s.rss_mib).collect();
        let warm = if warm.is_empty() {
            vec![only.last()?.rss_mib]
        } else {
            warm
        };
        let rss_min = warm.iter().copied().fold(f64::INFINITY, f64::min);
        let rss_max = warm.iter().copied().fold(0.0, f64::max);
        let drift = |mib: f64| (mib / warm[0] - 1.0) * 100.0;
        Some(Self {
            window_samples: window,
            first_window_p99_ms,
            last_window_p99_ms,
            p99_ratio: last_window_p99_ms / first_window_p99_ms.max(f64::EPSILON),
            offered_per_sec: mean(|s| s.offered_per_sec),
            posted_per_sec: mean(|s| s.achieved_per_sec),
            errors: only.iter().map(|s| s.errors).sum(),
            unposted: only.iter().map(|s| s.unposted).sum(),
            jobs_rows_max: max(|s| s.jobs_rows),
            jobs_dead_rows_max: max(|s| s.jobs_dead_rows),
            transfers_dead_rows_max: max(|s| s.transfers_dead_rows),
            rss_after_warmup_min_mib: rss_min,
            rss_after_warmup_max_mib: rss_max,
            rss_after_warmup_drift_pct: if drift(rss_min).abs() > drift(rss_max).abs() {
                drift(rss_min)
            } else {
                drift(rss_max)
            },
        })
    }
}

pub async fn run(config: &ferry::config::Config, options: &Options) -> anyhow::Result<Soak> {
    let settings = ChildSettings::default().with_env(
        "FERRY_JOB_RETENTION_DONE_SECS",
        options.soak_job_retention_secs.to_string(),
    );
    let seeded = SeededFerry::start(config, options.accounts, Layout::Everything, settings).await?;
    let result = async {
        let ferry = &seeded.ferry;
        let started_at: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
            .fetch_one(ferry.pool())
            .await?;
        let sampled = samples(ferry, options).await?;
        let reconciliations = reconciliations_since(ferry.pool(), started_at).await?;
        Ok::<_, anyhow::Error>((sampled, reconciliations))
    }
    .await;
    seeded.finish().await;
    let (sampled, reconciliations) = result?;
    let verdict =
        Verdict::of(&sampled).ok_or_else(|| anyhow::anyhow!("the soak posted nothing to judge"))?;
    let samples: Vec<Sample> = sampled.into_iter().map(|(s, _)| s).collect();
    print_samples(&samples, options);
    print_reconciliations(&reconciliations);
    print_verdict(&verdict);
    Ok(Soak {
        samples,
        reconciliations,
        verdict,
    })
}

/// A scheduled reconciliation run during the soak: every role is on, so it shares the machine
/// with the load, and its cost grows with the ledger.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ReconciliationRun {
    /// Since the soak started.
    pub started_secs: f64,
    pub seconds: f64,
    pub transfers_checked: i64,
    pub jobs_purged: i64,
}

async fn reconciliations_since(
    pool: &sqlx::PgPool,
    started_at: DateTime<Utc>,
) -> anyhow::Result<Vec<ReconciliationRun>> {
    Ok(sqlx::query_as(
        "SELECT extract(epoch FROM started_at - $1)::float8 AS started_secs, \
           extract(epoch FROM finished_at - started_at)::float8 AS seconds, \
           transfers_checked, jobs_purged \
         FROM reconciliation_runs \
         WHERE started_at >= $1 AND finished_at IS NOT NULL ORDER BY started_at",
    )
    .bind(started_at)
    .fetch_all(pool)
    .await?)
}

fn print_reconciliations(runs: &[ReconciliationRun]) {
    for run in runs {
        println!(
            "  reconciliation at {:>5.0}s: {:.2}s, {} transfers checked, {} jobs purged",
            run.started_secs, run.seconds, run.transfers_checked, run.jobs_purged
        );
    }
}

/// Time to posted of every transfer in one sample, ms.
type SampleLatencies = Vec<f64>;

async fn samples(
    ferry: &BenchedFerry,
    options: &Options,
) -> anyhow::Result<Vec<(Sample, SampleLatencies)>> {
    let mut planner = Planner::new(Shape::Uniform, options.accounts, 11);
    let started = std::time::Instant::now();
    let soak_secs = options.soak_secs as f64;
    let mut samples = Vec::new();
    while started.elapsed().as_secs_f64() < soak_secs {
        let left = soak_secs - started.elapsed().as_secs_f64();
        let step = openloop::step(
            ferry,
            &mut planner,
            Mode::Single,
            options.rate_per_sec,
            SAMPLE_SECS.min(left).max(1.0),
        )
        .await?;
        let (jobs_rows, jobs_done_rows): (i64, i64) = sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE status = 'Done') FROM apalis.jobs",
        )
        .fetch_one(ferry.pool())
        .await?;
        let (jobs_dead_rows, transfers_dead_rows): (i64, i64) = sqlx::query_as(
            "SELECT coalesce(sum(n_dead_tup) FILTER (WHERE schemaname = 'apalis' \
                 AND relname = 'jobs'), 0)::int8, \
               coalesce(sum(n_dead_tup) FILTER (WHERE schemaname = 'public' \
                 AND relname = 'transfers'), 0)::int8 \
             FROM pg_stat_user_tables",
        )
        .fetch_one(ferry.pool())
        .await?;
        let rss_kib = ferry.rss_kib().first().copied().flatten().unwrap_or(0);
        let sample = Sample {
            elapsed_secs: started.elapsed().as_secs_f64(),
            offered_per_sec: step.offered_per_sec,
            achieved_per_sec: step.achieved_per_sec,
            errors: step.errors,
            unposted: step.unposted,
            jobs_rows,
            jobs_done_rows,
            jobs_dead_rows,
            transfers_dead_rows,
            rss_mib: rss_kib as f64 / 1024.0,
            to_posted_p50_ms: step.to_posted.p50_ms,
            to_posted_p99_ms: step.to_posted.p99_ms,
            to_posted_p999_ms: step.to_posted.p999_ms,
        };
        eprintln!(
            "  {:>6.0}s jobs {:>7} (dead {:>7}) rss {:>6.1} MiB to posted p99 {:.1} ms",
            sample.elapsed_secs,
            sample.jobs_rows,
            sample.jobs_dead_rows,
            sample.rss_mib,
            sample.to_posted_p99_ms
        );
        samples.push((sample, step.to_posted_ms));
    }
    Ok(samples)
}

fn print_samples(samples: &[Sample], options: &Options) {
    println!(
        "soak: {:.0} single transfers/s offered for {}s; finished jobs kept {}s",
        options.rate_per_sec, options.soak_secs, options.soak_job_retention_secs
    );
    println!(
        "{:>8} {:>9} {:>9} {:>6} {:>8} {:>10} {:>10} {:>8} {:>9} {:>9} {:>10}",
        "elapsed",
        "offered/s",
        "posted/s",
        "errors",
        "unposted",
        "jobs rows",
        "jobs done",
        "RSS MiB",
        "post p50",
        "post p99",
        "post p99.9"
    );
    for s in samples {
        println!(
            "{:>8.0} {:>9.0} {:>9.0} {:>6} {:>8} {:>10} {:>10} {:>8.1} {:>9.1} {:>9.1} {:>10.1}",
            s.elapsed_secs,
            s.offered_per_sec,
            s.achieved_per_sec,
            s.errors,
            s.unposted,
            s.jobs_rows,
            s.jobs_done_rows,
            s.rss_mib,
            s.to_posted_p50_ms,
            s.to_posted_p99_ms,
            s.to_posted_p999_ms
        );
    }
}

fn print_verdict(v: &Verdict) {
    println!(
        "soak verdict: time to posted p99 first {} samples {:.1} ms, last {} samples {:.1} ms \
         ({:.2}x); offered {:.0}/s, posted {:.0}/s, {} errors, {} unposted",
        v.window_samples,
        v.first_window_p99_ms,
        v.window_samples,
        v.last_window_p99_ms,
        v.p99_ratio,
        v.offered_per_sec,
        v.posted_per_sec,
        v.errors,
        v.unposted
    );
    println!(
        "  most apalis.jobs rows {}, dead {}; most dead transfers {}; RSS after warm-up \
         {:.1}-{:.1} MiB ({:+.1} % from the first sample after it)",
        v.jobs_rows_max,
        v.jobs_dead_rows_max,
        v.transfers_dead_rows_max,
        v.rss_after_warmup_min_mib,
        v.rss_after_warmup_max_mib,
        v.rss_after_warmup_drift_pct
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: usize, rss_mib: f64, jobs_dead_rows: i64) -> Sample {
        Sample {
            elapsed_secs: (at + 1) as f64 * SAMPLE_SECS,
            offered_per_sec: 100.0,
            achieved_per_sec: 99.0,
            errors: 0,
            unposted: 0,
            jobs_rows: 10,
            jobs_done_rows: 5,
            jobs_dead_rows,
            transfers_dead_rows: 1,
            rss_mib,
            to_posted_p50_ms: 1.0,
            to_posted_p99_ms: 1.0,
            to_posted_p999_ms: 1.0,
        }
    }

    #[test]
    fn the_verdict_compares_the_last_five_minutes_with_the_first_and_memory_after_warm_up() {
        // 30 minutes of 30 s samples: the first ten post in 10 ms, the last ten in 25 ms;
        // memory grows through the warm-up, then moves within 100–105 MiB.
        let sampled: Vec<(Sample, SampleLatencies)> = (0..60)
            .map(|at| {
                let ms = if at < 10 {
                    10.0
                } else if at >= 50 {
                    25.0
                } else {
                    500.0
                };
                let rss = if at < 10 {
                    50.0 + at as f64
                } else {
                    100.0 + ((at - 10) % 6) as f64
                };
                (sample(at, rss, at as i64), vec![ms; 100])
            })
            .collect();
        let verdict = Verdict::of(&sampled).expect("a verdict");
        assert_eq!(verdict.window_samples, 10);
        assert_eq!(verdict.first_window_p99_ms, 10.0);
        assert_eq!(verdict.last_window_p99_ms, 25.0);
        assert_eq!(verdict.p99_ratio, 2.5);
        assert_eq!(verdict.jobs_dead_rows_max, 59);
        assert_eq!(verdict.rss_after_warmup_min_mib, 100.0);
        assert_eq!(verdict.rss_after_warmup_max_mib, 105.0);
        assert!((verdict.rss_after_warmup_drift_pct - 5.0).abs() < 1e-9);
    }

    #[test]
    fn a_short_soak_compares_halves_and_an_empty_one_has_no_verdict() {
        let sampled: Vec<(Sample, SampleLatencies)> = (0..4)
            .map(|at| (sample(at, 100.0, 0), vec![(at + 1) as f64; 10]))
            .collect();
        let verdict = Verdict::of(&sampled).expect("a verdict");
        assert_eq!(verdict.window_samples, 2);
        assert_eq!(verdict.first_window_p99_ms, 2.0);
        assert_eq!(verdict.last_window_p99_ms, 4.0);
        assert!(Verdict::of(&[]).is_none());
    }
}
