//! `/v1/transfers`: idempotent intake of transfers, single and batched, and reads.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, Problem};
use super::json::{JsonBody, from_value, reject_nul};
use super::query::QueryParams;
use crate::domain::{
    AccountId, Amount, Currency, HoldExpiry, IdempotencyKey, NewTransfer, Scope, TransferMode,
};
use crate::queue::payloads::TRANSFERS_PER_JOB_MAX;
use crate::store::api_keys::ApiKeyIdentity;
use crate::store::transfers::{self, Acceptance, Submission, TransferView};

pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
/// Most transfers in one batch request.
pub const BATCH_LEN_MAX: usize = TRANSFERS_PER_JOB_MAX;

/// The body of `POST /v1/transfers`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferRequest {
    /// The account debited; must differ from `to_account`.
    #[schema(pattern = "^[A-Za-z0-9_.:-]{1,64}$", example = "treasury")]
    from_account: String,
    /// The account credited.
    #[schema(pattern = "^[A-Za-z0-9_.:-]{1,64}$", example = "alice")]
    to_account: String,
    // Kept raw so a number (`12.3`) is refused as `invalid_amount`, not as a generic body error.
    /// A JSON string, never a number: digits with at most the currency's decimal places
    /// (`USD` 2, `JPY` 0, `BHD` 3), greater than zero and at most 10^15. `"5"` and `"5.00"`
    /// are the same amount.
    #[schema(value_type = String, pattern = r"^[0-9]+(\.[0-9]+)?$", example = "12.30")]
    amount: serde_json::Value,
    /// An ISO 4217 code with minor units; the accounts' currency.
    #[schema(pattern = "^[A-Z]{3}$", example = "USD")]
    currency: String,
    /// Free text; strings must not contain U+0000.
    #[schema(max_length = 255)]
    reference: Option<String>,
    /// Any JSON object; strings must not contain U+0000.
    #[schema(value_type = Option<Object>)]
    metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// The ledger both accounts belong to: a ledger-bound key's own when absent (naming
    /// another is `403 ledger_forbidden`); `default` for an admin key. An account id that
    /// exists only in another ledger ends the transfer `failed` `account_not_found`.
    #[schema(pattern = "^[a-z0-9_-]{1,64}$", example = "default")]
    ledger: Option<String>,
    /// `transfer` (the default) moves the money when posted. `hold` reserves it on the source
    /// account instead (status `held`; `available` drops, `balance` does not) until it is
    /// captured (`POST /v1/transfers/{id}/capture`), voided, or expires.
    #[schema(pattern = "^(transfer|hold)$", example = "transfer")]
    mode: Option<String>,
    /// For `mode: hold` only: how long the hold lasts once placed, 1 to 2,592,000 (30 days);
    /// 604,800 (7 days) when absent. Expired holds are voided within 60 s.
    #[schema(minimum = 1, maximum = 2592000)]
    hold_expires_in_secs: Option<u64>,
}

