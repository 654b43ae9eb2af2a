//! Intake: the HTTP API. Parses requests into domain types at the edge and hands them to
//! `store`, which commits the transfer rows together with their job.

pub mod accounts;
pub mod alerts;
pub mod anomalies;
pub mod api_keys;
pub mod audit;
pub mod auth;
pub mod error;
pub mod events;
pub mod health;
pub mod holds;
pub mod jobs;
pub mod json;
pub mod ledgers;
pub mod openapi;
pub mod paging;
pub mod query;
pub mod rate_limit;
pub mod reconciliations;
pub mod request_id;
pub mod reviews;
pub mod serve;
pub mod transfers;
pub mod webhooks;

use std::future::Future;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use sqlx::PgPool;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::store::api_keys::ApiKeyCache;
use crate::store::group_commit::GroupCommitter;
use crate::store::holds::{SettleOutcome, SettleRequest};

use error::{ApiError, DATABASE_UNAVAILABLE};

/// `[intake]`: how requests reach the database (README, "Configuration").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IntakeSettings {
    /// Group commits in flight at once.
    pub committers: usize,
    /// Longest a group of single requests that already has company waits for more before it
    /// commits (`store::group_commit`); zero turns waiting off.
    #[serde(rename = "group_linger_ms", with = "crate::serde_duration::millis")]
    pub group_linger: Duration,
    /// Longest a request waits on PostgreSQL (connection, statements, group commit) before it
    /// is answered `503 unavailable` ([`AppState::db`]).
    #[serde(rename = "db_timeout_ms", with = "crate::serde_duration::millis")]
    pub db_timeout: Duration,
    /// How often the operator console's overview is sampled, however many browsers watch it
    /// (README, "Operator console").
    #[serde(rename = "console_refresh_ms", with = "crate::serde_duration::millis")]
    pub console_refresh: Duration,
}

impl Default for IntakeSettings {
    fn default() -> Self {
        Self {
            // One: each commit is a single statement, and the next group fills while it runs —
            // measured best on two cores (BENCHMARKS.md: 1 committer 12k accepted/s, 2 → 10k,
            // 4 → 8k at 64 clients).
            committers: 1,
            // 6 ms: PostgreSQL's CPU per transfer −8 to −12 % at 2,768 single requests/s and
            // −15 to −27 % at 800/s, single requests' p99 at 50 % of saturation 116.8 → 79.2 ms
            // (medians of three); a lone request does not wait (BENCHMARKS.md, issue 26,
            // "Ninth sitting").
            group_linger: Duration::from_millis(6),
            // 1.5 s keeps answers during an outage within 2 s (README, HTTP API) and is ~75×
            // intake's p99 (BENCHMARKS.md).
            db_timeout: Duration::from_millis(1_500),
            // Five queries every 5 s, whatever the number of open tabs.
            console_refresh: Duration::from_secs(5),
        }
    }
}

/// What every handler may use.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub metrics: PrometheusHandle,
    /// Groups concurrent single-transfer requests into shared commits.
    pub intake: GroupCommitter,
    /// Groups concurrent captures and voids of holds into shared commits.
    pub settlements: GroupCommitter<SettleRequest, SettleOutcome>,
    pub rate_limiter: rate_limit::RateLimiter,
    pub api_keys: ApiKeyCache,
    /// Longest a request waits on PostgreSQL, connection included (`FERRY_INTAKE_DB_TIMEOUT_MS`).
    pub db_timeout: Duration,
    /// Where webhook endpoints may point (`[webhooks]`).
    pub webhook_urls: std::sync::Arc<crate::webhooks::ssrf::UrlPolicy>,
}

