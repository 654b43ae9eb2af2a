//! `GET /v1/audit-events` (`admin`): the audit trail, oldest first, paged by event id (README,
//! "Ledgers and authorization").

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, Problem};
use super::paging::{after_cursor, next_cursor, page_len};
use super::query::QueryParams;
use crate::domain::{LedgerName, Scope};
use crate::store::audit::{self, AuditAction, AuditEventView, AuditFilter};

pub const AUDIT_PAGE_LEN_DEFAULT: i64 = 100;
pub const AUDIT_PAGE_LEN_MAX: i64 = 1000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    after: Option<i64>,
    limit: Option<i64>,
    ledger: Option<String>,
    action: Option<AuditAction>,
}

/// A page of audit events, oldest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditEventsPage {
    events: Vec<AuditEventView>,
    /// Pass as `after` for the next page; absent when this page is the last one so far (to
    /// follow the trail, poll with the id of the last event seen).
    #[serde(skip_serializing_if = "Option::is_none")]
    next_after: Option<i64>,
}

/// Lists audit events oldest first: every administrative act, who did it, in which request.
#[utoipa::path(
    get,
    path = "/audit-events",
    tag = "audit",
    operation_id = "listAuditEvents",
    description = "Scope: `admin`. Events are append-only and listed by increasing `id`.",
    params(
        ("after" = Option<i64>, Query, minimum = 0,
            description = "Only events with a greater id: `next_after` of the previous page, \
                or the last id seen."),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000,
            description = "Events per page; default 100."),
        ("ledger" = Option<String>, Query, pattern = "^[a-z0-9_-]{1,64}$",
            description = "Only events about this ledger (a ledger no event names lists \
                nothing)."),
        ("action" = Option<AuditAction>, Query, description = "Only events of this action."),
    ),
    responses(
        (status = 200, description = "A page of events.", body = AuditEventsPage),
        (status = 400, description = "`invalid_body`: a bad `after`, `limit` or `action`; \
            `invalid_ledger`: `ledger` is not a ledger name.", body = Problem,
            content_type = "application/problem+json"),
    ),
    security(("api_key" = ["admin"])),
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(query): QueryParams<AuditQuery>,
) -> Result<Json<AuditEventsPage>, ApiError> {
    caller.require(Scope::Admin)?;
    let limit = page_len(query.limit, AUDIT_PAGE_LEN_DEFAULT, AUDIT_PAGE_LEN_MAX)?;
    after_cursor(query.after)?;
    let filter = AuditFilter {
        after: query.after,
        ledger: query
            .ledger
            .as_deref()
            .map(LedgerName::parse)
            .transpose()
            .map_err(|e| ApiError::InvalidLedger(e.to_string()))?,
        action: query.action,
    };
    let events = state.db(audit::list(&state.pool, &filter, limit)).await?;
    let next_after = next_cursor(&events, limit, |e| e.id);
    Ok(Json(AuditEventsPage { events, next_after }))
}
