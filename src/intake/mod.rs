//! Intake: the HTTP API. Parses requests into domain types at the edge and hands them to
//! `store`, which commits the transfer rows together with their job.

pub mod accounts;
pub mod alerts;
pub mod auth;
pub mod error;
pub mod health;
pub mod json;
pub mod paging;
pub mod query;
pub mod rate_limit;
pub mod reconciliations;
pub mod transfers;

use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;

use crate::store::api_keys::ApiKeyCache;
use crate::store::group_commit::GroupCommitter;

use error::ApiError;

/// What every handler may use.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub metrics: PrometheusHandle,
    /// Groups concurrent single-transfer requests into shared commits.
    pub intake: GroupCommitter,
    pub rate_limiter: rate_limit::RateLimiter,
    pub api_keys: ApiKeyCache,
}

pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/accounts", post(accounts::create))
        .route("/accounts/{id}", get(accounts::get))
        .route("/accounts/{id}/entries", get(accounts::entries))
        .route(
            "/transfers",
            post(transfers::create).get(transfers::get_by_key),
        )
        .route("/transfers/batch", post(transfers::create_batch))
        .route("/transfers/{id}", get(transfers::get))
        .route(
            "/reconciliations",
            post(reconciliations::start).get(reconciliations::list),
        )
        .route("/reconciliations/{id}", get(reconciliations::get))
        .route("/alerts", get(alerts::list));
    Router::new()
        .nest("/v1", v1)
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .fallback(|| async { ApiError::RouteNotFound })
        .layer(DefaultBodyLimit::max(json::BODY_BYTES_MAX))
        .layer(middleware::from_fn(record_request))
        .with_state(state)
}

/// Counts and times every request by route template (never by raw path, to bound cardinality).
async fn record_request(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("ferry_http_requests_total", "method" => method.clone(),
        "route" => route.clone(), "status" => status)
    .increment(1);
    metrics::histogram!("ferry_http_request_duration_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}
