//! `GET /v1/anomalies` (`transfers:read`): the anomaly rules' hits in the caller's ledger,
//! oldest first, paged by id (README, "Anomaly detection").

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};

use super::AppState;
use super::auth::{Caller, requested_ledger};
use super::error::{ApiError, Problem};
use super::paging::{after_cursor, next_cursor, page_len};
use super::query::QueryParams;
use crate::anomaly::record::{self, AnomalyFilter, AnomalyView};
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

/// Lists the hits of the anomaly rules, oldest first.
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
            description = "Only hits on transfers out of this account."),
        ("rule" = Option<Rule>, Query, description = "Only hits of this rule."),
        ("after" = Option<i64>, Query, minimum = 0,
            description = "Only hits with a greater id: `next_after` of the previous page."),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000,
            description = "Hits per page; default 100."),
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
