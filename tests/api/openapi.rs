//! The OpenAPI contract (README, HTTP API: `GET /openapi.json`): the served document is the
//! checked-in `docs/openapi.json`, every route is in it, and it says what the README promises
//! (money as strings, every stable error code, a scope per operation).

use std::collections::BTreeSet;

use ferry::domain::Scope;
use ferry::intake::error::ErrorCode;
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::spawn_app;

const CHECKED_IN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");
const REGENERATE: &str = "FERRY_WRITE_OPENAPI=1 cargo test --test api openapi";

/// Every route the router serves, as `METHOD path`. A route added to `intake::api` shows up in
/// the document by construction (`routes!`); this list is the reviewer's view of the surface,
/// so adding or removing an operation is a visible change here too.
const ROUTES: &[&str] = &[
    "DELETE /v1/api-keys/{id}",
    "DELETE /v1/webhook-endpoints/{id}",
    "GET /healthz",
    "GET /metrics",
    "GET /openapi.json",
    "GET /readyz",
    "GET /v1/accounts",
    "GET /v1/accounts/{id}",
    "GET /v1/accounts/{id}/balance",
    "GET /v1/accounts/{id}/entries",
    "GET /v1/alerts",
    "GET /v1/api-keys",
    "GET /v1/audit-events",
    "GET /v1/anomalies",
    "GET /v1/anomalies/{id}/transfers",
    "GET /v1/events",
    "GET /v1/jobs/dead",
    "GET /v1/ledgers",
    "GET /v1/reconciliations",
    "GET /v1/reconciliations/{id}",
    "GET /v1/reviews",
    "GET /v1/transfers",
    "GET /v1/transfers/{id}",
    "GET /v1/webhook-endpoints",
    "GET /v1/webhook-endpoints/{id}",
    "GET /v1/webhook-endpoints/{id}/attempts",
    "POST /v1/accounts",
    "POST /v1/accounts/{id}/close",
    "POST /v1/accounts/{id}/freeze",
    "POST /v1/accounts/{id}/unfreeze",
    "POST /v1/api-keys",
    "POST /v1/jobs/{id}/discard",
    "POST /v1/jobs/{id}/retry",
    "POST /v1/ledgers",
    "POST /v1/reconciliations",
    "POST /v1/transfers",
    "POST /v1/transfers/batch",
    "POST /v1/transfers/settle",
    "POST /v1/transfers/{id}/approve",
    "POST /v1/transfers/{id}/capture",
    "POST /v1/transfers/{id}/reject",
    "POST /v1/transfers/{id}/reverse",
    "POST /v1/transfers/{id}/void",
    "POST /v1/webhook-endpoints",
    "POST /v1/webhook-endpoints/{id}/replay",
];

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

async fn served_document() -> Value {
    let app = spawn_app().await;
    // No Authorization header: the contract is public.
    let response = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .expect("request sent");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[reqwest::header::CONTENT_TYPE],
        "application/json"
    );
    response.json().await.expect("a JSON document")
}

fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
    let mut found = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in METHODS {
            if let Some(operation) = item.get(method) {
                found.push((method.to_uppercase(), path.clone(), operation));
            }
        }
    }
    found
}

#[tokio::test]
async fn the_served_document_is_the_checked_in_one() {
    let served = served_document().await;
    assert_eq!(served["openapi"], "3.1.0");
    let text = ferry::intake::openapi::document_json();
    assert_eq!(
        serde_json::from_str::<Value>(text).expect("JSON"),
        served,
        "the served document is the generated one"
    );
    if std::env::var_os("FERRY_WRITE_OPENAPI").is_some() {
        std::fs::write(CHECKED_IN, text).expect("docs/openapi.json written");
        return;
    }
    let checked_in = std::fs::read_to_string(CHECKED_IN).unwrap_or_default();
    if checked_in != text {
        let first = checked_in
            .lines()
            .zip(text.lines())
            .position(|(file, served)| file != served)
            .unwrap_or_else(|| checked_in.lines().count().min(text.lines().count()));
        panic!(
            "docs/openapi.json differs from the document ferry serves at /openapi.json, first \
             at line {}:\n  file:   {}\n  served: {}\nIf the API change is intended, \
             regenerate the file with `{REGENERATE}` and commit it.",
            first + 1,
            checked_in.lines().nth(first).unwrap_or("(end of file)"),
            text.lines().nth(first).unwrap_or("(end of document)"),
        );
    }
}

