//! Upkeep of apalis's job table: vacuumed by ferry whatever the server's autovacuum does.

use ferry::queue::vacuum::{DEAD_ROWS_MAX, vacuum_if_due};

use crate::helpers::test_database;

async fn dead_rows(pool: &sqlx::PgPool) -> i64 {
    let mut conn = pool.acquire().await.expect("connection");
    ferry::queue::vacuum::dead_rows(&mut conn)
        .await
        .expect("dead rows")
}

#[tokio::test]
async fn the_job_table_is_vacuumed_once_it_has_enough_dead_rows() {
    let database = test_database().await;
    let pool = sqlx::PgPool::connect(database.url()).await.expect("pool");
    ferry::db::migrate(&pool).await.expect("migrated");
    // Few dead rows: nothing to do.
    assert!(!vacuum_if_due(&pool).await.expect("check"));

    let mut conn = pool.acquire().await.expect("connection");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, \
           priority, metadata) \
         SELECT apalis.generate_ulid(), 'ferry.test', '\\x7b7d', 'Done', 1, 1, now(), 0, \
           ''::hstore FROM generate_series(1, {rows}); \
         DELETE FROM apalis.jobs WHERE job_type = 'ferry.test'; \
         SELECT pg_stat_force_next_flush();",
        rows = DEAD_ROWS_MAX + 1_000
    )))
    .execute(&mut *conn)
    .await
    .expect("dead rows made");
    drop(conn);
    let before = dead_rows(&pool).await;
    assert!(before > DEAD_ROWS_MAX, "{before} dead rows");

    assert!(vacuum_if_due(&pool).await.expect("vacuum"));
    let after = dead_rows(&pool).await;
    assert!(after < 100, "{after} dead rows left after the vacuum");
    assert!(!vacuum_if_due(&pool).await.expect("check"));
}
