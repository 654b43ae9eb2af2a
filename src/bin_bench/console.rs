//! `console`: what the operator console's overview costs the database (README, "Operator
//! console"). One sample — every query the overview runs once per refresh interval — timed on
//! an empty ledger and on a `--ledger-entries` ledger, over a window holding 5,000 posted
//! transfers (a 5-s window at 1,000/s).

use std::time::Instant;

use chrono::{Duration, Utc};
use serde::Serialize;

use super::{Options, reconcile};
use ferry::console::overview::sample_window;

/// Samples timed per ledger.
const SAMPLES: usize = 50;
/// Seeded transfers are 10 ms apart: 50 s hold 5,000 of them.
const WINDOW_SECS: i64 = 50;

#[derive(Debug, Serialize)]
pub struct Timing {
    pub ledger: String,
    pub entries: i64,
    pub transfers_in_window: f64,
    pub samples: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

pub async fn run(config: &ferry::config::Config, options: &Options) -> anyhow::Result<Vec<Timing>> {
    let mut timings = Vec::new();
    for (name, entries) in [("empty", 0_u64), ("large", options.ledger_entries)] {
        let (scratch, pool) = super::scratch_database(&config.database.url).await?;
        let anchor = Utc::now();
        if entries > 0 {
            let seeded = Instant::now();
            reconcile::seed(
                &pool,
                entries.div_ceil(2),
                i64::from(options.accounts),
                anchor,
            )
            .await?;
            sqlx::query("VACUUM (ANALYZE) transfers, entries, accounts")
                .execute(&pool)
                .await?;
            super::checkpoint(&pool).await;
            eprintln!(
                "seeded {entries} entries in {:.0}s",
                seeded.elapsed().as_secs_f64()
            );
        }
        let counted: i64 = sqlx::query_scalar("SELECT count(*) FROM entries")
            .fetch_one(&pool)
            .await?;
        let start = anchor - Duration::seconds(WINDOW_SECS);
        // One unmeasured sample: the pages it reads are then cached, as they are for a
        // sampler that runs every few seconds.
        let first = sample_window(&pool, start, anchor).await?;
        let mut millis = Vec::with_capacity(SAMPLES);
        for _ in 0..SAMPLES {
            let started = Instant::now();
            sample_window(&pool, start, anchor).await?;
            millis.push(started.elapsed().as_secs_f64() * 1_000.0);
        }
        millis.sort_by(f64::total_cmp);
        let at = |q: f64| millis[((millis.len() - 1) as f64 * q).round() as usize];
        timings.push(Timing {
            ledger: name.to_owned(),
            entries: counted,
            transfers_in_window: first.sample.posted_per_sec * WINDOW_SECS as f64,
            samples: SAMPLES,
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        });
        super::finish(scratch, pool).await;
    }
    println!(
        "{:<8} {:>12} {:>10} {:>8} {:>8} {:>8} {:>8}",
        "ledger", "entries", "in window", "samples", "p50 ms", "p99 ms", "max ms"
    );
    for t in &timings {
        println!(
            "{:<8} {:>12} {:>10.0} {:>8} {:>8.1} {:>8.1} {:>8.1}",
            t.ledger, t.entries, t.transfers_in_window, t.samples, t.p50_ms, t.p99_ms, t.max_ms
        );
    }
    Ok(timings)
}
