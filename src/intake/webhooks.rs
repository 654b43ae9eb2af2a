//! Webhook endpoints (`webhooks:write` or `admin`; README, "Events and webhooks"): register
//! (`POST /v1/webhook-endpoints`, the signing secret shown once), list, get, delete, replay
//! from a cursor, and list an endpoint's delivery attempts.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::AppState;
use super::auth::{Caller, requested_ledger};
use super::error::{ApiError, Problem};
use super::events::known_types;
use super::json::JsonBody;
use super::paging::{after_cursor, next_cursor, page_len};
use super::query::QueryParams;
use crate::domain::{EventType, LedgerName, Scope};
use crate::store::webhook_endpoints::{self, AttemptView, EndpointView, NewEndpoint};

pub const ENDPOINT_PAGE_LEN_DEFAULT: i64 = 100;
pub const ENDPOINT_PAGE_LEN_MAX: i64 = 1000;
/// Longest URL accepted; longer ones are refused before any resolution.
pub const WEBHOOK_URL_LEN_MAX: usize = 2_048;
/// Longest the URL check may spend resolving the host.
const RESOLVE_TIMEOUT_MS: u64 = 3_000;

/// `POST /v1/webhook-endpoints`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEndpoint {
    /// `https://` (plain `http://` only to loopback, with `FERRY_WEBHOOKS_ALLOW_INSECURE=1`);
    /// must not resolve to a private, link-local, loopback or metadata address unless
    /// allow-listed.
    #[schema(max_length = 2048, example = "https://hooks.example.com/ferry")]
    url: String,
    /// The event types to deliver; at least one.
    #[schema(min_items = 1)]
    event_types: Vec<String>,
    /// For `admin` keys: the ledger whose events to deliver (default `default`); a
    /// ledger-bound key may name only its own.
    #[schema(pattern = "^[a-z0-9_-]{1,64}$")]
    ledger: Option<String>,
}

/// Registers a webhook endpoint.
#[utoipa::path(
    post,
    path = "/webhook-endpoints",
    tag = "webhooks",
    operation_id = "createWebhookEndpoint",
    description = "Scope: `webhooks:write` (or `admin`). The endpoint receives its ledger's \
        events of the given types from now on (earlier ones with `replay`), each signed the \
        Standard Webhooks way with the `secret` in this answer — shown only here.",
    request_body = CreateEndpoint,
    responses(
        (status = 201, description = "The endpoint, with its secret.", body = EndpointView),
        (status = 400, description = "`webhook_url_refused`: not https, or resolving to a \
            refused address; `invalid_body`: unknown event types; `invalid_ledger`.",
            body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`ledger_forbidden`.", body = Problem,
            content_type = "application/problem+json"),
        (status = 422, description = "`ledger_not_found`.", body = Problem,
            content_type = "application/problem+json"),
    ),
    security(("api_key" = ["webhooks:write"])),
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<CreateEndpoint>,
) -> Result<(StatusCode, Json<EndpointView>), ApiError> {
    let actor = caller.actor();
    let caller = caller.require(Scope::WebhooksWrite)?;
    let ledger = requested_ledger(caller, body.ledger.as_deref())?;
    let event_types = parse_types(&body.event_types)?;
    if body.url.len() > WEBHOOK_URL_LEN_MAX {
        return Err(ApiError::WebhookUrlRefused(format!(
            "longer than {WEBHOOK_URL_LEN_MAX} bytes"
        )));
    }
    let checked = tokio::time::timeout(
        Duration::from_millis(RESOLVE_TIMEOUT_MS),
        state.webhook_urls.check(&body.url),
    )
    .await
    .map_err(|_| ApiError::WebhookUrlRefused("the host did not resolve in time".into()))?
    .map_err(|e| ApiError::WebhookUrlRefused(e.to_string()))?;
    let endpoint = NewEndpoint {
        ledger,
        url: checked.to_string(),
        event_types,
    };
    let view = state
        .db(webhook_endpoints::create(&state.pool, &endpoint, &actor))
        .await?;
    Ok((StatusCode::CREATED, Json(view)))
}