impl TransferRequest {
    /// Parse, don't validate: the only way from wire to domain.
    pub fn into_new_transfer(
        self,
        key: IdempotencyKey,
        caller: &ApiKeyIdentity,
    ) -> Result<NewTransfer, ApiError> {
        let ledger = super::auth::requested_ledger(caller, self.ledger.as_deref())?;
        let currency = Currency::parse(&self.currency)
            .map_err(|e| ApiError::InvalidCurrency(e.to_string()))?;
        let amount_text = self.amount.as_str().ok_or_else(|| {
            ApiError::InvalidAmount("amount must be a JSON string such as \"12.30\"".into())
        })?;
        let amount = Amount::parse(amount_text, currency)
            .map_err(|e| ApiError::InvalidAmount(e.to_string()))?;
        let account = |text: &str, field: &str| {
            AccountId::parse(text).map_err(|e| ApiError::InvalidAccount(format!("{field}: {e}")))
        };
        let from_account = account(&self.from_account, "from_account")?;
        let to_account = account(&self.to_account, "to_account")?;
        if from_account == to_account {
            return Err(ApiError::SameAccount);
        }
        if let Some(reference) = &self.reference
            && reference.chars().count() > crate::domain::transfer::REFERENCE_LEN_MAX
        {
            return Err(ApiError::InvalidBody(format!(
                "reference is longer than {} characters",
                crate::domain::transfer::REFERENCE_LEN_MAX
            )));
        }
        let metadata = self.metadata.unwrap_or_default();
        if let Some(reference) = &self.reference {
            reject_nul("reference", &serde_json::Value::String(reference.clone()))?;
        }
        reject_nul("metadata", &serde_json::Value::Object(metadata.clone()))?;
        let mode = match (self.mode.as_deref(), self.hold_expires_in_secs) {
            (None | Some("transfer"), None) => TransferMode::Transfer,
            (None | Some("transfer"), Some(_)) => {
                return Err(ApiError::InvalidBody(
                    "hold_expires_in_secs is for mode \"hold\" only".into(),
                ));
            }
            (Some("hold"), secs) => TransferMode::Hold {
                expires_in_secs: match secs {
                    None => HoldExpiry::DEFAULT,
                    Some(secs) => {
                        HoldExpiry::parse(secs).map_err(|e| ApiError::InvalidBody(e.to_string()))?
                    }
                },
            },
            (Some(other), _) => {
                return Err(ApiError::InvalidBody(format!(
                    "mode must be \"transfer\" or \"hold\", not {other:?}"
                )));
            }
        };
        Ok(NewTransfer {
            idempotency_key: key,
            ledger,
            from_account,
            to_account,
            amount,
            reference: self.reference,
            metadata,
            mode,
        })
    }
}

pub(super) fn idempotency_key(headers: &HeaderMap) -> Result<IdempotencyKey, ApiError> {
    let mut values = headers.get_all(IDEMPOTENCY_KEY_HEADER).iter();
    let value = values.next().ok_or(ApiError::IdempotencyKeyMissing)?;
    if values.next().is_some() {
        return Err(ApiError::IdempotencyKeyInvalid(
            "send exactly one Idempotency-Key header".into(),
        ));
    }
    let text = value.to_str().map_err(|_| {
        ApiError::IdempotencyKeyInvalid("Idempotency-Key must be visible ASCII".into())
    })?;
    IdempotencyKey::parse(text).map_err(|e| ApiError::IdempotencyKeyInvalid(e.to_string()))
}

/// Accepts one transfer, idempotently: it is posted to the ledger by a worker.
#[utoipa::path(
    post,
    path = "/transfers",
    tag = "transfers",
    operation_id = "createTransfer",
    description = "Scope: `transfers:write` (or `admin`). `202` only after the transfer and \
        its posting job are committed. The same `Idempotency-Key` (per API key) with the same \
        request returns `200`, the transfer as it is now, and `Idempotent-Replayed: true`; with \
        another request it is `422 idempotency_key_reused`. A request refused by validation \
        is not stored, so its key can be used again. A `503` means \"outcome unknown, retry \
        with the same key\". Business failures (`insufficient_funds`, …) are outcomes of \
        the accepted transfer, read with `GET /v1/transfers/{id}`.",
    params((
        "Idempotency-Key" = String, Header,
        pattern = "^[!-~]{1,255}$",
        description = "1–255 visible ASCII characters, sent once; names the transfer for \
            this API key forever.",
    )),
    request_body = TransferRequest,
    responses(
        (status = 202, description = "Accepted: committed with its job, now `pending`.",
            body = TransferView,
            headers(("Location" = String, description = "`/v1/transfers/{id}`")),
            links(
                ("GetTransfer" = (operation_id = "getTransfer",
                    parameters(("id" = "$response.body#/id")))),
                ("GetTransferByIdempotencyKey" = (operation_id = "getTransferByIdempotencyKey",
                    parameters(("idempotency_key" = "$response.body#/idempotency_key")))),
            )),
        (status = 200, description = "A replay: the transfer created under this key by the \
            same request, as it is now.",
            body = TransferView,
            headers(("Idempotent-Replayed" = String, description = "`true`"))),
        (status = 422, description = "`idempotency_key_reused`: the key was used with another \
            request.",
            body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = ["transfers:write"])),
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<JsonBody<TransferRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let caller = caller.require(Scope::TransfersWrite)?;
    let key = idempotency_key(&headers)?;
    let JsonBody(body) = body?;
    let transfer = body.into_new_transfer(key, caller)?;
    let submission = Submission {
        api_key_id: caller.id,
        transfer,
    };
    let outcome = state.db(state.intake.submit(submission)).await?;
    match outcome {
        Acceptance::Accepted(view) => {
            metrics::counter!("ferry_transfers_accepted_total").increment(1);
            let location = HeaderValue::from_str(&format!("/v1/transfers/{}", view.id))
                .map_err(|e| ApiError::Internal(e.into()))?;
            Ok((
                StatusCode::ACCEPTED,
                [(header::LOCATION, location)],
                Json(view),
            )
                .into_response())
        }
        Acceptance::Replayed(view) => Ok((
            StatusCode::OK,
            [(REPLAYED_HEADER, HeaderValue::from_static("true"))],
            Json(view),
        )
            .into_response()),
        Acceptance::KeyReused => Err(ApiError::IdempotencyKeyReused),
    }
}

