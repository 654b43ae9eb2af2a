//! Bearer API-key authentication and scope checks for every `/v1` route.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use super::AppState;
use super::error::ApiError;
use super::rate_limit::Decision;
use super::request_id::RequestId;
use crate::domain::{LedgerName, Scope};
use crate::store::api_keys::ApiKeyIdentity;
use crate::store::audit::Actor;

/// The caller, authenticated, and the id of its request. Handlers call [`Caller::require`]
/// with the scope they need, and record what they do as [`Caller::actor`].
pub struct Caller(pub ApiKeyIdentity, pub RequestId);

impl Caller {
    pub fn require(&self, scope: Scope) -> Result<&ApiKeyIdentity, ApiError> {
        if self.0.scopes.allows(scope) {
            Ok(&self.0)
        } else {
            Err(ApiError::Forbidden(scope))
        }
    }

    /// Who acts, for the audit trail: this key, in this request.
    pub fn actor(&self) -> Actor {
        Actor {
            key_id: Some(self.0.id),
            request_id: Some(self.1.as_str().to_owned()),
        }
    }
}

/// The ledger a request names (`"ledger"` in a body to write in, `?ledger=` for a listing;
/// optional): a malformed name is `400 invalid_ledger`, another ledger than a bound key's own
/// `403 ledger_forbidden`.
pub fn requested_ledger(
    caller: &ApiKeyIdentity,
    named: Option<&str>,
) -> Result<LedgerName, ApiError> {
    let parsed = named
        .map(|name| LedgerName::parse(name).map_err(|e| ApiError::InvalidLedger(e.to_string())))
        .transpose()?;
    caller
        .ledger_for(parsed)
        .map_err(|_| ApiError::LedgerForbidden(named.unwrap_or_default().to_owned()))
}

/// A request named a ledger its key is not bound to. Handlers answer `404` where existence
/// must not be revealed (reads) and `403` where the caller asks to create something there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForeignLedger;

impl ApiKeyIdentity {
    /// The ledger a request acts on: a bound key's own ledger (naming another is
    /// [`ForeignLedger`]); for a global admin key, the one named, else `default`.
    pub fn ledger_for(&self, named: Option<LedgerName>) -> Result<LedgerName, ForeignLedger> {
        match (&self.ledger, named) {
            (Some(own), None) => Ok(own.clone()),
            (Some(own), Some(named)) if *own == named => Ok(named),
            (Some(_), Some(_)) => Err(ForeignLedger),
            (None, named) => Ok(named.unwrap_or_else(LedgerName::default_ledger)),
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let mut values = parts.headers.get_all(AUTHORIZATION).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return Err(ApiError::Unauthorized);
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(ApiError::Unauthorized)?;
        // A database that cannot answer is `503 unavailable`, never `401`: the key may be fine.
        let identity = state
            .db(state.api_keys.find(&state.pool, token))
            .await?
            .ok_or(ApiError::Unauthorized)?;
        match state.rate_limiter.check(identity.id).await {
            Decision::Allowed => {
                let request_id = parts
                    .extensions
                    .get::<RequestId>()
                    .cloned()
                    .unwrap_or_else(RequestId::generate);
                Ok(Caller(identity, request_id))
            }
            Decision::Limited { retry_after } => Err(ApiError::RateLimited { retry_after }),
        }
    }
}
