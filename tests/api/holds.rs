//! Holds, captures, voids, expiry and reversals (README, "Holds, reversals and balance
//! history"): a hold lowers `available`, not `balance`; a capture moves what it captures and
//! releases the rest; a void or expiry releases everything; capture, void and expiry racing
//! for one hold have exactly one winner; reversals never take back more than the original
//! moved; and every invariant still holds.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Reply, TestApp, spawn_app_with, spawn_worker, transfer};
use crate::invariants::assert_ledger_invariants;

/// ferry without anomaly rules (they would only add flags here), with `treasury` (overdraft),
/// `alice` funded with 100.00 and `bob` empty.
pub async fn funded_app() -> TestApp {
    let app = spawn_app_with(|c| c.anomaly.enabled = false).await;
    app.create_account("treasury", "USD", true).await;
    app.create_account("alice", "USD", false).await;
    app.create_account("bob", "USD", false).await;
    let funded = app
        .post_transfer("fund", &transfer("treasury", "alice", "100.00"))
        .await;
    assert_eq!(funded.status, StatusCode::ACCEPTED, "{}", funded.body);
    app.run_until_idle(Duration::from_secs(20)).await;
    app
}

pub fn hold(from: &str, to: &str, amount: &str) -> Value {
    json!({"from_account": from, "to_account": to, "amount": amount, "currency": "USD",
           "mode": "hold"})
}

