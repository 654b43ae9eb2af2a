//! PostgreSQL outages: intake answers `503 unavailable` with `Retry-After` within 2 s — never
//! `500`, `401` or a hang — and recovers without a restart once the database is back.
//!
//! The shared server is never stopped: each test makes only its own database unreachable.

use std::time::{Duration, Instant};

use ferry::config::{Config, Roles};
use ferry::intake::IntakeSettings;
use reqwest::StatusCode;
use serde_json::json;
use sqlx::{Connection, PgConnection};

use crate::helpers::{Reply, TestApp, create_api_key, server_url, spawn_app_with, transfer};

/// The promise of README (HTTP API): outage answers within 2 s.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);

/// Intake alone (workers would fail alongside, and are not under test), with the production
/// database timeout.
fn intake_with_default_timeout(config: &mut Config) {
    config.roles = Roles {
        intake: true,
        worker: false,
        scheduler: false,
    };
    config.intake.db_timeout = IntakeSettings::default().db_timeout;
}

async fn admin() -> PgConnection {
    PgConnection::connect(&format!("{}/postgres", server_url()))
        .await
        .expect("admin connection")
}

async fn execute(conn: &mut PgConnection, statement: String) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
        .execute(conn)
        .await
        .expect("admin statement");
}

/// Ends every session on the test's database (and only there).
async fn terminate_backends(conn: &mut PgConnection, database: &str) {
    execute(
        conn,
        format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = '{database}' AND pid <> pg_backend_pid()"
        ),
    )
    .await;
    let started = Instant::now();
    loop {
        let left: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = $1")
                .bind(database)
                .fetch_one(&mut *conn)
                .await
                .expect("count sessions");
        if left == 0 {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "sessions left");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends `request` and checks it is a prompt, honest `503 unavailable`.
async fn assert_unavailable(app: &TestApp, what: &str, request: reqwest::RequestBuilder) {
    let started = Instant::now();
    let reply: Reply = app.send(request).await;
    let elapsed = started.elapsed();
    eprintln!("{what}: {} after {elapsed:?}", reply.status);
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{what}: {}",
        reply.body
    );
    assert!(
        elapsed < ANSWER_WITHIN,
        "{what}: answered after {elapsed:?}"
    );
    assert_eq!(reply.body["code"], "unavailable", "{what}");
    assert_eq!(reply.headers["content-type"], "application/problem+json");
    let retry_after = reply.headers["retry-after"]
        .to_str()
        .ok()
        .and_then(|v| v.parse::<u64>().ok());
    assert!(
        retry_after.is_some_and(|s| s >= 1),
        "{what}: Retry-After {retry_after:?}"
    );
}

/// Every kind of intake request during the outage, including authentication that has to ask
/// the database (`fresh_key` was never used, so it is not cached).
async fn assert_intake_unavailable(app: &TestApp, fresh_key: &str) {
    let post = |key: &str, idempotency_key: &str| {
        app.client
            .post(app.url("/v1/transfers"))
            .bearer_auth(key)
            .header("Idempotency-Key", idempotency_key)
            .json(&transfer("t", "b", "1.00"))
    };
    assert_unavailable(app, "POST /v1/transfers", post(&app.api_key, "during")).await;
    assert_unavailable(app, "uncached API key", post(fresh_key, "fresh")).await;
    let batch = json!({"transfers": [{"idempotency_key": "batch", "from_account": "t",
        "to_account": "b", "amount": "1.00", "currency": "USD"}]});
    assert_unavailable(
        app,
        "POST /v1/transfers/batch",
        app.client
            .post(app.url("/v1/transfers/batch"))
            .bearer_auth(&app.api_key)
            .json(&batch),
    )
    .await;
    assert_unavailable(
        app,
        "GET /v1/accounts/b",
        app.client
            .get(app.url("/v1/accounts/b"))
            .bearer_auth(&app.api_key),
    )
    .await;
    assert_unavailable(
        app,
        "POST /v1/accounts",
        app.client
            .post(app.url("/v1/accounts"))
            .bearer_auth(&app.api_key)
            .json(&json!({"id": "c", "currency": "USD"})),
    )
    .await;
    let started = Instant::now();
    let ready = app.send(app.client.get(app.url("/readyz"))).await;
    eprintln!(
        "GET /readyz: {} after {:?}",
        ready.status,
        started.elapsed()
    );
    assert_eq!(
        ready.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        ready.body
    );
    assert!(started.elapsed() < ANSWER_WITHIN);
}

