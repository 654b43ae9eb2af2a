//! `/v1/api-keys` (`admin`): create, list and revoke API keys (README, "Ledgers and
//! authorization"). The secret is shown once, in the creation's answer; lists never show a
//! secret or a hash.

use std::fmt;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::SchemaType;
use utoipa::openapi::{ArrayBuilder, ObjectBuilder, RefOr, Schema, Type};
use uuid::Uuid;

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, Problem};
use super::json::JsonBody;
use super::paging::{PageQuery, next_cursor, page_len};
use super::query::QueryParams;
use crate::domain::api_key::{KEY_LIFETIME_SECS_MAX, REDACTED};
use crate::domain::{ApiKeyName, KeyLifetime, LedgerName, Scope, Scopes};
use crate::store::api_keys::{self, ApiKeyView, KeySpec, MissingLedger};

pub const KEYS_PAGE_LEN_DEFAULT: i64 = 50;
pub const KEYS_PAGE_LEN_MAX: i64 = 500;

/// The body of `POST /v1/api-keys`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKeyRequest {
    /// For people: 1–200 characters, no control characters.
    #[schema(
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]{1,200}$",
        example = "ci-deploy"
    )]
    name: String,
    /// At least one; `admin` makes a global key that must not name a ledger.
    #[schema(schema_with = scope_list)]
    scopes: Vec<String>,
    /// The ledger a non-admin key is bound to; it must exist (`POST /v1/ledgers`). Default:
    /// `default`.
    #[schema(pattern = "^[a-z0-9_-]{1,64}$", example = "shop-eu")]
    ledger: Option<String>,
    /// The key expires this many seconds after creation (at most 3650 days); default: never.
    #[schema(minimum = 1, maximum = 315_360_000, example = 2_592_000)]
    expires_in_secs: Option<i64>,
}

/// The schema of `CreateApiKeyRequest.scopes` (`schema_with`): 1 or more scope names.
fn scope_list() -> impl Into<RefOr<Schema>> {
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(SchemaType::Type(Type::String))
                .enum_values(Some(Scope::ALL.map(Scope::as_str))),
        )
        .min_items(Some(1))
        .build()
}

impl TryFrom<CreateApiKeyRequest> for KeySpec {
    type Error = ApiError;
    fn try_from(req: CreateApiKeyRequest) -> Result<Self, ApiError> {
        let name =
            ApiKeyName::parse(&req.name).map_err(|e| ApiError::InvalidKeyName(e.to_string()))?;
        if req.scopes.is_empty() {
            return Err(ApiError::InvalidScope("name at least one scope".into()));
        }
        let scopes = req
            .scopes
            .iter()
            .map(|s| s.parse::<Scope>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ApiError::InvalidScope(e.to_string()))?;
        let ledger = req
            .ledger
            .as_deref()
            .map(LedgerName::parse)
            .transpose()
            .map_err(|e| ApiError::InvalidLedger(e.to_string()))?;
        let lifetime = req
            .expires_in_secs
            .map(KeyLifetime::from_secs)
            .transpose()
            .map_err(|_| {
                ApiError::InvalidExpiry(format!(
                    "expires_in_secs must be between 1 and {KEY_LIFETIME_SECS_MAX} (3650 days)"
                ))
            })?;
        Ok(KeySpec {
            name,
            scopes: Scopes::new(scopes),
            ledger,
            lifetime,
        })
    }
}

/// A key just created, with its secret.
#[derive(Serialize, utoipa::ToSchema)]
pub struct CreatedApiKey {
    #[serde(flatten)]
    api_key: ApiKeyView,
    /// The secret, shown this once: send it as `Authorization: Bearer <key>`. Only its
    /// SHA-256 is stored; it cannot be shown again.
    #[schema(pattern = "^ferry_[0-9a-f]{64}$")]
    key: String,
}

