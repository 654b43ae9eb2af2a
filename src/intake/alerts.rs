//! `GET /v1/alerts`: alerts, newest first, with their delivery state per sink.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use uuid::Uuid;

use super::AppState;
use super::auth::Caller;
use super::error::ApiError;
use super::paging::{PageQuery, next_cursor, page_len};
use super::query::QueryParams;
use crate::alerts::outbox::{self, AlertView};
use crate::domain::Scope;

pub const ALERTS_PAGE_LEN_DEFAULT: i64 = 50;
pub const ALERTS_PAGE_LEN_MAX: i64 = 500;

/// A page of alerts, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AlertsPage {
    alerts: Vec<AlertView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<Uuid>,
}

/// Lists alerts, newest first, with their delivery state per sink.
#[utoipa::path(
    get,
    path = "/alerts",
    tag = "alerts",
    operation_id = "listAlerts",
    description = "Scope: `admin`.",
    params(
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 500,
            description = "Alerts per page; default 50."),
        ("cursor" = Option<Uuid>, Query, description = "`next_cursor` of the previous page."),
    ),
    responses((status = 200, description = "A page of alerts.", body = AlertsPage)),
    security(("api_key" = ["admin"])),
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(query): QueryParams<PageQuery>,
) -> Result<Json<AlertsPage>, ApiError> {
    caller.require(Scope::Admin)?;
    let limit = page_len(query.limit, ALERTS_PAGE_LEN_DEFAULT, ALERTS_PAGE_LEN_MAX)?;
    let alerts = state
        .db(outbox::list(&state.pool, limit, query.cursor))
        .await?;
    let next_cursor = next_cursor(&alerts, limit, |a| a.id);
    Ok(Json(AlertsPage {
        alerts,
        next_cursor,
    }))
}
