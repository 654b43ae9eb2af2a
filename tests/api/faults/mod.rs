//! Dependency faults under paced load (README, "When things fail").
//!
//! Each case runs ferry as a real `ferry serve` process against a PostgreSQL and a Redis of its
//! own (never the machine's shared ones), sends paced load as producers would, injects one
//! fault, and asserts what ferry promises: the process never exits; no request waits more than
//! 10 s; no `500` (an outage is answered `503` with `Retry-After`); after recovery every
//! acknowledged transfer is terminal within 60 s — posted, none `retries_exhausted`; balances
//! equal what the posted transfers imply; no job stays locked past the rescue bound; and the
//! reconciliation schedule keeps ticking. Each case prints its recovery time (from the
//! dependency's return to the last transfer terminal), the statuses clients saw, and the
//! restart and rescue counters.

pub mod deps;
mod load;
mod rescue;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::sync::watch;
use uuid::Uuid;

use crate::helpers::create_api_key;
use crate::invariants::assert_ledger_invariants;
use deps::{Ferry, Postgres, Redis};
use load::{LoadReport, Producer};

const CLIENTS: usize = 8;
const RATE_PER_SEC: u64 = 100;
/// Short, so the suite can watch the rescuer act (the default is 60 s).
const RESCUE_AFTER_SECS: u64 = 10;
const LOAD_BEFORE_FAULT: Duration = Duration::from_secs(3);
const LOAD_AFTER_RETURN: Duration = Duration::from_secs(5);
const GATE_HELD_BEFORE_FAULT: Duration = Duration::from_secs(1);
const TERMINAL_WITHIN: Duration = Duration::from_secs(60);
const REQUEST_WAIT_MAX: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy)]
enum Fault {
    RedisKilled,
    PostgresRestartedFast,
    BackendsTerminated,
    PostgresStopped(Duration),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted() {
    run_case(Fault::RedisKilled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_fast() {
    run_case(Fault::PostgresRestartedFast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_backends_terminated() {
    run_case(Fault::BackendsTerminated).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_for_5_s() {
    run_case(Fault::PostgresStopped(Duration::from_secs(5))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_for_60_s() {
    run_case(Fault::PostgresStopped(Duration::from_secs(60))).await;
}

async fn run_case(fault: Fault) {
    ferry::alerts::deliver::install_crypto_provider();
    let postgres = Postgres::start_new();
    let mut redis = Redis::start_new();
    let mut ferry = start_ferry(&postgres, &redis).await;
    let producer = start_producer(&postgres, &ferry).await;

    let (stop_load, load_stopped) = watch::channel(false);
    let load = tokio::spawn(producer.clone().run(CLIENTS, RATE_PER_SEC, load_stopped));
    tokio::time::sleep(LOAD_BEFORE_FAULT).await;
    // Posting blocked a moment before a database fault, so the fault meets posting
    // transactions in flight and a backlog of acknowledged, pending transfers.
    let gate_holder = match fault {
        Fault::RedisKilled => None,
        _ => Some(hold_posting_gate(&postgres).await),
    };
    let returned_at = inject(fault, &postgres, &mut redis).await;
    drop(gate_holder);
    tokio::time::sleep(LOAD_AFTER_RETURN).await;
    let _ = stop_load.send(true);
    let report = load.await.expect("load finished");

    let pool = connect(&postgres).await;
    let all_terminal_after = wait_until_none_pending(&pool, returned_at.instant).await;
    print_recovery(
        fault,
        &pool,
        &producer,
        &returned_at,
        all_terminal_after,
        &report,
    )
    .await;
    assert_promises_kept(&mut ferry, &pool, &report, &returned_at).await;
}

/// `ferry serve` on the case's own PostgreSQL and Redis.
async fn start_ferry(postgres: &Postgres, redis: &Redis) -> Ferry {
    let rescue_after = RESCUE_AFTER_SECS.to_string();
    Ferry::start(
        postgres,
        redis,
        &[
            // Every request consults Redis, so losing it is felt.
            ("FERRY_RATE_LIMIT_PER_SEC", "100000"),
            ("FERRY_RECONCILE_CRON", "*/10 * * * * *"),
            ("FERRY_JOB_RESCUE_AFTER_SECS", rescue_after.as_str()),
        ],
    )
    .await
}

/// A producer with an admin API key and its accounts created.
async fn start_producer(postgres: &Postgres, ferry: &Ferry) -> Arc<Producer> {
    let api_key = {
        let pool = connect(postgres).await;
        create_api_key(&pool, "admin").await
    };
    let producer = Arc::new(Producer::new(&ferry.address, &api_key));
    producer.create_accounts().await;
    producer
}

/// Prints how the case recovered: when the backlog was terminal, when intake and posting
/// worked again, what clients saw, and the restart and rescue counters.
async fn print_recovery(
    fault: Fault,
    pool: &PgPool,
    producer: &Producer,
    returned_at: &Returned,
    all_terminal_after: Duration,
    report: &LoadReport,
) {
    // Recovery: from the dependency's return until the last transfer accepted before it (the
    // backlog the fault held up) is terminal. Load goes on meanwhile.
    let backlog_terminal: Option<DateTime<Utc>> = sqlx::query_scalar(
        "SELECT max(coalesce(posted_at, failed_at)) FROM transfers WHERE created_at <= $1",
    )
    .bind(returned_at.wall)
    .fetch_one(pool)
    .await
    .expect("last terminal");
    let recovered_ms = backlog_terminal
        .map(|at| (at - returned_at.wall).num_milliseconds().max(0))
        .unwrap_or(0);
    // How soon after the return intake accepted, and posting posted, again.
    let (accepting_again, posting_again): (Option<DateTime<Utc>>, Option<DateTime<Utc>>) =
        sqlx::query_as(
            "SELECT (SELECT min(created_at) FROM transfers WHERE created_at > $1), \
                    (SELECT min(posted_at) FROM transfers WHERE posted_at > $1)",
        )
        .bind(returned_at.wall)
        .fetch_one(pool)
        .await
        .expect("first after return");
    let since_return = |at: Option<DateTime<Utc>>| {
        at.map_or_else(
            || "never".to_owned(),
            |at| format!("{} ms", (at - returned_at.wall).num_milliseconds()),
        )
    };
    let metrics = counters(producer).await;
    println!(
        "fault {fault:?}: backlog terminal {recovered_ms} ms after the dependency returned \
         (load went on {LOAD_AFTER_RETURN:?}; none pending {all_terminal_after:?} after the \
         return); intake accepted again after {}, posting posted again after {}; \
         statuses {:?}; {} acknowledged; longest wait {:?}; {metrics}",
        since_return(accepting_again),
        since_return(posting_again),
        report.statuses,
        report.acknowledged.len(),
        report.longest_wait
    );
}

/// What ferry promises through a fault (the module's doc lists them).
async fn assert_promises_kept(
    ferry: &mut Ferry,
    pool: &PgPool,
    report: &LoadReport,
    returned_at: &Returned,
) {
    assert!(ferry.is_running(), "ferry exited:\n{}", ferry.log_tail());
    assert!(
        report.unexpected.is_empty(),
        "unexpected answers: {:?}",
        &report.unexpected[..report.unexpected.len().min(5)]
    );
    for status in report.statuses.keys() {
        assert!(
            ["200", "202", "503"].contains(&status.as_str()),
            "clients saw {status}: {:?}\n{}",
            report.statuses,
            ferry.log_tail()
        );
    }
    assert!(
        report.longest_wait < REQUEST_WAIT_MAX,
        "a request waited {:?}",
        report.longest_wait
    );
    assert!(
        !report.acknowledged.is_empty(),
        "no transfer was acknowledged"
    );
    assert_every_acknowledged_transfer_posted(pool, &report.acknowledged).await;
    assert_balances_match_posted_transfers(pool).await;
    assert_ledger_invariants(pool).await;
    assert_no_job_locked_past_the_rescue_bound(pool).await;
    assert_reconciliation_scheduled_after(pool, returned_at.wall).await;
    assert!(ferry.is_running(), "ferry exited:\n{}", ferry.log_tail());
}

/// When the dependency was back.
struct Returned {
    instant: Instant,
    wall: DateTime<Utc>,
}

async fn inject(fault: Fault, postgres: &Postgres, redis: &mut Redis) -> Returned {
    match fault {
        Fault::RedisKilled => {
            redis.kill();
            tokio::time::sleep(Duration::from_secs(5)).await;
            redis.start();
        }
        Fault::PostgresRestartedFast => tokio::task::block_in_place(|| postgres.restart_fast()),
        Fault::BackendsTerminated => {
            let admin = PgPoolOptions::new()
                .max_connections(1)
                .connect(&postgres.url("postgres"))
                .await
                .expect("admin connection");
            let terminated: Vec<bool> = sqlx::query_scalar(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = 'ferry' AND pid <> pg_backend_pid()",
            )
            .fetch_all(&admin)
            .await
            .expect("terminate backends");
            assert!(!terminated.is_empty(), "ferry had no backends to terminate");
            admin.close().await;
        }
        Fault::PostgresStopped(down_for) => {
            tokio::task::block_in_place(|| postgres.stop());
            tokio::time::sleep(down_for).await;
            tokio::task::block_in_place(|| postgres.start());
        }
    }
    Returned {
        instant: Instant::now(),
        wall: Utc::now(),
    }
}

/// A transaction holding the posting gate: posting transactions queue behind it until the
/// fault ends the connection.
async fn hold_posting_gate(postgres: &Postgres) -> sqlx::PgConnection {
    use sqlx::Connection;
    let mut holder = sqlx::PgConnection::connect(&postgres.url("ferry"))
        .await
        .expect("gate holder connects");
    sqlx::raw_sql("BEGIN; LOCK TABLE ledger_posting_gate IN ACCESS EXCLUSIVE MODE")
        .execute(&mut holder)
        .await
        .expect("gate held");
    tokio::time::sleep(GATE_HELD_BEFORE_FAULT).await;
    holder
}

async fn connect(postgres: &Postgres) -> PgPool {
    PgPoolOptions::new()
        .max_connections(2)
        .connect(&postgres.url("ferry"))
        .await
        .expect("connect to the suite's PostgreSQL")
}

/// Waits until no transfer is pending; returns how long after `since` that was.
async fn wait_until_none_pending(pool: &PgPool, since: Instant) -> Duration {
    loop {
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM transfers WHERE status = 'pending'")
                .fetch_one(pool)
                .await
                .expect("count pending");
        if pending == 0 {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < TERMINAL_WITHIN,
            "{pending} transfers still pending {TERMINAL_WITHIN:?} after the dependency returned"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn assert_every_acknowledged_transfer_posted(pool: &PgPool, acknowledged: &[Uuid]) {
    let posted: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM transfers WHERE id = ANY($1) AND status = 'posted'",
    )
    .bind(acknowledged)
    .fetch_one(pool)
    .await
    .expect("count posted");
    assert_eq!(
        posted,
        acknowledged.len() as i64,
        "acknowledged transfers lost or not posted"
    );
    // Attempts count real tries: each transfer posted on its first, whatever the outage.
    let retried: i64 = sqlx::query_scalar("SELECT count(*) FROM transfers WHERE attempts > 1")
        .fetch_one(pool)
        .await
        .expect("count retried");
    assert_eq!(retried, 0, "transfers had attempts counted for the outage");
    let failed: Vec<(Uuid, Option<String>)> =
        sqlx::query_as("SELECT id, failure_code FROM transfers WHERE status = 'failed'")
            .fetch_all(pool)
            .await
            .expect("failed transfers");
    assert!(failed.is_empty(), "transfers failed: {failed:?}");
}

async fn assert_balances_match_posted_transfers(pool: &PgPool) {
    let drifted: Vec<(String, String)> = sqlx::query_as(
        "SELECT a.id, a.balance::text FROM accounts a \
         WHERE a.balance <> \
           coalesce((SELECT sum(amount) FROM transfers \
                     WHERE to_account = a.id AND status = 'posted'), 0) \
         - coalesce((SELECT sum(amount) FROM transfers \
                     WHERE from_account = a.id AND status = 'posted'), 0)",
    )
    .fetch_all(pool)
    .await
    .expect("balances");
    assert!(drifted.is_empty(), "balances drifted: {drifted:?}");
}

async fn assert_no_job_locked_past_the_rescue_bound(pool: &PgPool) {
    // The rescuer runs six times per bound; allow one bound plus a pass.
    let deadline = Instant::now() + Duration::from_secs(RESCUE_AFTER_SECS * 2 + 5);
    loop {
        let stuck: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM apalis.jobs WHERE status IN ('Queued', 'Running') \
             AND lock_at < now() - make_interval(secs => $1)",
        )
        .bind(RESCUE_AFTER_SECS as f64)
        .fetch_one(pool)
        .await
        .expect("count locked jobs");
        if stuck == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{stuck} jobs still locked past the rescue bound"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn assert_reconciliation_scheduled_after(pool: &PgPool, returned: DateTime<Utc>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let runs: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM reconciliation_runs WHERE created_at > $1 AND status = 'completed'",
        )
        .bind(returned)
        .fetch_one(pool)
        .await
        .expect("count runs");
        if runs > 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no reconciliation was scheduled after the dependency returned"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The restart and rescue counters from ferry's `/metrics`, for the report.
async fn counters(producer: &Producer) -> String {
    let text = producer
        .client
        .get(format!("{}/metrics", producer.address))
        .send()
        .await
        .ok();
    let text = match text {
        Some(response) => response.text().await.unwrap_or_default(),
        None => String::new(),
    };
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.starts_with("ferry_worker_restarts_total")
                || l.starts_with("ferry_jobs_rescued_total")
                || l.starts_with("ferry_rate_limit")
        })
        .collect();
    if lines.is_empty() {
        "no restarts or rescues".to_owned()
    } else {
        lines.join(", ")
    }
}
