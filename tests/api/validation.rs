//! Bad input gets a clear problem+json error with a stable code, and changes nothing.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app};

fn body(amount: Value, currency: &str) -> Value {
    json!({"from_account": "a", "to_account": "b", "amount": amount, "currency": currency})
}

async fn assert_refused(app: &TestApp, key: &str, request: &Value, status: StatusCode, code: &str) {
    let reply = app.post_transfer(key, request).await;
    assert_eq!(reply.status, status, "{request}: {}", reply.body);
    assert_eq!(reply.body["code"], code, "{request}");
    assert_eq!(reply.headers["content-type"], "application/problem+json");
    assert!(reply.body["detail"].as_str().is_some_and(|d| !d.is_empty()));
    assert_eq!(reply.body["status"], status.as_u16());
}

async fn assert_nothing_stored(app: &TestApp) {
    assert_eq!(app.count("SELECT count(*) FROM transfers").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM apalis.jobs").await, 0);
}

/// Sends each request, expects the same refusal for all, and that nothing was stored.
async fn assert_all_refused(requests: &[Value], status: StatusCode, code: &str) {
    let app = spawn_app().await;
    for request in requests {
        assert_refused(&app, "k", request, status, code).await;
    }
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn zero_and_negative_amounts_are_invalid_amount() {
    let requests: Vec<_> = ["0", "0.00", "-1.00", "-0.01"]
        .into_iter()
        .map(|amount| body(json!(amount), "USD"))
        .collect();
    assert_all_refused(&requests, StatusCode::BAD_REQUEST, "invalid_amount").await;
}

#[tokio::test]
async fn amounts_that_are_not_strings_are_invalid_amount() {
    let amounts = [
        json!(12.3),
        json!(12),
        json!(null),
        json!(["1"]),
        json!({"v": "1"}),
        json!(true),
    ];
    let requests: Vec<_> = amounts.into_iter().map(|a| body(a, "USD")).collect();
    assert_all_refused(&requests, StatusCode::BAD_REQUEST, "invalid_amount").await;
}

#[tokio::test]
async fn over_precise_malformed_and_huge_amounts_are_invalid_amount() {
    let huge = "9".repeat(100);
    let cases = [
        ("1.001", "USD"),
        ("1.5", "JPY"),
        ("0.0001", "BHD"),
        ("1e3", "USD"),
        ("1,00", "USD"),
        (" 1.00", "USD"),
        ("+1.00", "USD"),
        ("", "USD"),
        ("NaN", "USD"),
        ("1000000000000000.01", "USD"),
        (huge.as_str(), "USD"),
    ];
    let requests: Vec<_> = cases
        .into_iter()
        .map(|(amount, currency)| body(json!(amount), currency))
        .collect();
    assert_all_refused(&requests, StatusCode::BAD_REQUEST, "invalid_amount").await;
}

#[tokio::test]
async fn unknown_currencies_are_invalid_currency() {
    let requests: Vec<_> = ["ABC", "usd", "US", "EURO", "", "XAU"]
        .into_iter()
        .map(|currency| body(json!("1.00"), currency))
        .collect();
    assert_all_refused(&requests, StatusCode::BAD_REQUEST, "invalid_currency").await;
}

#[tokio::test]
async fn a_transfer_to_the_same_account_is_same_account() {
    let app = spawn_app().await;
    let request = json!({"from_account": "a", "to_account": "a", "amount": "1.00",
                         "currency": "USD"});
    assert_refused(&app, "k", &request, StatusCode::BAD_REQUEST, "same_account").await;
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn malformed_account_ids_are_invalid_account() {
    let app = spawn_app().await;
    let request = json!({"from_account": "a b", "to_account": "b", "amount": "1.00",
                         "currency": "USD"});
    assert_refused(
        &app,
        "k",
        &request,
        StatusCode::BAD_REQUEST,
        "invalid_account",
    )
    .await;
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn unknown_fields_missing_fields_and_wrong_types_are_invalid_body() {
    let app = spawn_app().await;
    let cases = [
        json!({"from_account": "a", "to_account": "b", "amount": "1.00", "currency": "USD",
               "memo": "unknown field"}),
        json!({"from_account": "a", "to_account": "b", "currency": "USD"}),
        json!({"from_account": 1, "to_account": "b", "amount": "1.00", "currency": "USD"}),
        json!({"from_account": "a", "to_account": "b", "amount": "1.00", "currency": "USD",
               "metadata": "not an object"}),
        json!([1, 2, 3]),
        json!("just a string"),
    ];
    for request in &cases {
        assert_refused(&app, "k", request, StatusCode::BAD_REQUEST, "invalid_body").await;
    }
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn malformed_json_is_invalid_body() {
    let app = spawn_app().await;
    for raw in ["{", "{\"amount\": }", "", "nul", "{\"a\":1}}"] {
        let reply = app
            .send(
                app.client
                    .post(app.url("/v1/transfers"))
                    .bearer_auth(&app.api_key)
                    .header("Idempotency-Key", "k")
                    .header("Content-Type", "application/json")
                    .body(raw),
            )
            .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{raw:?}");
        assert_eq!(reply.body["code"], "invalid_body", "{raw:?}");
    }
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn a_body_over_one_mebibyte_is_413() {
    let app = spawn_app().await;
    let padding = "x".repeat(1024 * 1024);
    let request = json!({"from_account": "a", "to_account": "b", "amount": "1.00",
                         "currency": "USD", "reference": padding});
    assert_refused(
        &app,
        "k",
        &request,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    )
    .await;
    let batch = app
        .post_json("/v1/transfers/batch", &json!({"transfers": [request]}))
        .await;
    assert_eq!(batch.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn an_unknown_route_is_a_problem_404() {
    let app = spawn_app().await;
    let reply = app.get("/v1/nothing-here").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.body["code"], "not_found");
}

#[tokio::test]
async fn health_readiness_and_metrics_answer() {
    let app = spawn_app().await;
    let health = app.send(app.client.get(app.url("/healthz"))).await;
    assert_eq!(health.status, StatusCode::OK);
    let ready = app.send(app.client.get(app.url("/readyz"))).await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.body["status"], "ready");
    app.get("/v1/accounts/x").await;
    let metrics = app.metrics().await;
    assert!(metrics.contains("ferry_http_requests_total"), "{metrics}");
    assert!(
        metrics
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .all(|l| l.starts_with("ferry_")),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_nul_character_in_text_is_invalid_body_and_spares_concurrent_requests() {
    let app = spawn_app().await;
    app.create_account("t", "USD", true).await;
    app.create_account("b", "USD", false).await;
    let poisoned = [
        json!({"from_account": "t", "to_account": "b", "amount": "1.00", "currency": "USD",
               "reference": "a\u{0}b"}),
        json!({"from_account": "t", "to_account": "b", "amount": "1.00", "currency": "USD",
               "metadata": {"k": ["x\u{0}"]}}),
    ];
    let good = json!({"from_account": "t", "to_account": "b", "amount": "1.00",
                      "currency": "USD"});
    let (bad1, bad2, ok) = tokio::join!(
        app.post_transfer("p1", &poisoned[0]),
        app.post_transfer("p2", &poisoned[1]),
        app.post_transfer("fine", &good),
    );
    for bad in [bad1, bad2] {
        assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.body);
        assert_eq!(bad.body["code"], "invalid_body");
    }
    assert_eq!(ok.status, StatusCode::ACCEPTED, "{}", ok.body);
    assert_eq!(app.count("SELECT count(*) FROM transfers").await, 1);
}

/// Found by Schemathesis (.ci/schemathesis.sh): serde's derived structs also decode an array
/// of their fields in order, so `[null, null]` started a reconciliation run with `202`. Every
/// body must be a JSON object, as docs/openapi.json says.
#[tokio::test]
async fn a_body_that_is_not_a_json_object_is_invalid_body_on_every_route() {
    let app = spawn_app().await;
    let routes = [
        "/v1/accounts",
        "/v1/transfers",
        "/v1/transfers/batch",
        "/v1/reconciliations",
    ];
    for path in routes {
        for raw in [
            "[null, null]",
            "[]",
            " [\"alice\", \"USD\"]",
            "null",
            "1",
            "\"x\"",
        ] {
            let reply = app
                .send(
                    app.client
                        .post(app.url(path))
                        .bearer_auth(&app.api_key)
                        .header("Idempotency-Key", "array-body")
                        .header("Content-Type", "application/json")
                        .body(raw),
                )
                .await;
            assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{path} {raw}");
            assert_eq!(reply.body["code"], "invalid_body", "{path} {raw}");
        }
    }
    assert_nothing_stored(&app).await;
    assert_eq!(app.count("SELECT count(*) FROM accounts").await, 0);
    assert_eq!(
        app.count("SELECT count(*) FROM reconciliation_runs").await,
        0
    );
}

/// A `%00` in any query parameter is `invalid_body`: PostgreSQL's `text` cannot hold a NUL,
/// so it must not reach a query (`/v1/jobs/dead?after=…%00…` was a 500).
#[tokio::test]
async fn a_nul_byte_in_a_query_parameter_is_invalid_body() {
    let app = spawn_app().await;
    for path in [
        "/v1/transfers?idempotency_key=a%00b",
        "/v1/accounts/a/entries?cursor=%00",
        "/v1/events?types=transfer.posted%00",
        "/v1/ledgers?cursor=x%00",
    ] {
        let reply = app.get(path).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{path}: {}",
            reply.body
        );
        assert_eq!(reply.body["code"], "invalid_body", "{path}");
    }
}
