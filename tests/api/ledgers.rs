//! Ledgers as the unit of isolation: a ledger-bound key sees and moves only its ledger's money,
//! enforced where accounts are looked up (posting SQL), not only in handlers; account freeze
//! and close (README, "Ledgers and authorization").

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Reply, TestApp, create_ledger, create_ledger_key, spawn_app, transfer};
use crate::invariants::assert_ledger_invariants;

const PRODUCER_SCOPES: &str = "transfers:write,transfers:read,accounts:write,accounts:read";

/// A producer: an API key bound to one ledger, talking to the app.
struct Producer<'a> {
    app: &'a TestApp,
    key: String,
}

impl<'a> Producer<'a> {
    async fn new(app: &'a TestApp, ledger: &str) -> Self {
        create_ledger(&app.pool, ledger).await;
        let key = create_ledger_key(&app.pool, ledger, PRODUCER_SCOPES).await;
        Self { app, key }
    }

    async fn get(&self, path: &str) -> Reply {
        self.app.get_as(&self.key, path).await
    }

    async fn post(&self, path: &str, body: &Value) -> Reply {
        self.app.post_json_as(&self.key, path, body).await
    }

    async fn create_account(&self, id: &str, allow_overdraft: bool) {
        let body = json!({"id": id, "currency": "USD", "allow_overdraft": allow_overdraft});
        let reply = self.post("/v1/accounts", &body).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    }

    async fn post_transfer(&self, key: &str, body: &Value) -> Reply {
        self.app.post_transfer_as(&self.key, key, body).await
    }

    async fn transfer_and_wait(&self, key: &str, body: &Value) -> Value {
        let reply = self.post_transfer(key, body).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
        let id = reply.body["id"].as_str().expect("id");
        self.app.wait_until_terminal_as(&self.key, id).await
    }

    async fn balance(&self, account: &str) -> String {
        let reply = self.get(&format!("/v1/accounts/{account}")).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        reply.body["balance"].as_str().expect("balance").to_owned()
    }
}

