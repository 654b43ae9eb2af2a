//! Liveness, readiness and Prometheus metrics.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Serialize;

use super::AppState;

/// The body of `/healthz` and `/readyz`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok` (`/healthz`), `ready` or `unavailable` (`/readyz`).
    #[schema(pattern = "^(ok|ready|unavailable)$")]
    status: &'static str,
    /// Why `/readyz` is not ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

impl Health {
    fn new(status: &'static str) -> Self {
        Self {
            status,
            reason: None,
        }
    }

    fn unavailable(reason: String) -> Self {
        Self {
            status: "unavailable",
            reason: Some(reason),
        }
    }
}

/// Liveness: the process answers HTTP.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    operation_id = "healthz",
    responses((status = 200, description = "The process is alive.", body = Health)),
)]
pub async fn healthz() -> Json<Health> {
    Json(Health::new("ok"))
}

/// Ready when PostgreSQL answers within the intake database timeout — the same bound requests
/// get, so "ready" means requests can be served, and "not ready" arrives within it (README:
/// within 2 s). Redis is deliberately not checked: it holds only what may be lost, and its
/// outage must not take ferry out of rotation.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    operation_id = "readyz",
    description = "Ready when PostgreSQL answers within `FERRY_INTAKE_DB_TIMEOUT_MS`. Redis \
        is not checked: it holds only what may be lost.",
    responses(
        (status = 200, description = "Requests can be served.", body = Health),
        (status = 503, description = "PostgreSQL did not answer in time.", body = Health),
    ),
)]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    let probe = sqlx::query("SELECT 1").execute(&state.pool);
    match tokio::time::timeout(state.db_timeout, probe).await {
        Ok(Ok(_)) => (StatusCode::OK, Json(Health::new("ready"))),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health::unavailable(format!("database: {e}"))),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health::unavailable("database: timed out".into())),
        ),
    }
}

/// Prometheus metrics in the text exposition format; every name starts with `ferry_`.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    operation_id = "metrics",
    responses((
        status = 200,
        description = "Prometheus text exposition format 0.0.4; every name starts with `ferry_`.",
        body = String,
        content_type = "text/plain",
    )),
)]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}
