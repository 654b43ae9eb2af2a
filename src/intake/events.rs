//! `GET /v1/events` (`transfers:read`): the caller's ledger's events in `seq` order, read with
//! a cursor that never skips one (README, "Events and webhooks").

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};

use super::AppState;
use super::auth::{Caller, requested_ledger};
use super::error::{ApiError, Problem};
use super::paging::{after_cursor, page_len};
use super::query::QueryParams;
use crate::domain::{EventType, Scope};
use crate::events::{self, EventView};

pub const EVENT_PAGE_LEN_DEFAULT: i64 = 100;
pub const EVENT_PAGE_LEN_MAX: i64 = 1000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventQuery {
    ledger: Option<String>,
    after: Option<i64>,
    types: Option<String>,
    limit: Option<i64>,
}

/// A page of events in `seq` order.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventsPage {
    events: Vec<EventView>,
    /// Pass as `after` to read on: the last event's `seq`, or the `after` given when there is
    /// nothing new yet. Always present, so a follower can poll with it.
    #[schema(minimum = 0)]
    next_after: i64,
}

/// Lists events after a cursor, oldest first.
#[utoipa::path(
    get,
    path = "/events",
    tag = "events",
    operation_id = "listEvents",
    description = "Scope: `transfers:read` (or `admin`). The caller's ledger (an `admin` key \
        names one with `ledger`, default `default`). Events are numbered per ledger in commit \
        order, so reading on from `next_after` never skips an event, however writes interleave.",
    params(
        ("ledger" = Option<String>, Query, pattern = "^[a-z0-9_-]{1,64}$",
            description = "For `admin` keys: the ledger to read; a ledger-bound key may name \
                only its own."),
        ("after" = Option<i64>, Query, minimum = 0,
            description = "Only events with a greater `seq`; default 0 (from the oldest kept)."),
        ("types" = Option<String>, Query,
            description = "Comma-separated event types to include, e.g. \
                `transfer.posted,transfer.failed`; default all."),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000,
            description = "Events per page; default 100."),
    ),
    responses(
        (status = 200, description = "A page of events.", body = EventsPage),
        (status = 400, description = "`invalid_body`: a bad `after`, `limit` or `types`; \
            `invalid_ledger`: a malformed `ledger`.",
            body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`ledger_forbidden`: a ledger-bound key named another \
            ledger.", body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = ["transfers:read"])),
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(query): QueryParams<EventQuery>,
) -> Result<Json<EventsPage>, ApiError> {
    let caller = caller.require(Scope::TransfersRead)?;
    let limit = page_len(query.limit, EVENT_PAGE_LEN_DEFAULT, EVENT_PAGE_LEN_MAX)?;
    let after = after_cursor(query.after)?.unwrap_or(0);
    let types = query
        .types
        .as_deref()
        .map(EventType::parse_list)
        .transpose()
        .map_err(|e| {
            ApiError::InvalidBody(format!("types: {e}; known types are {}", known_types()))
        })?;
    let ledger = requested_ledger(caller, query.ledger.as_deref())?;
    let events = state
        .db(events::page(
            &state.pool,
            &ledger,
            after,
            types.as_deref(),
            limit,
        ))
        .await?;
    let next_after = events.last().map_or(after, |e| e.seq);
    Ok(Json(EventsPage { events, next_after }))
}

/// The event type names, for error messages.
pub fn known_types() -> String {
    EventType::ALL
        .iter()
        .map(|t| t.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