/// Σ balance per ledger, and per (ledger, account).
async fn balances(app: &TestApp) -> BTreeMap<(String, String), String> {
    let rows: Vec<(String, String, String)> =
        sqlx::query_as("SELECT ledger, id, balance::text FROM accounts ORDER BY ledger, id")
            .fetch_all(&app.pool)
            .await
            .expect("balances");
    rows.into_iter().map(|(l, id, b)| ((l, id), b)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_producers_under_concurrency_never_move_each_others_money() {
    let app = spawn_app().await;
    let (a, b) = (
        Producer::new(&app, "shop-a").await,
        Producer::new(&app, "shop-b").await,
    );
    // The same ids in both ledgers, plus one account only `a` has.
    for producer in [&a, &b] {
        producer.create_account("treasury", true).await;
        for user in ["u1", "u2", "u3"] {
            producer.create_account(user, false).await;
        }
    }
    a.create_account("a-only", false).await;
    // Funds first, so later transfers between users can post.
    for (producer, name) in [(&a, "a"), (&b, "b")] {
        for user in ["u1", "u2", "u3"] {
            let body = transfer("treasury", user, "100.00");
            let done = producer
                .transfer_and_wait(&format!("{name}-fund-{user}"), &body)
                .await;
            assert_eq!(done["status"], "posted", "{done}");
        }
    }
    // 1,200 transfers from each producer at once; a fifth of b's name `a-only`.
    let users = ["u1", "u2", "u3"];
    let mut jobs = Vec::new();
    for n in 0..1200usize {
        let (from, to) = (users[n % 3], users[(n + 1) % 3]);
        jobs.push((&a, format!("a-{n}"), transfer(from, to, "0.01")));
        let stray = n % 5 == 0;
        let body = if stray {
            if n % 10 == 0 {
                transfer("a-only", to, "0.01")
            } else {
                transfer(from, "a-only", "0.01")
            }
        } else {
            transfer(from, to, "0.02")
        };
        jobs.push((&b, format!("b-{n}"), body));
    }
    let ids: Vec<(String, String, bool)> = futures::stream::iter(jobs)
        .map(|(producer, key, body)| async move {
            let reply = producer.post_transfer(&key, &body).await;
            assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
            let stray = body.to_string().contains("a-only");
            let id = reply.body["id"].as_str().expect("id").to_owned();
            (key, id, stray)
        })
        .buffer_unordered(32)
        .collect()
        .await;
    app.run_until_idle(Duration::from_secs(120)).await;

    let statuses: Vec<(String, String, Option<String>, String)> = sqlx::query_as(
        "SELECT idempotency_key, status, failure_code, ledger FROM transfers \
         WHERE idempotency_key LIKE 'a-%' OR idempotency_key LIKE 'b-%'",
    )
    .fetch_all(&app.pool)
    .await
    .expect("statuses");
    let by_key: BTreeMap<&str, (&str, Option<&str>, &str)> = statuses
        .iter()
        .map(|(k, s, c, l)| (k.as_str(), (s.as_str(), c.as_deref(), l.as_str())))
        .collect();
    let mut strays = 0;
    for (key, _, stray) in &ids {
        let (status, code, ledger) = by_key[key.as_str()];
        let own = if key.starts_with("a-") {
            "shop-a"
        } else {
            "shop-b"
        };
        assert_eq!(ledger, own, "{key} was stored in another ledger");
        if *stray {
            strays += 1;
            assert_eq!(
                (status, code),
                ("failed", Some("account_not_found")),
                "{key} named another ledger's account"
            );
        } else {
            assert_eq!(status, "posted", "{key}: {code:?}");
        }
    }
    assert_eq!(strays, 240);
    // a-only was never touched, and each ledger conserves its own money.
    assert_eq!(a.balance("a-only").await, "0.00");
    let no_entries: i64 =
        sqlx::query_scalar("SELECT count(*) FROM ledger_entries WHERE account_id = 'a-only'")
            .fetch_one(&app.pool)
            .await
            .expect("count");
    assert_eq!(no_entries, 0);
    let sums: Vec<(String, String)> = sqlx::query_as(
        "SELECT ledger, sum(balance)::text FROM accounts GROUP BY ledger ORDER BY ledger",
    )
    .fetch_all(&app.pool)
    .await
    .expect("sums");
    assert_eq!(
        sums,
        [
            ("shop-a".to_owned(), "0.00".to_owned()),
            ("shop-b".to_owned(), "0.00".to_owned()),
        ]
    );
    // Every entry lies in its transfer's ledger (also enforced by a trigger).
    let crossed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM ledger_entries e JOIN transfers t ON t.id = e.transfer_id \
         WHERE e.ledger IS DISTINCT FROM t.ledger",
    )
    .fetch_one(&app.pool)
    .await
    .expect("count");
    assert_eq!(crossed, 0);
    // Each user's balance is what its own ledger's transfers make it: in a ring of equal
    // amounts, everyone pays as much as they receive.
    for user in users {
        assert_eq!(a.balance(user).await, "100.00");
        assert_eq!(b.balance(user).await, "100.00");
    }
    assert_ledger_invariants(&app.pool).await;
    let all = balances(&app).await;
    assert_eq!(all[&("shop-a".into(), "treasury".into())], "-300.00");
    assert_eq!(all[&("shop-b".into(), "treasury".into())], "-300.00");
}

#[tokio::test]
async fn a_ledger_bound_key_cannot_see_or_create_in_another_ledger() {
    let app = spawn_app().await;
    let (a, b) = (
        Producer::new(&app, "shop-a").await,
        Producer::new(&app, "shop-b").await,
    );
    a.create_account("secret", true).await;
    a.create_account("payee", false).await;
    let funded = a
        .transfer_and_wait("fund", &transfer("secret", "payee", "5.00"))
        .await;
    assert_eq!(funded["status"], "posted");
    // Reads of another ledger's account are 404, whether addressed implicitly or by name.
    for path in [
        "/v1/accounts/secret",
        "/v1/accounts/secret/entries",
        "/v1/accounts/secret?ledger=shop-a",
        "/v1/accounts/secret/entries?ledger=shop-a",
        "/v1/accounts/secret?ledger=no-such-ledger",
        "/v1/accounts/secret?ledger=NOT%20VALID",
    ] {
        let reply = b.get(path).await;
        assert_eq!(
            reply.status,
            StatusCode::NOT_FOUND,
            "{path}: {}",
            reply.body
        );
        assert_eq!(reply.body["code"], "account_not_found", "{path}");
    }
    // The owner sees it, under its implicit ledger and under its own name.
    let own = a.get("/v1/accounts/secret?ledger=shop-a").await;
    assert_eq!(own.status, StatusCode::OK, "{}", own.body);
    assert_eq!(own.body["ledger"], "shop-a");
    assert_eq!(own.body["status"], "active");
    // A transfer read by another key is not found either.
    let transfer_id = funded["id"].as_str().expect("id");
    let reply = b.get(&format!("/v1/transfers/{transfer_id}")).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    // Creating in another ledger is refused and stores nothing; bad names are 400.
    let accounts_before = app.count("SELECT count(*) FROM accounts").await;
    let cases = [
        (
            json!({"id": "x", "currency": "USD", "ledger": "shop-a"}),
            StatusCode::FORBIDDEN,
            "ledger_forbidden",
        ),
        (
            json!({"id": "x", "currency": "USD", "ledger": "Shop A"}),
            StatusCode::BAD_REQUEST,
            "invalid_ledger",
        ),
        (
            json!({"id": "x", "currency": "USD", "ledger": ""}),
            StatusCode::BAD_REQUEST,
            "invalid_ledger",
        ),
    ];
    for (body, status, code) in cases {
        let reply = b.post("/v1/accounts", &body).await;
        assert_eq!(
            (reply.status, reply.body["code"].as_str()),
            (status, Some(code)),
            "{body}"
        );
    }
    let transfer_cases = [
        (
            json!({"from_account": "a", "to_account": "b", "amount": "1.00", "currency": "USD", "ledger": "shop-a"}),
            StatusCode::FORBIDDEN,
            "ledger_forbidden",
        ),
        (
            json!({"from_account": "a", "to_account": "b", "amount": "1.00", "currency": "USD", "ledger": "x/y"}),
            StatusCode::BAD_REQUEST,
            "invalid_ledger",
        ),
    ];
    for (body, status, code) in transfer_cases {
        let reply = b.post_transfer("refused", &body).await;
        assert_eq!(
            (reply.status, reply.body["code"].as_str()),
            (status, Some(code)),
            "{body}"
        );
    }
    assert_eq!(
        app.count("SELECT count(*) FROM accounts").await,
        accounts_before
    );
    assert_eq!(
        app.count("SELECT count(*) FROM transfers WHERE idempotency_key = 'refused'")
            .await,
        0
    );
    assert_eq!(a.balance("secret").await, "-5.00");
}

#[tokio::test]
async fn an_admin_key_names_the_ledger_and_defaults_to_default() {
    let app = spawn_app().await;
    let admin = Producer {
        app: &app,
        key: crate::helpers::create_api_key(&app.pool, "admin").await,
    };
    create_ledger(&app.pool, "shop").await;
    let in_shop =
        json!({"id": "cash", "currency": "USD", "ledger": "shop", "allow_overdraft": true});
    assert_eq!(
        admin.post("/v1/accounts", &in_shop).await.status,
        StatusCode::CREATED
    );
    let in_default = json!({"id": "cash", "currency": "USD"});
    let reply = admin.post("/v1/accounts", &in_default).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    assert_eq!(reply.body["ledger"], "default");
    let unknown = json!({"id": "cash", "currency": "USD", "ledger": "nowhere"});
    let reply = admin.post("/v1/accounts", &unknown).await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.body
    );
    assert_eq!(reply.body["code"], "ledger_not_found");
    let payee = json!({"id": "payee", "currency": "USD", "ledger": "shop"});
    assert_eq!(
        admin.post("/v1/accounts", &payee).await.status,
        StatusCode::CREATED
    );
    let mut body = transfer("cash", "payee", "2.50");
    body["ledger"] = json!("shop");
    let done = admin.transfer_and_wait("admin-shop", &body).await;
    assert_eq!(
        (done["status"].as_str(), done["ledger"].as_str()),
        (Some("posted"), Some("shop"))
    );
    assert_eq!(
        admin.get("/v1/accounts/payee?ledger=shop").await.body["balance"],
        "2.50"
    );
    // The same account id in `default` does not exist: no money moved there.
    let stray = admin
        .transfer_and_wait("admin-default", &transfer("cash", "payee", "1.00"))
        .await;
    assert_eq!(stray["failure_code"], "account_not_found");
    assert_eq!(admin.get("/v1/accounts/cash").await.body["balance"], "0.00");
    // Same idempotency key, another ledger: a different request.
    let mut elsewhere = transfer("cash", "payee", "2.50");
    elsewhere["ledger"] = json!("default");
    let reused = admin.post_transfer("admin-shop", &elsewhere).await;
    assert_eq!(
        reused.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reused.body
    );
}

