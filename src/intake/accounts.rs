//! `/v1/accounts`: create and list accounts, read balances and entries.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;

use super::AppState;
use super::auth::Caller;
use super::auth::requested_ledger;
use super::error::{ApiError, Problem};
use super::json::{JsonBody, reject_nul};
use super::paging::{next_cursor, page_len};
use super::query::QueryParams;
use crate::domain::{
    AccountId, AccountKey, AccountStatus, Currency, LedgerName, MetadataMatch, Scope,
};
use crate::store::accounts::{
    self, AccountFilter, AccountView, BalanceView, CreateAccountError, EntryView, NewAccount,
    StatusChange, StatusChangeError,
};
use crate::store::api_keys::ApiKeyIdentity;

/// Entries per page when the client does not say.
pub const ENTRIES_PAGE_LEN_DEFAULT: i64 = 50;
/// Most entries per page.
pub const ENTRIES_PAGE_LEN_MAX: i64 = 500;
/// Accounts per page of `GET /v1/accounts` when the client does not say.
pub const ACCOUNTS_PAGE_LEN_DEFAULT: i64 = 100;
/// Most accounts per page.
pub const ACCOUNTS_PAGE_LEN_MAX: i64 = 1000;
/// The prefix of a metadata condition's query parameter: `metadata.KEY=VALUE`.
const METADATA_PARAM_PREFIX: &str = "metadata.";

/// The body of `POST /v1/accounts`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAccountRequest {
    /// Generated (`acc_…`) when absent.
    #[schema(pattern = "^[A-Za-z0-9_.:-]{1,64}$", example = "alice")]
    id: Option<String>,
    /// The ledger to create the account in: a ledger-bound key's own ledger when absent
    /// (naming another is `403 ledger_forbidden`); `default` for an admin key.
    #[schema(pattern = "^[a-z0-9_-]{1,64}$", example = "default")]
    ledger: Option<String>,
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

impl CreateAccountRequest {
    /// Parse, don't validate: the only way from wire to domain; the account lands in the
    /// caller's ledger.
    fn into_new_account(self, caller: &ApiKeyIdentity) -> Result<NewAccount, ApiError> {
        let ledger = super::auth::requested_ledger(caller, self.ledger.as_deref())?;
        let currency = Currency::parse(&self.currency)
            .map_err(|e| ApiError::InvalidCurrency(e.to_string()))?;
        let id = match self.id {
            Some(id) => {
                AccountId::parse(&id).map_err(|e| ApiError::InvalidAccount(e.to_string()))?
            }
            None => AccountId::generate(),
        };
        reject_nul(
            "metadata",
            &serde_json::Value::Object(self.metadata.clone()),
        )?;
        Ok(NewAccount {
            key: AccountKey::new(ledger, id),
            currency,
            allow_overdraft: self.allow_overdraft,
            metadata: self.metadata,
        })
    }
}

/// Which ledger a read or an account action addresses: `?ledger=` (admin keys; a ledger-bound
/// key may name its own).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerQuery {
    ledger: Option<String>,
}

impl LedgerQuery {
    /// `?ledger=name`, as the console sends it for the account it shows.
    pub fn named(ledger: &str) -> Self {
        Self {
            ledger: Some(ledger.to_owned()),
        }
    }
}

