//! `GET /v1/anomalies` (`transfers:read`): the anomalies — one rule tripped on one account,
//! with the transfers that tripped it — in the caller's ledger, oldest first, paged by id; and
//! `GET /v1/anomalies/{id}/transfers`, those transfers (README, "Anomaly detection").

use axum::Json;
use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::auth::{Caller, requested_ledger};
use super::error::{ApiError, Problem};
use super::paging::{after_cursor, next_cursor, page_len};
use super::query::QueryParams;
use crate::anomaly::record::{self, AnomalyFilter, AnomalyHitView, AnomalyView};
use crate::anomaly::rules::Rule;
use crate::domain::{AccountId, Scope};

pub const ANOMALY_PAGE_LEN_DEFAULT: i64 = 100;
pub const ANOMALY_PAGE_LEN_MAX: i64 = 1000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnomalyQuery {
    ledger: Option<String>,
    account: Option<String>,
    rule: Option<Rule>,
    after: Option<i64>,
    limit: Option<i64>,
}

/// A page of anomalies, oldest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AnomaliesPage {
    anomalies: Vec<AnomalyView>,
    /// Pass as `after` for the next page; absent when this page is the last one so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_after: Option<i64>,
}

/// Lists the anomalies, oldest first: each is one rule tripped on one account, with how many
/// transfers tripped it while it was open.
#[utoipa::path(
    get,
    path = "/anomalies",
    tag = "anomalies",
    operation_id = "listAnomalies",
    description = "Scope: `transfers:read` (or `admin`). The caller's ledger (an `admin` key \
        names one with `ledger`, default `default`).",
    params(
        ("ledger" = Option<String>, Query, pattern = "^[a-z0-9_-]{1,64}$",
            description = "For `admin` keys: the ledger to list; a ledger-bound key may name \
                only its own."),
        ("account" = Option<String>, Query, pattern = "^[A-Za-z0-9_.:-]{1,64}$",
            description = "Only anomalies of this account."),
        ("rule" = Option<Rule>, Query, description = "Only anomalies of this rule."),
        ("after" = Option<i64>, Query, minimum = 0,
            description = "Only anomalies with a greater id: `next_after` of the previous page."),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000,
            description = "Anomalies per page; default 100."),
    ),
    responses(
        (status = 200, description = "A page of anomalies.", body = AnomaliesPage),
        (status = 400, description = "`invalid_body`: a bad `after`, `limit` or `rule`; \
            `invalid_account`, `invalid_ledger`: a malformed `account` or `ledger`.",
            body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`ledger_forbidden`: a ledger-bound key named another \
            ledger.", body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = ["transfers:read"])),
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(query): QueryParams<AnomalyQuery>,
) -> Result<Json<AnomaliesPage>, ApiError> {
    let caller = caller.require(Scope::TransfersRead)?;
    let limit = page_len(query.limit, ANOMALY_PAGE_LEN_DEFAULT, ANOMALY_PAGE_LEN_MAX)?;
    after_cursor(query.after)?;
    let ledger = requested_ledger(caller, query.ledger.as_deref())?;
    let account = query
        .account
        .as_deref()
        .map(AccountId::parse)
        .transpose()
        .map_err(|e| ApiError::InvalidAccount(e.to_string()))?;
    let filter = AnomalyFilter {
        ledger: &ledger,
        account: account.as_ref(),
        rule: query.rule,
        after: query.after,
    };
    let anomalies = state.db(record::list(&state.pool, &filter, limit)).await?;
    let next_after = next_cursor(&anomalies, limit, |a| a.id);
    Ok(Json(AnomaliesPage {
        anomalies,
        next_after,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnomalyTransfersQuery {
    ledger: Option<String>,
    after: Option<i64>,
    limit: Option<i64>,
}

/// A page of the transfers that tripped an anomaly's rule, oldest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AnomalyTransfersPage {
    transfers: Vec<AnomalyHitView>,
    /// Pass as `after` for the next page; absent when this page is the last one so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_after: Option<i64>,
}

/// Lists the transfers that tripped an anomaly's rule while it was open, oldest first.
#[utoipa::path(
    get,
    path = "/anomalies/{id}/transfers",
    tag = "anomalies",
    operation_id = "listAnomalyTransfers",
    description = "Scope: `transfers:read` (or `admin`). An anomaly of the caller's ledger (an \
        `admin` key names one with `ledger`, default `default`).",
    params(
        ("id" = i64, Path, minimum = 1, description = "The anomaly's id."),
        ("ledger" = Option<String>, Query, pattern = "^[a-z0-9_-]{1,64}$",
            description = "For `admin` keys: the anomaly's ledger; a ledger-bound key may name \
                only its own."),
        ("after" = Option<i64>, Query, minimum = 0,
            description = "Only transfers after this cursor: `next_after` of the previous page."),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000,
            description = "Transfers per page; default 100."),
    ),
    responses(
        (status = 200, description = "A page of the anomaly's transfers.",
            body = AnomalyTransfersPage),
        (status = 400, description = "`invalid_body`: a bad `after` or `limit`; \
            `invalid_ledger`: a malformed `ledger`.",
            body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`ledger_forbidden`: a ledger-bound key named another \
            ledger.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`anomaly_not_found`: no such anomaly in the ledger.",
            body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = ["transfers:read"])),
)]
pub async fn transfers(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    QueryParams(query): QueryParams<AnomalyTransfersQuery>,
) -> Result<Json<AnomalyTransfersPage>, ApiError> {
    let caller = caller.require(Scope::TransfersRead)?;
    let limit = page_len(query.limit, ANOMALY_PAGE_LEN_DEFAULT, ANOMALY_PAGE_LEN_MAX)?;
    after_cursor(query.after)?;
    let ledger = requested_ledger(caller, query.ledger.as_deref())?;
    // Ids are positive bigints; anything else names no anomaly.
    let id: i64 = id
        .parse()
        .ok()
        .filter(|id| *id > 0)
        .ok_or(ApiError::AnomalyNotFound)?;
    let listed = record::list_hits(&state.pool, &ledger, id, query.after, limit);
    let transfers = state.db(listed).await?.ok_or(ApiError::AnomalyNotFound)?;
    let next_after = next_cursor(&transfers, limit, |h| h.id);
    Ok(Json(AnomalyTransfersPage {
        transfers,
        next_after,
    }))
}