#[tokio::test]
async fn frozen_and_closed_accounts_fail_transfers_and_close_needs_zero_balance() {
    let app = spawn_app().await;
    let shop = Producer::new(&app, "shop").await;
    shop.create_account("treasury", true).await;
    shop.create_account("alice", false).await;
    shop.create_account("bob", false).await;
    let funded = shop
        .transfer_and_wait("fund", &transfer("treasury", "alice", "10.00"))
        .await;
    assert_eq!(funded["status"], "posted");

    let frozen = shop.post("/v1/accounts/alice/freeze", &json!({})).await;
    assert_eq!(
        (frozen.status, frozen.body["status"].as_str()),
        (StatusCode::OK, Some("frozen"))
    );
    // Freezing twice changes nothing and answers the same.
    assert_eq!(
        shop.post("/v1/accounts/alice/freeze", &json!({}))
            .await
            .status,
        StatusCode::OK
    );
    for (key, body) in [
        ("out", transfer("alice", "bob", "1.00")),
        ("in", transfer("treasury", "alice", "1.00")),
    ] {
        let done = shop.transfer_and_wait(key, &body).await;
        assert_eq!(
            (done["status"].as_str(), done["failure_code"].as_str()),
            (Some("failed"), Some("account_frozen")),
            "{key}"
        );
    }
    let thawed = shop.post("/v1/accounts/alice/unfreeze", &json!({})).await;
    assert_eq!(thawed.body["status"], "active");
    let done = shop
        .transfer_and_wait("after", &transfer("alice", "bob", "1.00"))
        .await;
    assert_eq!(done["status"], "posted", "{done}");

    // Closing needs a zero balance.
    let refused = shop.post("/v1/accounts/alice/close", &json!({})).await;
    assert_eq!(
        (refused.status, refused.body["code"].as_str()),
        (StatusCode::CONFLICT, Some("account_not_empty"))
    );
    assert_eq!(
        shop.get("/v1/accounts/alice").await.body["status"],
        "active"
    );
    let emptied = shop
        .transfer_and_wait("empty", &transfer("alice", "treasury", "9.00"))
        .await;
    assert_eq!(emptied["status"], "posted");
    let closed = shop.post("/v1/accounts/alice/close", &json!({})).await;
    assert_eq!(
        (closed.status, closed.body["status"].as_str()),
        (StatusCode::OK, Some("closed")),
        "{}",
        closed.body
    );
    assert_eq!(
        shop.post("/v1/accounts/alice/close", &json!({}))
            .await
            .status,
        StatusCode::OK
    );
    let done = shop
        .transfer_and_wait("to-closed", &transfer("treasury", "alice", "1.00"))
        .await;
    assert_eq!(done["failure_code"], "account_closed", "{done}");
    // A closed account stays closed.
    for action in ["freeze", "unfreeze"] {
        let reply = shop
            .post(&format!("/v1/accounts/alice/{action}"), &json!({}))
            .await;
        assert_eq!(
            (reply.status, reply.body["code"].as_str()),
            (StatusCode::CONFLICT, Some("account_closed")),
            "{action}"
        );
    }
    assert_eq!(
        shop.get("/v1/accounts/alice").await.body["status"],
        "closed"
    );
    // Unknown accounts, and other ledgers' accounts, are not found.
    let other = Producer::new(&app, "other").await;
    for (producer, path) in [
        (&shop, "/v1/accounts/nobody/freeze"),
        (&other, "/v1/accounts/bob/freeze"),
    ] {
        let reply = producer.post(path, &json!({})).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
    }
    assert_eq!(shop.get("/v1/accounts/bob").await.body["status"], "active");
    assert_eq!(shop.balance("bob").await, "1.00");
    assert_ledger_invariants(&app.pool).await;
    // Each act that changed something is in the audit trail, with its key and request; the
    // repeated freeze and close and the refused acts are not.
    let trail: Vec<(String, bool, bool)> = sqlx::query_as(
        "SELECT action, actor_key_id IS NOT NULL, request_id IS NOT NULL FROM audit_events \
         WHERE ledger = 'shop' AND target = 'account:alice' ORDER BY id",
    )
    .fetch_all(&app.pool)
    .await
    .expect("audit trail");
    let expected = [
        "account.created",
        "account.frozen",
        "account.unfrozen",
        "account.closed",
    ];
    assert_eq!(
        trail,
        expected.map(|action| (action.to_owned(), true, true))
    );
}
