//! Crashes: a worker process killed before or after COMMIT loses nothing and posts nothing
//! twice (invariants 2–4), and its orphaned job runs again. Two ledgers with the same account
//! ids have transfers pending when the worker dies: neither gains or loses a cent to the other.

use std::process::Stdio;
use std::time::{Duration, Instant};

use ferry::queue::QueueSettings;
use serde_json::json;
use tokio::process::Command;

use crate::helpers::{
    TestApp, balance_in, create_account_in, create_ledger, create_ledger_key,
    spawn_intake_only_app, spawn_worker, totals_per_ledger,
};
use crate::invariants::assert_ledger_invariants;

/// Transfers pending in each ledger.
const TRANSFERS: usize = 20;
/// The second ledger; the first is `default`, reached with the admin key.
const TWO: &str = "two";
/// Each ledger's transfers move this much, so a transfer posted in the wrong ledger shows.
const AMOUNTS: [(&str, &str); 2] = [("default", "1.00"), (TWO, "2.00")];

/// An intake-only app with accounts `treasury` and `b` in `default` and in `two`, and one
/// pending batch (one job) of [`TRANSFERS`] transfers treasury → b in each, under the same
/// idempotency keys.
async fn intake_only_app_with_pending_batches() -> TestApp {
    let app = spawn_intake_only_app().await;
    app.create_account("treasury", "USD", true).await;
    app.create_account("b", "USD", false).await;
    create_ledger(&app.pool, TWO).await;
    create_account_in(&app.pool, TWO, "treasury", "USD", true).await;
    create_account_in(&app.pool, TWO, "b", "USD", false).await;
    let two_key = create_ledger_key(&app.pool, TWO, "transfers:write").await;
    for (api_key, (_, amount)) in [&app.api_key, &two_key].into_iter().zip(AMOUNTS) {
        let items: Vec<_> = (0..TRANSFERS)
            .map(|n| {
                json!({"idempotency_key": format!("c{n}"), "from_account": "treasury",
                       "to_account": "b", "amount": amount, "currency": "USD"})
            })
            .collect();
        let reply = app
            .post_json_as(api_key, "/v1/transfers/batch", &json!({"transfers": items}))
            .await;
        assert_eq!(reply.status, reqwest::StatusCode::OK);
    }
    assert_eq!(
        app.count("SELECT count(DISTINCT ledger) FROM transfers")
            .await,
        2,
        "one batch pending in each ledger"
    );
    app
}

/// How many transfers of `ledger` are `status`.
async fn count_in(app: &TestApp, ledger: &str, status: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM transfers WHERE ledger = $1 AND status = $2")
        .bind(ledger)
        .bind(status)
        .fetch_one(&app.pool)
        .await
        .expect("count")
}

/// Every transfer posted once, in its own ledger: `b` holds 20 × its ledger's amount, each
/// ledger sums to zero, and no entry left its transfer's ledger.
async fn assert_each_ledger_posted_in_full(app: &TestApp) {
    for (ledger, _) in AMOUNTS {
        assert_eq!(
            count_in(app, ledger, "posted").await,
            TRANSFERS as i64,
            "{ledger}"
        );
    }
    assert_eq!(
        app.count("SELECT count(*) FROM entries").await,
        2 * 2 * TRANSFERS as i64
    );
    assert_eq!(balance_in(&app.pool, "default", "b").await, "20.00");
    assert_eq!(balance_in(&app.pool, TWO, "b").await, "40.00");
    assert_eq!(
        totals_per_ledger(&app.pool).await,
        [
            ("default".to_owned(), "USD".to_owned(), "0.00".to_owned()),
            (TWO.to_owned(), "USD".to_owned(), "0.00".to_owned()),
        ]
    );
    assert_ledger_invariants(&app.pool).await;
}