/// After the outage: the transfer refused during it is accepted (it was not stored), the one
/// from before replays, and readiness is back — all without restarting ferry.
async fn assert_recovered(app: &TestApp) {
    let started = Instant::now();
    loop {
        let reply = app
            .post_transfer("during", &transfer("t", "b", "1.00"))
            .await;
        if reply.status == StatusCode::ACCEPTED {
            break;
        }
        assert_eq!(
            reply.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            reply.body
        );
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "not recovered: {}",
            reply.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("recovered after {:?}", started.elapsed());
    let replay = app
        .post_transfer("before", &transfer("t", "b", "1.00"))
        .await;
    assert_eq!(replay.status, StatusCode::OK, "{}", replay.body);
    let ready = app.send(app.client.get(app.url("/readyz"))).await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.body);
    assert_eq!(
        app.count("SELECT count(*) FROM transfers WHERE idempotency_key IN ('fresh', 'batch')")
            .await,
        0,
        "a request answered 503 before reaching the database was stored"
    );
}

/// Accounts, one accepted transfer (which also caches the API key), and an unused key.
async fn prepare(app: &TestApp) -> String {
    app.create_account("t", "USD", true).await;
    app.create_account("b", "USD", false).await;
    let before = app
        .post_transfer("before", &transfer("t", "b", "1.00"))
        .await;
    assert_eq!(before.status, StatusCode::ACCEPTED, "{}", before.body);
    create_api_key(&app.pool, "admin").await
}

#[tokio::test]
async fn a_database_closed_to_connections_is_503_unavailable_and_recovers() {
    let app = spawn_app_with(intake_with_default_timeout).await;
    let fresh_key = prepare(&app).await;
    let name = app.database.name();
    let mut admin = admin().await;
    execute(
        &mut admin,
        format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS false"),
    )
    .await;
    terminate_backends(&mut admin, name).await;
    assert_intake_unavailable(&app, &fresh_key).await;
    execute(
        &mut admin,
        format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS true"),
    )
    .await;
    assert_recovered(&app).await;
}

#[tokio::test]
async fn a_database_server_that_refuses_tcp_is_503_unavailable_and_recovers() {
    let app = spawn_app_with(intake_with_default_timeout).await;
    let fresh_key = prepare(&app).await;
    // PostgreSQL "down": new connections go to a port nobody listens on (refused, which sqlx
    // retries until its acquire timeout), and the open ones are ended.
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address").port()
    };
    let reachable = app.pool.connect_options();
    app.pool
        .set_connect_options((*reachable).clone().port(closed_port));
    terminate_backends(&mut admin().await, app.database.name()).await;
    assert_intake_unavailable(&app, &fresh_key).await;
    app.pool.set_connect_options((*reachable).clone());
    assert_recovered(&app).await;
}

#[tokio::test]
async fn an_exhausted_pool_is_503_unavailable_and_recovers() {
    let app = spawn_app_with(intake_with_default_timeout).await;
    let fresh_key = prepare(&app).await;
    let mut held = Vec::new();
    while held.len() < app.pool.options().get_max_connections() as usize {
        held.push(app.pool.acquire().await.expect("connection"));
    }
    assert_intake_unavailable(&app, &fresh_key).await;
    drop(held);
    assert_recovered(&app).await;
}
