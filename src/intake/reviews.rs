//! The review queue (`GET /v1/reviews`) and a reviewer's decision on a transfer held for
//! review by an anomaly rule set to `review` (`POST /v1/transfers/{id}/approve` and `/reject`;
//! README, "Anomaly detection").

use axum::Json;
use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::AppState;
use super::auth::{Caller, requested_ledger};
use super::error::{ApiError, Problem};
use super::paging::{next_cursor, page_len};
use super::query::QueryParams;
use crate::domain::{ReviewDecision, Scope};
use crate::store::reviews;
use crate::store::transfers::{self, TransferView};

pub const REVIEW_PAGE_LEN_DEFAULT: i64 = 100;
pub const REVIEW_PAGE_LEN_MAX: i64 = 1000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewQueueQuery {
    ledger: Option<String>,
    cursor: Option<Uuid>,
    limit: Option<i64>,
}

/// A page of the review queue.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReviewQueuePage {
    /// Transfers in `in_review`, longest held first, each with its `flags`.
    transfers: Vec<TransferView>,
    /// Pass as `cursor` for the next page; absent when this page is the last one so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<Uuid>,
}

/// Lists the transfers waiting for review, longest held first.
#[utoipa::path(
    get,
    path = "/reviews",
    tag = "transfers",
    operation_id = "listReviews",
    description = "Scope: `transfers:review` (or `admin`). The caller's ledger's transfers in \
        `in_review` (an `admin` key names one with `ledger`, default `default`), whoever \
        created them. A transfer decided on leaves the queue.",
    params(
        ("ledger" = Option<String>, Query, pattern = "^[a-z0-9_-]{1,64}$",
            description = "For `admin` keys: the ledger to list; a ledger-bound key may name \
                only its own."),
        ("cursor" = Option<Uuid>, Query,
            description = "`next_cursor` of the previous page."),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000,
            description = "Transfers per page; default 100."),
    ),
    responses(
        (status = 200, description = "A page of the review queue.", body = ReviewQueuePage),
        (status = 400, description = "`invalid_body`: a bad `cursor` or `limit`; \
            `invalid_ledger`: a malformed `ledger`.",
            body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`ledger_forbidden`: a ledger-bound key named another \
            ledger.", body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = ["transfers:review"])),
)]
pub async fn queue(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(query): QueryParams<ReviewQueueQuery>,
) -> Result<Json<ReviewQueuePage>, ApiError> {
    let caller = caller.require(Scope::TransfersReview)?;
    let limit = page_len(query.limit, REVIEW_PAGE_LEN_DEFAULT, REVIEW_PAGE_LEN_MAX)?;
    let ledger = requested_ledger(caller, query.ledger.as_deref())?;
    let held = transfers::in_review(&state.pool, &ledger, query.cursor, limit);
    let transfers = state.db(held).await?;
    let next_cursor = next_cursor(&transfers, limit, |t| t.id);
    Ok(Json(ReviewQueuePage {
        transfers,
        next_cursor,
    }))
}

/// Approves a transfer held for review: it is posted as usual.
#[utoipa::path(
    post,
    path = "/transfers/{id}/approve",
    tag = "transfers",
    operation_id = "approveTransfer",
    description = "Scope: `transfers:review` (or `admin`); a ledger-bound key reviews its own \
        ledger's transfers, whoever created them. The transfer goes back to `pending` with a \
        new posting job (posting may still fail it, e.g. `insufficient_funds`). Approving an \
        approved transfer changes nothing and returns it as it is now; approving one that is \
        not in review (rejected, or never held) is `409 transfer_not_in_review`.",
    params(("id" = Uuid, Path, description = "The transfer id.")),
    responses(
        (status = 200, description = "The transfer, approved.", body = TransferView),
        (status = 404, description = "`transfer_not_found`.", body = Problem,
            content_type = "application/problem+json"),
        (status = 409, description = "`transfer_not_in_review`.", body = Problem,
            content_type = "application/problem+json"),
    ),
    security(("api_key" = ["transfers:review"])),
)]
pub async fn approve(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<TransferView>, ApiError> {
    decide(state, caller, id, ReviewDecision::Approved).await
}

/// Rejects a transfer held for review: it fails `rejected_in_review`.
#[utoipa::path(
    post,
    path = "/transfers/{id}/reject",
    tag = "transfers",
    operation_id = "rejectTransfer",
    description = "Scope: `transfers:review` (or `admin`), as for `approveTransfer`. The \
        transfer ends `failed` with `failure_code` `rejected_in_review`; no money moves. \
        Rejecting a rejected transfer changes nothing and returns it; rejecting one that is \
        not in review (approved, or never held) is `409 transfer_not_in_review`.",
    params(("id" = Uuid, Path, description = "The transfer id.")),
    responses(
        (status = 200, description = "The transfer, rejected.", body = TransferView),
        (status = 404, description = "`transfer_not_found`.", body = Problem,
            content_type = "application/problem+json"),
        (status = 409, description = "`transfer_not_in_review`.", body = Problem,
            content_type = "application/problem+json"),
    ),
    security(("api_key" = ["transfers:review"])),
)]
pub async fn reject(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<TransferView>, ApiError> {
    decide(state, caller, id, ReviewDecision::Rejected).await
}

async fn decide(
    state: AppState,
    caller: Caller,
    id: String,
    decision: ReviewDecision,
) -> Result<Json<TransferView>, ApiError> {
    let actor = caller.actor();
    let caller = caller.require(Scope::TransfersReview)?;
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::TransferNotFound)?;
    // A bound key sees only its ledger's transfers; one of another ledger is not found.
    let ledger = caller.ledger.as_ref();
    let view = state
        .db(reviews::decide(&state.pool, id, ledger, decision, &actor))
        .await?;
    Ok(Json(view))
}
