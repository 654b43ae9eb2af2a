use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{create_api_key, spawn_app, transfer};

#[tokio::test]
async fn a_request_without_a_key_is_unauthorized() {
    let app = spawn_app().await;
    let reply = app.send(app.client.get(app.url("/v1/accounts/x"))).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.body["code"], "unauthorized");
    assert_eq!(reply.headers["content-type"], "application/problem+json");
}

#[tokio::test]
async fn an_unknown_or_malformed_key_is_unauthorized() {
    let app = spawn_app().await;
    for header in ["Bearer ferry_nope", "Basic abc", "Bearer ", "ferry_x"] {
        let reply = app
            .send(
                app.client
                    .get(app.url("/v1/accounts/x"))
                    .header("Authorization", header),
            )
            .await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{header}");
        assert_eq!(reply.body["code"], "unauthorized");
    }
}

#[tokio::test]
async fn duplicate_authorization_headers_are_unauthorized() {
    let app = spawn_app().await;
    let reply = app
        .send(
            app.client
                .get(app.url("/v1/accounts/x"))
                .header("Authorization", format!("Bearer {}", app.api_key))
                .header("Authorization", format!("Bearer {}", app.api_key)),
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_key_without_the_scope_is_forbidden_and_changes_nothing() {
    let app = spawn_app().await;
    let reader = create_api_key(&app.pool, "accounts:read,transfers:read").await;
    let reply = app
        .send(
            app.client
                .post(app.url("/v1/transfers"))
                .bearer_auth(&reader)
                .header("Idempotency-Key", "k1")
                .json(&transfer("a", "b", "1.00")),
        )
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.body["code"], "forbidden");
    let reply = app
        .send(
            app.client
                .post(app.url("/v1/accounts"))
                .bearer_auth(&reader)
                .json(&json!({"currency": "USD"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(app.count("SELECT count(*) FROM transfers").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM accounts").await, 0);
}

#[tokio::test]
async fn keys_are_stored_hashed() {
    let app = spawn_app().await;
    let stored: Vec<Vec<u8>> = sqlx::query_scalar("SELECT key_hash FROM api_keys")
        .fetch_all(&app.pool)
        .await
        .expect("keys");
    assert_eq!(stored.len(), 1);
    assert_ne!(stored[0], app.api_key.as_bytes());
    assert_eq!(stored[0].len(), 32);
}

#[tokio::test]
async fn transfers_of_one_key_are_invisible_to_another() {
    let app = spawn_app().await;
    app.create_account("t", "USD", true).await;
    app.create_account("b", "USD", false).await;
    let reply = app.post_transfer("k", &transfer("t", "b", "1.00")).await;
    let id = reply.body["id"].as_str().expect("id").to_owned();
    let other = create_api_key(&app.pool, "transfers:read").await;
    let reply = app
        .send(
            app.client
                .get(app.url(&format!("/v1/transfers/{id}")))
                .bearer_auth(&other),
        )
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
}