/// The body of `POST /v1/transfers/batch`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// 1 to 1000 items, each a `TransferRequest` plus its `idempotency_key`. Items are
    /// validated one by one: an invalid item is answered `rejected` in its result, not by
    /// refusing the request.
    #[schema(schema_with = super::openapi::batch_items)]
    transfers: Vec<serde_json::Value>,
}

/// One batch item: the single-transfer body plus its `idempotency_key`.
fn parse_batch_item(
    value: serde_json::Value,
    caller: &ApiKeyIdentity,
) -> Result<NewTransfer, ApiError> {
    let serde_json::Value::Object(mut fields) = value else {
        return Err(ApiError::InvalidBody(
            "each item must be a JSON object".into(),
        ));
    };
    let key = match fields.remove("idempotency_key") {
        Some(serde_json::Value::String(key)) => IdempotencyKey::parse(&key)
            .map_err(|e| ApiError::IdempotencyKeyInvalid(e.to_string()))?,
        Some(_) => {
            return Err(ApiError::IdempotencyKeyInvalid(
                "idempotency_key must be a string".into(),
            ));
        }
        None => {
            return Err(ApiError::InvalidBody(
                "missing field `idempotency_key`".into(),
            ));
        }
    };
    from_value::<TransferRequest>(serde_json::Value::Object(fields))?.into_new_transfer(key, caller)
}

/// What happened to one batch item.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub(super) enum ItemOutcome {
    Accepted,
    Replayed,
    Rejected,
}

/// The result of one batch item, in the order of the request.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BatchResult {
    /// The item's key as sent; `null` when it sent none (or not a string).
    idempotency_key: Option<String>,
    outcome: ItemOutcome,
    /// The transfer, when `accepted` or `replayed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    transfer: Option<TransferView>,
    /// Why the item was `rejected`.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<Problem>,
}

/// The answer to `POST /v1/transfers/batch` (and `/settle`): one result per item.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BatchResponse {
    results: Vec<BatchResult>,
}

impl BatchResponse {
    pub(super) fn new(results: Vec<BatchResult>) -> Self {
        Self { results }
    }
}

