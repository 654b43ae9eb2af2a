//! Crashes: a worker process killed before or after COMMIT loses nothing and posts nothing
//! twice (invariants 2–4), and its orphaned job runs again.

use std::process::Stdio;
use std::time::{Duration, Instant};

use ferry::queue::QueueSettings;
use serde_json::json;
use tokio::process::Command;

use crate::helpers::{TestApp, spawn_intake_only_app, spawn_worker};
use crate::invariants::assert_ledger_invariants;

const TRANSFERS: usize = 20;

async fn intake_only_app_with_pending_batch() -> TestApp {
    let app = spawn_intake_only_app().await;
    app.create_account("treasury", "USD", true).await;
    app.create_account("b", "USD", false).await;
    let items: Vec<_> = (0..TRANSFERS)
        .map(|n| {
            json!({"idempotency_key": format!("c{n}"), "from_account": "treasury",
                        "to_account": "b", "amount": "1.00", "currency": "USD"})
        })
        .collect();
    let reply = app
        .post_json("/v1/transfers/batch", &json!({"transfers": items}))
        .await;
    assert_eq!(reply.status, reqwest::StatusCode::OK);
    app
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
    let app = intake_only_app_with_pending_batch().await;
    run_crashing_worker(&app, "crash_after_commit").await;
    // The COMMIT landed; the ack did not.
    assert_eq!(
        app.count("SELECT count(*) FROM transfers WHERE status = 'posted'")
            .await,
        TRANSFERS as i64
    );
    assert_eq!(
        app.count("SELECT count(*) FROM apalis.jobs WHERE status = 'Done'")
            .await,
        0
    );
    let _worker = spawn_worker(app.database.url(), |_| {}).await;
    let recovered_in = wait_for_job_done(&app, Duration::from_secs(30)).await;
    println!("orphaned job re-run and acknowledged {recovered_in:?} after the new worker started");
    assert_eq!(
        app.count("SELECT count(*) FROM entries").await,
        2 * TRANSFERS as i64
    );
    assert_eq!(app.balance("b").await, "20.00");
    // The re-run found nothing pending: attempts stay at one.
    assert_eq!(
        app.count("SELECT count(*) FROM transfers WHERE attempts <> 1")
            .await,
        0
    );
    assert_ledger_invariants(&app.pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_transaction_loses_nothing_and_the_job_reruns() {
    let app = intake_only_app_with_pending_batch().await;
    run_crashing_worker(&app, "crash_before_commit").await;
    // The open transaction died with the process: nothing was posted.
    assert_eq!(
        app.count("SELECT count(*) FROM transfers WHERE status = 'pending'")
            .await,
        TRANSFERS as i64
    );
    assert_eq!(app.count("SELECT count(*) FROM entries").await, 0);
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
    assert_eq!(
        app.count("SELECT count(*) FROM transfers WHERE status = 'posted'")
            .await,
        TRANSFERS as i64
    );
    assert_eq!(app.balance("b").await, "20.00");
    assert_ledger_invariants(&app.pool).await;
}