impl AppState {
    /// Runs a request's database work within [`AppState::db_timeout`]. Past it the answer is
    /// `503 unavailable`: the pool's own acquire timeout belongs to the workers and is longer,
    /// and a connection that stopped answering mid-statement has no timeout at all (README,
    /// HTTP API: an outage is answered within 2 s, never by a hang).
    pub async fn db<T, E: Into<ApiError>>(
        &self,
        work: impl Future<Output = Result<T, E>>,
    ) -> Result<T, ApiError> {
        match tokio::time::timeout(self.db_timeout, work).await {
            Ok(result) => result.map_err(Into::into),
            Err(_) => {
                tracing::warn!(
                    timeout_ms = self.db_timeout.as_millis(),
                    "database did not answer in time; answering 503"
                );
                Err(ApiError::Unavailable(DATABASE_UNAVAILABLE))
            }
        }
    }
}

/// Every route with its OpenAPI annotation: `routes!` registers a handler under the path and
/// method its `#[utoipa::path]` names, so what is served and what is documented cannot drift
/// (`openapi.rs`). Add routes here, never on the plain `Router` below.
pub(crate) fn api() -> OpenApiRouter<AppState> {
    let v1 = OpenApiRouter::new()
        .routes(routes!(accounts::create, accounts::list))
        .routes(routes!(accounts::get))
        .routes(routes!(accounts::entries))
        .routes(routes!(accounts::balance))
        .routes(routes!(accounts::freeze))
        .routes(routes!(accounts::unfreeze))
        .routes(routes!(accounts::close))
        .routes(routes!(transfers::create, transfers::get_by_key))
        .routes(routes!(transfers::create_batch))
        .routes(routes!(transfers::get))
        .routes(routes!(holds::settle_batch))
        .routes(routes!(holds::capture))
        .routes(routes!(holds::void))
        .routes(routes!(holds::reverse))
        .routes(routes!(reviews::queue))
        .routes(routes!(reviews::approve))
        .routes(routes!(reviews::reject))
        .routes(routes!(reconciliations::start, reconciliations::list))
        .routes(routes!(reconciliations::get))
        .routes(routes!(alerts::list))
        .routes(routes!(ledgers::create, ledgers::list))
        .routes(routes!(api_keys::create, api_keys::list))
        .routes(routes!(api_keys::revoke))
        .routes(routes!(audit::list))
        .routes(routes!(anomalies::list))
        .routes(routes!(anomalies::transfers))
        .routes(routes!(events::list))
        .routes(routes!(webhooks::create, webhooks::list))
        .routes(routes!(webhooks::get, webhooks::delete))
        .routes(routes!(webhooks::replay))
        .routes(routes!(webhooks::attempts))
        .routes(routes!(jobs::dead))
        .routes(routes!(jobs::retry))
        .routes(routes!(jobs::discard));
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .nest("/v1", v1)
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(health::metrics))
        .routes(routes!(openapi::serve))
}

/// The HTTP API, with `pages` (the operator console) served beside it under the same limits;
/// every request (its body included) must complete within `request_timeout`.
pub fn router(state: AppState, request_timeout: Duration, pages: Router) -> Router {
    let (routes, _) = api().split_for_parts();
    routes
        .with_state(state)
        .merge(pages)
        .fallback(|| async { ApiError::RouteNotFound })
        .layer(DefaultBodyLimit::max(json::BODY_BYTES_MAX))
        .layer(middleware::from_fn(move |request, next| {
            within(request_timeout, request, next)
        }))
        .layer(middleware::from_fn(record_request))
        // Outermost: every answer, a timeout's or the fallback's included, carries the id.
        .layer(middleware::from_fn(request_id::assign))
}

/// Cuts off a request that takes longer than `timeout` with `408 request_timeout`.
///
/// Database waits are bounded by the shorter intake database timeout (`503 unavailable`), so
/// what this catches is a client that trickles its body (hyper's header-read timeout covers the
/// head, see `serve`). The handler is dropped: a single transfer already handed to the group
/// committer still commits or not on its own, and a retry with the same Idempotency-Key finds
/// out which.
async fn within(timeout: Duration, request: Request, next: Next) -> Response {
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            let millis = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
            ApiError::RequestTimeout(millis).into_response()
        }
    }
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
