//! `/v1/accounts`: create accounts, read balances and entries.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;

use super::AppState;
use super::auth::Caller;
use super::error::ApiError;
use super::json::{JsonBody, reject_nul};
use super::paging::{next_cursor, page_len};
use super::query::QueryParams;
use crate::domain::{AccountId, Currency, Scope};
use crate::store::accounts::{self, AccountView, CreateAccountError, EntryView, NewAccount};

/// Entries per page when the client does not say.
pub const ENTRIES_PAGE_LEN_DEFAULT: i64 = 50;
/// Most entries per page.
pub const ENTRIES_PAGE_LEN_MAX: i64 = 500;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateAccountRequest {
    id: Option<String>,
    currency: String,
    #[serde(default)]
    allow_overdraft: bool,
    #[serde(default)]
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

#[derive(Debug, serde::Serialize)]
pub struct EntriesPage {
    entries: Vec<EntryView>,
    /// Pass as `cursor` to get the next (older) page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

pub async fn entries(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    QueryParams(query): QueryParams<EntriesQuery>,
) -> Result<Json<EntriesPage>, ApiError> {
    caller.require(Scope::AccountsRead)?;
    let limit = page_len(query.limit, ENTRIES_PAGE_LEN_DEFAULT, ENTRIES_PAGE_LEN_MAX)?;
    let before = query
        .cursor
        .map(|c| c.parse::<i64>())
        .transpose()
        .map_err(|_| ApiError::InvalidBody("cursor is not one this API returned".into()))?;
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
