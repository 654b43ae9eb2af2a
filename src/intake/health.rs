//! Liveness, readiness and Prometheus metrics.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde_json::json;

use super::AppState;

/// How long readiness waits for the database before saying no.
pub const READINESS_DB_TIMEOUT_MS: u64 = 2_000;

pub async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// Ready when PostgreSQL answers. Redis is deliberately not checked: it holds only what may be
/// lost, and its outage must not take ferry out of rotation.
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let probe = sqlx::query("SELECT 1").execute(&state.pool);
    match tokio::time::timeout(Duration::from_millis(READINESS_DB_TIMEOUT_MS), probe).await {
        Ok(Ok(_)) => (StatusCode::OK, Json(json!({"status": "ready"}))),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "reason": format!("database: {e}")})),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "reason": "database: timed out"})),
        ),
    }
}

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}
