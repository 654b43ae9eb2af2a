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
    // `test_database` has migrated it.
    let pool = sqlx::PgPool::connect(database.url()).await.expect("pool");
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

/// A migrated database with `count` jobs of queue `ferry.test` claimed by worker `worker`
/// through apalis's own fetch.
async fn jobs_claimed_by(
    worker: &str,
    count: i64,
) -> (ferry::harness::ScratchDatabase, sqlx::PgPool) {
    let database = test_database().await;
    // `test_database` has migrated it.
    let pool = sqlx::PgPool::connect(database.url()).await.expect("pool");
    sqlx::query(
        "INSERT INTO apalis.workers (id, worker_type, storage_name, layers) \
         VALUES ($1, 'ferry.test', 'PgStorage', '')",
    )
    .bind(worker)
    .execute(&pool)
    .await
    .expect("worker registered");
    sqlx::query(
        "INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, \
           priority, metadata) \
         SELECT apalis.generate_ulid(), 'ferry.test', '\\x7b7d', 'Pending', 0, 5, \
           now() - interval '1 second', 0, ''::hstore FROM generate_series(1, $1)",
    )
    .bind(count)
    .execute(&pool)
    .await
    .expect("jobs queued");
    let claimed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM apalis.get_jobs($1, 'ferry.test', $2::int)")
            .bind(worker)
            .bind(count)
            .fetch_one(&pool)
            .await
            .expect("jobs fetched");
    assert_eq!(claimed, count);
    (database, pool)
}

/// Acknowledges `ids` as done, as apalis does after a handler returns.
async fn acknowledge_done(pool: &sqlx::PgPool, worker: &str, ids: &[String]) -> u64 {
    use apalis_core::backend::TaskResult;
    use apalis_core::task::{status::Status, task_id::TaskId};
    let results: Vec<apalis_postgres::queries::ResultPayload> = ids
        .iter()
        .map(|id| TaskResult {
            task_id: TaskId::from_string(id.clone()),
            attempt: 1,
            status: Status::Done,
            result: Ok(serde_json::Value::Null),
        })
        .collect();
    let refs: Vec<&apalis_postgres::queries::ResultPayload> = results.iter().collect();
    let mut conn = pool.acquire().await.expect("connection");
    apalis_postgres::queries::handle_results(&mut *conn, &refs, worker)
        .await
        .expect("acknowledged")
}

/// apalis acknowledges jobs by their worker's name (`lock_by`), and a finished job used to
/// keep it: each acknowledgement read every job its worker had finished since the last purge,
/// a sequential scan of the table at 2.2 ms (BENCHMARKS.md, issue 26, "Sixth sitting"). A
/// finished job now lets go of the name, so the name matches only the jobs the worker holds.
#[tokio::test]
async fn a_finished_job_no_longer_carries_its_workers_name() {
    let worker = "ferry-test-worker";
    let (_database, pool) = jobs_claimed_by(worker, 2_000).await;
    let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM apalis.jobs ORDER BY id")
        .fetch_all(&pool)
        .await
        .expect("ids");
    let (finished, held) = ids.split_at(ids.len() - 3);
    for chunk in finished.chunks(500) {
        assert_eq!(
            acknowledge_done(&pool, worker, chunk).await,
            chunk.len() as u64
        );
    }

    let named: Vec<String> =
        sqlx::query_scalar("SELECT id FROM apalis.jobs WHERE lock_by = $1 ORDER BY id")
            .bind(worker)
            .fetch_all(&pool)
            .await
            .expect("named");
    assert_eq!(
        named.len(),
        held.len(),
        "only the jobs the worker holds carry its name"
    );
    assert_eq!(named, held);
    let done: i64 = sqlx::query_scalar("SELECT count(*) FROM apalis.jobs WHERE status = 'Done'")
        .fetch_one(&pool)
        .await
        .expect("done");
    assert_eq!(
        done,
        finished.len() as i64,
        "acknowledged as done all the same"
    );

    // The jobs still held are acknowledged as before, by the same worker's name.
    assert_eq!(acknowledge_done(&pool, worker, held).await, 3);
    let named: i64 =
        sqlx::query_scalar("SELECT count(*) FROM apalis.jobs WHERE lock_by IS NOT NULL")
            .fetch_one(&pool)
            .await
            .expect("named");
    assert_eq!(named, 0);
}

