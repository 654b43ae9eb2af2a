//! The `review` action (README, "Anomaly detection"): a rule set to `review` holds its transfer
//! in `in_review` — nothing posted, nothing moved — until a reviewer approves it (posted as
//! usual) or rejects it (`failed`, `rejected_in_review`); both idempotent, both refused once
//! the other was decided, both scoped and ledger-bound; reconciliation does not call a held
//! transfer stuck, but reports one held longer than its threshold.

use std::time::Duration;

use reqwest::StatusCode;
use rust_decimal::Decimal;
use serde_json::{Value, json};

use crate::anomalies::{app_with_strict_velocity, flags, jobs_done, redis_skips, send};
use crate::helpers::{
    TestApp, balance_in, create_account_in, create_api_key, create_ledger, create_ledger_key,
    findings, reconcile, spawn_app_with, transfer,
};
use crate::reconciliation::finding_in;
use ferry::anomaly::settings::{LargeAmountRule, StreakRule, WindowRule};
use ferry::domain::RuleAction;

/// Large amounts (above 100.00) are held for review in every ledger.
fn review_large_amounts(config: &mut ferry::config::Config) {
    config.anomaly.large_amount = LargeAmountRule {
        threshold: "100".parse().expect("decimal"),
        action: RuleAction::Review,
        ..LargeAmountRule::default()
    };
}

/// An app that holds large amounts, with `card` funded with 300.00 (three transfers at the
/// threshold, in one batch) and `shop` empty.
async fn app_holding_large_amounts() -> TestApp {
    let app = spawn_app_with(review_large_amounts).await;
    app.create_account("treasury", "USD", true).await;
    app.create_account("card", "USD", false).await;
    app.create_account("shop", "USD", false).await;
    let item = |key: &str| {
        json!({"idempotency_key": key, "from_account": "treasury", "to_account": "card",
               "amount": "100.00", "currency": "USD"})
    };
    let batch = app
        .post_json(
            "/v1/transfers/batch",
            &json!({"transfers": [item("f1"), item("f2"), item("f3")]}),
        )
        .await;
    assert_eq!(batch.status, StatusCode::OK, "{}", batch.body);
    jobs_done(&app).await;
    assert_eq!(balance(&app, "card").await, dec("300"));
    app
}

fn dec(text: &str) -> Decimal {
    text.parse().expect("decimal")
}

async fn balance(app: &TestApp, account: &str) -> Decimal {
    dec(&balance_in(&app.pool, "default", account).await)
}

/// Posts a transfer and waits until the posting job is done with it; returns it.
async fn held(app: &TestApp, key: &str, amount: &str) -> Value {
    let done = send(app, key, "card", "shop", amount).await;
    assert_eq!(done["status"], "in_review", "{done}");
    done
}

async fn decide(app: &TestApp, api_key: &str, id: &str, decision: &str) -> (StatusCode, Value) {
    let reply = app
        .post_json_as(
            api_key,
            &format!("/v1/transfers/{id}/{decision}"),
            &json!({}),
        )
        .await;
    (reply.status, reply.body)
}

async fn balances(app: &TestApp) -> (Decimal, Decimal) {
    (balance(app, "card").await, balance(app, "shop").await)
}

