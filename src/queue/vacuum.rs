//! Keeps `apalis.jobs` vacuumed whatever the server's autovacuum does.
//!
//! Every job leaves two or three dead row versions behind (inserted, claimed by a fetch,
//! acknowledged; none HOT), and a fetch walks the partial fetch index past them. A migration
//! tunes autovacuum for the table (`20261206000001_queue_vacuum.sql`), but autovacuum may be
//! off or busy elsewhere — it is off on the machines ferry's benchmarks run on, where a
//! `latency` run left 43,251 dead beside 14,418 live rows and no vacuum ever ran. So every
//! worker process checks the table's dead rows every [`CHECK_INTERVAL`] and vacuums it past
//! [`DEAD_ROWS_MAX`]; an advisory lock makes one process at a time do it. The table holds
//! only unfinished and recently finished jobs, so a vacuum takes milliseconds.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// How often the dead rows are counted.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// Dead row versions in `apalis.jobs` that start a vacuum: a few seconds of jobs at full speed.
pub const DEAD_ROWS_MAX: i64 = 5_000;
/// `pg_try_advisory_lock` key of the vacuum (ASCII "ferryvac").
const LOCK_KEY: i64 = 0x6665_7272_7976_6163;

/// Dead row versions in `apalis.jobs`, as PostgreSQL's statistics last counted them.
pub async fn dead_rows(conn: &mut sqlx::PgConnection) -> Result<i64, sqlx::Error> {
    let dead: Option<i64> = sqlx::query_scalar(
        "SELECT n_dead_tup FROM pg_stat_user_tables WHERE schemaname = 'apalis' \
         AND relname = 'jobs'",
    )
    .fetch_optional(conn)
    .await?;
    Ok(dead.unwrap_or(0))
}

/// Vacuums `apalis.jobs` if it has more than [`DEAD_ROWS_MAX`] dead rows and no other process
/// is at it; whether it did.
pub async fn vacuum_if_due(pool: &PgPool) -> Result<bool, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let dead = dead_rows(&mut conn).await?;
    if dead < DEAD_ROWS_MAX {
        return Ok(false);
    }
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(LOCK_KEY)
        .fetch_one(&mut *conn)
        .await?;
    if !locked {
        return Ok(false);
    }
    let vacuumed = sqlx::raw_sql("VACUUM (ANALYZE) apalis.jobs")
        .execute(&mut *conn)
        .await;
    // Unlocked whatever the vacuum did; a connection lost meanwhile took the lock with it.
    let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(LOCK_KEY)
        .execute(&mut *conn)
        .await;
    vacuumed?;
    unlocked?;
    metrics::counter!("ferry_queue_vacuums_total").increment(1);
    debug!(dead_rows = dead, "vacuumed apalis.jobs");
    Ok(true)
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
                    debug!(%error, "queue vacuum check failed");
                }
            }
            () = stopping.cancelled() => return,
        }
    }
}
