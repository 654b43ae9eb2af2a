//! Settling holds and reversing transfers (README, "Holds, reversals and balance history"):
//! `POST /v1/transfers/{id}/capture`, `/void` and `/reverse`, each idempotent under its
//! `Idempotency-Key`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use uuid::Uuid;

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, Problem};
use super::json::JsonBody;
use super::json::{OptionalJsonBody, reject_nul};
use super::transfers::{
    BATCH_LEN_MAX, BatchResponse, BatchResult, ItemOutcome, REPLAYED_HEADER, done, idempotency_key,
    rejected,
};
use crate::domain::{Amount, Currency, IdempotencyKey, Scope};
use crate::store::holds::{self, SettleOutcome, SettleRequest, Settlement};
use crate::store::reversals::{self, ReverseOutcome, ReverseRequest};
use crate::store::transfers::{self, Acceptance, TransferView};

/// The body of `POST /v1/transfers/{id}/capture`; it may be left out.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CaptureRequest {
    /// How much to capture, as a JSON string in the hold's currency: at most the amount held
    /// (more is `400 capture_exceeds_hold`). All of it when absent; the rest is released.
    #[schema(value_type = Option<String>, pattern = r"^[0-9]+(\.[0-9]+)?$", example = "7.50")]
    amount: Option<serde_json::Value>,
}

/// The body of `POST /v1/transfers/{id}/void`: nothing (or `{}`).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VoidRequest {}

/// The body of `POST /v1/transfers/{id}/reverse`; it may be left out.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReverseBody {
    /// How much to give back, as a JSON string in the transfer's currency; what earlier
    /// reversals left of the transfer when absent.
    #[schema(value_type = Option<String>, pattern = r"^[0-9]+(\.[0-9]+)?$", example = "5.00")]
    amount: Option<serde_json::Value>,
    /// Free text for the reversal; strings must not contain U+0000.
    #[schema(max_length = 255)]
    reference: Option<String>,
    /// Any JSON object, for the reversal.
    #[schema(value_type = Option<Object>)]
    metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Captures a hold: its amount (or part of it) moves, the rest is released.
#[utoipa::path(
    post,
    path = "/transfers/{id}/capture",
    tag = "transfers",
    operation_id = "captureTransfer",
    description = "Scope: `transfers:write` (or `admin`); the API key that created the hold. \
        `202` once the capture is claimed on the hold and its posting job committed: the hold \
        is then still `held` with `hold.settlement` `capture`, and becomes `posted` (its two \
        entries written for the captured amount, the reservation released) when a worker \
        posts it, typically within tens of milliseconds. A capture, a void and expiry racing \
        for one hold: exactly one wins, the others get `409 transfer_not_held`, as does a \
        hold that is settled, expired or not a hold. The `Idempotency-Key` rules of \
        `createTransfer` apply (a namespace of its own, shared with voids).",
    params(
        ("id" = Uuid, Path, description = "The hold's id."),
        ("Idempotency-Key" = String, Header, pattern = "^[!-~]{1,255}$",
            description = "1–255 visible ASCII characters, sent once."),
    ),
    request_body(content = Option<CaptureRequest>, description = "Optional."),
    responses(
        (status = 202, description = "Capture claimed; posting carries it out.",
            body = TransferView),
        (status = 200, description = "A replay: the hold as it is now.", body = TransferView,
            headers(("Idempotent-Replayed" = String, description = "`true`"))),
        (status = 400, description = "`capture_exceeds_hold`, `invalid_amount`.",
            body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`transfer_not_found`.", body = Problem,
            content_type = "application/problem+json"),
        (status = 409, description = "`transfer_not_held`.", body = Problem,
            content_type = "application/problem+json"),
        (status = 422, description = "`idempotency_key_reused`.", body = Problem,
            content_type = "application/problem+json"),
    ),
    security(("api_key" = ["transfers:write"])),
)]
pub async fn capture(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<OptionalJsonBody<CaptureRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let caller = caller.require(Scope::TransfersWrite)?;
    let key = idempotency_key(&headers)?;
    let OptionalJsonBody(body) = body?;
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::TransferNotFound)?;
    let amount = match body.amount {
        None => None,
        // An amount is in the hold's currency, so the hold is read first.
        Some(text) => {
            let hold = state
                .db(transfers::get(&state.pool, caller.id, id))
                .await?
                .ok_or(ApiError::TransferNotFound)?;
            Some(amount_in(&text, &hold.currency)?)
        }
    };
    let request = SettleRequest {
        api_key_id: caller.id,
        idempotency_key: key,
        transfer_id: id,
        settlement: Settlement::Capture { amount },
    };
    settle(&state, request).await
}

