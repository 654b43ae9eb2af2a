//! `POST /v1/transfers/{id}/approve` and `/reject`: a reviewer's decision on a transfer held
//! for review by an anomaly rule set to `review` (README, "Anomaly detection").

use axum::Json;
use axum::extract::{Path, State};
use uuid::Uuid;

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, Problem};
use crate::domain::{ReviewDecision, Scope};
use crate::store::reviews;
use crate::store::transfers::TransferView;

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
