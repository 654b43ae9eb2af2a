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

#[derive(Debug, Serialize)]
pub struct AlertsPage {
    alerts: Vec<AlertView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<Uuid>,
}

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
