//! The bank test and the hot-account test: many concurrent transfers, then every invariant;
//! the bank test in two ledgers at once, which must not exchange a cent.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::{Value, json};

use ferry::domain::LedgerName;

use crate::helpers::{
    TestApp, balance_in, create_account_in, create_ledger, create_ledger_key, findings, reconcile,
    reconcile_ledger, spawn_app, totals_per_ledger,
};
use crate::invariants::assert_ledger_invariants;

const CLIENTS: usize = 32;
/// The second ledger of the bank test; the first is `default`, reached with the admin key.
const TWO: &str = "two";

fn item(key: &str, from: &str, to: &str, amount: &str) -> Value {
    json!({"idempotency_key": key, "from_account": from, "to_account": to,
           "amount": amount, "currency": "USD"})
}

/// Submits `items` through the single endpoint from `clients` concurrent clients, with
/// `api_key` (whose ledger the transfers move money in).
async fn submit_singly(app: &TestApp, api_key: &str, items: &[Value], clients: usize) {
    futures::stream::iter(items)
        .map(|item| async move {
            let key = item["idempotency_key"].as_str().unwrap_or_default();
            let mut body = item.clone();
            if let Some(map) = body.as_object_mut() {
                map.remove("idempotency_key");
            }
            let reply = app.post_transfer_as(api_key, key, &body).await;
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

async fn submit_batches(
    app: &TestApp,
    api_key: &str,
    items: &[Value],
    batch_len: usize,
    clients: usize,
) {
    futures::stream::iter(items.chunks(batch_len))
        .map(|chunk| async move {
            let reply = app
                .post_json_as(api_key, "/v1/transfers/batch", &json!({"transfers": chunk}))
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

/// One ledger's share of the bank test: its funding and its random transfers among
/// `accounts`, under idempotency keys `t0`, `t1`, … (the same keys in every ledger).
struct Workload {
    funding: Vec<Value>,
    transfers: Vec<Value>,
    replays: Vec<Value>,
}

impl Workload {
    fn new(accounts: &[String], transfers: usize, seed: u64) -> Self {
        let funding = accounts
            .iter()
            .map(|a| item(&format!("fund-{a}"), "treasury", a, "100.00"))
            .collect();
        let mut rng = StdRng::seed_from_u64(seed);
        let transfers: Vec<Value> = (0..transfers)
            .map(|n| {
                let from = rng.random_range(0..accounts.len());
                let to = (from + rng.random_range(1..accounts.len())) % accounts.len();
                let cents = rng.random_range(1..=3000u32);
                let amount = format!("{}.{:02}", cents / 100, cents % 100);
                item(&format!("t{n}"), &accounts[from], &accounts[to], &amount)
            })
            .collect();
        // Every tenth transfer is also sent again at the same time, through the other endpoint.
        let replays = transfers.iter().step_by(10).cloned().collect();
        Self {
            funding,
            transfers,
            replays,
        }
    }

    /// Sends it all with `api_key`: half singly, half in batches, replays meanwhile.
    async fn submit(&self, app: &TestApp, api_key: &str) {
        let (singles, batched) = self.transfers.split_at(self.transfers.len() / 2);
        tokio::join!(
            submit_singly(app, api_key, singles, CLIENTS / 2),
            submit_batches(app, api_key, batched, 100, 2),
            submit_singly(app, api_key, &self.replays, 4),
        );
    }
}

/// Two ledgers holding the same account ids trade concurrently through keys bound to each:
/// every invariant holds in each ledger on its own, and no money crosses between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bank_test_conserves_money_in_each_of_two_ledgers_under_concurrency_and_replays() {
    let app = spawn_app().await;
    let accounts: Vec<String> = (0..8).map(|n| format!("acct{n}")).collect();
    // `default` through the API (the admin key acts on it); `two` with the same ids.
    app.create_account("treasury", "USD", true).await;
    for account in &accounts {
        app.create_account(account, "USD", false).await;
    }
    create_ledger(&app.pool, TWO).await;
    create_account_in(&app.pool, TWO, "treasury", "USD", true).await;
    for account in &accounts {
        create_account_in(&app.pool, TWO, account, "USD", false).await;
    }
    let two_key = create_ledger_key(&app.pool, TWO, "transfers:write,transfers:read").await;
    let ledgers = [
        (
            LedgerName::DEFAULT,
            app.api_key.clone(),
            Workload::new(&accounts, 1500, 20261121),
        ),
        (TWO, two_key, Workload::new(&accounts, 1500, 20261130)),
    ];
    for (_, api_key, workload) in &ledgers {
        submit_batches(&app, api_key, &workload.funding, 100, 1).await;
    }

    let started = Instant::now();
    tokio::join!(
        ledgers[0].2.submit(&app, &ledgers[0].1),
        ledgers[1].2.submit(&app, &ledgers[1].1),
    );
    app.run_until_idle(Duration::from_secs(120)).await;
    let elapsed = started.elapsed();
    let moved: usize = ledgers.iter().map(|(_, _, w)| w.transfers.len()).sum();
    println!(
        "bank test: {moved} transfers in two ledgers in {:.2}s = {:.0} transfers/s \
         (submitted to all terminal)",
        elapsed.as_secs_f64(),
        moved as f64 / elapsed.as_secs_f64()
    );

    for (ledger, _, workload) in &ledgers {
        let expected = (workload.transfers.len() + workload.funding.len()) as i64;
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM transfers WHERE ledger = $1")
            .bind(ledger)
            .fetch_one(&app.pool)
            .await
            .expect("count");
        assert_eq!(
            count, expected,
            "{ledger}: one transfer per key, replays included"
        );
        // The same idempotency keys were used in both ledgers, under different API keys.
        let keys: HashSet<String> =
            sqlx::query_scalar("SELECT idempotency_key FROM transfers WHERE ledger = $1")
                .bind(ledger)
                .fetch_all(&app.pool)
                .await
                .expect("keys")
                .into_iter()
                .collect();
        assert_eq!(keys.len() as i64, expected, "{ledger}");
        let posted: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM transfers WHERE ledger = $1 AND status = 'posted'",
        )
        .bind(ledger)
        .fetch_one(&app.pool)
        .await
        .expect("posted");
        assert!(posted > 500, "{ledger}: only {posted} posted");
        // Each ledger still holds exactly the money its treasury paid in.
        let held: String = sqlx::query_scalar(
            "SELECT sum(balance)::text FROM accounts WHERE ledger = $1 AND id <> 'treasury'",
        )
        .bind(ledger)
        .fetch_one(&app.pool)
        .await
        .expect("held");
        assert_eq!(
            held, "800.00",
            "{ledger}: money moved in or out of the ledger"
        );
        assert_eq!(balance_in(&app.pool, ledger, "treasury").await, "-800.00");
    }
    // No entry in another ledger than its transfer's, no account touched by another ledger's
    // transfers (each balance is what its own ledger's transfers imply), and every ledger sums
    // to zero per currency.
    assert_ledger_invariants(&app.pool).await;
    assert_eq!(
        totals_per_ledger(&app.pool).await,
        [
            ("default".to_owned(), "USD".to_owned(), "0.00".to_owned()),
            (TWO.to_owned(), "USD".to_owned(), "0.00".to_owned()),
        ],
        "money is neither created nor destroyed, nor moved between ledgers"
    );
    let failed_other = app
        .count(
            "SELECT count(*) FROM transfers WHERE status = 'failed' \
             AND failure_code <> 'insufficient_funds'",
        )
        .await;
    assert_eq!(failed_other, 0, "only business failures are expected");
    // Reconciliation re-checks the same ledgers from the database and finds nothing, over
    // every ledger and over each.
    let run = reconcile(&app, true).await;
    assert_eq!(findings(&run), vec![], "{run}");
    assert_eq!(run["transfers_checked"], 2 * 1508);
    for (ledger, _, _) in &ledgers {
        let run = reconcile_ledger(&app, Some(ledger), false).await;
        assert_eq!(findings(&run), vec![], "{run}");
        assert_eq!(run["transfers_checked"], 1508, "{ledger}");
        assert_eq!(run["accounts_checked"], 9, "{ledger}");
    }
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
    submit_singly(&app, &app.api_key, &transfers, 64).await;
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
