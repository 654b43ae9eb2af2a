//! The producer event log and its pull feed (README, "Events and webhooks"): every change is an
//! event written with it, numbered per ledger in commit order, read with a cursor that never
//! skips one.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    TestApp, create_account_in, create_ledger, create_ledger_key, spawn_app, spawn_app_with,
    transfer,
};

/// Reads `/v1/events` of the caller's ledger from `after` to the end, as a follower would.
pub async fn read_feed(app: &TestApp, api_key: &str, query: &str) -> Vec<Value> {
    let mut after = 0;
    let mut events = Vec::new();
    loop {
        let reply = app
            .get_as(
                api_key,
                &format!("/v1/events?after={after}&limit=1000{query}"),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        let page = reply.body["events"].as_array().cloned().unwrap_or_default();
        after = reply.body["next_after"].as_i64().expect("next_after");
        if page.is_empty() {
            return events;
        }
        events.extend(page);
    }
}

fn seqs(events: &[Value]) -> Vec<i64> {
    events
        .iter()
        .map(|e| e["seq"].as_i64().expect("seq"))
        .collect()
}

#[tokio::test]
async fn each_posted_or_failed_transfer_is_one_event_carrying_the_transfer_as_the_api_shows_it() {
    let app = spawn_app().await;
    app.create_account("alice", "USD", true).await;
    app.create_account("bob", "USD", false).await;
    let posted = app
        .post_transfer("e-1", &transfer("alice", "bob", "12.30"))
        .await;
    let failed = app
        .post_transfer("e-2", &transfer("bob", "alice", "99.00"))
        .await;
    let posted_id = posted.body["id"].as_str().expect("id").to_owned();
    let failed_id = failed.body["id"].as_str().expect("id").to_owned();
    let posted_view = app.wait_until_terminal(&posted_id).await;
    let failed_view = app.wait_until_terminal(&failed_id).await;
    assert_eq!(posted_view["status"], "posted");
    assert_eq!(failed_view["status"], "failed");

    let events = read_feed(&app, &app.api_key, "").await;
    assert_eq!(seqs(&events), vec![1, 2], "{events:#?}");
    let by_subject = |id: &str| {
        events
            .iter()
            .find(|e| e["data"]["id"] == id)
            .cloned()
            .expect("event about the transfer")
    };
    let posted_event = by_subject(&posted_id);
    assert_eq!(posted_event["type"], "transfer.posted");
    assert_eq!(posted_event["ledger"], "default");
    assert_eq!(
        posted_event["data"], posted_view,
        "the payload is the transfer as GET shows it"
    );
    let failed_event = by_subject(&failed_id);
    assert_eq!(failed_event["type"], "transfer.failed");
    assert_eq!(failed_event["data"]["failure_code"], "insufficient_funds");

    // Filtered by type, and paged by the cursor.
    let only_failed = read_feed(&app, &app.api_key, "&types=transfer.failed").await;
    assert_eq!(only_failed.len(), 1);
    assert_eq!(only_failed[0]["id"], failed_event["id"]);
    let page = app.get("/v1/events?after=1&limit=1").await;
    assert_eq!(
        seqs(page.body["events"].as_array().expect("events")),
        vec![2]
    );
    assert_eq!(page.body["next_after"], 2);
    let empty = app.get("/v1/events?after=2").await;
    assert_eq!(empty.body["events"], json!([]));
    assert_eq!(empty.body["next_after"], 2, "a follower keeps its place");
}

#[tokio::test]
async fn freezing_and_closing_an_account_are_events_and_unfreezing_is_not() {
    let app = spawn_app().await;
    app.create_account("carol", "USD", false).await;
    for (action, status) in [("freeze", 200), ("unfreeze", 200), ("close", 200)] {
        let reply = app
            .post_json(&format!("/v1/accounts/carol/{action}"), &json!({}))
            .await;
        assert_eq!(reply.status.as_u16(), status, "{action}: {}", reply.body);
    }
    // Repeating a change changes nothing and announces nothing.
    app.post_json("/v1/accounts/carol/close", &json!({})).await;
    let events = read_feed(&app, &app.api_key, "").await;
    let types: Vec<&str> = events
        .iter()
        .map(|e| e["type"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(types, ["account.frozen", "account.closed"]);
    assert_eq!(events[1]["data"]["status"], "closed");
    assert_eq!(events[1]["data"]["id"], "carol");
}

#[tokio::test]
async fn a_ledger_bound_key_reads_only_its_own_ledgers_events() {
    let app = spawn_app().await;
    create_ledger(&app.pool, "acme").await;
    create_account_in(&app.pool, "acme", "a1", "USD", true).await;
    create_account_in(&app.pool, "acme", "a2", "USD", false).await;
    app.create_account("alice", "USD", true).await;
    app.create_account("bob", "USD", false).await;
    let acme = create_ledger_key(&app.pool, "acme", "transfers:write,transfers:read").await;
    let acme_transfer = app
        .post_transfer_as(&acme, "x-1", &transfer("a1", "a2", "1.00"))
        .await;
    app.post_transfer("d-1", &transfer("alice", "bob", "1.00"))
        .await;
    app.wait_until_terminal_as(&acme, acme_transfer.body["id"].as_str().expect("id"))
        .await;
    app.run_until_idle(Duration::from_secs(20)).await;

    let acme_events = read_feed(&app, &acme, "").await;
    assert_eq!(seqs(&acme_events), vec![1], "acme numbers its own events");
    assert_eq!(acme_events[0]["ledger"], "acme");
    let default_events = read_feed(&app, &app.api_key, "").await;
    assert_eq!(seqs(&default_events), vec![1]);
    assert_eq!(default_events[0]["ledger"], "default");
    let foreign = app.get_as(&acme, "/v1/events?ledger=default").await;
    assert_eq!(foreign.status, StatusCode::FORBIDDEN);
    let admin_reads_acme = read_feed(&app, &app.api_key, "&ledger=acme").await;
    assert_eq!(admin_reads_acme, acme_events);
    let no_scope = create_ledger_key(&app.pool, "acme", "transfers:write").await;
    assert_eq!(
        app.get_as(&no_scope, "/v1/events").await.status,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn bad_feed_queries_are_refused_and_change_nothing() {
    let app = spawn_app().await;
    app.assert_bad_queries(
        "/v1/events?",
        &[
            ("after=-1", "invalid_body"),
            ("after=x", "invalid_body"),
            ("limit=0", "invalid_body"),
            ("limit=1001", "invalid_body"),
            ("types=transfer.exploded", "invalid_body"),
            ("types=", "invalid_body"),
            ("ledger=Not_A_Ledger", "invalid_ledger"),
            ("colour=blue", "invalid_body"),
        ],
    )
    .await;
}

/// A reader following the feed while transfers post concurrently sees every event exactly
/// once, in `seq` order, with no gap: numbers are handed out in commit order, so nothing
/// commits behind the cursor.
#[tokio::test]
async fn a_follower_reading_during_concurrent_posting_never_skips_an_event() {
    // Only transfer events: the anomaly rules would flag this burst and add their own.
    let app = spawn_app_with(|c| c.anomaly.enabled = false).await;
    app.create_account("alice", "USD", true).await;
    for i in 0..8 {
        app.create_account(&format!("dest{i}"), "USD", false).await;
    }
    let total = 400;
    let follower = {
        let address = app.address.clone();
        let api_key = app.api_key.clone();
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut after = 0;
            let mut seen = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(60);
            while seen.len() < total && Instant::now() < deadline {
                let page: Value = client
                    .get(format!("{address}/v1/events?after={after}&limit=37"))
                    .bearer_auth(&api_key)
                    .send()
                    .await
                    .expect("feed")
                    .json()
                    .await
                    .expect("json");
                for event in page["events"].as_array().into_iter().flatten() {
                    seen.push(event["seq"].as_i64().expect("seq"));
                }
                after = page["next_after"].as_i64().expect("next_after");
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            seen
        })
    };
    let requests: Vec<(String, Value)> = (0..total)
        .map(|i| {
            let body = transfer("alice", &format!("dest{}", i % 8), "1.00");
            (format!("c-{i}"), body)
        })
        .collect();
    let sends = requests
        .iter()
        .map(|(key, body)| app.post_transfer(key, body));
    for reply in futures::future::join_all(sends).await {
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    }
    let seen = follower.await.expect("follower");
    let expected: Vec<i64> = (1..=total as i64).collect();
    assert_eq!(seen, expected, "every event once, in order, no gap");
    let distinct: BTreeSet<i64> = seen.into_iter().collect();
    assert_eq!(distinct.len(), total);
}

/// No change without its event and no event without its change: for every terminal transfer
/// exactly one event announces its status, and no event announces a status its transfer does
/// not have. Used by the crash tests too.
pub async fn assert_events_match_transfers(pool: &sqlx::PgPool) {
    // The event each status announces: a posted reversal is `transfer.reversed`.
    const EXPECTED: &str = "SELECT id, CASE WHEN status = 'posted' AND reverses IS NOT NULL \
         THEN 'transfer.reversed' ELSE 'transfer.' || status END AS type FROM transfers \
         WHERE status IN ('posted', 'failed', 'in_review', 'held', 'voided')";
    let mismatched: Vec<(String, String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "WITH expected AS ({EXPECTED}) \
         SELECT x.id::text, x.type, count(e.id) FROM expected x \
         LEFT JOIN events e ON e.subject = 'transfer:' || x.id AND e.type = x.type \
         GROUP BY x.id, x.type HAVING count(e.id) <> 1"
    )))
    .fetch_all(pool)
    .await
    .expect("terminal transfers and their events");
    assert!(
        mismatched.is_empty(),
        "transfers without exactly one event: {mismatched:?}"
    );
    let holds: Vec<(String, i64)> = sqlx::query_as(
        "SELECT t.id::text, count(e.id) FROM transfers t \
         LEFT JOIN events e ON e.subject = 'transfer:' || t.id AND e.type = 'transfer.held' \
         WHERE t.mode = 'hold' GROUP BY t.id, t.held_at \
         HAVING count(e.id) <> CASE WHEN t.held_at IS NULL THEN 0 ELSE 1 END",
    )
    .fetch_all(pool)
    .await
    .expect("holds and their transfer.held events");
    assert!(
        holds.is_empty(),
        "holds placed without exactly one transfer.held: {holds:?}"
    );
    let orphans: Vec<(String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "WITH expected AS ({EXPECTED}) \
         SELECT e.subject, e.type FROM events e \
         LEFT JOIN expected x ON e.subject = 'transfer:' || x.id \
         WHERE e.type IN ('transfer.posted', 'transfer.failed', 'transfer.voided', \
                          'transfer.reversed') \
           AND (x.id IS NULL OR e.type <> x.type)"
    )))
    .fetch_all(pool)
    .await
    .expect("events and their transfers");
    assert!(
        orphans.is_empty(),
        "events without their change: {orphans:?}"
    );
    let gaps: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT ledger, count(*), max(seq) FROM events GROUP BY ledger \
         HAVING count(*) <> max(seq)",
    )
    .fetch_all(pool)
    .await
    .expect("numbering");
    assert!(gaps.is_empty(), "gaps in a ledger's numbering: {gaps:?}");
}