/// Voids a hold: the reservation is released, no money moves.
#[utoipa::path(
    post,
    path = "/transfers/{id}/void",
    tag = "transfers",
    operation_id = "voidTransfer",
    description = "Scope: `transfers:write` (or `admin`); the API key that created the hold. \
        As `captureTransfer`: `202` once the void is claimed, and the hold becomes `voided` \
        (terminal) when posting releases its reservation. An expired hold may still be voided \
        until expiry has claimed it.",
    params(
        ("id" = Uuid, Path, description = "The hold's id."),
        ("Idempotency-Key" = String, Header, pattern = "^[!-~]{1,255}$",
            description = "1–255 visible ASCII characters, sent once."),
    ),
    request_body(content = Option<VoidRequest>, description = "Optional: nothing or `{}`."),
    responses(
        (status = 202, description = "Void claimed; posting carries it out.",
            body = TransferView),
        (status = 200, description = "A replay: the hold as it is now.", body = TransferView,
            headers(("Idempotent-Replayed" = String, description = "`true`"))),
        (status = 404, description = "`transfer_not_found`.", body = Problem,
            content_type = "application/problem+json"),
        (status = 409, description = "`transfer_not_held`.", body = Problem,
            content_type = "application/problem+json"),
        (status = 422, description = "`idempotency_key_reused`.", body = Problem,
            content_type = "application/problem+json"),
    ),
    security(("api_key" = ["transfers:write"])),
)]
pub async fn void(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<OptionalJsonBody<VoidRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let caller = caller.require(Scope::TransfersWrite)?;
    let key = idempotency_key(&headers)?;
    let OptionalJsonBody(VoidRequest {}) = body?;
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::TransferNotFound)?;
    let request = SettleRequest {
        api_key_id: caller.id,
        idempotency_key: key,
        transfer_id: id,
        settlement: Settlement::Void,
    };
    settle(&state, request).await
}

async fn settle(state: &AppState, request: SettleRequest) -> Result<Response, ApiError> {
    let action = request.settlement.action();
    match state.db(state.settlements.submit(request)).await? {
        SettleOutcome::Accepted(view) => {
            metrics::counter!("ferry_settlements_accepted_total", "action" => action).increment(1);
            Ok((StatusCode::ACCEPTED, Json(view)).into_response())
        }
        SettleOutcome::Replayed(view) => Ok(replayed(view)),
        SettleOutcome::KeyReused => Err(ApiError::IdempotencyKeyReused),
        SettleOutcome::NotFound => Err(ApiError::TransferNotFound),
        SettleOutcome::NotHeld(why) => Err(ApiError::TransferNotHeld(why)),
        SettleOutcome::ExceedsHold(why) => Err(ApiError::CaptureExceedsHold(why)),
    }
}

/// The body of `POST /v1/transfers/settle`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SettleBatchRequest {
    /// 1 to 1000 captures and voids, each validated and answered on its own.
    settlements: Vec<SettleItem>,
}

/// One capture or void of a batch.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SettleItem {
    /// As the `Idempotency-Key` of `captureTransfer` / `voidTransfer` (the same namespace).
    #[schema(pattern = "^[!-~]{1,255}$")]
    idempotency_key: String,
    /// The hold.
    transfer_id: Uuid,
    /// `capture` or `void`.
    #[schema(pattern = "^(capture|void)$")]
    action: String,
    /// For a capture: as in `captureTransfer`.
    #[schema(value_type = Option<String>, pattern = r"^[0-9]+(\.[0-9]+)?$")]
    amount: Option<serde_json::Value>,
}

