//! `growth`: does ferry slow down as the ledger grows (README, "Benchmarks")? The same
//! `uniform` run and the same open-loop time-to-posted step against a ledger of
//! `--ledger-entries` entries (seeded in SQL, set-based, as `reconcile` seeds) and against an
//! empty one, alternated run by run. The empty ledger is a new database each run; the large
//! one is seeded once and keeps what the runs add (a few hundred thousand entries at most).

use std::collections::HashMap;

use chrono::Utc;

use super::openloop::{self, Mode, Step};
use super::processes::{BenchedFerry, ChildSettings, Layout};
use super::workload::{Planner, Shape, seed_accounts};
use super::{Options, Row, Summary, latency, reconcile, summarize, throughput};

/// The two subjects, as named in the table (`growth-large` is compared with `growth-empty`).
pub const EMPTY: &str = "growth-empty";
pub const LARGE: &str = "growth-large";

pub async fn run(
    config: &ferry::config::Config,
    options: &Options,
) -> anyhow::Result<(Vec<Summary>, Vec<Step>)> {
    let (large, large_pool) = super::scratch_database(&config.database.url).await?;
    let result = async {
        let seeded = std::time::Instant::now();
        // Two entries per transfer.
        let transfers = options.ledger_entries.div_ceil(2);
        reconcile::seed(
            &large_pool,
            transfers,
            i64::from(options.accounts),
            Utc::now() - chrono::Duration::hours(1),
        )
        .await?;
        // As a ledger that grew over time would be: vacuumed (visibility map set, hint bits
        // written) and checkpointed, so the first runs do not pay for the seeding's writes.
        sqlx::query("VACUUM (ANALYZE) transfers, entries, accounts")
            .execute(&large_pool)
            .await?;
        super::checkpoint(&large_pool).await;
        eprintln!(
            "seeded {} entries in {:.0}s (vacuumed, checkpointed)",
            transfers * 2,
            seeded.elapsed().as_secs_f64()
        );
        let mut runs: Vec<(String, Vec<Row>)> = vec![
            (EMPTY.to_owned(), Vec::new()),
            (LARGE.to_owned(), Vec::new()),
        ];
        let mut steps = Vec::new();
        let mut sizes = HashMap::new();
        for rep in 0..options.reps {
            let order = if rep % 2 == 0 { [0, 1] } else { [1, 0] };
            for index in order {
                let seed = 1_000 * (index as u64 + 1) + rep as u64;
                let entries: i64 = if index == 0 {
                    0
                } else {
                    sqlx::query_scalar("SELECT count(*) FROM entries")
                        .fetch_one(&large_pool)
                        .await?
                };
                let (mut row, mut step) = if index == 0 {
                    let (empty, empty_pool) = super::scratch_database(&config.database.url).await?;
                    let measured = async {
                        seed_accounts(&empty_pool, options.accounts).await?;
                        super::checkpoint(&empty_pool).await;
                        measure(empty.url(), EMPTY, seed, options, &mut sizes).await
                    }
                    .await;
                    super::finish(empty, empty_pool).await;
                    measured?
                } else {
                    super::checkpoint(&large_pool).await;
                    measure(large.url(), LARGE, seed, options, &mut sizes).await?
                };
                row.run = rep * 2 + index;
                row.note = format!("{} entries before the run; {}", entries, row.note);
                step.label = runs[index].0.clone();
                eprintln!(
                    "  {}: {:.0}/s; to posted p99 {:.1} ms at {:.0}/s",
                    runs[index].0,
                    row.transfers_per_sec,
                    step.to_posted.p99_ms,
                    step.offered_per_sec
                );
                runs[index].1.push(row);
                steps.push(step);
            }
        }
        anyhow::Ok((summarize(runs), steps))
    }
    .await;
    super::finish(large, large_pool).await;
    let (rows, steps) = result?;
    latency::print_steps(&steps, &HashMap::new());
    Ok((rows, steps))
}

/// On a ferry started on `database_url`: the `uniform` run, then one open-loop step of single
/// requests at `options.rate_per_sec`.
async fn measure(
    database_url: &str,
    name: &str,
    seed: u64,
    options: &Options,
    sizes: &mut HashMap<String, u64>,
) -> anyhow::Result<(Row, Step)> {
    let ferry = BenchedFerry::start(
        database_url,
        Layout::IntakeAndWorker,
        ChildSettings::default(),
    )
    .await?;
    let measured = async {
        let mut planner = Planner::new(Shape::Uniform, options.accounts, seed);
        let row = throughput::uniform_on(name, &ferry, &mut planner, options, sizes).await?;
        let quiet_after = latency::settle(&ferry, &mut planner, options).await?;
        let mut step = openloop::step(
            &ferry,
            &mut planner,
            Mode::Single,
            options.rate_per_sec,
            options.step_secs,
        )
        .await?;
        step.quiet_after_secs = quiet_after.as_secs_f64();
        anyhow::Ok((row, step))
    }
    .await;
    ferry.stop().await;
    measured
}