fn parse_types(names: &[String]) -> Result<Vec<EventType>, ApiError> {
    if names.is_empty() {
        return Err(ApiError::InvalidBody(format!(
            "event_types must name at least one of: {}",
            known_types()
        )));
    }
    let mut types = names
        .iter()
        .map(|n| EventType::parse_known(n))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            ApiError::InvalidBody(format!(
                "event_types: {e}; known types are {}",
                known_types()
            ))
        })?;
    types.sort_unstable();
    types.dedup();
    Ok(types)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointListQuery {
    ledger: Option<String>,
    cursor: Option<Uuid>,
    limit: Option<i64>,
}

/// A page of endpoints.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EndpointsPage {
    endpoints: Vec<EndpointView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<Uuid>,
}

/// Lists a ledger's webhook endpoints.
#[utoipa::path(
    get,
    path = "/webhook-endpoints",
    tag = "webhooks",
    operation_id = "listWebhookEndpoints",
    description = "Scope: `webhooks:write` (or `admin`). Secrets are never listed.",
    params(
        ("ledger" = Option<String>, Query, pattern = "^[a-z0-9_-]{1,64}$",
            description = "For `admin` keys: the ledger (default `default`)."),
        ("cursor" = Option<Uuid>, Query, description = "`next_cursor` of the previous page."),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000,
            description = "Endpoints per page; default 100."),
    ),
    responses(
        (status = 200, description = "A page of endpoints.", body = EndpointsPage),
        (status = 400, description = "`invalid_body`, `invalid_ledger`.", body = Problem,
            content_type = "application/problem+json"),
        (status = 403, description = "`ledger_forbidden`.", body = Problem,
            content_type = "application/problem+json"),
    ),
    security(("api_key" = ["webhooks:write"])),
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(query): QueryParams<EndpointListQuery>,
) -> Result<Json<EndpointsPage>, ApiError> {
    let caller = caller.require(Scope::WebhooksWrite)?;
    let limit = page_len(
        query.limit,
        ENDPOINT_PAGE_LEN_DEFAULT,
        ENDPOINT_PAGE_LEN_MAX,
    )?;
    let ledger = requested_ledger(caller, query.ledger.as_deref())?;
    let endpoints = state
        .db(webhook_endpoints::list(
            &state.pool,
            &ledger,
            query.cursor,
            limit,
        ))
        .await?;
    let next_cursor = next_cursor(&endpoints, limit, |e| e.id);
    Ok(Json(EndpointsPage {
        endpoints,
        next_cursor,
    }))
}

/// The endpoint `id` in the caller's ledger (any ledger for an admin key).
fn endpoint_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::WebhookEndpointNotFound)
}

/// One webhook endpoint.
#[utoipa::path(
    get,
    path = "/webhook-endpoints/{id}",
    tag = "webhooks",
    operation_id = "getWebhookEndpoint",
    description = "Scope: `webhooks:write` (or `admin`). A ledger-bound key sees its own \
        ledger's endpoints only.",
    params(("id" = Uuid, Path, description = "The endpoint id.")),
    responses(
        (status = 200, description = "The endpoint.", body = EndpointView),
        (status = 404, description = "`webhook_endpoint_not_found`.", body = Problem,
            content_type = "application/problem+json"),
    ),
    security(("api_key" = ["webhooks:write"])),
)]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<EndpointView>, ApiError> {
    let caller = caller.require(Scope::WebhooksWrite)?;
    let id = endpoint_id(&id)?;
    let ledger = caller.ledger.as_ref();
    state
        .db(webhook_endpoints::get(&state.pool, id, ledger))
        .await?
        .map(Json)
        .ok_or(ApiError::WebhookEndpointNotFound)
}

