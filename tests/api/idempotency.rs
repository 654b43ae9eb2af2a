//! Invariant 1: one idempotency key (per API key) creates at most one transfer, ever.

use std::time::Duration;

use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{create_api_key, spawn_app, spawn_intake_only_app, spawn_worker, transfer};

#[tokio::test]
async fn a_new_key_is_accepted_with_202_and_a_location() {
    // Intake alone, so the job is still there to be read after the 202.
    let app = spawn_intake_only_app().await;
    app.create_account("t", "USD", true).await;
    app.create_account("b", "USD", false).await;
    let reply = app
        .post_transfer("order-1", &transfer("t", "b", "12.3"))
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    assert_eq!(reply.body["status"], "pending");
    assert_eq!(reply.body["amount"], "12.30");
    assert_eq!(reply.body["idempotency_key"], "order-1");
    let id = reply.body["id"].as_str().expect("id");
    assert_eq!(
        reply.headers["location"],
        format!("/v1/transfers/{id}").as_str()
    );
    // The row and its job were committed together before the 202: one posting job, due,
    // carrying exactly this transfer.
    assert_eq!(app.count("SELECT count(*) FROM transfers").await, 1);
    let jobs: Vec<(String, String, Value)> = sqlx::query_as(
        "SELECT job_type, status, convert_from(job, 'UTF8')::jsonb FROM apalis.jobs",
    )
    .fetch_all(&app.pool)
    .await
    .expect("jobs");
    assert_eq!(
        jobs,
        vec![(
            ferry::queue::POST_TRANSFERS_QUEUE.to_owned(),
            "Pending".to_owned(),
            json!({"transfer_ids": [id]})
        )]
    );
    // A worker posts it.
    let _worker = spawn_worker(app.database.url(), |_| {}).await;
    let posted = app.wait_until_terminal(id).await;
    assert_eq!(posted["status"], "posted");
    assert_eq!(posted["attempts"], 1);
    assert!(posted["posted_at"].is_string());
    assert_eq!(app.balance("b").await, "12.30");
}

#[tokio::test]
async fn a_replayed_key_returns_the_same_transfer_with_200() {
    let app = spawn_app().await;
    app.create_account("t", "USD", true).await;
    app.create_account("b", "USD", false).await;
    let first = app.post_transfer("k", &transfer("t", "b", "5.00")).await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    app.run_until_idle(Duration::from_secs(20)).await;
    // Same request, written differently ("5" = "5.00"): a replay, showing the transfer now.
    let replay = app.post_transfer("k", &transfer("t", "b", "5")).await;
    assert_eq!(replay.status, StatusCode::OK, "{}", replay.body);
    assert_eq!(replay.headers["idempotent-replayed"], "true");
    assert_eq!(replay.body["id"], first.body["id"]);
    assert_eq!(replay.body["status"], "posted");
    assert!(first.headers.get("idempotent-replayed").is_none());
    assert_eq!(app.count("SELECT count(*) FROM transfers").await, 1);
    assert_eq!(app.count("SELECT count(*) FROM entries").await, 2);
    assert_eq!(app.balance("b").await, "5.00");
}

#[tokio::test]
async fn a_key_reused_with_another_body_is_422_and_changes_nothing() {
    let app = spawn_app().await;
    app.create_account("t", "USD", true).await;
    app.create_account("b", "USD", false).await;
    let first = app.post_transfer("k", &transfer("t", "b", "5.00")).await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    for other in [
        transfer("t", "b", "5.01"),
        transfer("b", "t", "5.00"),
        json!({"from_account": "t", "to_account": "b", "amount": "5.00", "currency": "USD",
               "reference": "another"}),
    ] {
        let reply = app.post_transfer("k", &other).await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{other}");
        assert_eq!(reply.body["code"], "idempotency_key_reused");
    }
    assert_eq!(app.count("SELECT count(*) FROM transfers").await, 1);
}