/// Runs a real `ferry serve --roles worker` process that aborts at `failpoint`.
async fn run_crashing_worker(app: &TestApp, failpoint: &str) {
    let child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .arg("serve")
        .env("DATABASE_URL", app.database.url())
        .env("FERRY_ROLES", "worker")
        .env("FERRY_FAILPOINT", failpoint)
        .env("FERRY_WORKER_HEARTBEAT_MS", "1000")
        .env("FERRY_WORKER_MISSED_HEARTBEATS", "2")
        .env("RUST_LOG", "warn")
        // Its log goes through the test's captured output: shown only if the test fails.
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("worker process starts");
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("worker reached the failpoint")
        .expect("exit status");
    print!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!output.status.success(), "the worker should have aborted");
}

async fn wait_for_job_done(app: &TestApp, within: Duration) -> Duration {
    let started = Instant::now();
    while app
        .count("SELECT count(*) FROM apalis.jobs WHERE status <> 'Done'")
        .await
        > 0
    {
        assert!(
            started.elapsed() < within,
            "orphaned job not re-run within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_after_commit_before_ack_posts_nothing_twice() {
    let app = intake_only_app_with_pending_batches().await;
    run_crashing_worker(&app, "crash_after_commit").await;
    // The first COMMIT landed; no ack did. It carried one ledger's job, or both if the poster
    // merged them: each ledger's batch posted whole or not at all, and in its own ledger.
    let mut posted = 0;
    for (ledger, _) in AMOUNTS {
        let n = count_in(&app, ledger, "posted").await;
        assert!(n == 0 || n == TRANSFERS as i64, "{ledger}: {n} posted");
        posted += n;
    }
    assert!(posted >= TRANSFERS as i64, "nothing committed");
    assert_ledger_invariants_so_far(&app).await;
    assert_eq!(
        app.count("SELECT count(*) FROM apalis.jobs WHERE status = 'Done'")
            .await,
        0
    );
    let _worker = spawn_worker(app.database.url(), |_| {}).await;
    let recovered_in = wait_for_job_done(&app, Duration::from_secs(30)).await;
    println!("orphaned job re-run and acknowledged {recovered_in:?} after the new worker started");
    app.run_until_idle(Duration::from_secs(10)).await;
    assert_each_ledger_posted_in_full(&app).await;
    // The re-run found nothing pending: attempts stay at one.
    assert_eq!(
        app.count("SELECT count(*) FROM transfers WHERE attempts <> 1")
            .await,
        0
    );
}

/// What must already hold while some transfers are still pending: no entry outside its
/// transfer's ledger, each ledger's balances sum to zero, and exactly the committed changes
/// have their events.
async fn assert_ledger_invariants_so_far(app: &TestApp) {
    crate::events::assert_events_match_transfers(&app.pool).await;
    assert_eq!(
        app.count(
            "SELECT count(*) FROM ledger_entries e JOIN transfers t ON t.id = e.transfer_id \
             WHERE e.ledger IS DISTINCT FROM t.ledger"
        )
        .await,
        0
    );
    assert_eq!(
        app.count(
            "SELECT count(*) FROM (SELECT ledger FROM accounts GROUP BY ledger, currency \
             HAVING sum(balance) <> 0) unbalanced"
        )
        .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_transaction_loses_nothing_and_the_job_reruns() {
    let app = intake_only_app_with_pending_batches().await;
    run_crashing_worker(&app, "crash_before_commit").await;
    // The open transaction died with the process: nothing was posted, in either ledger.
    for (ledger, _) in AMOUNTS {
        assert_eq!(
            count_in(&app, ledger, "pending").await,
            TRANSFERS as i64,
            "{ledger}"
        );
    }
    assert_eq!(app.count("SELECT count(*) FROM entries").await, 0);
    assert_eq!(
        app.count("SELECT count(*) FROM events").await,
        0,
        "no event without its change"
    );
    // The recovering worker runs with the production heartbeat (5 s × 4 missed = 20 s), to
    // show an orphaned job is picked up again in under 30 s with the defaults.
    let _worker = spawn_worker(app.database.url(), |c| {
        let defaults = QueueSettings::default();
        c.workers.queue.heartbeat = defaults.heartbeat;
        c.workers.queue.missed_heartbeats = defaults.missed_heartbeats;
    })
    .await;
    let recovered_in = wait_for_job_done(&app, Duration::from_secs(30)).await;
    println!("orphaned job recovered {recovered_in:?} after the new worker started");
    app.run_until_idle(Duration::from_secs(10)).await;
    assert_each_ledger_posted_in_full(&app).await;
}

/// Holds in flight when a worker dies mid-transaction: pending holds, and held ones with a
/// capture or void claimed. Nothing moves or is reserved until a worker posts again; then each
/// is carried out once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_transaction_with_holds_in_flight_loses_and_doubles_nothing() {
    let app = spawn_intake_only_app().await;
    app.create_account("treasury", "USD", true).await;
    app.create_account("b", "USD", false).await;
    let batch = |prefix: &str| {
        let items: Vec<_> = (0..TRANSFERS)
            .map(|n| {
                json!({"idempotency_key": format!("{prefix}{n}"), "from_account": "treasury",
                       "to_account": "b", "amount": "1.00", "currency": "USD", "mode": "hold"})
            })
            .collect();
        json!({"transfers": items})
    };
    let placed = app.post_json("/v1/transfers/batch", &batch("h")).await;
    assert_eq!(placed.status, reqwest::StatusCode::OK);
    {
        let _worker = spawn_worker(app.database.url(), |_| {}).await;
        app.run_until_idle(Duration::from_secs(20)).await;
    }
    let held: Vec<String> = sqlx::query_scalar(
        "SELECT id::text FROM transfers WHERE status = 'held' ORDER BY idempotency_key",
    )
    .fetch_all(&app.pool)
    .await
    .expect("held");
    assert_eq!(held.len(), TRANSFERS);
    // Half captured, half voided, and a second batch of holds accepted: all waiting on jobs.
    for (n, id) in held.iter().enumerate() {
        let action = if n % 2 == 0 { "capture" } else { "void" };
        let reply = crate::holds::act(&app, id, action, &format!("s{n}"), None).await;
        assert_eq!(
            reply.status,
            reqwest::StatusCode::ACCEPTED,
            "{}",
            reply.body
        );
    }
    let more = app.post_json("/v1/transfers/batch", &batch("g")).await;
    assert_eq!(more.status, reqwest::StatusCode::OK);
    let before: (String, String) =
        sqlx::query_as("SELECT balance::text, pending_credits::text FROM accounts WHERE id = 'b'")
            .fetch_one(&app.pool)
            .await
            .expect("b");
    assert_eq!(before, ("0".to_owned(), "20.00".to_owned()));
    run_crashing_worker(&app, "crash_before_commit").await;
    let after_crash: (String, String) =
        sqlx::query_as("SELECT balance::text, pending_credits::text FROM accounts WHERE id = 'b'")
            .fetch_one(&app.pool)
            .await
            .expect("b");
    assert_eq!(after_crash, before, "the killed transaction moved nothing");
    assert_ledger_invariants_so_far(&app).await;
    let _worker = spawn_worker(app.database.url(), |_| {}).await;
    crate::holds::wait_until_settled(&app).await;
    let b: (String, String) =
        sqlx::query_as("SELECT balance::text, pending_credits::text FROM accounts WHERE id = 'b'")
            .fetch_one(&app.pool)
            .await
            .expect("b");
    // Ten captured (1.00 each); the second batch of twenty is now held.
    assert_eq!(b, ("10.00".to_owned(), "20.00".to_owned()));
    assert_eq!(
        app.count("SELECT count(*) FROM events WHERE type = 'transfer.voided'")
            .await,
        (TRANSFERS / 2) as i64
    );
    assert_ledger_invariants(&app.pool).await;
}