/// Accepts up to 1000 transfers in one commit and one posting job.
#[utoipa::path(
    post,
    path = "/transfers/batch",
    tag = "transfers",
    operation_id = "createTransferBatch",
    description = "Scope: `transfers:write` (or `admin`). Each item carries its own \
        `idempotency_key` with the single-transfer rules; each is `accepted`, `replayed` or \
        `rejected` (with a problem body in `error`) on its own.",
    request_body = BatchRequest,
    responses(
        (status = 200, description = "One result per item, in order.", body = BatchResponse),
    ),
    security(("api_key" = ["transfers:write"])),
)]
pub async fn create_batch(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<JsonBody<BatchRequest>, ApiError>,
) -> Result<Json<BatchResponse>, ApiError> {
    let caller = caller.require(Scope::TransfersWrite)?;
    let JsonBody(body) = body?;
    if body.transfers.is_empty() || body.transfers.len() > BATCH_LEN_MAX {
        return Err(ApiError::InvalidBody(format!(
            "transfers must hold 1 to {BATCH_LEN_MAX} items"
        )));
    }
    let mut results: Vec<Option<BatchResult>> = Vec::with_capacity(body.transfers.len());
    // Slot in `results` and key of each valid item, in the order of `submissions`.
    let mut valid = Vec::new();
    let mut submissions = Vec::new();
    for value in body.transfers {
        let key = value
            .get("idempotency_key")
            .and_then(|k| k.as_str())
            .map(str::to_owned);
        match parse_batch_item(value, caller) {
            Ok(transfer) => {
                valid.push((results.len(), key));
                results.push(None);
                submissions.push(Submission {
                    api_key_id: caller.id,
                    transfer,
                });
            }
            Err(e) => results.push(Some(rejected(key, &e))),
        }
    }
    // A batch is already a group: one commit and one job of its own.
    let accepted = if submissions.is_empty() {
        Vec::new()
    } else {
        state
            .db(transfers::accept(&state.pool, &submissions))
            .await?
    };
    let mut accepted_count = 0u64;
    for ((slot, key), acceptance) in valid.into_iter().zip(accepted) {
        results[slot] = Some(match acceptance {
            Acceptance::Accepted(view) => {
                accepted_count += 1;
                done(key, ItemOutcome::Accepted, view)
            }
            Acceptance::Replayed(view) => done(key, ItemOutcome::Replayed, view),
            Acceptance::KeyReused => rejected(key, &ApiError::IdempotencyKeyReused),
        });
    }
    metrics::counter!("ferry_transfers_accepted_total").increment(accepted_count);
    Ok(Json(BatchResponse {
        results: results.into_iter().flatten().collect(),
    }))
}

pub(super) fn done(key: Option<String>, outcome: ItemOutcome, view: TransferView) -> BatchResult {
    BatchResult {
        idempotency_key: key,
        outcome,
        transfer: Some(view),
        error: None,
    }
}

pub(super) fn rejected(key: Option<String>, error: &ApiError) -> BatchResult {
    BatchResult {
        idempotency_key: key,
        outcome: ItemOutcome::Rejected,
        transfer: None,
        error: Some(error.problem()),
    }
}

/// Reads a transfer created with this API key.
#[utoipa::path(
    get,
    path = "/transfers/{id}",
    tag = "transfers",
    operation_id = "getTransfer",
    description = "Scope: `transfers:read` (or `admin`). A transfer is visible only to the \
        API key that created it.",
    params(("id" = Uuid, Path, description = "The transfer id.")),
    responses(
        (status = 200, description = "The transfer.", body = TransferView),
        (status = 404, description = "`transfer_not_found`.", body = Problem,
            content_type = "application/problem+json"),
    ),
    security(("api_key" = ["transfers:read"])),
)]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<TransferView>, ApiError> {
    let caller = caller.require(Scope::TransfersRead)?;
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::TransferNotFound)?;
    state
        .db(transfers::get(&state.pool, caller.id, id))
        .await?
        .map(Json)
        .ok_or(ApiError::TransferNotFound)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ByKeyQuery {
    idempotency_key: String,
}

/// Finds the transfer this API key created under an idempotency key.
#[utoipa::path(
    get,
    path = "/transfers",
    tag = "transfers",
    operation_id = "getTransferByIdempotencyKey",
    description = "Scope: `transfers:read` (or `admin`).",
    params((
        "idempotency_key" = String, Query,
        pattern = "^[!-~]{1,255}$",
        description = "The `Idempotency-Key` the transfer was created with.",
    )),
    responses(
        (status = 200, description = "The transfer.", body = TransferView),
        (status = 404, description = "`transfer_not_found`: no transfer under this key.",
            body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = ["transfers:read"])),
)]
pub async fn get_by_key(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(query): QueryParams<ByKeyQuery>,
) -> Result<Json<TransferView>, ApiError> {
    let caller = caller.require(Scope::TransfersRead)?;
    let key = IdempotencyKey::parse(&query.idempotency_key)
        .map_err(|e| ApiError::IdempotencyKeyInvalid(e.to_string()))?;
    state
        .db(transfers::get_by_key(&state.pool, caller.id, &key))
        .await?
        .map(Json)
        .ok_or(ApiError::TransferNotFound)
}