/// The account a request addresses. Anything the caller may not see — a malformed id or
/// ledger, another ledger — is `404 account_not_found`, so existence is never revealed.
fn addressed_account(
    caller: &ApiKeyIdentity,
    ledger: Option<&str>,
    id: &str,
) -> Result<AccountKey, ApiError> {
    let not_found = || ApiError::AccountNotFound(id.to_owned());
    let named = ledger
        .map(|name| LedgerName::parse(name).map_err(|_| not_found()))
        .transpose()?;
    let ledger = caller.ledger_for(named).map_err(|_| not_found())?;
    let id = AccountId::parse(id).map_err(|_| not_found())?;
    Ok(AccountKey::new(ledger, id))
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
        (status = 403, description = "`ledger_forbidden`: the key is bound to another ledger.",
            body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`account_exists`: an account with this id exists in the \
            ledger.",
            body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`ledger_not_found`: the named ledger does not exist.",
            body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = ["accounts:write"])),
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<CreateAccountRequest>,
) -> Result<(StatusCode, Json<AccountView>), ApiError> {
    let actor = caller.actor();
    let caller = caller.require(Scope::AccountsWrite)?;
    let account = body.into_new_account(caller)?;
    let created = state
        .db(async {
            accounts::create(&state.pool, &account, &actor)
                .await
                .map_err(|e| match e {
                    CreateAccountError::AlreadyExists => {
                        ApiError::AccountExists(account.key.id.to_string())
                    }
                    CreateAccountError::LedgerNotFound => {
                        ApiError::LedgerNotFound(account.key.ledger.to_string())
                    }
                    CreateAccountError::Database(e) => e.into(),
                })
        })
        .await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// `GET /v1/accounts`'s query, parsed: the filter and the page length.
#[derive(Debug)]
struct ListQuery {
    ledger: Option<String>,
    status: Option<AccountStatus>,
    currency: Option<Currency>,
    metadata: MetadataMatch,
    created_after: Option<chrono::DateTime<chrono::Utc>>,
    after: Option<AccountId>,
    limit: Option<i64>,
}

impl ListQuery {
    /// Parses the query's pairs. A struct with `deny_unknown_fields` cannot take the open set
    /// of `metadata.KEY` names, so the pairs are read here, with the same rules: an unknown
    /// or repeated parameter is `invalid_body`.
    fn parse(pairs: Vec<(String, String)>) -> Result<Self, ApiError> {
        let mut query = Self {
            ledger: None,
            status: None,
            currency: None,
            metadata: MetadataMatch::default(),
            created_after: None,
            after: None,
            limit: None,
        };
        let mut seen = std::collections::HashSet::new();
        for (name, value) in pairs {
            if let Some(key) = name.strip_prefix(METADATA_PARAM_PREFIX) {
                query
                    .metadata
                    .require(key, &value)
                    .map_err(|e| ApiError::InvalidBody(e.to_string()))?;
                continue;
            }
            if !seen.insert(name.clone()) {
                return Err(ApiError::InvalidBody(format!("{name} is given twice")));
            }
            query.set(&name, value)?;
        }
        Ok(query)
    }

    /// Sets the one parameter `name` (not a metadata condition).
    fn set(&mut self, name: &str, value: String) -> Result<(), ApiError> {
        match name {
            "ledger" => self.ledger = Some(value),
            "status" => {
                let status = AccountStatus::parse_known(&value).map_err(|_| {
                    ApiError::InvalidBody(format!(
                        "status must be active, frozen or closed, not {value:?}"
                    ))
                })?;
                self.status = Some(status);
            }
            "currency" => {
                let currency = Currency::parse(&value)
                    .map_err(|e| ApiError::InvalidCurrency(e.to_string()))?;
                self.currency = Some(currency);
            }
            "created_after" => {
                let at = chrono::DateTime::parse_from_rfc3339(&value).map_err(|e| {
                    ApiError::InvalidBody(format!(
                        "created_after must be an RFC 3339 instant ({e}): {value:?}"
                    ))
                })?;
                self.created_after = Some(at.with_timezone(&chrono::Utc));
            }
            "after" => {
                let after = AccountId::parse(&value).map_err(|_| {
                    ApiError::InvalidBody("after must be an account id this API returned".into())
                })?;
                self.after = Some(after);
            }
            "limit" => {
                let limit = value.parse().map_err(|_| {
                    ApiError::InvalidBody(format!("limit must be a whole number, not {value:?}"))
                })?;
                self.limit = Some(limit);
            }
            other => {
                return Err(ApiError::InvalidBody(format!(
                    "unknown query parameter {other:?} (metadata conditions are \
                     metadata.KEY=VALUE)"
                )));
            }
        }
        Ok(())
    }
}

/// A page of accounts, by id.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct AccountsPage {
    accounts: Vec<AccountView>,
    /// Pass as `after` for the next page; absent when this page is the last one.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_after: Option<String>,
}

