//! Keeps the tables that churn vacuumed whatever the server's autovacuum does.
//!
//! Two tables leave a dead row version behind for nearly every row they ever hold:
//! - `apalis.jobs`: every job is inserted, updated twice (claimed by a fetch, acknowledged;
//!   none HOT) and later purged, and a fetch walks the partial fetch index past the dead
//!   entries;
//! - `transfers`: every transfer is updated at least once after its insert (pending → posted),
//!   not HOT (`status` is indexed), and the partial `pending` index keeps an entry for each old
//!   version until a vacuum removes it.
//!
//! A migration tunes autovacuum for both (`20261206000001_queue_vacuum.sql`), but autovacuum
//! may be off or busy elsewhere — it is off on the machines ferry's benchmarks run on, where a
//! `latency` run left 43,251 dead beside 14,418 live job rows, and a 30-minute soak 2.6M dead
//! transfer rows, and no vacuum ever ran (BENCHMARKS.md, "Posted in milliseconds"). So every
//! worker process checks the tables' dead rows every [`CHECK_INTERVAL`] and vacuums a table
//! past its [`Churning::is_due`] threshold, the same one its autovacuum settings name; an
//! advisory lock makes one process at a time do it.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// How often the dead rows are counted.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// `pg_try_advisory_lock` key of the vacuum (ASCII "ferryvac").
const LOCK_KEY: i64 = 0x6665_7272_7976_6163;

/// A table ferry vacuums itself, and from how many dead rows on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Churning {
    pub schema: &'static str,
    pub table: &'static str,
    /// Dead row versions that start a vacuum however small the table.
    pub dead_rows_min: i64,
    /// Dead row versions, as a fraction of the live rows, that start a vacuum of a larger
    /// table: each vacuum reads every index of the table, so a large one is vacuumed less
    /// often (autovacuum's scale factor).
    pub dead_fraction_of_live: f64,
}

impl Churning {
    /// Whether a table with these row counts is due a vacuum.
    pub fn is_due(&self, dead_rows: i64, live_rows: i64) -> bool {
        let threshold =
            (self.dead_rows_min as f64).max(self.dead_fraction_of_live * live_rows.max(0) as f64);
        dead_rows as f64 > threshold
    }

    /// The table's name, schema-qualified, for `VACUUM`.
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }
}

/// The job table: small and kept small, so a fixed threshold — a few seconds of jobs at full
/// speed.
pub const JOBS: Churning = Churning {
    schema: "apalis",
    table: "jobs",
    dead_rows_min: 5_000,
    dead_fraction_of_live: 0.0,
};

/// The transfers: 2 % of the live rows, as the migration sets for autovacuum.
pub const TRANSFERS: Churning = Churning {
    schema: "public",
    table: "transfers",
    dead_rows_min: 5_000,
    dead_fraction_of_live: 0.02,
};

pub const CHURNING: [Churning; 2] = [JOBS, TRANSFERS];

/// A table's dead and live row versions, as PostgreSQL's statistics last counted them.
pub async fn row_counts(
    conn: &mut sqlx::PgConnection,
    table: &Churning,
) -> Result<(i64, i64), sqlx::Error> {
    let counts: Option<(i64, i64)> = sqlx::query_as(
        "SELECT n_dead_tup, n_live_tup FROM pg_stat_user_tables \
         WHERE schemaname = $1 AND relname = $2",
    )
    .bind(table.schema)
    .bind(table.table)
    .fetch_optional(conn)
    .await?;
    Ok(counts.unwrap_or((0, 0)))
}

/// Vacuums each of [`CHURNING`] that is due, if no other process is at it; the tables it
/// vacuumed.
pub async fn vacuum_if_due(pool: &PgPool) -> Result<Vec<Churning>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let mut due = Vec::new();
    for table in CHURNING {
        let (dead, live) = row_counts(&mut conn, &table).await?;
        if table.is_due(dead, live) {
            due.push(table);
        }
    }
    if due.is_empty() {
        return Ok(due);
    }
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(LOCK_KEY)
        .fetch_one(&mut *conn)
        .await?;
    if !locked {
        return Ok(Vec::new());
    }
    let mut vacuumed = Ok(());
    for table in &due {
        // The names are this module's constants, never input.
        let statement = format!("VACUUM (ANALYZE) {}", table.qualified());
        vacuumed = sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
            .execute(&mut *conn)
            .await
            .map(|_| ());
        if vacuumed.is_err() {
            break;
        }
        metrics::counter!("ferry_table_vacuums_total", "table" => table.table).increment(1);
        debug!(table = %table.qualified(), "vacuumed");
    }
    // Unlocked whatever the vacuum did; a connection lost meanwhile took the lock with it.
    let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(LOCK_KEY)
        .execute(&mut *conn)
        .await;
    vacuumed?;
    unlocked?;
    Ok(due)
}

/// Runs [`vacuum_if_due`] every [`CHECK_INTERVAL`] until `stopping` is cancelled. A failed
/// check (the database is away) is logged at debug level and tried again next time.
pub async fn run(pool: PgPool, stopping: CancellationToken) {
    let mut tick = tokio::time::interval(CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Err(error) = vacuum_if_due(&pool).await {
                    debug!(%error, "table vacuum check failed");
                }
            }
            () = stopping.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_table_is_due_past_the_fixed_count_a_large_one_past_its_fraction() {
        assert!(!TRANSFERS.is_due(5_000, 10_000));
        assert!(TRANSFERS.is_due(5_001, 10_000));
        // 2 % of 1M live rows is 20,000.
        assert!(!TRANSFERS.is_due(20_000, 1_000_000));
        assert!(TRANSFERS.is_due(20_001, 1_000_000));
        // The job table's threshold does not grow with it.
        assert!(JOBS.is_due(5_001, 1_000_000));
        assert!(!JOBS.is_due(0, 0));
        assert_eq!(TRANSFERS.qualified(), "public.transfers");
    }
}
