//! `/v1/accounts`: create accounts, read balances and entries.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, Problem};
use super::json::{JsonBody, reject_nul};
use super::paging::{next_cursor, page_len};
use super::query::QueryParams;
use crate::domain::{AccountId, Currency, Scope};
use crate::store::accounts::{self, AccountView, CreateAccountError, EntryView, NewAccount};

/// Entries per page when the client does not say.
pub const ENTRIES_PAGE_LEN_DEFAULT: i64 = 50;
/// Most entries per page.
pub const ENTRIES_PAGE_LEN_MAX: i64 = 500;

/// The body of `POST /v1/accounts`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAccountRequest {
    /// Generated (`acc_…`) when absent.
    #[schema(pattern = "^[A-Za-z0-9_.:-]{1,64}$", example = "alice")]
    id: Option<String>,
    /// An ISO 4217 code with minor units (`USD`, `JPY`, `BHD`; not `XAU`).
    #[schema(pattern = "^[A-Z]{3}$", example = "USD")]
    currency: String,
    /// May the balance go below zero?
    #[serde(default)]
    allow_overdraft: bool,
    /// Any JSON object; strings must not contain U+0000.
    #[serde(default)]
    #[schema(value_type = Object)]
    metadata: serde_json::Map<String, serde_json::Value>,
}

impl TryFrom<CreateAccountRequest> for NewAccount {
    type Error = ApiError;
    fn try_from(req: CreateAccountRequest) -> Result<Self, ApiError> {
        let currency =
            Currency::parse(&req.currency).map_err(|e| ApiError::InvalidCurrency(e.to_string()))?;
        let id = match req.id {
            Some(id) => {
                AccountId::parse(&id).map_err(|e| ApiError::InvalidAccount(e.to_string()))?
            }
            None => AccountId::generate(),
        };
        reject_nul("metadata", &serde_json::Value::Object(req.metadata.clone()))?;
        Ok(NewAccount {
            id,
            currency,
            allow_overdraft: req.allow_overdraft,
            metadata: req.metadata,
        })
    }
}

/// Creates an account with a zero balance.
#[utoipa::path(
    post,
    path = "/accounts",
    tag = "accounts",
    operation_id = "createAccount",
    description = "Scope: `accounts:write` (or `admin`).",
    request_body = CreateAccountRequest,
    responses(
        (status = 201, description = "The account, balance zero.", body = AccountView,
            links(
                ("GetAccount" = (operation_id = "getAccount",
                    parameters(("id" = "$response.body#/id")))),
                ("ListAccountEntries" = (operation_id = "listAccountEntries",
                    parameters(("id" = "$response.body#/id")))),
            )),
        (status = 409, description = "`account_exists`: an account with this id exists.",
            body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = ["accounts:write"])),
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<CreateAccountRequest>,
) -> Result<(StatusCode, Json<AccountView>), ApiError> {
    caller.require(Scope::AccountsWrite)?;
    let account = NewAccount::try_from(body)?;
    let created = state
        .db(async {
            accounts::create(&state.pool, &account)
                .await
                .map_err(|e| match e {
                    CreateAccountError::AlreadyExists => {
                        ApiError::AccountExists(account.id.to_string())
                    }
                    CreateAccountError::Database(e) => e.into(),
                })
        })
        .await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// Reads an account and its balance.
#[utoipa::path(
    get,
    path = "/accounts/{id}",
    tag = "accounts",
    operation_id = "getAccount",
    description = "Scope: `accounts:read` (or `admin`).",
    params(("id" = String, Path, description = "The account id.")),
    responses(
        (status = 200, description = "The account.", body = AccountView),
        (status = 404, description = "`account_not_found`.", body = Problem,
            content_type = "application/problem+json"),
    ),
    security(("api_key" = ["accounts:read"])),
)]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<AccountView>, ApiError> {
    caller.require(Scope::AccountsRead)?;
    let id = AccountId::parse(&id).map_err(|_| ApiError::AccountNotFound(id.clone()))?;
    state
        .db(accounts::get(&state.pool, &id))
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::AccountNotFound(id.to_string()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntriesQuery {
    limit: Option<i64>,
    cursor: Option<String>,
}

/// A page of an account's entries, newest first.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct EntriesPage {
    entries: Vec<EntryView>,
    /// Pass as `cursor` to get the next (older) page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

/// Lists an account's ledger entries, newest first.
#[utoipa::path(
    get,
    path = "/accounts/{id}/entries",
    tag = "accounts",
    operation_id = "listAccountEntries",
    description = "Scope: `accounts:read` (or `admin`).",
    params(
        ("id" = String, Path, description = "The account id."),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 500,
            description = "Entries per page; default 50."),
        ("cursor" = Option<String>, Query, pattern = "^[0-9]{1,19}$",
            description = "`next_cursor` of the previous page."),
    ),
    responses(
        (status = 200, description = "A page of entries.", body = EntriesPage),
        (status = 404, description = "`account_not_found`.", body = Problem,
            content_type = "application/problem+json"),
    ),
    security(("api_key" = ["accounts:read"])),
)]
pub async fn entries(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    QueryParams(query): QueryParams<EntriesQuery>,
) -> Result<Json<EntriesPage>, ApiError> {
    caller.require(Scope::AccountsRead)?;
    let limit = page_len(query.limit, ENTRIES_PAGE_LEN_DEFAULT, ENTRIES_PAGE_LEN_MAX)?;
    let before = query.cursor.as_deref().map(entry_cursor).transpose()?;
    let id = AccountId::parse(&id).map_err(|_| ApiError::AccountNotFound(id.clone()))?;
    let entries = state
        .db(async {
            if accounts::get(&state.pool, &id).await?.is_none() {
                return Err(ApiError::AccountNotFound(id.to_string()));
            }
            Ok(accounts::entries(&state.pool, &id, before, limit).await?)
        })
        .await?;
    let next_cursor = next_cursor(&entries, limit, |e| e.id.clone());
    Ok(Json(EntriesPage {
        entries,
        next_cursor,
    }))
}

/// An entries cursor: an entry id, which is positive, so digits only (no sign), as the
/// contract's pattern says.
fn entry_cursor(text: &str) -> Result<i64, ApiError> {
    text.bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| text.parse().ok())
        .flatten()
        .ok_or_else(|| ApiError::InvalidBody("cursor is not one this API returned".into()))
}