#[tokio::test]
async fn a_missing_key_is_400_and_stores_nothing() {
    let app = spawn_app().await;
    let reply = app
        .post_json("/v1/transfers", &transfer("a", "b", "1.00"))
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.body["code"], "idempotency_key_missing");
    assert_eq!(app.count("SELECT count(*) FROM transfers").await, 0);
}

#[tokio::test]
async fn duplicate_or_invalid_key_headers_are_400() {
    let app = spawn_app().await;
    let reply = app
        .send(
            app.client
                .post(app.url("/v1/transfers"))
                .bearer_auth(&app.api_key)
                .header("Idempotency-Key", "a")
                .header("Idempotency-Key", "b")
                .json(&transfer("a", "b", "1.00")),
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.body["code"], "idempotency_key_invalid");
    for bad in ["has space".to_owned(), "k".repeat(256), String::new()] {
        let reply = app.post_transfer(&bad, &transfer("a", "b", "1.00")).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad:?}");
        assert_eq!(reply.body["code"], "idempotency_key_invalid", "{bad:?}");
    }
    assert_eq!(app.count("SELECT count(*) FROM transfers").await, 0);
}

#[tokio::test]
async fn a_validation_error_is_not_stored_so_the_key_can_be_reused() {
    let app = spawn_app().await;
    app.create_account("t", "USD", true).await;
    app.create_account("b", "USD", false).await;
    let bad = app.post_transfer("k", &transfer("t", "b", "1.001")).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let good = app.post_transfer("k", &transfer("t", "b", "1.00")).await;
    assert_eq!(good.status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn fifty_concurrent_requests_with_one_key_create_one_transfer() {
    let app = spawn_app().await;
    app.create_account("t", "USD", true).await;
    app.create_account("b", "USD", false).await;
    let body = transfer("t", "b", "7.00");
    let replies = join_all((0..50).map(|_| app.post_transfer("same-key", &body))).await;
    let accepted = replies
        .iter()
        .filter(|r| r.status == StatusCode::ACCEPTED)
        .count();
    let replayed = replies
        .iter()
        .filter(|r| r.status == StatusCode::OK)
        .count();
    assert_eq!((accepted, replayed), (1, 49));
    let ids: std::collections::HashSet<_> =
        replies.iter().map(|r| r.body["id"].to_string()).collect();
    assert_eq!(ids.len(), 1);
    app.run_until_idle(Duration::from_secs(20)).await;
    assert_eq!(app.count("SELECT count(*) FROM transfers").await, 1);
    assert_eq!(app.balance("b").await, "7.00");
}

#[tokio::test]
async fn the_same_key_under_two_api_keys_is_two_transfers() {
    let app = spawn_app().await;
    app.create_account("t", "USD", true).await;
    app.create_account("b", "USD", false).await;
    let other = create_api_key(&app.pool, "transfers:write").await;
    let first = app.post_transfer("k", &transfer("t", "b", "1.00")).await;
    let second = app
        .send(
            app.client
                .post(app.url("/v1/transfers"))
                .bearer_auth(&other)
                .header("Idempotency-Key", "k")
                .json(&transfer("t", "b", "1.00")),
        )
        .await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    assert_eq!(second.status, StatusCode::ACCEPTED);
    assert_ne!(first.body["id"], second.body["id"]);
}

#[tokio::test]
async fn a_transfer_is_found_by_its_key() {
    let app = spawn_app().await;
    let reply = app
        .post_transfer("find-me", &transfer("x", "y", "1.00"))
        .await;
    let found = app.get("/v1/transfers?idempotency_key=find-me").await;
    assert_eq!(found.status, StatusCode::OK);
    assert_eq!(found.body["id"], reply.body["id"]);
    let missing = app.get("/v1/transfers?idempotency_key=nope").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.body["code"], "transfer_not_found");
    let no_query = app.get("/v1/transfers").await;
    assert_eq!(no_query.status, StatusCode::BAD_REQUEST);
    let bad_id = app.get("/v1/transfers/not-a-uuid").await;
    assert_eq!(bad_id.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_batch_reports_each_item_and_replays_within_and_across_batches() {
    let app = spawn_app().await;
    app.create_account("t", "USD", true).await;
    app.create_account("b", "USD", false).await;
    let item = |key: &str, amount: &str| {
        json!({"idempotency_key": key, "from_account": "t", "to_account": "b",
               "amount": amount, "currency": "USD"})
    };
    let reply = app
        .post_json(
            "/v1/transfers/batch",
            &json!({"transfers": [
                item("a", "1.00"),
                item("b", "2.00"),
                item("a", "1.00"),             // same key, same body: replay of the first
                item("b", "9.00"),             // same key, other body: rejected
                item("c", "0"),                // invalid: rejected, not stored
                {"from_account": "t"},         // no key at all
            ]}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let results = reply.body["results"].as_array().expect("results");
    let outcomes: Vec<_> = results
        .iter()
        .map(|r| r["outcome"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        outcomes,
        [
            "accepted", "accepted", "replayed", "rejected", "rejected", "rejected"
        ]
    );
    assert_eq!(results[2]["transfer"]["id"], results[0]["transfer"]["id"]);
    assert_eq!(results[3]["error"]["code"], "idempotency_key_reused");
    assert_eq!(results[4]["error"]["code"], "invalid_amount");
    assert_eq!(results[5]["error"]["code"], "invalid_body");
    assert_eq!(app.count("SELECT count(*) FROM transfers").await, 2);
    // One intake commit, one job, listing exactly the two new transfers.
    assert_eq!(app.count("SELECT count(*) FROM apalis.jobs").await, 1);
    let payload: Vec<u8> = sqlx::query_scalar("SELECT job FROM apalis.jobs")
        .fetch_one(&app.pool)
        .await
        .expect("job");
    let job: ferry::queue::payloads::PostTransfers =
        serde_json::from_slice(&payload).expect("the payload decodes as PostTransfers");
    let mut listed: Vec<String> = job.transfer_ids.iter().map(|id| id.to_string()).collect();
    listed.sort();
    let mut accepted = vec![
        results[0]["transfer"]["id"]
            .as_str()
            .unwrap_or("")
            .to_owned(),
        results[1]["transfer"]["id"]
            .as_str()
            .unwrap_or("")
            .to_owned(),
    ];
    accepted.sort();
    assert_eq!(listed, accepted);
    let again = app
        .post_json(
            "/v1/transfers/batch",
            &json!({"transfers": [item("b", "2.00")]}),
        )
        .await;
    assert_eq!(again.body["results"][0]["outcome"], "replayed");
    // Nothing new, no job.
    assert_eq!(app.count("SELECT count(*) FROM apalis.jobs").await, 1);
    app.run_until_idle(Duration::from_secs(20)).await;
    assert_eq!(app.balance("b").await, "3.00");
}

#[tokio::test]
async fn a_batch_must_hold_one_to_a_thousand_items() {
    let app = spawn_app().await;
    let empty = app
        .post_json("/v1/transfers/batch", &json!({"transfers": []}))
        .await;
    assert_eq!(empty.status, StatusCode::BAD_REQUEST);
    assert_eq!(empty.body["code"], "invalid_body");
    let items: Vec<_> = (0..1001)
        .map(|n| {
            json!({"idempotency_key": format!("k{n}"), "from_account": "a",
                        "to_account": "b", "amount": "1.00", "currency": "USD"})
        })
        .collect();
    let too_many = app
        .post_json("/v1/transfers/batch", &json!({"transfers": items}))
        .await;
    assert_eq!(too_many.status, StatusCode::BAD_REQUEST);
    assert_eq!(app.count("SELECT count(*) FROM transfers").await, 0);
}