/// Captures and voids many holds in one commit and one posting job.
#[utoipa::path(
    post,
    path = "/transfers/settle",
    tag = "transfers",
    operation_id = "settleTransfers",
    description = "Scope: `transfers:write` (or `admin`). Each item is a `captureTransfer` or \
        `voidTransfer` with its own `idempotency_key`, answered on its own: `accepted` (the \
        settlement claimed; the hold as it now is), `replayed`, or `rejected` with the problem \
        the single request would have got (`transfer_not_held`, `capture_exceeds_hold`, \
        `transfer_not_found`, `idempotency_key_reused`, …). For producers that settle holds \
        in bulk, e.g. at the end of a day.",
    request_body = SettleBatchRequest,
    responses(
        (status = 200, description = "One result per item, in order.", body = BatchResponse),
    ),
    security(("api_key" = ["transfers:write"])),
)]
pub async fn settle_batch(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<JsonBody<SettleBatchRequest>, ApiError>,
) -> Result<Json<BatchResponse>, ApiError> {
    let caller = caller.require(Scope::TransfersWrite)?;
    let JsonBody(body) = body?;
    if body.settlements.is_empty() || body.settlements.len() > BATCH_LEN_MAX {
        return Err(ApiError::InvalidBody(format!(
            "settlements must hold 1 to {BATCH_LEN_MAX} items"
        )));
    }
    // Amounts are in their hold's currency: the holds that name one are read first.
    let with_amount: Vec<Uuid> = body
        .settlements
        .iter()
        .filter(|item| item.amount.is_some())
        .map(|item| item.transfer_id)
        .collect();
    let currencies = state
        .db(transfers::currencies(&state.pool, caller.id, &with_amount))
        .await?;
    let mut results: Vec<Option<BatchResult>> = Vec::with_capacity(body.settlements.len());
    let mut valid = Vec::new();
    let mut requests = Vec::new();
    for item in body.settlements {
        let key = Some(item.idempotency_key.clone());
        match settle_item(caller.id, item, &currencies) {
            Ok(request) => {
                valid.push((results.len(), key));
                results.push(None);
                requests.push(request);
            }
            Err(e) => results.push(Some(rejected(key, &e))),
        }
    }
    let outcomes = if requests.is_empty() {
        Vec::new()
    } else {
        state.db(holds::settle(&state.pool, &requests)).await?
    };
    for ((slot, key), outcome) in valid.into_iter().zip(outcomes) {
        results[slot] = Some(match outcome {
            SettleOutcome::Accepted(view) => done(key, ItemOutcome::Accepted, view),
            SettleOutcome::Replayed(view) => done(key, ItemOutcome::Replayed, view),
            SettleOutcome::KeyReused => rejected(key, &ApiError::IdempotencyKeyReused),
            SettleOutcome::NotFound => rejected(key, &ApiError::TransferNotFound),
            SettleOutcome::NotHeld(why) => rejected(key, &ApiError::TransferNotHeld(why)),
            SettleOutcome::ExceedsHold(why) => rejected(key, &ApiError::CaptureExceedsHold(why)),
        });
    }
    Ok(Json(BatchResponse::new(
        results.into_iter().flatten().collect(),
    )))
}

fn settle_item(
    api_key_id: Uuid,
    item: SettleItem,
    currencies: &std::collections::HashMap<Uuid, String>,
) -> Result<SettleRequest, ApiError> {
    let idempotency_key = IdempotencyKey::parse(&item.idempotency_key)
        .map_err(|e| ApiError::IdempotencyKeyInvalid(e.to_string()))?;
    let settlement = match (item.action.as_str(), item.amount) {
        ("void", None) => Settlement::Void,
        ("void", Some(_)) => {
            return Err(ApiError::InvalidBody("a void takes no amount".into()));
        }
        ("capture", None) => Settlement::Capture { amount: None },
        ("capture", Some(amount)) => {
            let currency = currencies
                .get(&item.transfer_id)
                .ok_or(ApiError::TransferNotFound)?;
            Settlement::Capture {
                amount: Some(amount_in(&amount, currency)?),
            }
        }
        (other, _) => {
            return Err(ApiError::InvalidBody(format!(
                "action must be \"capture\" or \"void\", not {other:?}"
            )));
        }
    };
    Ok(SettleRequest {
        api_key_id,
        idempotency_key,
        transfer_id: item.transfer_id,
        settlement,
    })
}

