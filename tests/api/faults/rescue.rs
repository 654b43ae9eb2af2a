//! The rescuer and worker restarts, in-process: a job held by a worker that still looks alive
//! is taken back after the rescue bound and posts once; a worker whose backend fails restarts
//! under a new name.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::{spawn_app_with, spawn_intake_only_app, spawn_worker, transfer};
use crate::invariants::assert_ledger_invariants;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_held_by_a_live_worker_past_the_rescue_bound_is_rescued_and_posts_once() {
    let app = spawn_intake_only_app().await;
    app.create_account("treasury", "USD", true).await;
    app.create_account("b", "USD", false).await;
    let accepted = app
        .post_transfer("held-1", &transfer("treasury", "b", "5.00"))
        .await;
    assert_eq!(accepted.status, reqwest::StatusCode::ACCEPTED);
    // A worker that heartbeats far into the future: apalis's orphan recovery never fires for
    // it, as for a worker restarted under its old name. It holds the job, as if it had
    // fetched it and lost it.
    sqlx::query(
        "INSERT INTO apalis.workers (id, worker_type, storage_name, layers, last_seen) \
         VALUES ('ferry-posting-zombie', 'ferry.post_transfers', 'PgStorage', '', \
                 now() + interval '1 day')",
    )
    .execute(&app.pool)
    .await
    .expect("zombie worker");
    sqlx::query(
        "UPDATE apalis.jobs SET status = 'Running', lock_by = 'ferry-posting-zombie', \
           lock_at = now() - interval '2 minutes'",
    )
    .execute(&app.pool)
    .await
    .expect("job held");
    let started = Instant::now();
    let _worker = spawn_worker(app.database.url(), |c| {
        c.workers.queue.rescue_after = Duration::from_secs(5);
    })
    .await;
    let id = accepted.body["id"].as_str().expect("id").to_owned();
    let posted = app.wait_until_terminal(&id).await;
    assert_eq!(posted["status"], "posted", "{posted}");
    println!(
        "rescued and posted {:?} after the worker started",
        started.elapsed()
    );
    // Without the rescuer the job would stay `Running` under the zombie forever.
    assert_eq!(app.count("SELECT count(*) FROM entries").await, 2);
    assert_eq!(app.balance("b").await, "5.00");
    assert_ledger_invariants(&app.pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_connections_are_terminated_restarts_under_a_new_name() {
    let app = spawn_app_with(|_| {}).await;
    app.create_account("treasury", "USD", true).await;
    app.create_account("b", "USD", false).await;
    let names_before: Vec<String> = sqlx::query_scalar("SELECT id FROM apalis.workers")
        .fetch_all(&app.pool)
        .await
        .expect("workers");
    assert!(
        names_before.iter().all(|n| n.ends_with("-r0")),
        "{names_before:?}"
    );
    let statement = format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = '{}' AND pid <> pg_backend_pid()",
        app.database.name()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // The pool's own connections go too; the next query reconnects.
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(statement.clone()))
            .execute(&app.pool)
            .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let restarted: i64 =
            sqlx::query_scalar("SELECT count(*) FROM apalis.workers WHERE id NOT LIKE '%-r0'")
                .fetch_one(&app.pool)
                .await
                .unwrap_or(0);
        if restarted > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no worker restarted under a new name"
        );
    }
    // And the restarted workers post.
    let accepted = app
        .post_json(
            "/v1/transfers/batch",
            &json!({"transfers": [{"idempotency_key": "after-restart", "from_account": "treasury",
                "to_account": "b", "amount": "1.00", "currency": "USD"}]}),
        )
        .await;
    assert_eq!(
        accepted.status,
        reqwest::StatusCode::OK,
        "{}",
        accepted.body
    );
    app.run_until_idle(Duration::from_secs(30)).await;
    assert_eq!(app.balance("b").await, "1.00");
}