/// Lists a ledger's accounts by id, optionally narrowed by status, currency, metadata and
/// creation time.
#[utoipa::path(
    get,
    path = "/accounts",
    tag = "accounts",
    operation_id = "listAccounts",
    description = "Scope: `accounts:read` (or `admin`). The caller's ledger's accounts (an \
        `admin` key names one with `ledger`, default `default`), ordered by `id`, paged with \
        `after` = `next_after`. Conditions combine with AND. Metadata conditions are query \
        parameters `metadata.KEY=VALUE` (up to 10, each key once): the account's metadata has \
        the top-level key `KEY` holding the string `VALUE` (a number or boolean does not \
        match its text).",
    params(
        ("ledger" = Option<String>, Query, pattern = "^[a-z0-9_-]{1,64}$",
            description = "For `admin` keys: the ledger to list; a ledger-bound key may name \
                only its own."),
        ("status" = Option<String>, Query, pattern = "^(active|frozen|closed)$",
            description = "Only accounts with this status."),
        ("currency" = Option<String>, Query, pattern = "^[A-Z]{3}$",
            description = "Only accounts in this currency."),
        ("created_after" = Option<String>, Query, format = DateTime,
            description = "Only accounts created after this RFC 3339 instant."),
        ("after" = Option<String>, Query, pattern = "^[A-Za-z0-9_.:-]{1,64}$",
            description = "Only accounts whose id sorts after this one: `next_after` of the \
                previous page."),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000,
            description = "Accounts per page; default 100."),
    ),
    responses(
        (status = 200, description = "A page of accounts.", body = AccountsPage),
        (status = 400, description = "`invalid_body`: a bad `status`, `created_after`, \
            `after`, `limit` or metadata condition, an unknown parameter; \
            `invalid_currency`, `invalid_ledger`: a malformed `currency` or `ledger`.",
            body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`ledger_forbidden`: a ledger-bound key named another \
            ledger.", body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = ["accounts:read"])),
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(pairs): QueryParams<Vec<(String, String)>>,
) -> Result<Json<AccountsPage>, ApiError> {
    let caller = caller.require(Scope::AccountsRead)?;
    let query = ListQuery::parse(pairs)?;
    let limit = page_len(
        query.limit,
        ACCOUNTS_PAGE_LEN_DEFAULT,
        ACCOUNTS_PAGE_LEN_MAX,
    )?;
    let filter = AccountFilter {
        ledger: requested_ledger(caller, query.ledger.as_deref())?,
        status: query.status,
        currency: query.currency,
        metadata: query.metadata,
        created_after: query.created_after,
        after: query.after,
    };
    let accounts = state
        .db(accounts::list(&state.pool, &filter, limit))
        .await?;
    let next_after = next_cursor(&accounts, limit, |a| a.id.clone());
    Ok(Json(AccountsPage {
        accounts,
        next_after,
    }))
}

/// Reads an account and its balance.
#[utoipa::path(
    get,
    path = "/accounts/{id}",
    tag = "accounts",
    operation_id = "getAccount",
    description = "Scope: `accounts:read` (or `admin`).",
    params(
        ("id" = String, Path, description = "The account id."),
        ("ledger" = Option<String>, Query, pattern = "^[a-z0-9_-]{1,64}$",
            description = "The account's ledger: the key's own when absent (`default` for \
                admin keys); another ledger's accounts are not found."),
    ),
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
    QueryParams(query): QueryParams<LedgerQuery>,
) -> Result<Json<AccountView>, ApiError> {
    let caller = caller.require(Scope::AccountsRead)?;
    let key = addressed_account(caller, query.ledger.as_deref(), &id)?;
    state
        .db(accounts::get(&state.pool, &key))
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::AccountNotFound(key.id.to_string()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalanceQuery {
    ledger: Option<String>,
    at: Option<String>,
}

/// An account's balance, reservations and available balance as of an instant.
#[utoipa::path(
    get,
    path = "/accounts/{id}/balance",
    tag = "accounts",
    operation_id = "getAccountBalance",
    description = "Scope: `accounts:read` (or `admin`). The balance after every entry written \
        at or before `at`, what holds reserved on it then (`pending_debits`), and \
        `available = balance − pending_debits`. Each entry and each \
        hold line stores the account's sums after it, so this is one index probe whatever the \
        length of the history. Before the account's first entry everything is zero.",
    params(
        ("id" = String, Path, description = "The account id."),
        ("ledger" = Option<String>, Query, pattern = "^[a-z0-9_-]{1,64}$",
            description = "The account's ledger, as for `getAccount`."),
        ("at" = Option<String>, Query, format = DateTime,
            description = "An RFC 3339 instant (`2026-11-30T12:00:00Z`); now when absent."),
    ),
    responses(
        (status = 200, description = "The balance at `at`.", body = BalanceView),
        (status = 400, description = "`invalid_body`: `at` is not an RFC 3339 instant.",
            body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`account_not_found`.", body = Problem,
            content_type = "application/problem+json"),
    ),
    security(("api_key" = ["accounts:read"])),
)]
pub async fn balance(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    QueryParams(query): QueryParams<BalanceQuery>,
) -> Result<Json<BalanceView>, ApiError> {
    let caller = caller.require(Scope::AccountsRead)?;
    let at = match query.at.as_deref() {
        None => chrono::Utc::now(),
        Some(text) => chrono::DateTime::parse_from_rfc3339(text)
            .map_err(|e| {
                ApiError::InvalidBody(format!("at must be an RFC 3339 instant ({e}): {text:?}"))
            })?
            .with_timezone(&chrono::Utc),
    };
    let key = addressed_account(caller, query.ledger.as_deref(), &id)?;
    state
        .db(accounts::balance_at(&state.pool, &key, at))
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::AccountNotFound(key.id.to_string()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntriesQuery {
    ledger: Option<String>,
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
        ("ledger" = Option<String>, Query, pattern = "^[a-z0-9_-]{1,64}$",
            description = "The account's ledger, as for `getAccount`."),
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
    let caller = caller.require(Scope::AccountsRead)?;
    let limit = page_len(query.limit, ENTRIES_PAGE_LEN_DEFAULT, ENTRIES_PAGE_LEN_MAX)?;
    let before = query.cursor.as_deref().map(entry_cursor).transpose()?;
    let key = addressed_account(caller, query.ledger.as_deref(), &id)?;
    let entries = state
        .db(async {
            if accounts::get(&state.pool, &key).await?.is_none() {
                return Err(ApiError::AccountNotFound(key.id.to_string()));
            }
            Ok(accounts::entries(&state.pool, &key, before, limit).await?)
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

/// Freezes an account: transfers touching it fail `account_frozen` until it is unfrozen.
#[utoipa::path(
    post,
    path = "/accounts/{id}/freeze",
    tag = "accounts",
    operation_id = "freezeAccount",
    description = "Scope: `accounts:write` (or `admin`). Freezing a frozen account changes \
        nothing; a closed account stays closed (`409 account_closed`).",
    params(
        ("id" = String, Path, description = "The account id."),
        ("ledger" = Option<String>, Query, pattern = "^[a-z0-9_-]{1,64}$",
            description = "The account's ledger, as for `getAccount`."),
    ),
    responses(
        (status = 200, description = "The account, now frozen.", body = AccountView),
        (status = 404, description = "`account_not_found`.", body = Problem,
            content_type = "application/problem+json"),
        (status = 409, description = "`account_closed`.", body = Problem,
            content_type = "application/problem+json"),
    ),
    security(("api_key" = ["accounts:write"])),
)]
pub async fn freeze(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    QueryParams(query): QueryParams<LedgerQuery>,
) -> Result<Json<AccountView>, ApiError> {
    change_status(state, caller, id, query, StatusChange::Freeze).await
}

/// Unfreezes an account: it moves money again.
#[utoipa::path(
    post,
    path = "/accounts/{id}/unfreeze",
    tag = "accounts",
    operation_id = "unfreezeAccount",
    description = "Scope: `accounts:write` (or `admin`). Unfreezing an active account changes \
        nothing; a closed account stays closed (`409 account_closed`).",
    params(
        ("id" = String, Path, description = "The account id."),
        ("ledger" = Option<String>, Query, pattern = "^[a-z0-9_-]{1,64}$",
            description = "The account's ledger, as for `getAccount`."),
    ),
    responses(
        (status = 200, description = "The account, now active.", body = AccountView),
        (status = 404, description = "`account_not_found`.", body = Problem,
            content_type = "application/problem+json"),
        (status = 409, description = "`account_closed`.", body = Problem,
            content_type = "application/problem+json"),
    ),
    security(("api_key" = ["accounts:write"])),
)]
pub async fn unfreeze(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    QueryParams(query): QueryParams<LedgerQuery>,
) -> Result<Json<AccountView>, ApiError> {
    change_status(state, caller, id, query, StatusChange::Unfreeze).await
}

/// Closes an account for good; its balance must be zero.
#[utoipa::path(
    post,
    path = "/accounts/{id}/close",
    tag = "accounts",
    operation_id = "closeAccount",
    description = "Scope: `accounts:write` (or `admin`). Transfers touching a closed account \
        fail `account_closed`. Closing a closed account changes nothing.",
    params(
        ("id" = String, Path, description = "The account id."),
        ("ledger" = Option<String>, Query, pattern = "^[a-z0-9_-]{1,64}$",
            description = "The account's ledger, as for `getAccount`."),
    ),
    responses(
        (status = 200, description = "The account, now closed.", body = AccountView),
        (status = 404, description = "`account_not_found`.", body = Problem,
            content_type = "application/problem+json"),
        (status = 409, description = "`account_not_empty`: the balance is not zero.",
            body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = ["accounts:write"])),
)]
pub async fn close(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    QueryParams(query): QueryParams<LedgerQuery>,
) -> Result<Json<AccountView>, ApiError> {
    change_status(state, caller, id, query, StatusChange::Close).await
}

async fn change_status(
    state: AppState,
    caller: Caller,
    id: String,
    query: LedgerQuery,
    change: StatusChange,
) -> Result<Json<AccountView>, ApiError> {
    let actor = caller.actor();
    let caller = caller.require(Scope::AccountsWrite)?;
    let key = addressed_account(caller, query.ledger.as_deref(), &id)?;
    let changed = state
        .db(async {
            accounts::change_status(&state.pool, &key, change, &actor)
                .await
                .map_err(|e| match e {
                    StatusChangeError::NotFound => ApiError::AccountNotFound(key.id.to_string()),
                    StatusChangeError::Closed => ApiError::AccountClosed(key.id.to_string()),
                    StatusChangeError::NotEmpty(_) => {
                        ApiError::AccountNotEmpty(key.id.to_string(), "its balance is not zero")
                    }
                    StatusChangeError::HoldsOpen => ApiError::AccountNotEmpty(
                        key.id.to_string(),
                        "holds on it are still open (capture or void them first)",
                    ),
                    StatusChangeError::Database(e) => e.into(),
                })
        })
        .await?;
    Ok(Json(changed.account))
}