async fn audit_actions(app: &TestApp) -> Vec<String> {
    let reply = app.get("/v1/audit-events?limit=500").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    reply.body["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .filter(|a| a.starts_with("transfer."))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn a_held_transfer_moves_nothing_until_approved_then_posts_once() {
    let app = app_holding_large_amounts().await;
    let reviewer = create_api_key(&app.pool, "transfers:review").await;
    let before = balances(&app).await;
    let small = send(&app, "small", "card", "shop", "100.00").await;
    assert_eq!(small["status"], "posted", "at the threshold: not held");
    let after_small = balances(&app).await;
    assert_ne!(after_small, before);

    let transfer = held(&app, "large", "150.00").await;
    let id = transfer["id"].as_str().expect("id");
    assert_eq!(flags(&transfer), ["large_amount"]);
    assert!(transfer.get("review").is_none(), "{transfer}");
    assert_eq!(balances(&app).await, after_small, "held: nothing moved");
    let listed = app.get("/v1/anomalies?rule=large_amount").await;
    let hits = listed.body["anomalies"].as_array().expect("anomalies");
    assert_eq!(hits.len(), 1, "{}", listed.body);
    assert_eq!(hits[0]["action"], "review");
    assert_eq!(hits[0]["transfer_id"], id);

    let (status, approved) = decide(&app, &reviewer, id, "approve").await;
    assert_eq!(status, StatusCode::OK, "{approved}");
    assert_eq!(approved["review"]["decision"], "approved");
    let posted = app.wait_until_terminal(id).await;
    assert_eq!(posted["status"], "posted", "{posted}");
    // The event posting wrote shows the transfer as the API does, its flag included (posting
    // reads the flags in the statement that sets the status).
    let feed = app.get("/v1/events?types=transfer.posted&limit=500").await;
    let event = feed.body["events"]
        .as_array()
        .expect("events")
        .iter()
        .find(|e| e["data"]["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("no transfer.posted for {id}: {}", feed.body));
    assert_eq!(event["data"]["flags"], json!(["large_amount"]), "{event}");
    jobs_done(&app).await;
    let moved = dec("150");
    assert_eq!(
        balances(&app).await,
        (after_small.0 - moved, after_small.1 + moved)
    );

    // Approving again changes nothing; rejecting an approved transfer is refused.
    let (status, again) = decide(&app, &reviewer, id, "approve").await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["status"], "posted");
    assert_eq!(again["review"], approved["review"]);
    let (status, refused) = decide(&app, &reviewer, id, "reject").await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    assert_eq!(refused["code"], "transfer_not_in_review");
    // Judged again after posting, the hit is not stored twice; one job, one decision recorded.
    let hits = app
        .count("SELECT count(*) FROM anomaly_hits WHERE rule = 'large_amount'")
        .await;
    assert_eq!(hits, 1);
    assert_eq!(audit_actions(&app).await, ["transfer.approved"]);
    let entries = app
        .count("SELECT count(*) FROM entries e JOIN transfers t ON t.id = e.transfer_id WHERE t.review = 'approved'")
        .await;
    assert_eq!(entries, 2, "posted once: one debit, one credit");
}

#[tokio::test]
async fn a_rejected_transfer_fails_and_can_be_neither_approved_nor_posted() {
    let app = app_holding_large_amounts().await;
    let reviewer = create_api_key(&app.pool, "transfers:review").await;
    let before = balances(&app).await;
    let transfer = held(&app, "large", "500.00").await;
    let id = transfer["id"].as_str().expect("id");
    let (status, rejected) = decide(&app, &reviewer, id, "reject").await;
    assert_eq!(status, StatusCode::OK, "{rejected}");
    assert_eq!(rejected["status"], "failed");
    assert_eq!(rejected["failure_code"], "rejected_in_review");
    assert_eq!(rejected["review"]["decision"], "rejected");
    let (status, again) = decide(&app, &reviewer, id, "reject").await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["review"], rejected["review"]);
    let (status, refused) = decide(&app, &reviewer, id, "approve").await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    assert_eq!(refused["code"], "transfer_not_in_review");
    // The producer sees the outcome; a posting job for it (a stale redelivery) moves nothing.
    let seen = app.get(&format!("/v1/transfers/{id}")).await.body;
    assert_eq!(seen["failure_code"], "rejected_in_review");
    let mut conn = app.pool.acquire().await.expect("conn");
    let job = ferry::queue::payloads::PostTransfers {
        transfer_ids: vec![id.parse().expect("uuid")],
    };
    ferry::queue::enqueue(&mut conn, ferry::queue::POST_TRANSFERS_QUEUE, &job, None)
        .await
        .expect("enqueue");
    jobs_done(&app).await;
    assert_eq!(balances(&app).await, before);
    assert_eq!(audit_actions(&app).await, ["transfer.rejected"]);
}

#[tokio::test]
async fn two_reviewers_approving_at_once_post_the_transfer_once() {
    let app = app_holding_large_amounts().await;
    let reviewer = create_api_key(&app.pool, "transfers:review").await;
    let transfer = held(&app, "large", "200.00").await;
    let id = transfer["id"].as_str().expect("id").to_owned();
    let (first, second) = tokio::join!(
        decide(&app, &reviewer, &id, "approve"),
        decide(&app, &app.api_key, &id, "approve"),
    );
    assert_eq!((first.0, second.0), (StatusCode::OK, StatusCode::OK));
    assert_eq!(app.wait_until_terminal(&id).await["status"], "posted");
    jobs_done(&app).await;
    assert_eq!(audit_actions(&app).await, ["transfer.approved"]);
    assert_eq!(balance(&app, "shop").await, dec("200"));
}

#[tokio::test]
async fn review_needs_its_scope_and_the_transfers_ledger() {
    let app = spawn_app_with(review_large_amounts).await;
    create_ledger(&app.pool, "other").await;
    create_ledger(&app.pool, "shop").await;
    create_account_in(&app.pool, "shop", "treasury", "USD", true).await;
    create_account_in(&app.pool, "shop", "b", "USD", false).await;
    let writer = create_ledger_key(&app.pool, "shop", "transfers:write,transfers:read").await;
    let own_reviewer = create_ledger_key(&app.pool, "shop", "transfers:review").await;
    let foreign_reviewer = create_ledger_key(&app.pool, "other", "transfers:review").await;
    let reply = app
        .post_transfer_as(&writer, "large", &transfer("treasury", "b", "900.00"))
        .await;
    let id = reply.body["id"].as_str().expect("id").to_owned();
    let done = app.wait_until_terminal_as(&writer, &id).await;
    assert_eq!(done["status"], "in_review", "{done}");

    let (status, body) = decide(&app, &writer, &id, "approve").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["code"], "forbidden");
    let (status, body) = decide(&app, &foreign_reviewer, &id, "approve").await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "another ledger's transfer: {body}"
    );
    // Each reviewer's queue is its own ledger's.
    let own_queue = app.get_as(&own_reviewer, "/v1/reviews").await;
    assert_eq!(own_queue.body["transfers"][0]["id"], json!(id));
    let foreign_queue = app.get_as(&foreign_reviewer, "/v1/reviews").await;
    assert_eq!(foreign_queue.body["transfers"], json!([]));
    let foreign = app.get_as(&own_reviewer, "/v1/reviews?ledger=other").await;
    assert_eq!(foreign.status, StatusCode::FORBIDDEN, "{}", foreign.body);
    for missing in ["not-a-uuid", "0190e4a5-0000-7000-8000-000000000000"] {
        let (status, body) = decide(&app, &own_reviewer, missing, "reject").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert_eq!(body["code"], "transfer_not_found");
    }
    let (status, body) = decide(&app, &own_reviewer, &id, "approve").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        app.wait_until_terminal_as(&writer, &id).await["status"],
        "posted"
    );
    // A transfer never held cannot be decided on.
    let small = app
        .post_transfer_as(&writer, "small", &transfer("treasury", "b", "5.00"))
        .await;
    let small_id = small.body["id"].as_str().expect("id").to_owned();
    app.wait_until_terminal_as(&writer, &small_id).await;
    let (status, body) = decide(&app, &own_reviewer, &small_id, "approve").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["code"], "transfer_not_in_review");
}