/// `POST /v1/transfers/{id}/{action}` with an Idempotency-Key and an optional body.
pub async fn act(app: &TestApp, id: &str, action: &str, key: &str, body: Option<Value>) -> Reply {
    let mut request = app
        .client
        .post(app.url(&format!("/v1/transfers/{id}/{action}")))
        .bearer_auth(&app.api_key)
        .header("Idempotency-Key", key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    app.send(request).await
}

/// Waits until transfer `id` has `status`, and returns it.
pub async fn wait_for(app: &TestApp, id: &str, status: &str) -> Value {
    let started = Instant::now();
    loop {
        let reply = app.get(&format!("/v1/transfers/{id}")).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        if reply.body["status"] == status {
            return reply.body;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{id} still {} (waiting for {status})",
            reply.body
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Places a hold and waits until it is held (or failed); returns it.
pub async fn place(app: &TestApp, key: &str, body: &Value) -> Value {
    let reply = app.post_transfer(key, body).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    let id = reply.body["id"].as_str().expect("id").to_owned();
    app.wait_until_terminal(&id).await
}

async fn account(app: &TestApp, id: &str) -> (String, String, String, String) {
    let reply = app.get(&format!("/v1/accounts/{id}")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let field = |name: &str| reply.body[name].as_str().expect(name).to_owned();
    (
        field("balance"),
        field("pending_debits"),
        field("pending_credits"),
        field("available"),
    )
}

fn owned(values: [&str; 4]) -> (String, String, String, String) {
    let [a, b, c, d] = values.map(str::to_owned);
    (a, b, c, d)
}

#[tokio::test]
async fn a_hold_lowers_available_not_balance_and_a_partial_capture_moves_only_what_it_captures() {
    let app = funded_app().await;
    let held = place(&app, "h1", &hold("alice", "bob", "30.00")).await;
    assert_eq!(held["status"], "held", "{held}");
    assert_eq!(held["mode"], "hold");
    assert_eq!(
        held["hold"]["expires_in_secs"], 604_800,
        "7 days by default"
    );
    assert!(held["hold"]["expires_at"].is_string(), "{held}");
    let id = held["id"].as_str().expect("id");
    assert_eq!(
        account(&app, "alice").await,
        owned(["100.00", "30.00", "0.00", "70.00"])
    );
    assert_eq!(
        account(&app, "bob").await,
        owned(["0.00", "0.00", "30.00", "0.00"])
    );
    assert_eq!(
        app.count("SELECT count(*) FROM entries").await,
        2,
        "a hold writes no entries (only the funding did)"
    );

    let capture = act(&app, id, "capture", "c1", Some(json!({"amount": "20.00"}))).await;
    assert_eq!(capture.status, StatusCode::ACCEPTED, "{}", capture.body);
    assert_eq!(capture.body["hold"]["settlement"], "capture");
    assert_eq!(capture.body["hold"]["capture_amount"], "20.00");
    let posted = wait_for(&app, id, "posted").await;
    assert_eq!(posted["hold"]["captured_amount"], "20.00", "{posted}");
    assert_eq!(posted["amount"], "30.00", "the amount held stays on record");
    assert_eq!(
        account(&app, "alice").await,
        owned(["80.00", "0.00", "0.00", "80.00"])
    );
    assert_eq!(
        account(&app, "bob").await,
        owned(["20.00", "0.00", "0.00", "20.00"])
    );
    let entries: Vec<(String, String)> = sqlx::query_as(
        "SELECT side, amount::text FROM entries WHERE transfer_id = $1::uuid ORDER BY side",
    )
    .bind(id)
    .fetch_all(&app.pool)
    .await
    .expect("entries");
    assert_eq!(
        entries,
        [
            ("credit".to_owned(), "20.00".to_owned()),
            ("debit".to_owned(), "-20.00".to_owned())
        ]
    );

    // The same request under the same key: a replay. Another request under it: refused.
    let replay = act(&app, id, "capture", "c1", Some(json!({"amount": "20.00"}))).await;
    assert_eq!(replay.status, StatusCode::OK, "{}", replay.body);
    assert_eq!(replay.headers["idempotent-replayed"], "true");
    assert_eq!(replay.body["status"], "posted");
    let reused = act(&app, id, "capture", "c1", Some(json!({"amount": "10.00"}))).await;
    assert_eq!(reused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reused.body["code"], "idempotency_key_reused");
    // A second capture, a void: the hold is no longer held.
    for (action, key) in [("capture", "c2"), ("void", "v1")] {
        let late = act(&app, id, action, key, None).await;
        assert_eq!(late.status, StatusCode::CONFLICT, "{}", late.body);
        assert_eq!(late.body["code"], "transfer_not_held");
    }
    assert_ledger_invariants(&app.pool).await;
}

#[tokio::test]
async fn a_capture_takes_everything_by_default_a_void_releases_and_bad_requests_change_nothing() {
    let app = funded_app().await;
    let first = place(&app, "h1", &hold("alice", "bob", "10.00")).await;
    let first_id = first["id"].as_str().expect("id");
    // More than held: 400, nothing claimed, and the key stays free.
    let over = act(
        &app,
        first_id,
        "capture",
        "c1",
        Some(json!({"amount": "10.01"})),
    )
    .await;
    assert_eq!(over.status, StatusCode::BAD_REQUEST, "{}", over.body);
    assert_eq!(over.body["code"], "capture_exceeds_hold");
    for (body, code) in [
        (json!({"amount": "0"}), "invalid_amount"),
        (json!({"amount": "-1.00"}), "invalid_amount"),
        (json!({"amount": "1.001"}), "invalid_amount"),
        (json!({"amount": 5}), "invalid_amount"),
        (json!({"amount": "5", "extra": 1}), "invalid_body"),
    ] {
        let bad = act(&app, first_id, "capture", "c1", Some(body.clone())).await;
        assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{body}: {}", bad.body);
        assert_eq!(bad.body["code"], code, "{body}");
    }
    let missing_key = app
        .send(
            app.client
                .post(app.url(&format!("/v1/transfers/{first_id}/capture")))
                .bearer_auth(&app.api_key),
        )
        .await;
    assert_eq!(missing_key.body["code"], "idempotency_key_missing");
    assert_eq!(
        wait_for(&app, first_id, "held").await["hold"]["settlement"],
        Value::Null,
        "refused requests claimed nothing"
    );
    let full = act(&app, first_id, "capture", "c1", None).await;
    assert_eq!(full.status, StatusCode::ACCEPTED, "{}", full.body);
    let captured = wait_for(&app, first_id, "posted").await;
    assert_eq!(captured["hold"]["captured_amount"], "10.00");

    let second = place(&app, "h2", &hold("alice", "bob", "50.00")).await;
    let second_id = second["id"].as_str().expect("id");
    assert_eq!(account(&app, "alice").await.3, "40.00", "available");
    let void = act(&app, second_id, "void", "v1", Some(json!({}))).await;
    assert_eq!(void.status, StatusCode::ACCEPTED, "{}", void.body);
    let voided = wait_for(&app, second_id, "voided").await;
    assert!(voided["hold"]["voided_at"].is_string(), "{voided}");
    assert_eq!(
        account(&app, "alice").await,
        owned(["90.00", "0.00", "0.00", "90.00"])
    );
    // Not holds, or no such transfer.
    let plain = app
        .post_transfer("p1", &transfer("alice", "bob", "1.00"))
        .await;
    let plain_id = plain.body["id"].as_str().expect("id");
    app.run_until_idle(Duration::from_secs(20)).await;
    let not_a_hold = act(&app, plain_id, "void", "v2", None).await;
    assert_eq!(not_a_hold.status, StatusCode::CONFLICT);
    assert_eq!(not_a_hold.body["code"], "transfer_not_held");
    let unknown = act(&app, &uuid::Uuid::now_v7().to_string(), "void", "v3", None).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.body["code"], "transfer_not_found");
    // Hold requests are validated like transfers.
    for (body, code) in [
        (json!({"mode": "reserve"}), "invalid_body"),
        (json!({"hold_expires_in_secs": 60}), "invalid_body"),
        (
            json!({"mode": "hold", "hold_expires_in_secs": 0}),
            "invalid_body",
        ),
        (
            json!({"mode": "hold", "hold_expires_in_secs": 2_592_001}),
            "invalid_body",
        ),
        (
            json!({"mode": "hold", "hold_expires_in_secs": "60"}),
            "invalid_body",
        ),
    ] {
        let mut request = transfer("alice", "bob", "1.00");
        for (k, v) in body.as_object().expect("object") {
            request[k] = v.clone();
        }
        let refused = app.post_transfer("bad-hold", &request).await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(refused.body["code"], code, "{body}");
    }
    assert_ledger_invariants(&app.pool).await;
}

#[tokio::test]
async fn holds_refuse_overdraft_exactly_as_transfers_do() {
    let app = funded_app().await;
    let first = place(&app, "h1", &hold("alice", "bob", "60.00")).await;
    assert_eq!(first["status"], "held");
    let over = place(&app, "h2", &hold("alice", "bob", "40.01")).await;
    assert_eq!(over["status"], "failed");
    assert_eq!(over["failure_code"], "insufficient_funds");
    let plain_over = place(&app, "t1", &transfer("alice", "bob", "40.01")).await;
    assert_eq!(plain_over["failure_code"], "insufficient_funds");
    let exact = place(&app, "t2", &transfer("alice", "bob", "40.00")).await;
    assert_eq!(exact["status"], "posted");
    assert_eq!(
        account(&app, "alice").await,
        owned(["60.00", "60.00", "0.00", "0.00"])
    );
    // The database refuses a reservation beyond the balance whoever writes it.
    let refused = sqlx::query(
        "UPDATE accounts SET pending_debits = pending_debits + 0.01 WHERE id = 'alice'",
    )
    .execute(&app.pool)
    .await;
    assert!(refused.is_err(), "the CHECK refuses available < 0");
    // An account with open holds cannot be closed.
    let close = app.post_json("/v1/accounts/bob/close", &json!({})).await;
    assert_eq!(close.status, StatusCode::CONFLICT, "{}", close.body);
    assert_eq!(close.body["code"], "account_not_empty");
    assert_ledger_invariants(&app.pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_racing_void_has_exactly_one_winner_every_time() {
    const HOLDS: usize = 100;
    let app = funded_app().await;
    let items: Vec<Value> = (0..HOLDS)
        .map(|n| {
            let mut item = hold("alice", "bob", "1.00");
            item["idempotency_key"] = json!(format!("h{n}"));
            item
        })
        .collect();
    let batch = app
        .post_json("/v1/transfers/batch", &json!({"transfers": items}))
        .await;
    assert_eq!(batch.status, StatusCode::OK);
    let ids: Vec<String> = batch.body["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["transfer"]["id"].as_str().expect("id").to_owned())
        .collect();
    for id in &ids {
        wait_for(&app, id, "held").await;
    }
    let races = ids.iter().enumerate().map(|(n, id)| {
        let app = &app;
        async move {
            let keys = [format!("c{n}"), format!("v{n}"), format!("d{n}")];
            let (capture, void, second_capture) = tokio::join!(
                act(app, id, "capture", &keys[0], None),
                act(app, id, "void", &keys[1], None),
                act(app, id, "capture", &keys[2], None),
            );
            let statuses = [capture.status, void.status, second_capture.status];
            let winners = statuses
                .iter()
                .filter(|s| **s == StatusCode::ACCEPTED)
                .count();
            assert_eq!(winners, 1, "{id}: {statuses:?}");
            for reply in [&capture, &void, &second_capture] {
                if reply.status != StatusCode::ACCEPTED {
                    assert_eq!(reply.status, StatusCode::CONFLICT, "{}", reply.body);
                    assert_eq!(reply.body["code"], "transfer_not_held");
                }
            }
            if void.status == StatusCode::ACCEPTED {
                "voided"
            } else {
                "posted"
            }
        }
    });
    let expected: Vec<&str> = futures::future::join_all(races).await;
    let mut captured = 0;
    for (id, status) in ids.iter().zip(&expected) {
        wait_for(&app, id, status).await;
        captured += usize::from(*status == "posted");
    }
    println!("{captured} captures and {} voids won", HOLDS - captured);
    let bob = account(&app, "bob").await;
    assert_eq!(bob.0, format!("{captured}.00"));
    assert_eq!(bob.2, "0.00");
    assert_ledger_invariants(&app.pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_holds_are_voided_once_with_two_workers_racing() {
    const HOLDS: usize = 40;
    let app = funded_app().await;
    // A second worker process on the same database: two expiry loops claim at once.
    let _second = spawn_worker(app.database.url(), |_| {}).await;
    let items: Vec<Value> = (0..HOLDS)
        .map(|n| {
            let mut item = hold("alice", "bob", "1.00");
            item["idempotency_key"] = json!(format!("h{n}"));
            item["hold_expires_in_secs"] = json!(1);
            item
        })
        .collect();
    let batch = app
        .post_json("/v1/transfers/batch", &json!({"transfers": items}))
        .await;
    assert_eq!(batch.status, StatusCode::OK);
    let started = Instant::now();
    for result in batch.body["results"].as_array().expect("results") {
        let id = result["transfer"]["id"].as_str().expect("id");
        let voided = wait_for(&app, id, "voided").await;
        assert_eq!(voided["hold"]["settlement"], "expire", "{voided}");
    }
    let took = started.elapsed();
    println!("{HOLDS} holds expiring after 1 s were all voided {took:?} after acceptance");
    assert!(took < Duration::from_secs(15), "{took:?}");
    assert_eq!(
        app.count("SELECT count(*) FROM events WHERE type = 'transfer.voided'")
            .await,
        HOLDS as i64,
        "each hold voided once"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM hold_lines WHERE kind = 'release'")
            .await,
        HOLDS as i64,
        "each reservation released once"
    );
    assert_eq!(
        account(&app, "alice").await,
        owned(["100.00", "0.00", "0.00", "100.00"])
    );
    // Past expiry, a capture is refused; nothing else changed.
    let late = place(&app, "late", &{
        let mut h = hold("alice", "bob", "1.00");
        h["hold_expires_in_secs"] = json!(1);
        h
    })
    .await;
    let late_id = late["id"].as_str().expect("id");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let capture = act(&app, late_id, "capture", "too-late", None).await;
    assert_eq!(capture.status, StatusCode::CONFLICT, "{}", capture.body);
    wait_for(&app, late_id, "voided").await;
    assert_ledger_invariants(&app.pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reversals_never_take_back_more_than_the_original_moved_even_racing() {
    let app = funded_app().await;
    let original = place(&app, "t1", &transfer("alice", "bob", "100.00")).await;
    let id = original["id"].as_str().expect("id").to_owned();
    // Ten reversals of 15.00 at once: six fit in 100.00.
    let racing = (0..10).map(|n| {
        let (app, id) = (&app, &id);
        async move {
            act(
                app,
                id,
                "reverse",
                &format!("r{n}"),
                Some(json!({"amount": "15.00"})),
            )
            .await
        }
    });
    let replies = futures::future::join_all(racing).await;
    let accepted: Vec<&Reply> = replies
        .iter()
        .filter(|r| r.status == StatusCode::ACCEPTED)
        .collect();
    assert_eq!(
        accepted.len(),
        6,
        "{:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    for refused in replies.iter().filter(|r| r.status != StatusCode::ACCEPTED) {
        assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.body);
        assert_eq!(refused.body["code"], "transfer_not_reversible");
    }
    let reversal = &accepted[0].body;
    assert_eq!(reversal["reverses"], id.as_str());
    assert_eq!(reversal["from_account"], "bob");
    assert_eq!(reversal["to_account"], "alice");
    // The rest, by default; then nothing is left.
    let rest = act(&app, &id, "reverse", "r-rest", None).await;
    assert_eq!(rest.status, StatusCode::ACCEPTED, "{}", rest.body);
    assert_eq!(rest.body["amount"], "10.00");
    let replay = act(&app, &id, "reverse", "r-rest", None).await;
    assert_eq!(replay.status, StatusCode::OK);
    assert_eq!(replay.body["id"], rest.body["id"]);
    let none_left = act(
        &app,
        &id,
        "reverse",
        "r-more",
        Some(json!({"amount": "0.01"})),
    )
    .await;
    assert_eq!(none_left.status, StatusCode::CONFLICT);
    app.run_until_idle(Duration::from_secs(20)).await;
    assert_eq!(account(&app, "alice").await.0, "100.00");
    assert_eq!(account(&app, "bob").await.0, "0.00");
    let original = app.get(&format!("/v1/transfers/{id}")).await.body;
    assert_eq!(original["reversed_amount"], "100.00");
    assert_eq!(
        app.count("SELECT count(*) FROM events WHERE type = 'transfer.reversed'")
            .await,
        7
    );
    // The database holds the rule even against a writer that skips the checks above.
    let sneaky = sqlx::query("UPDATE transfers SET reversed_amount = 100.01 WHERE id = $1::uuid")
        .bind(&id)
        .execute(&app.pool)
        .await;
    assert!(sneaky.is_err(), "CHECK refuses reversing more than moved");
    assert_ledger_invariants(&app.pool).await;
}

#[tokio::test]
async fn only_a_posted_transfer_can_be_reversed_and_a_failed_reversal_gives_its_share_back() {
    let app = funded_app().await;
    let held = place(&app, "h1", &hold("alice", "bob", "5.00")).await;
    let failed = place(&app, "t-fail", &transfer("alice", "bob", "500.00")).await;
    assert_eq!(failed["status"], "failed");
    let voided = place(&app, "h2", &hold("alice", "bob", "5.00")).await;
    let voided_id = voided["id"].as_str().expect("id");
    act(&app, voided_id, "void", "v", None).await;
    wait_for(&app, voided_id, "voided").await;
    for (transfer, why) in [(&held, "held"), (&failed, "failed"), (&voided, "voided")] {
        let id = transfer["id"].as_str().expect("id");
        let refused = act(&app, id, "reverse", &format!("r-{why}"), None).await;
        assert_eq!(
            refused.status,
            StatusCode::CONFLICT,
            "{why}: {}",
            refused.body
        );
        assert_eq!(refused.body["code"], "transfer_not_reversible", "{why}");
    }
    // alice pays bob 50.00; bob spends it; the reversal (bob → alice) then fails, and its
    // share can be reversed again later.
    let paid = place(&app, "t-pay", &transfer("alice", "bob", "50.00")).await;
    let paid_id = paid["id"].as_str().expect("id");
    place(&app, "t-spend", &transfer("bob", "treasury", "50.00")).await;
    let reversal = act(&app, paid_id, "reverse", "r1", None).await;
    assert_eq!(reversal.status, StatusCode::ACCEPTED, "{}", reversal.body);
    let reversal_id = reversal.body["id"].as_str().expect("id");
    let outcome = app.wait_until_terminal(reversal_id).await;
    assert_eq!(outcome["failure_code"], "insufficient_funds");
    let original = app.get(&format!("/v1/transfers/{paid_id}")).await.body;
    assert!(original.get("reversed_amount").is_none(), "{original}");
    place(&app, "t-refund", &transfer("treasury", "bob", "50.00")).await;
    let again = act(&app, paid_id, "reverse", "r2", None).await;
    assert_eq!(again.status, StatusCode::ACCEPTED, "{}", again.body);
    assert_eq!(
        app.wait_until_terminal(again.body["id"].as_str().expect("id"))
            .await["status"],
        "posted"
    );
    // A captured hold is reversed up to what it captured.
    let captured = place(&app, "h3", &hold("alice", "bob", "8.00")).await;
    let captured_id = captured["id"].as_str().expect("id");
    act(
        &app,
        captured_id,
        "capture",
        "c3",
        Some(json!({"amount": "3.00"})),
    )
    .await;
    wait_for(&app, captured_id, "posted").await;
    let too_much = act(
        &app,
        captured_id,
        "reverse",
        "r3",
        Some(json!({"amount": "3.01"})),
    )
    .await;
    assert_eq!(too_much.status, StatusCode::CONFLICT, "{}", too_much.body);
    let exact = act(&app, captured_id, "reverse", "r4", None).await;
    assert_eq!(exact.body["amount"], "3.00", "{}", exact.body);
    app.run_until_idle(Duration::from_secs(20)).await;
    act(
        &app,
        held["id"].as_str().expect("id"),
        "void",
        "v-last",
        None,
    )
    .await;
    wait_for(&app, held["id"].as_str().expect("id"), "voided").await;
    assert_ledger_invariants(&app.pool).await;
}

/// The balance, pending debits and available balance of `account` at `at`, through the API.
async fn balance_at(app: &TestApp, account: &str, at: &str) -> (String, String, String) {
    let reply = app
        .get(&format!("/v1/accounts/{account}/balance?at={}", encode(at)))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{at}: {}", reply.body);
    let field = |name: &str| reply.body[name].as_str().expect(name).to_owned();
    (
        field("balance"),
        field("pending_debits"),
        field("available"),
    )
}

/// What `balance_at` compares with: the account as `account` showed it.
fn shown_then(account: &(String, String, String, String)) -> (String, String, String) {
    (account.0.clone(), account.1.clone(), account.3.clone())
}

/// `text` as a query-string value (RFC 3339 instants carry `+` and `:`).
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// The database's clock now, as RFC 3339: the instants entries are stamped with.
async fn db_now(app: &TestApp) -> String {
    let now: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(&app.pool)
        .await
        .expect("now");
    now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_balance_at_any_instant_is_what_the_account_showed_then_and_what_its_entries_add_up_to()
{
    let app = funded_app().await;
    let before_anything = "2000-01-01T00:00:00Z";
    // Each step settles before the instant after it is taken, so the account as shown at that
    // instant is the state the history must reproduce.
    let mut seen = vec![(db_now(&app).await, account(&app, "alice").await)];
    let mut open_holds: Vec<String> = Vec::new();
    let mut seed = 0x2545_f491_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for step in 0..40 {
        let amount = format!("{}.{:02}", 1 + next() % 9, next() % 100);
        match (next() % 4, open_holds.is_empty()) {
            (0, _) => {
                place(
                    &app,
                    &format!("t{step}"),
                    &transfer("alice", "bob", &amount),
                )
                .await;
            }
            (1, _) | (2, true) => {
                let held = place(&app, &format!("h{step}"), &hold("alice", "bob", &amount)).await;
                if held["status"] == "held" {
                    open_holds.push(held["id"].as_str().expect("id").to_owned());
                }
            }
            (2, false) => {
                let id = open_holds.remove(0);
                act(&app, &id, "capture", &format!("c{step}"), None).await;
                wait_for(&app, &id, "posted").await;
            }
            _ => {
                place(
                    &app,
                    &format!("f{step}"),
                    &transfer("treasury", "alice", &amount),
                )
                .await;
            }
        }
        if let Some(id) = open_holds.first().filter(|_| next() % 5 == 0) {
            let id = id.clone();
            act(&app, &id, "void", &format!("v{step}"), None).await;
            wait_for(&app, &id, "voided").await;
            open_holds.retain(|h| *h != id);
        }
        seen.push((db_now(&app).await, account(&app, "alice").await));
    }
    for (at, shown) in &seen {
        assert_eq!(
            balance_at(&app, "alice", at).await,
            shown_then(shown),
            "at {at}"
        );
        let replayed: String = sqlx::query_scalar(
            "SELECT coalesce(sum(amount), 0)::text FROM ledger_entries \
             WHERE ledger = 'default' AND account_id = 'alice' AND created_at <= $1::timestamptz",
        )
        .bind(at)
        .fetch_one(&app.pool)
        .await
        .expect("replay");
        let replayed: rust_decimal::Decimal = replayed.parse().expect("decimal");
        assert_eq!(
            shown.0.parse::<rust_decimal::Decimal>().expect("decimal"),
            replayed,
            "the entries up to {at} add up to the balance"
        );
    }
    assert_eq!(
        balance_at(&app, "alice", before_anything).await,
        ("0.00".to_owned(), "0.00".to_owned(), "0.00".to_owned())
    );
    // Bad instants and unknown accounts.
    for bad in ["yesterday", "2026-11-30", "2026-11-30T25:00:00Z"] {
        let reply = app
            .get(&format!("/v1/accounts/alice/balance?at={}", encode(bad)))
            .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(reply.body["code"], "invalid_body", "{bad}");
    }
    let unknown = app.get("/v1/accounts/nobody/balance").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let now = app.get("/v1/accounts/alice/balance").await;
    assert_eq!(now.body["balance"], seen.last().expect("seen").1.0);
    assert_ledger_invariants(&app.pool).await;
}

#[tokio::test]
async fn reconciliation_reports_hold_drift_expired_holds_and_over_reversal() {
    use crate::helpers::{findings, reconcile};
    use crate::reconciliation::finding_in;
    let app = funded_app().await;
    let clean = reconcile(&app, true).await;
    assert_eq!(findings(&clean), Vec::new(), "{clean}");
    // A hold whose claimed capture lost its job, five minutes past expiry.
    let stuck = place(&app, "h1", &hold("alice", "bob", "5.00")).await;
    let stuck_id = stuck["id"].as_str().expect("id");
    sqlx::query(
        "UPDATE transfers SET hold_action = 'capture', \
           hold_expires_at = now() - interval '6 minutes' WHERE id = $1::uuid",
    )
    .bind(stuck_id)
    .execute(&app.pool)
    .await
    .expect("stage a lost capture");
    // Reservations that drifted from their holds, and a reversal count that drifted from its
    // reversals.
    sqlx::query("UPDATE accounts SET pending_credits = pending_credits + 1 WHERE id = 'bob'")
        .execute(&app.pool)
        .await
        .expect("drift");
    let paid = place(&app, "t1", &transfer("alice", "bob", "10.00")).await;
    let paid_id = paid["id"].as_str().expect("id");
    act(
        &app,
        paid_id,
        "reverse",
        "r1",
        Some(json!({"amount": "4.00"})),
    )
    .await;
    app.run_until_idle(Duration::from_secs(20)).await;
    sqlx::query("UPDATE transfers SET reversed_amount = 0 WHERE id = $1::uuid")
        .bind(paid_id)
        .execute(&app.pool)
        .await
        .expect("forget the reversal");
    let run = reconcile(&app, false).await;
    let found = findings(&run);
    for expected in [
        finding_in("default", "hold_drift", "account:bob", "critical"),
        finding_in(
            "default",
            "expired_hold",
            &format!("transfer:{stuck_id}"),
            "medium",
        ),
        finding_in(
            "default",
            "over_reversed",
            &format!("transfer:{paid_id}"),
            "critical",
        ),
    ] {
        assert!(found.contains(&expected), "{expected:?} not in {found:?}");
    }
    assert_eq!(found.len(), 3, "{found:?}");
    // The lost capture was re-driven: it posts.
    let captured = wait_for(&app, stuck_id, "posted").await;
    assert_eq!(captured["hold"]["captured_amount"], "5.00");
    // Repaired by hand, the findings resolve.
    sqlx::query("UPDATE accounts SET pending_credits = pending_credits - 1 WHERE id = 'bob'")
        .execute(&app.pool)
        .await
        .expect("repair");
    sqlx::query("UPDATE transfers SET reversed_amount = 4 WHERE id = $1::uuid")
        .bind(paid_id)
        .execute(&app.pool)
        .await
        .expect("repair");
    let after = reconcile(&app, false).await;
    assert_eq!(findings(&after), Vec::new(), "{after}");
    assert_ledger_invariants(&app.pool).await;
}

/// A small xorshift generator: the same mix of operations on every run.
fn generator(mut seed: u64) -> impl FnMut() -> u64 {
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    }
}

/// Sends `requests` (path, key, body) from `clients` concurrent clients; returns the replies
/// in order.
async fn send_all(
    app: &TestApp,
    requests: &[(String, String, Value)],
    clients: usize,
) -> Vec<Reply> {
    use futures::StreamExt;
    futures::stream::iter(requests)
        .map(|(path, key, body)| {
            app.send(
                app.client
                    .post(app.url(path))
                    .bearer_auth(&app.api_key)
                    .header("Idempotency-Key", key)
                    .json(body),
            )
        })
        .buffered(clients)
        .collect()
        .await
}

/// Waits until nothing is pending and no claimed settlement is still to be carried out.
pub async fn wait_until_settled(app: &TestApp) {
    let started = Instant::now();
    while app
        .count(
            "SELECT count(*) FROM transfers WHERE status = 'pending' \
             OR (status = 'held' AND hold_action IS NOT NULL)",
        )
        .await
        > 0
    {
        assert!(started.elapsed() < Duration::from_secs(60), "not settled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The bank test with holds: six accounts trade plain transfers and holds from 16 clients;
/// then, still from 16 clients and mixed with new transfers on the same accounts, holds are
/// captured (in full or in part), voided or left open, posted transfers are reversed (in full
/// or in part), and a tenth of every request is sent twice. Afterwards every invariant holds,
/// counting holds: money conserved, `available ≥ 0`, pending sums equal the open holds,
/// reversals within their originals, balance history consistent, one event per change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bank_test_with_holds_captures_voids_and_reversals_keeps_every_invariant() {
    const USERS: u64 = 6;
    const FIRST_ROUND: usize = 300;
    const CLIENTS: usize = 16;
    let app = spawn_app_with(|c| c.anomaly.enabled = false).await;
    app.create_account("treasury", "USD", true).await;
    for user in 0..USERS {
        app.create_account(&format!("u{user}"), "USD", false).await;
        let funded = app
            .post_transfer(
                &format!("fund{user}"),
                &transfer("treasury", &format!("u{user}"), "100.00"),
            )
            .await;
        assert_eq!(funded.status, StatusCode::ACCEPTED);
    }
    app.run_until_idle(Duration::from_secs(20)).await;
    let mut next = generator(0x5eed_ba4c);
    let pair = |next: &mut dyn FnMut() -> u64| {
        let from = next() % USERS;
        let to = (from + 1 + next() % (USERS - 1)) % USERS;
        (format!("u{from}"), format!("u{to}"))
    };
    let mut first: Vec<(String, String, Value)> = Vec::new();
    for n in 0..FIRST_ROUND {
        let (from, to) = pair(&mut next);
        let amount = format!("{}.{:02}", 1 + next() % 30, next() % 100);
        let body = if next().is_multiple_of(2) {
            hold(&from, &to, &amount)
        } else {
            transfer(&from, &to, &amount)
        };
        first.push(("/v1/transfers".to_owned(), format!("a{n}"), body));
    }
    let accepted = send_all(&app, &first, CLIENTS).await;
    assert!(accepted.iter().all(|r| r.status == StatusCode::ACCEPTED));
    wait_until_settled(&app).await;
    let settled: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT id::text, status, amount::text FROM transfers \
         WHERE idempotency_key LIKE 'a%' ORDER BY idempotency_key",
    )
    .fetch_all(&app.pool)
    .await
    .expect("first round");
    let mut second: Vec<(String, String, Value)> = Vec::new();
    for (n, (id, status, amount)) in settled.iter().enumerate() {
        let roll = next() % 10;
        let request = match status.as_str() {
            "held" if roll < 4 => {
                let part = if roll < 2 {
                    json!({})
                } else {
                    json!({"amount": "0.50"})
                };
                Some((format!("/v1/transfers/{id}/capture"), format!("c{n}"), part))
            }
            "held" if roll < 7 => Some((
                format!("/v1/transfers/{id}/void"),
                format!("v{n}"),
                json!({}),
            )),
            "posted" if roll < 3 => {
                let part = if roll == 0 {
                    json!({})
                } else {
                    json!({"amount": "0.25"})
                };
                Some((format!("/v1/transfers/{id}/reverse"), format!("r{n}"), part))
            }
            _ => None,
        };
        let _ = amount;
        if let Some(request) = request {
            if next().is_multiple_of(10) {
                second.push(request.clone());
            }
            second.push(request);
        }
        if next().is_multiple_of(2) {
            let (from, to) = pair(&mut next);
            let body = transfer(
                &from,
                &to,
                &format!("{}.{:02}", 1 + next() % 20, next() % 100),
            );
            second.push(("/v1/transfers".to_owned(), format!("b{n}"), body));
        }
    }
    let replies = send_all(&app, &second, CLIENTS).await;
    let mut by_key: std::collections::HashMap<&str, Vec<StatusCode>> = Default::default();
    for ((_, key, _), reply) in second.iter().zip(&replies) {
        assert!(
            matches!(reply.status.as_u16(), 200 | 202 | 409),
            "{key}: {} {}",
            reply.status,
            reply.body
        );
        by_key.entry(key).or_default().push(reply.status);
    }
    // A request sent twice was answered once as new and once as its replay.
    for (key, statuses) in by_key.iter().filter(|(_, s)| s.len() == 2) {
        assert!(
            statuses.contains(&StatusCode::ACCEPTED) && statuses.contains(&StatusCode::OK),
            "{key}: {statuses:?}"
        );
    }
    wait_until_settled(&app).await;
    let counts: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM transfers GROUP BY status ORDER BY status")
            .fetch_all(&app.pool)
            .await
            .expect("counts");
    println!("{counts:?}");
    for status in ["held", "posted", "failed", "voided"] {
        assert!(
            counts.iter().any(|(s, n)| s == status && *n > 0),
            "the mix reached {status}: {counts:?}"
        );
    }
    assert!(
        app.count("SELECT count(*) FROM transfers WHERE reverses IS NOT NULL")
            .await
            > 0
    );
    assert_ledger_invariants(&app.pool).await;
}

/// Holds and plain transfers on one hot account, from 64 clients, then every hold captured
/// from 64 clients: everything posts, nothing fails for contention.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_and_transfers_on_one_hot_account_post_without_contention_failures() {
    const EACH: usize = 600;
    let app = spawn_app_with(|c| c.anomaly.enabled = false).await;
    app.create_account("treasury", "USD", true).await;
    app.create_account("hot", "USD", false).await;
    for n in 0..8 {
        app.create_account(&format!("sink{n}"), "USD", false).await;
    }
    place(&app, "fund", &transfer("treasury", "hot", "5000.00")).await;
    let mut requests = Vec::new();
    for n in 0..EACH {
        let sink = format!("sink{}", n % 8);
        requests.push((
            "/v1/transfers".to_owned(),
            format!("h{n}"),
            hold("hot", &sink, "2.00"),
        ));
        requests.push((
            "/v1/transfers".to_owned(),
            format!("t{n}"),
            transfer("hot", &sink, "1.50"),
        ));
    }
    let started = Instant::now();
    let accepted = send_all(&app, &requests, 64).await;
    assert!(accepted.iter().all(|r| r.status == StatusCode::ACCEPTED));
    wait_until_settled(&app).await;
    let holds: Vec<String> =
        sqlx::query_scalar("SELECT id::text FROM transfers WHERE status = 'held'")
            .fetch_all(&app.pool)
            .await
            .expect("held");
    assert_eq!(holds.len(), EACH, "every hold placed");
    let captures: Vec<(String, String, Value)> = holds
        .iter()
        .map(|id| {
            (
                format!("/v1/transfers/{id}/capture"),
                format!("c-{id}"),
                json!({}),
            )
        })
        .collect();
    let captured = send_all(&app, &captures, 64).await;
    assert!(captured.iter().all(|r| r.status == StatusCode::ACCEPTED));
    wait_until_settled(&app).await;
    println!(
        "{} holds and {EACH} transfers on one account, holds captured: {:.2?}",
        EACH,
        started.elapsed()
    );
    assert_eq!(
        app.count("SELECT count(*) FROM transfers WHERE status <> 'posted'")
            .await,
        0,
        "nothing failed"
    );
    assert_eq!(
        account(&app, "hot").await,
        owned(["2900.00", "0.00", "0.00", "2900.00"])
    );
    assert_ledger_invariants(&app.pool).await;
}

#[tokio::test]
async fn a_batch_settles_each_item_on_its_own_as_the_single_requests_would() {
    let app = funded_app().await;
    let mut holds = Vec::new();
    for n in 0..3 {
        let held = place(&app, &format!("h{n}"), &hold("alice", "bob", "10.00")).await;
        holds.push(held["id"].as_str().expect("id").to_owned());
    }
    let plain = place(&app, "p", &transfer("alice", "bob", "1.00")).await;
    let unknown = uuid::Uuid::now_v7().to_string();
    let items = json!({"settlements": [
        {"idempotency_key": "s0", "transfer_id": holds[0], "action": "capture", "amount": "4.00"},
        {"idempotency_key": "s1", "transfer_id": holds[1], "action": "void"},
        // The same hold again, under another key: it was just claimed.
        {"idempotency_key": "s2", "transfer_id": holds[1], "action": "capture"},
        {"idempotency_key": "s3", "transfer_id": holds[2], "action": "capture", "amount": "10.01"},
        {"idempotency_key": "s4", "transfer_id": plain["id"], "action": "void"},
        {"idempotency_key": "s5", "transfer_id": unknown, "action": "void"},
        {"idempotency_key": "s6", "transfer_id": holds[2], "action": "refund"},
        {"idempotency_key": "s7", "transfer_id": holds[2], "action": "void", "amount": "1.00"},
    ]});
    let reply = app.post_json("/v1/transfers/settle", &items).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let results = reply.body["results"].as_array().expect("results");
    let outcome = |i: usize| {
        (
            results[i]["outcome"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            results[i]["error"]["code"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        )
    };
    let expected = [
        ("accepted", ""),
        ("accepted", ""),
        ("rejected", "transfer_not_held"),
        ("rejected", "capture_exceeds_hold"),
        ("rejected", "transfer_not_held"),
        ("rejected", "transfer_not_found"),
        ("rejected", "invalid_body"),
        ("rejected", "invalid_body"),
    ];
    for (i, (want_outcome, want_code)) in expected.iter().enumerate() {
        assert_eq!(
            outcome(i),
            ((*want_outcome).to_owned(), (*want_code).to_owned()),
            "item {i}: {}",
            results[i]
        );
    }
    // Sent again: the accepted ones replay, the refused ones are refused again (their keys
    // were not used); a refused key is free for a corrected request.
    let again = app.post_json("/v1/transfers/settle", &items).await;
    let results = again.body["results"].as_array().expect("results");
    assert_eq!(results[0]["outcome"], "replayed");
    assert_eq!(results[1]["outcome"], "replayed");
    assert_eq!(results[3]["error"]["code"], "capture_exceeds_hold");
    let corrected = act(&app, &holds[2], "capture", "s3", None).await;
    assert_eq!(corrected.status, StatusCode::ACCEPTED, "{}", corrected.body);
    // The single endpoint shares the keys: s0 names that capture there too.
    let single_replay = act(
        &app,
        &holds[0],
        "capture",
        "s0",
        Some(json!({"amount": "4.00"})),
    )
    .await;
    assert_eq!(
        single_replay.status,
        StatusCode::OK,
        "{}",
        single_replay.body
    );
    for (id, status) in [
        (&holds[0], "posted"),
        (&holds[1], "voided"),
        (&holds[2], "posted"),
    ] {
        wait_for(&app, id, status).await;
    }
    assert_eq!(account(&app, "bob").await.0, "15.00");
    for (body, code) in [
        (json!({"settlements": []}), "invalid_body"),
        (
            json!({"settlements": [{"transfer_id": holds[0], "action": "void"}]}),
            "invalid_body",
        ),
    ] {
        let refused = app.post_json("/v1/transfers/settle", &body).await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(refused.body["code"], code);
    }
    assert_ledger_invariants(&app.pool).await;
}

/// A claimed capture or void was promised: when its posting fails transiently past the
/// posting policy's last attempt, it is tried again at the longest wait, never failed — while
/// a pending transfer in the same run fails `retries_exhausted`.
#[tokio::test]
async fn a_claimed_settlement_is_never_given_up_for_want_of_attempts() {
    use ferry::ledger::attempts::record_failed_attempt;
    use ferry::retry::{Failure, RetryPolicy};
    let app = funded_app().await;
    let held = place(&app, "h1", &hold("alice", "bob", "5.00")).await;
    let held_id: uuid::Uuid = held["id"].as_str().expect("id").parse().expect("uuid");
    // A pending transfer and the claimed hold, both at the policy's last attempt.
    let pending: uuid::Uuid = sqlx::query_scalar(
        "INSERT INTO transfers (id, api_key_id, idempotency_key, request_fingerprint, \
           from_account, to_account, amount, currency, ledger, attempts) \
         SELECT gen_random_uuid(), api_key_id, 'stuck', '\\x00', 'alice', 'bob', 1, 'USD', \
           'default', $1 FROM transfers LIMIT 1 RETURNING id",
    )
    .bind(RetryPolicy::POSTING_JOB.attempts_max as i32 - 1)
    .fetch_one(&app.pool)
    .await
    .expect("a pending transfer");
    sqlx::query("UPDATE transfers SET hold_action = 'capture', attempts = $2 WHERE id = $1")
        .bind(held_id)
        .bind(RetryPolicy::POSTING_JOB.attempts_max as i32 - 1)
        .execute(&app.pool)
        .await
        .expect("claim");
    let mut tx = app.pool.begin().await.expect("tx");
    let still = record_failed_attempt(
        &mut tx,
        &[pending, held_id],
        "a transient failure",
        &RetryPolicy::POSTING_JOB,
        Failure::Transient { not_before: None },
    )
    .await
    .expect("recorded");
    tx.commit().await.expect("commit");
    assert_eq!(still.exhausted, vec![pending]);
    assert_eq!(still.transfer_ids, vec![held_id]);
    assert_eq!(still.wait.max(), RetryPolicy::POSTING_JOB.cap);
    let status: String = sqlx::query_scalar("SELECT status FROM transfers WHERE id = $1")
        .bind(held_id)
        .fetch_one(&app.pool)
        .await
        .expect("status");
    assert_eq!(status, "held");
}