/// `ferry events tail` follows the feed through the HTTP API: one line per event, in `seq`
/// order, from the cursor given.
#[tokio::test]
async fn ferry_events_tail_prints_the_feed_from_a_cursor() {
    let app = spawn_app_with(|c| c.anomaly.enabled = false).await;
    app.create_account("alice", "USD", true).await;
    app.create_account("bob", "USD", false).await;
    for i in 0..3 {
        app.post_transfer(&format!("t-{i}"), &transfer("alice", "bob", "1.00"))
            .await;
    }
    app.run_until_idle(Duration::from_secs(20)).await;
    let run = |args: &[&str]| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"));
        command
            .args(["events", "tail", "--once"])
            .args(args)
            .env("FERRY_API_URL", &app.address)
            .env("FERRY_API_KEY", &app.api_key)
            .env("DATABASE_URL", app.database.url())
            .env("RUST_LOG", "warn");
        command.output()
    };
    let output = run(&["--after", "1"])
        .await
        .expect("ferry events tail runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].starts_with("2\ttransfer.posted\t"), "{text}");
    assert!(lines[1].starts_with("3\ttransfer.posted\t"), "{text}");
    let json = run(&["--json"]).await.expect("ferry events tail runs");
    let events: Vec<Value> = String::from_utf8_lossy(&json.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(seqs(&events), vec![1, 2, 3]);
    let refused = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["events", "tail", "--once"])
        .env("FERRY_API_URL", &app.address)
        .env("FERRY_API_KEY", "not-a-key")
        .env("DATABASE_URL", app.database.url())
        .output()
        .await
        .expect("runs");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("401"));
}