/// Reverses a posted transfer: a new transfer the other way, linked by `reverses`.
#[utoipa::path(
    post,
    path = "/transfers/{id}/reverse",
    tag = "transfers",
    operation_id = "reverseTransfer",
    description = "Scope: `transfers:write` (or `admin`); the API key that created the \
        transfer. `202` with the reversal — a new transfer from the original's `to_account` \
        to its `from_account`, `reverses` naming the original — committed with its posting \
        job; it posts like any transfer (and may fail, e.g. `insufficient_funds`, which gives \
        its amount back to reverse again). The reversals of a transfer never add up to more \
        than it moved (the captured amount of a captured hold): the database refuses it \
        however many requests race. Reversing a transfer that is not `posted` (pending, \
        failed, held, voided), or more than is left of it, is `409 \
        transfer_not_reversible`. The `Idempotency-Key` is the reversal's, in the transfers' \
        namespace, with `createTransfer`'s rules.",
    params(
        ("id" = Uuid, Path, description = "The transfer to reverse."),
        ("Idempotency-Key" = String, Header, pattern = "^[!-~]{1,255}$",
            description = "1–255 visible ASCII characters, sent once; names the reversal."),
    ),
    request_body(content = Option<ReverseBody>, description = "Optional."),
    responses(
        (status = 202, description = "The reversal, accepted.", body = TransferView,
            headers(("Location" = String, description = "`/v1/transfers/{id}` of the reversal"))),
        (status = 200, description = "A replay: the reversal as it is now.",
            body = TransferView,
            headers(("Idempotent-Replayed" = String, description = "`true`"))),
        (status = 400, description = "`invalid_amount`, `invalid_body`.", body = Problem,
            content_type = "application/problem+json"),
        (status = 404, description = "`transfer_not_found`.", body = Problem,
            content_type = "application/problem+json"),
        (status = 409, description = "`transfer_not_reversible`.", body = Problem,
            content_type = "application/problem+json"),
        (status = 422, description = "`idempotency_key_reused`.", body = Problem,
            content_type = "application/problem+json"),
    ),
    security(("api_key" = ["transfers:write"])),
)]
pub async fn reverse(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<OptionalJsonBody<ReverseBody>, ApiError>,
) -> Result<Response, ApiError> {
    let caller = caller.require(Scope::TransfersWrite)?;
    let key = idempotency_key(&headers)?;
    let OptionalJsonBody(body) = body?;
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::TransferNotFound)?;
    if let Some(reference) = &body.reference {
        if reference.chars().count() > crate::domain::transfer::REFERENCE_LEN_MAX {
            return Err(ApiError::InvalidBody(format!(
                "reference is longer than {} characters",
                crate::domain::transfer::REFERENCE_LEN_MAX
            )));
        }
        reject_nul("reference", &serde_json::Value::String(reference.clone()))?;
    }
    let metadata = body.metadata.unwrap_or_default();
    reject_nul("metadata", &serde_json::Value::Object(metadata.clone()))?;
    let amount = match body.amount {
        None => None,
        Some(text) => {
            let original = state
                .db(transfers::get(&state.pool, caller.id, id))
                .await?
                .ok_or(ApiError::TransferNotFound)?;
            Some(amount_in(&text, &original.currency)?)
        }
    };
    let request = ReverseRequest {
        api_key_id: caller.id,
        idempotency_key: key,
        original: id,
        amount,
        reference: body.reference,
        metadata,
    };
    let outcome = state.db(reversals::reverse(&state.pool, &request)).await?;
    let accepted = match outcome {
        ReverseOutcome::Transfer(acceptance) => *acceptance,
        ReverseOutcome::NotFound => return Err(ApiError::TransferNotFound),
        ReverseOutcome::NotReversible(why) => return Err(ApiError::TransferNotReversible(why)),
    };
    match accepted {
        Acceptance::Accepted(view) => {
            let location = HeaderValue::from_str(&format!("/v1/transfers/{}", view.id))
                .map_err(|e| ApiError::Internal(e.into()))?;
            Ok((
                StatusCode::ACCEPTED,
                [(header::LOCATION, location)],
                Json(view),
            )
                .into_response())
        }
        Acceptance::Replayed(view) => Ok(replayed(view)),
        Acceptance::KeyReused => Err(ApiError::IdempotencyKeyReused),
    }
}

/// An amount sent as a JSON string, in the currency of the transfer it applies to.
fn amount_in(value: &serde_json::Value, currency: &str) -> Result<Amount, ApiError> {
    let currency = Currency::parse(currency).map_err(|e| ApiError::Internal(e.into()))?;
    let text = value.as_str().ok_or_else(|| {
        ApiError::InvalidAmount("amount must be a JSON string such as \"12.30\"".into())
    })?;
    Amount::parse(text, currency).map_err(|e| ApiError::InvalidAmount(e.to_string()))
}

fn replayed(view: TransferView) -> Response {
    (
        StatusCode::OK,
        [(REPLAYED_HEADER, HeaderValue::from_static("true"))],
        Json(view),
    )
        .into_response()
}
