//! `soak`: ferry with every role — the scheduler reconciling every five minutes and purging
//! finished jobs — under a steady open-loop load of single requests for `--soak-secs`
//! (README, "Benchmarks"). Every [`SAMPLE_SECS`] it records the jobs table's rows, ferry's
//! resident memory and that interval's time to posted: are they flat?

use serde::Serialize;

use super::Options;
use super::openloop::{self, Mode};
use super::processes::{BenchedFerry, ChildSettings, Layout};
use super::workload::{Planner, Shape, seed_accounts};

/// Length of each sample's open-loop step.
pub const SAMPLE_SECS: f64 = 30.0;

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
    /// ferry's resident memory, MiB.
    pub rss_mib: f64,
    pub to_posted_p50_ms: f64,
    pub to_posted_p99_ms: f64,
    pub to_posted_p999_ms: f64,
}

pub async fn run(config: &ferry::config::Config, options: &Options) -> anyhow::Result<Vec<Sample>> {
    let (scratch, pool) = super::scratch_database(&config.database.url).await?;
    let result = async {
        seed_accounts(&pool, options.accounts).await?;
        let settings = ChildSettings::default().with_env(
            "FERRY_JOB_RETENTION_DONE_SECS",
            options.soak_job_retention_secs.to_string(),
        );
        let ferry = BenchedFerry::start(scratch.url(), Layout::Everything, settings).await?;
        let sampled = samples(&ferry, options).await;
        ferry.stop().await;
        sampled
    }
    .await;
    super::finish(scratch, pool).await;
    let samples = result?;
    print_samples(&samples, options);
    Ok(samples)
}

async fn samples(ferry: &BenchedFerry, options: &Options) -> anyhow::Result<Vec<Sample>> {
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
        let rss_kib = ferry.rss_kib().first().copied().flatten().unwrap_or(0);
        let sample = Sample {
            elapsed_secs: started.elapsed().as_secs_f64(),
            offered_per_sec: step.offered_per_sec,
            achieved_per_sec: step.achieved_per_sec,
            errors: step.errors,
            unposted: step.unposted,
            jobs_rows,
            jobs_done_rows,
            rss_mib: rss_kib as f64 / 1024.0,
            to_posted_p50_ms: step.to_posted.p50_ms,
            to_posted_p99_ms: step.to_posted.p99_ms,
            to_posted_p999_ms: step.to_posted.p999_ms,
        };
        eprintln!(
            "  {:>6.0}s jobs {:>7} rss {:>6.1} MiB to posted p99 {:.1} ms",
            sample.elapsed_secs, sample.jobs_rows, sample.rss_mib, sample.to_posted_p99_ms
        );
        samples.push(sample);
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
