//! The bank test and the hot-account test: many concurrent transfers, then every invariant.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, findings, reconcile, spawn_app};
use crate::invariants::assert_ledger_invariants;

const CLIENTS: usize = 32;

fn item(key: &str, from: &str, to: &str, amount: &str) -> Value {
    json!({"idempotency_key": key, "from_account": from, "to_account": to,
           "amount": amount, "currency": "USD"})
}

/// Submits `items` through the single endpoint from `clients` concurrent clients.
async fn submit_singly(app: &TestApp, items: &[Value], clients: usize) {
    futures::stream::iter(items)
        .map(|item| async move {
            let key = item["idempotency_key"].as_str().unwrap_or_default();
            let mut body = item.clone();
            if let Some(map) = body.as_object_mut() {
                map.remove("idempotency_key");
            }
            let reply = app.post_transfer(key, &body).await;
            assert!(
                reply.status == StatusCode::ACCEPTED || reply.status == StatusCode::OK,
                "{}: {}",
                reply.status,
                reply.body
            );
        })
        .buffer_unordered(clients)
        .collect::<Vec<()>>()
        .await;
}

async fn submit_batches(app: &TestApp, items: &[Value], batch_len: usize, clients: usize) {
    futures::stream::iter(items.chunks(batch_len))
        .map(|chunk| async move {
            let reply = app
                .post_json("/v1/transfers/batch", &json!({"transfers": chunk}))
                .await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
            for result in reply.body["results"].as_array().into_iter().flatten() {
                assert_ne!(result["outcome"], "rejected", "{result}");
            }
        })
        .buffer_unordered(clients)
        .collect::<Vec<()>>()
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bank_test_conserves_money_under_concurrency_and_replays() {
    let app = spawn_app().await;
    let accounts: Vec<String> = (0..8).map(|n| format!("acct{n}")).collect();
    app.create_account("treasury", "USD", true).await;
    for account in &accounts {
        app.create_account(account, "USD", false).await;
    }
    let funding: Vec<_> = accounts
        .iter()
        .map(|a| item(&format!("fund-{a}"), "treasury", a, "100.00"))
        .collect();
    submit_batches(&app, &funding, 100, 1).await;

    let mut rng = StdRng::seed_from_u64(20261121);
    let transfers: Vec<Value> = (0..3000)
        .map(|n| {
            let from = rng.random_range(0..accounts.len());
            let to = (from + rng.random_range(1..accounts.len())) % accounts.len();
            let cents = rng.random_range(1..=3000u32);
            let amount = format!("{}.{:02}", cents / 100, cents % 100);
            item(&format!("t{n}"), &accounts[from], &accounts[to], &amount)
        })
        .collect();
    // Every tenth transfer is also sent again at the same time, through the other endpoint.
    let replays: Vec<Value> = transfers.iter().step_by(10).cloned().collect();
    let (singles, batched) = transfers.split_at(1500);

    let started = Instant::now();
    tokio::join!(
        submit_singly(&app, singles, CLIENTS),
        submit_batches(&app, batched, 100, 4),
        submit_singly(&app, &replays, 8),
    );
    app.run_until_idle(Duration::from_secs(120)).await;
    let elapsed = started.elapsed();
    println!(
        "bank test: {} transfers in {:.2}s = {:.0} transfers/s (submitted to all terminal)",
        transfers.len(),
        elapsed.as_secs_f64(),
        transfers.len() as f64 / elapsed.as_secs_f64()
    );

    assert_eq!(
        app.count("SELECT count(*) FROM transfers").await,
        (transfers.len() + funding.len()) as i64,
        "one transfer per key, replays included"
    );
    let keys: HashSet<String> = sqlx::query_scalar("SELECT idempotency_key FROM transfers")
        .fetch_all(&app.pool)
        .await
        .expect("keys")
        .into_iter()
        .collect();
    assert_eq!(keys.len(), transfers.len() + funding.len());
    assert_ledger_invariants(&app.pool).await;
    let total: String = sqlx::query_scalar("SELECT sum(balance)::text FROM accounts")
        .fetch_one(&app.pool)
        .await
        .expect("sum");
    assert_eq!(total, "0.00", "money is neither created nor destroyed");
    let failed_other = app
        .count(
            "SELECT count(*) FROM transfers WHERE status = 'failed' \
             AND failure_code <> 'insufficient_funds'",
        )
        .await;
    assert_eq!(failed_other, 0, "only business failures are expected");
    assert!(
        app.count("SELECT count(*) FROM transfers WHERE status = 'posted'")
            .await
            > 1000
    );
    // Reconciliation re-checks the same ledger from the database and finds nothing.
    let run = reconcile(&app, true).await;
    assert_eq!(findings(&run), vec![], "{run}");
    assert_eq!(run["transfers_checked"], 3008);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_account_posts_every_transfer_without_contention_failures() {
    let app = spawn_app().await;
    app.create_account("hot", "USD", true).await;
    let sinks: Vec<String> = (0..10).map(|n| format!("sink{n}")).collect();
    for sink in &sinks {
        app.create_account(sink, "USD", false).await;
    }
    let transfers: Vec<Value> = (0..2000)
        .map(|n| item(&format!("h{n}"), "hot", &sinks[n % sinks.len()], "1.25"))
        .collect();
    let started = Instant::now();
    submit_singly(&app, &transfers, 64).await;
    let accepted_after = started.elapsed();
    app.run_until_idle(Duration::from_secs(120)).await;
    let elapsed = started.elapsed();
    let jobs = app.count("SELECT count(*) FROM apalis.jobs").await;
    println!(
        "hot account: {} transfers in {:.2}s = {:.0} transfers/s (submitted to all terminal), \
         {jobs} jobs; all accepted after {accepted_after:.2?}",
        transfers.len(),
        elapsed.as_secs_f64(),
        transfers.len() as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(
        app.count("SELECT count(*) FROM transfers WHERE status = 'posted'")
            .await,
        2000
    );
    assert_eq!(app.balance("hot").await, "-2500.00");
    assert_eq!(app.balance("sink0").await, "250.00");
    assert_ledger_invariants(&app.pool).await;
}