/// Deletes a webhook endpoint.
#[utoipa::path(
    delete,
    path = "/webhook-endpoints/{id}",
    tag = "webhooks",
    operation_id = "deleteWebhookEndpoint",
    description = "Scope: `webhooks:write` (or `admin`). Its pending deliveries and its \
        attempts go with it.",
    params(("id" = Uuid, Path, description = "The endpoint id.")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 404, description = "`webhook_endpoint_not_found`.", body = Problem,
            content_type = "application/problem+json"),
    ),
    security(("api_key" = ["webhooks:write"])),
)]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let actor = caller.actor();
    let caller = caller.require(Scope::WebhooksWrite)?;
    let id = endpoint_id(&id)?;
    let ledger = caller.ledger.as_ref();
    state
        .db(webhook_endpoints::delete(&state.pool, id, ledger, &actor))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/webhook-endpoints/{id}/replay`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Replay {
    /// Re-send the endpoint's events with a greater `seq`.
    #[schema(minimum = 0)]
    after: i64,
}

impl Replay {
    pub fn after(after: i64) -> Self {
        Self { after }
    }
}

/// How many deliveries a replay scheduled.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Replayed {
    scheduled: u64,
}

impl Replayed {
    pub fn scheduled(&self) -> u64 {
        self.scheduled
    }
}

/// Re-sends an endpoint's events after a cursor.
#[utoipa::path(
    post,
    path = "/webhook-endpoints/{id}/replay",
    tag = "webhooks",
    operation_id = "replayWebhookEndpoint",
    description = "Scope: `webhooks:write` (or `admin`). Every event after `after` of the \
        endpoint's types is delivered again — already delivered ones too, with the same \
        `webhook-id` — and later events as usual.",
    params(("id" = Uuid, Path, description = "The endpoint id.")),
    request_body = Replay,
    responses(
        (status = 202, description = "Scheduled.", body = Replayed),
        (status = 400, description = "`invalid_body`.", body = Problem,
            content_type = "application/problem+json"),
        (status = 404, description = "`webhook_endpoint_not_found`.", body = Problem,
            content_type = "application/problem+json"),
    ),
    security(("api_key" = ["webhooks:write"])),
)]
pub async fn replay(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<Replay>,
) -> Result<(StatusCode, Json<Replayed>), ApiError> {
    let actor = caller.actor();
    let caller = caller.require(Scope::WebhooksWrite)?;
    let id = endpoint_id(&id)?;
    after_cursor(Some(body.after))?;
    let ledger: Option<&LedgerName> = caller.ledger.as_ref();
    let scheduled = state
        .db(webhook_endpoints::replay(
            &state.pool,
            id,
            ledger,
            body.after,
            &actor,
        ))
        .await?;
    Ok((StatusCode::ACCEPTED, Json(Replayed { scheduled })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttemptQuery {
    before: Option<i64>,
    limit: Option<i64>,
}

/// A page of delivery attempts, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AttemptsPage {
    attempts: Vec<AttemptView>,
    /// Pass as `before` for the next (older) page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_before: Option<i64>,
}

/// Lists an endpoint's delivery attempts, newest first.
#[utoipa::path(
    get,
    path = "/webhook-endpoints/{id}/attempts",
    tag = "webhooks",
    operation_id = "listWebhookAttempts",
    description = "Scope: `webhooks:write` (or `admin`). Every HTTP attempt: its outcome, \
        status code, error and duration.",
    params(
        ("id" = Uuid, Path, description = "The endpoint id."),
        ("before" = Option<i64>, Query, minimum = 1,
            description = "Only attempts with a smaller id: `next_before` of the previous page."),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000,
            description = "Attempts per page; default 100."),
    ),
    responses(
        (status = 200, description = "A page of attempts.", body = AttemptsPage),
        (status = 400, description = "`invalid_body`.", body = Problem,
            content_type = "application/problem+json"),
        (status = 404, description = "`webhook_endpoint_not_found`.", body = Problem,
            content_type = "application/problem+json"),
    ),
    security(("api_key" = ["webhooks:write"])),
)]
pub async fn attempts(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    QueryParams(query): QueryParams<AttemptQuery>,
) -> Result<Json<AttemptsPage>, ApiError> {
    let caller = caller.require(Scope::WebhooksWrite)?;
    let id = endpoint_id(&id)?;
    let limit = page_len(
        query.limit,
        ENDPOINT_PAGE_LEN_DEFAULT,
        ENDPOINT_PAGE_LEN_MAX,
    )?;
    if query.before.is_some_and(|b| b < 1) {
        return Err(ApiError::InvalidBody("before must be at least 1".into()));
    }
    let ledger = caller.ledger.as_ref();
    let listed = async {
        if webhook_endpoints::get(&state.pool, id, ledger)
            .await?
            .is_none()
        {
            return Err(ApiError::WebhookEndpointNotFound);
        }
        Ok(webhook_endpoints::attempts(&state.pool, id, query.before, limit).await?)
    };
    let attempts = state.db(listed).await?;
    let next_before = next_cursor(&attempts, limit, |a| a.id);
    Ok(Json(AttemptsPage {
        attempts,
        next_before,
    }))
}