#[tokio::test]
async fn every_route_is_in_the_document_and_served() {
    let app = spawn_app().await;
    let doc = ferry::intake::openapi::document();
    let doc = serde_json::to_value(&doc).expect("JSON");
    let documented: BTreeSet<String> = operations(&doc)
        .iter()
        .map(|(method, path, _)| format!("{method} {path}"))
        .collect();
    let expected: BTreeSet<String> = ROUTES.iter().map(|r| (*r).to_owned()).collect();
    assert_eq!(documented, expected, "documented operations vs ROUTES");
    // Each documented operation is served: without a key, `/v1` answers 401 (not the fallback's
    // 404 `not_found` or 405), and the public routes answer.
    for route in ROUTES {
        let (method, path) = route.split_once(' ').expect("METHOD path");
        let path = path.replace("{id}", "00000000-0000-0000-0000-000000000000");
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let response = app
            .client
            .request(method, app.url(&path))
            .send()
            .await
            .expect("request sent");
        let status = response.status();
        if path.starts_with("/v1/") {
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{route}");
        } else {
            assert!(status.is_success(), "{route}: {status}");
        }
    }
}

#[tokio::test]
async fn the_document_says_what_the_readme_promises() {
    let doc = serde_json::to_value(ferry::intake::openapi::document()).expect("JSON");
    let schemas = &doc["components"]["schemas"];

    // The problem body's `code` is the enum of every stable code.
    let codes: BTreeSet<&str> = schemas["ErrorCode"]["enum"]
        .as_array()
        .expect("ErrorCode enum")
        .iter()
        .map(|c| c.as_str().expect("string"))
        .collect();
    let stable: BTreeSet<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(codes, stable);
    assert_eq!(
        schemas["Problem"]["properties"]["code"]["$ref"],
        "#/components/schemas/ErrorCode"
    );

    // Money is a string with a decimal pattern, never a number.
    for (schema, field) in [
        ("TransferRequest", "amount"),
        ("BatchTransferItem", "amount"),
        ("Transfer", "amount"),
        ("Account", "balance"),
        ("Entry", "amount"),
    ] {
        let property = &schemas[schema]["properties"][field];
        assert_eq!(property["type"], "string", "{schema}.{field}");
        assert!(property["pattern"].is_string(), "{schema}.{field}");
    }

    // Bearer API keys, and every /v1 operation names its scope.
    assert_eq!(
        doc["components"]["securitySchemes"]["api_key"]["scheme"],
        "bearer"
    );
    let scopes: BTreeSet<&str> = Scope::ALL.iter().map(|s| s.as_str()).collect();
    for (method, path, operation) in operations(&doc) {
        let security = &operation["security"];
        if !path.starts_with("/v1/") {
            assert!(security.is_null(), "{method} {path} is public");
            continue;
        }
        let required = security[0]["api_key"].as_array().expect("api_key scopes");
        assert_eq!(required.len(), 1, "{method} {path}");
        let scope = required[0].as_str().expect("scope");
        assert!(scopes.contains(scope), "{method} {path}: {scope}");
        let description = operation["description"].as_str().unwrap_or_default();
        assert!(
            description.contains(&format!("`{scope}`")),
            "{method} {path}: the description names the scope"
        );
        for status in ["401", "403", "503"] {
            assert!(
                operation["responses"].get(status).is_some(),
                "{method} {path} documents {status}"
            );
        }
    }

    // The Idempotency-Key header of POST /v1/transfers.
    let parameters = doc["paths"]["/v1/transfers"]["post"]["parameters"]
        .as_array()
        .expect("parameters");
    assert!(
        parameters.iter().any(|p| p["name"] == "Idempotency-Key"
            && p["in"] == "header"
            && p["required"] == true)
    );

    // X-Request-Id: every operation takes it and every answer, shared or its own, carries it.
    let request_id = &doc["components"]["parameters"]["RequestId"];
    assert_eq!(request_id["name"], "X-Request-Id");
    assert_eq!(request_id["in"], "header");
    assert_eq!(request_id["required"], false);
    let header_ref = "#/components/headers/RequestId";
    assert!(doc["components"]["headers"]["RequestId"]["schema"]["pattern"].is_string());
    for (method, path, operation) in operations(&doc) {
        let takes_it = operation["parameters"].as_array().is_some_and(|ps| {
            ps.iter()
                .any(|p| p["$ref"] == "#/components/parameters/RequestId")
        });
        assert!(takes_it, "{method} {path} takes X-Request-Id");
        for (status, response) in operation["responses"].as_object().expect("responses") {
            let response = match response["$ref"].as_str() {
                Some(shared) => {
                    let name = shared.rsplit('/').next().expect("name");
                    &doc["components"]["responses"][name]
                }
                None => response,
            };
            assert_eq!(
                response["headers"]["X-Request-Id"]["$ref"], header_ref,
                "{method} {path} {status} carries X-Request-Id"
            );
        }
    }
}
