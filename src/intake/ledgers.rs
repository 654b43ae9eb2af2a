//! `/v1/ledgers` (`admin`): create and list ledgers (README, "Ledgers and authorization").

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, Problem};
use super::json::JsonBody;
use super::paging::{next_cursor, page_len};
use super::query::QueryParams;
use crate::domain::{LedgerName, Scope};
use crate::store::ledgers::{self, LedgerView};

pub const LEDGERS_PAGE_LEN_DEFAULT: i64 = 100;
pub const LEDGERS_PAGE_LEN_MAX: i64 = 1000;

/// The body of `POST /v1/ledgers`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateLedgerRequest {
    /// 1–64 of `a-z 0-9 _ -`.
    #[schema(pattern = "^[a-z0-9_-]{1,64}$", example = "shop-eu")]
    name: String,
}

/// Creates a ledger.
#[utoipa::path(
    post,
    path = "/ledgers",
    tag = "ledgers",
    operation_id = "createLedger",
    description = "Scope: `admin`. Recorded in the audit trail (`ledger.created`).",
    request_body = CreateLedgerRequest,
    responses(
        (status = 201, description = "The ledger.", body = LedgerView),
        (status = 409, description = "`ledger_exists`: a ledger with this name exists.",
            body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = ["admin"])),
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<CreateLedgerRequest>,
) -> Result<(StatusCode, Json<LedgerView>), ApiError> {
    caller.require(Scope::Admin)?;
    let name = LedgerName::parse(&body.name).map_err(|e| ApiError::InvalidLedger(e.to_string()))?;
    let actor = caller.actor();
    let created = state
        .db(async { ledgers::create(&state.pool, &name, &actor).await })
        .await?;
    Ok((StatusCode::CREATED, Json(created)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgersQuery {
    limit: Option<i64>,
    cursor: Option<String>,
}

/// A page of ledgers, by name.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LedgersPage {
    ledgers: Vec<LedgerView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

/// Lists ledgers by name.
#[utoipa::path(
    get,
    path = "/ledgers",
    tag = "ledgers",
    operation_id = "listLedgers",
    description = "Scope: `admin`.",
    params(
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000,
            description = "Ledgers per page; default 100."),
        ("cursor" = Option<String>, Query, pattern = "^[a-z0-9_-]{1,64}$",
            description = "`next_cursor` of the previous page."),
    ),
    responses((status = 200, description = "A page of ledgers.", body = LedgersPage)),
    security(("api_key" = ["admin"])),
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(query): QueryParams<LedgersQuery>,
) -> Result<Json<LedgersPage>, ApiError> {
    caller.require(Scope::Admin)?;
    let limit = page_len(query.limit, LEDGERS_PAGE_LEN_DEFAULT, LEDGERS_PAGE_LEN_MAX)?;
    let cursor = query
        .cursor
        .map(|c| LedgerName::parse(&c))
        .transpose()
        .map_err(|_| ApiError::InvalidBody("cursor must be a ledger name".into()))?;
    let ledgers = state
        .db(ledgers::list(&state.pool, limit, cursor.as_ref()))
        .await?;
    let next_cursor = next_cursor(&ledgers, limit, |l| l.name.clone());
    Ok(Json(LedgersPage {
        ledgers,
        next_cursor,
    }))
}