impl fmt::Debug for CreatedApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreatedApiKey")
            .field("api_key", &self.api_key)
            .field("key", &REDACTED)
            .finish()
    }
}

/// Creates an API key; the answer carries its secret, once.
#[utoipa::path(
    post,
    path = "/api-keys",
    tag = "api-keys",
    operation_id = "createApiKey",
    description = "Scope: `admin`. Recorded in the audit trail (`api_key.created`). The \
        ledger must exist: the API does not create ledgers implicitly.",
    request_body = CreateApiKeyRequest,
    responses(
        (status = 201, description = "The key, with its secret in `key`.", body = CreatedApiKey,
            links(("RevokeApiKey" = (operation_id = "revokeApiKey",
                parameters(("id" = "$response.body#/id")))))),
        (status = 422, description = "`ledger_not_found`: the named ledger does not exist.",
            body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = ["admin"])),
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<CreateApiKeyRequest>,
) -> Result<(StatusCode, Json<CreatedApiKey>), ApiError> {
    caller.require(Scope::Admin)?;
    let spec = KeySpec::try_from(body)?;
    let actor = caller.actor();
    let created = state
        .db(async { api_keys::issue(&state.pool, &spec, MissingLedger::Refuse, &actor).await })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedApiKey {
            api_key: created.key,
            key: created.plaintext,
        }),
    ))
}

/// A page of API keys, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ApiKeysPage {
    api_keys: Vec<ApiKeyView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<Uuid>,
}

/// Lists API keys, newest first, revoked and expired ones included; never their secrets.
#[utoipa::path(
    get,
    path = "/api-keys",
    tag = "api-keys",
    operation_id = "listApiKeys",
    description = "Scope: `admin`.",
    params(
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 500,
            description = "Keys per page; default 50."),
        ("cursor" = Option<Uuid>, Query, description = "`next_cursor` of the previous page."),
    ),
    responses((status = 200, description = "A page of keys.", body = ApiKeysPage)),
    security(("api_key" = ["admin"])),
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(query): QueryParams<PageQuery>,
) -> Result<Json<ApiKeysPage>, ApiError> {
    caller.require(Scope::Admin)?;
    let limit = page_len(query.limit, KEYS_PAGE_LEN_DEFAULT, KEYS_PAGE_LEN_MAX)?;
    let api_keys = state
        .db(api_keys::list(&state.pool, limit, query.cursor))
        .await?;
    let next_cursor = next_cursor(&api_keys, limit, |k| k.id);
    Ok(Json(ApiKeysPage {
        api_keys,
        next_cursor,
    }))
}

/// Revokes an API key: every ferry process refuses it within 10 s (this one at once).
#[utoipa::path(
    delete,
    path = "/api-keys/{id}",
    tag = "api-keys",
    operation_id = "revokeApiKey",
    description = "Scope: `admin`. Recorded in the audit trail (`api_key.revoked`). A key \
        cannot revoke itself (`409 cannot_revoke_own_key`), so an operator cannot lock \
        themselves out; use another admin key or `ferry api-key revoke`.",
    params(("id" = Uuid, Path, description = "The key's id.")),
    responses(
        (status = 200, description = "The key, now revoked.", body = ApiKeyView),
        (status = 404, description = "`key_not_found`.", body = Problem,
            content_type = "application/problem+json"),
        (status = 409, description = "`key_revoked`: already revoked; \
            `cannot_revoke_own_key`: the key of this request.", body = Problem,
            content_type = "application/problem+json"),
    ),
    security(("api_key" = ["admin"])),
)]
pub async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ApiKeyView>, ApiError> {
    let own = caller.require(Scope::Admin)?.id;
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::KeyNotFound)?;
    if id == own {
        return Err(ApiError::CannotRevokeOwnKey);
    }
    let actor = caller.actor();
    let revoked = state
        .db(async { api_keys::revoke(&state.pool, id, &actor).await })
        .await?;
    state.api_keys.forget(id);
    Ok(Json(revoked))
}