/// ferry's copy of apalis's fetch (migration 20261207000003) is PL/pgSQL, so its plan is
/// cached, and fetches as apalis's does: the highest priority first, then the earliest due,
/// never a job not yet due, never one another transaction holds.
#[tokio::test]
async fn the_job_fetch_is_apaliss_own_planned_once() {
    let worker = "ferry-test-worker";
    let (_database, pool) = jobs_claimed_by(worker, 1).await;
    let language: String = sqlx::query_scalar(
        "SELECT l.lanname::text FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang \
         WHERE p.oid = 'apalis.get_jobs(text, text, integer)'::regprocedure",
    )
    .fetch_one(&pool)
    .await
    .expect("language");
    assert_eq!(language, "plpgsql");

    let queued: Vec<String> = sqlx::query_scalar(
        "INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, \
           priority, metadata) \
         SELECT apalis.generate_ulid(), 'ferry.test', '\\x7b7d', 'Pending', 0, 5, \
           now() + make_interval(secs => due_in), priority, ''::hstore \
         FROM (VALUES (-30, 0), (-20, 0), (-10, 7), (-5, 7), (3600, 9)) AS v(due_in, priority) \
         RETURNING id",
    )
    .fetch_all(&pool)
    .await
    .expect("queued");
    let (older_low, newer_low, older_high, newer_high) =
        (&queued[0], &queued[1], &queued[2], &queued[3]);

    // Another transaction holds the oldest high-priority job: skipped, not waited for.
    let mut holder = pool.begin().await.expect("holder");
    sqlx::query("SELECT 1 FROM apalis.jobs WHERE id = $1 FOR UPDATE")
        .bind(older_high)
        .execute(&mut *holder)
        .await
        .expect("held");
    let mut fetched: Vec<String> =
        sqlx::query_scalar("SELECT id FROM apalis.get_jobs($1, 'ferry.test', 2)")
            .bind(worker)
            .fetch_all(&pool)
            .await
            .expect("fetched");
    fetched.sort();
    // The free high-priority job, then of the low ones the earliest due.
    let mut expected = vec![newer_high.clone(), older_low.clone()];
    expected.sort();
    assert_eq!(fetched, expected);
    holder.rollback().await.expect("released");

    let rest: Vec<String> =
        sqlx::query_scalar("SELECT id FROM apalis.get_jobs($1, 'ferry.test', 10) ORDER BY id")
            .bind(worker)
            .fetch_all(&pool)
            .await
            .expect("fetched");
    let mut expected = vec![older_high.clone(), newer_low.clone()];
    expected.sort();
    assert_eq!(rest, expected, "the job due in an hour is not fetched");
}

/// Every job is written into each index of `apalis.jobs` three times (insert, `Queued`,
/// `Done`); an index that another one already is costs that for nothing. apalis 1.0.0 left
/// five such twins from its first migration (migration `apalis_index_twins`); the one a
/// foreign key is bound to stays.
#[tokio::test]
async fn apaliss_tables_carry_no_index_twice() {
    let database = test_database().await;
    // `test_database` has migrated it.
    let pool = sqlx::PgPool::connect(database.url()).await.expect("pool");
    let twins: Vec<(String, String)> = sqlx::query_as(
        "SELECT a.indexrelid::regclass::text, b.indexrelid::regclass::text \
         FROM pg_index a JOIN pg_index b \
           ON a.indrelid = b.indrelid AND a.indexrelid < b.indexrelid \
          AND a.indkey::text = b.indkey::text AND a.indclass::text = b.indclass::text \
          AND a.indoption::text = b.indoption::text \
          AND pg_get_expr(a.indpred, a.indrelid) IS NOT DISTINCT FROM pg_get_expr(b.indpred, b.indrelid) \
          AND pg_get_expr(a.indexprs, a.indrelid) IS NOT DISTINCT FROM pg_get_expr(b.indexprs, b.indrelid) \
         WHERE a.indrelid IN ('apalis.jobs'::regclass, 'apalis.workers'::regclass) \
           AND NOT EXISTS (SELECT 1 FROM pg_constraint c \
                           WHERE c.conindid IN (a.indexrelid, b.indexrelid) AND c.contype = 'f') \
         ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .expect("indexes");
    assert_eq!(
        twins,
        Vec::<(String, String)>::new(),
        "indexes that are twins"
    );

    // What apalis's own queries need is still there: the fetch's partial index, the
    // acknowledgement's `lock_by`, each table's key.
    let kept: Vec<String> = sqlx::query_scalar(
        "SELECT indexrelid::regclass::text FROM pg_index \
         WHERE indrelid IN ('apalis.jobs'::regclass, 'apalis.workers'::regclass) ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .expect("indexes");
    for needed in [
        "apalis.jobs_pkey",
        "apalis.idx_apalis_jobs_fetch_partial",
        "apalis.idx_apalis_jobs_lock_by",
        "apalis.idx_jobs_idempotency_key",
        "apalis.workers_pkey",
        "apalis.idx_apalis_workers_last_seen",
    ] {
        assert!(
            kept.iter().any(|k| k == needed),
            "{needed} missing: {kept:?}"
        );
    }
}
