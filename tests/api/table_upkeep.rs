//! Upkeep of the tables that churn (`apalis.jobs`, `transfers`): vacuumed by ferry whatever
//! the server's autovacuum does.

use ferry::store::vacuum::{Churning, JOBS, TRANSFERS, row_counts, vacuum_if_due};

use ferry::harness::ScratchDatabase;

use crate::helpers::test_database;

async fn dead_rows(pool: &sqlx::PgPool, table: &Churning) -> i64 {
    let mut conn = pool.acquire().await.expect("connection");
    row_counts(&mut conn, table).await.expect("row counts").0
}

async fn migrated_pool() -> (ScratchDatabase, sqlx::PgPool) {
    let database = test_database().await;
    let pool = sqlx::PgPool::connect(database.url()).await.expect("pool");
    ferry::db::migrate(&pool).await.expect("migrated");
    (database, pool)
}

/// Makes `statement`'s dead rows and flushes the statistics that count them.
async fn make_dead_rows(pool: &sqlx::PgPool, statement: String) {
    let mut conn = pool.acquire().await.expect("connection");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "{statement} SELECT pg_stat_force_next_flush();"
    )))
    .execute(&mut *conn)
    .await
    .expect("dead rows made");
}

#[tokio::test]
async fn the_job_table_is_vacuumed_once_it_has_enough_dead_rows() {
    let (_database, pool) = migrated_pool().await;
    // Few dead rows: nothing to do.
    assert!(vacuum_if_due(&pool).await.expect("check").is_empty());

    make_dead_rows(
        &pool,
        format!(
            "INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, \
               priority, metadata) \
             SELECT apalis.generate_ulid(), 'ferry.test', '\\x7b7d', 'Done', 1, 1, now(), 0, \
               ''::hstore FROM generate_series(1, {rows}); \
             DELETE FROM apalis.jobs WHERE job_type = 'ferry.test';",
            rows = JOBS.dead_rows_min + 1_000
        ),
    )
    .await;
    let before = dead_rows(&pool, &JOBS).await;
    assert!(before > JOBS.dead_rows_min, "{before} dead rows");

    assert_eq!(vacuum_if_due(&pool).await.expect("vacuum"), [JOBS]);
    let after = dead_rows(&pool, &JOBS).await;
    assert!(after < 100, "{after} dead rows left after the vacuum");
    assert!(vacuum_if_due(&pool).await.expect("check").is_empty());
}

#[tokio::test]
async fn the_transfers_are_vacuumed_once_they_have_enough_dead_rows() {
    let (_database, pool) = migrated_pool().await;
    // Rows inserted by a transaction that rolled back are dead rows, as the versions a
    // status update leaves behind are.
    make_dead_rows(
        &pool,
        format!(
            "INSERT INTO api_keys (id, name, key_hash, scopes) \
               VALUES ('00000000-0000-0000-0000-00000000000a', 'vacuum', '\\x0a', '{{admin}}'); \
             BEGIN; \
             INSERT INTO transfers (id, api_key_id, idempotency_key, request_fingerprint, \
               from_account, to_account, amount, currency, ledger) \
             SELECT gen_random_uuid(), '00000000-0000-0000-0000-00000000000a', 'k' || n, \
               '\\x00', 'a', 'b', 1, 'USD', 'default' FROM generate_series(1, {rows}) n; \
             ROLLBACK;",
            rows = TRANSFERS.dead_rows_min + 1_000
        ),
    )
    .await;
    let before = dead_rows(&pool, &TRANSFERS).await;
    assert!(before > TRANSFERS.dead_rows_min, "{before} dead rows");

    assert_eq!(vacuum_if_due(&pool).await.expect("vacuum"), [TRANSFERS]);
    let after = dead_rows(&pool, &TRANSFERS).await;
    assert!(after < 100, "{after} dead rows left after the vacuum");
    assert!(vacuum_if_due(&pool).await.expect("check").is_empty());
}