#[tokio::test]
async fn velocity_set_to_review_in_one_ledger_holds_the_fifth_of_a_burst_there_only() {
    let (app, strict_key) = app_with_strict_velocity(WindowRule {
        count: 5,
        window_secs: 60,
        action: RuleAction::Review,
    })
    .await;
    let mut statuses = Vec::new();
    for n in 0..6 {
        let body = transfer("treasury", "b", &format!("{}.00", n + 1));
        let key = format!("t{n}");
        let default = app.post_transfer(&key, &body).await;
        let strict = app.post_transfer_as(&strict_key, &key, &body).await;
        let default = app
            .wait_until_terminal(default.body["id"].as_str().expect("id"))
            .await;
        assert_eq!(default["status"], "posted", "flag-only ledger: {default}");
        let strict = app
            .wait_until_terminal_as(&strict_key, strict.body["id"].as_str().expect("id"))
            .await;
        statuses.push(strict["status"].as_str().expect("status").to_owned());
    }
    assert_eq!(
        statuses,
        [
            "posted",
            "posted",
            "posted",
            "posted",
            "in_review",
            "in_review"
        ]
    );
    jobs_done(&app).await;
    let actions: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT a.ledger, h.rule, h.action FROM anomaly_hits h \
             JOIN anomalies a ON a.id = h.anomaly_id ORDER BY a.ledger, h.id",
    )
    .fetch_all(&app.pool)
    .await
    .expect("anomalies");
    let hit =
        |ledger: &str, action: &str| (ledger.to_owned(), "velocity".to_owned(), action.to_owned());
    assert_eq!(
        actions,
        [
            hit("default", "flag"),
            hit("default", "flag"),
            hit("strict", "review"),
            hit("strict", "review"),
        ]
    );
}

#[tokio::test]
async fn a_failed_streak_set_to_review_holds_the_accounts_next_transfer() {
    let app = spawn_app_with(|config| {
        config.anomaly.failed_streak = StreakRule {
            count: 3,
            action: RuleAction::Review,
        };
    })
    .await;
    app.create_account("treasury", "USD", true).await;
    app.create_account("card", "USD", false).await;
    app.create_account("shop", "USD", false).await;
    // An empty card: each transfer out of it fails.
    let mut seen = Vec::new();
    for n in 0..4 {
        let done = send(&app, &format!("try-{n}"), "card", "shop", "1.00").await;
        seen.push(done["status"].as_str().expect("status").to_owned());
    }
    assert_eq!(seen, ["failed", "failed", "failed", "in_review"]);
    let detail: Value =
        sqlx::query_scalar("SELECT detail FROM anomaly_hits WHERE rule = 'failed_streak'")
            .fetch_one(&app.pool)
            .await
            .expect("one failed-streak hit");
    assert_eq!(detail["consecutive_failures"], 3);
    // Another account's transfers are not held.
    let other = send(&app, "other", "treasury", "shop", "1.00").await;
    assert_eq!(other["status"], "posted");
}

#[tokio::test]
async fn reconciliation_does_not_call_a_held_transfer_stuck_but_reports_a_stale_review() {
    let app = spawn_app_with(|config| {
        review_large_amounts(config);
        config.reconcile.stale_review_after = Duration::from_secs(3_600);
    })
    .await;
    app.create_account("treasury", "USD", true).await;
    app.create_account("shop", "USD", false).await;
    let fresh = send(&app, "fresh", "treasury", "shop", "700.00").await;
    let old = send(&app, "old", "treasury", "shop", "800.00").await;
    assert_eq!(
        (&fresh["status"], &old["status"]),
        (&json!("in_review"), &json!("in_review"))
    );
    // Both accepted long past the stuck threshold; one held for two hours.
    sqlx::query("UPDATE transfers SET created_at = now() - interval '50 minutes'")
        .execute(&app.pool)
        .await
        .expect("aged");
    sqlx::query("UPDATE transfers SET updated_at = now() - interval '2 hours' WHERE id = $1")
        .bind(
            old["id"]
                .as_str()
                .expect("id")
                .parse::<uuid::Uuid>()
                .expect("uuid"),
        )
        .execute(&app.pool)
        .await
        .expect("held long ago");
    let run = reconcile(&app, false).await;
    let subject = format!("transfer:{}", old["id"].as_str().expect("id"));
    assert_eq!(
        findings(&run),
        [finding_in("default", "stale_review", &subject, "medium")]
    );
    // Decided, it is no longer a finding.
    let (status, _) = decide(
        &app,
        &app.api_key,
        old["id"].as_str().expect("id"),
        "reject",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let run = reconcile(&app, false).await;
    assert_eq!(findings(&run), []);
}

#[tokio::test]
async fn the_review_queue_lists_held_transfers_longest_held_first_page_by_page() {
    let app = app_holding_large_amounts().await;
    let reviewer = create_api_key(&app.pool, "transfers:review").await;
    let mut held_ids = Vec::new();
    for (n, amount) in ["150.00", "160.00", "170.00"].iter().enumerate() {
        let transfer = held(&app, &format!("large-{n}"), amount).await;
        held_ids.push(transfer["id"].as_str().expect("id").to_owned());
    }
    let ids = |page: &Value| -> Vec<String> {
        page["transfers"]
            .as_array()
            .expect("transfers")
            .iter()
            .map(|t| t["id"].as_str().expect("id").to_owned())
            .collect()
    };
    let first = app.get_as(&reviewer, "/v1/reviews?limit=2").await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    assert_eq!(ids(&first.body), held_ids[..2]);
    assert_eq!(first.body["transfers"][0]["flags"], json!(["large_amount"]));
    let cursor = first.body["next_cursor"]
        .as_str()
        .expect("a full page has a cursor");
    let second = app
        .get_as(&reviewer, &format!("/v1/reviews?limit=2&cursor={cursor}"))
        .await;
    assert_eq!(ids(&second.body), held_ids[2..]);
    assert!(second.body.get("next_cursor").is_none(), "{}", second.body);

    let (status, _) = decide(&app, &reviewer, &held_ids[1], "reject").await;
    assert_eq!(status, StatusCode::OK);
    let after = app.get_as(&reviewer, "/v1/reviews").await;
    assert_eq!(ids(&after.body), [held_ids[0].clone(), held_ids[2].clone()]);

    let reader = create_api_key(&app.pool, "transfers:read").await;
    let refused = app.get_as(&reader, "/v1/reviews").await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
    for bad in [
        "?limit=0",
        "?limit=1001",
        "?cursor=nope",
        "?ledger=Bad!",
        "?color=red",
    ] {
        let reply = app.get_as(&reviewer, &format!("/v1/reviews{bad}")).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{bad}: {}",
            reply.body
        );
    }
}

#[tokio::test]
async fn with_redis_gone_nothing_is_held_but_large_amounts() {
    let mut redis = crate::faults::deps::Redis::start_new();
    let url = redis.url();
    let app = spawn_app_with(move |config| {
        config.redis.url = url;
        review_large_amounts(config);
        config.anomaly.velocity.action = RuleAction::Review;
    })
    .await;
    app.create_account("treasury", "USD", true).await;
    app.create_account("shop", "USD", false).await;
    redis.kill();
    let skipped_before = redis_skips(&app).await;
    let started = std::time::Instant::now();
    // A burst that velocity would hold: its windows are not checked, so all of it posts.
    for n in 0..6 {
        let done = send(&app, &format!("burst-{n}"), "treasury", "shop", "1.00").await;
        assert_eq!(done["status"], "posted", "{done}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "posting was held back: {:?}",
        started.elapsed()
    );
    // A large amount needs no window: still held.
    let large = send(&app, "large", "treasury", "shop", "500.00").await;
    assert_eq!(large["status"], "in_review", "{large}");
    let skipped = redis_skips(&app).await - skipped_before;
    assert!(skipped >= 7.0, "one skip per job at least: {skipped}");
}
