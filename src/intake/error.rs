//! Request errors: one enum, each variant with its HTTP status and stable `code`, rendered
//! once as RFC 9457 `application/problem+json`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tracing::{error, warn};

use crate::domain::Scope;
use crate::retry::is_unavailable;
use crate::store::api_keys::{CreateKeyError, RevokeKeyError};
use crate::store::group_commit::SubmitError;
use crate::store::ledgers::CreateLedgerError;
use crate::store::reviews::ReviewError;
use crate::store::transfers::AcceptError;
use crate::store::webhook_endpoints::EndpointError;

/// `Retry-After` on `503 unavailable`: a restarting PostgreSQL is usually back within seconds,
/// and an exhausted pool frees up sooner; clients retry with the same Idempotency-Key.
pub const UNAVAILABLE_RETRY_AFTER_SECS: u64 = 2;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("a valid API key is required: send `Authorization: Bearer <key>`")]
    Unauthorized,
    #[error("this API key lacks the `{0}` scope")]
    Forbidden(Scope),
    #[error("the Idempotency-Key header is required")]
    IdempotencyKeyMissing,
    #[error("{0}")]
    IdempotencyKeyInvalid(String),
    #[error("this Idempotency-Key was already used with a different request")]
    IdempotencyKeyReused,
    #[error("{0}")]
    InvalidAmount(String),
    #[error("{0}")]
    InvalidCurrency(String),
    #[error("{0}")]
    InvalidAccount(String),
    #[error("from_account and to_account must differ")]
    SameAccount,
    #[error("{0}")]
    InvalidBody(String),
    #[error("request body exceeds {0} bytes")]
    PayloadTooLarge(usize),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("the request was not received in full within {0} ms")]
    RequestTimeout(u64),
    #[error("account {0} already exists")]
    AccountExists(String),
    #[error("account {0} not found")]
    AccountNotFound(String),
    /// A ledger-bound key named another ledger where it asked to create something there.
    #[error("this API key is bound to another ledger than {0:?}")]
    LedgerForbidden(String),
    #[error("account {0} cannot be closed: {1}")]
    AccountNotEmpty(String, &'static str),
    #[error("account {0} is closed")]
    AccountClosed(String),
    #[error("transfer not found")]
    TransferNotFound,
    #[error("job not found")]
    JobNotFound,
    #[error("job {0} is not dead: only a dead job can be retried or discarded")]
    JobNotDead(String),
    #[error("{0}")]
    TransferNotInReview(String),
    /// A capture or void of a transfer that is not an open hold (never one, already settled,
    /// being settled, or expired).
    #[error("{0}")]
    TransferNotHeld(String),
    #[error("{0}")]
    CaptureExceedsHold(String),
    /// A reversal of a transfer that did not move money (not posted), or of more than its
    /// reversals have left.
    #[error("{0}")]
    TransferNotReversible(String),
    #[error("reconciliation run not found")]
    ReconciliationNotFound,
    #[error("anomaly not found")]
    AnomalyNotFound,
    /// A webhook URL ferry must not send to (README, "Events and webhooks": SSRF).
    #[error("url refused: {0}")]
    WebhookUrlRefused(String),
    #[error("webhook endpoint not found")]
    WebhookEndpointNotFound,
    #[error("{0}")]
    InvalidLedger(String),
    #[error("ledger {0} already exists")]
    LedgerExists(String),
    #[error("ledger {0} does not exist; create it first (POST /v1/ledgers)")]
    LedgerNotFound(String),
    #[error("{0}")]
    InvalidScope(String),
    #[error("{0}")]
    InvalidKeyName(String),
    #[error("{0}")]
    InvalidExpiry(String),
    #[error("admin keys are global: a key with the admin scope cannot be bound to a ledger")]
    AdminKeyWithLedger,
    #[error("API key not found")]
    KeyNotFound,
    #[error("API key {0} is already revoked")]
    KeyRevoked(uuid::Uuid),
    #[error("an API key cannot revoke itself; revoke it with another admin key or the CLI")]
    CannotRevokeOwnKey,
    #[error("too many requests for this API key; retry after {} ms", retry_after.as_millis())]
    RateLimited { retry_after: std::time::Duration },
    #[error("no such route")]
    RouteNotFound,
    /// The database cannot serve the request now (down, restarting, refusing connections, or
    /// no connection free in time). Nothing is known to have been stored; retrying with the
    /// same Idempotency-Key is safe either way.
    #[error("{0}; retry after {UNAVAILABLE_RETRY_AFTER_SECS} s")]
    Unavailable(&'static str),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) | Self::LedgerForbidden(_) => StatusCode::FORBIDDEN,
            Self::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::AccountExists(_)
            | Self::AccountNotEmpty(..)
            | Self::AccountClosed(_)
            | Self::LedgerExists(_)
            | Self::KeyRevoked(_)
            | Self::TransferNotInReview(_)
            | Self::JobNotDead(_)
            | Self::TransferNotHeld(_)
            | Self::TransferNotReversible(_)
            | Self::CannotRevokeOwnKey => StatusCode::CONFLICT,
            Self::LedgerNotFound(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::AccountNotFound(_)
            | Self::TransferNotFound
            | Self::JobNotFound
            | Self::ReconciliationNotFound
            | Self::AnomalyNotFound
            | Self::WebhookEndpointNotFound
            | Self::KeyNotFound
            | Self::RouteNotFound => StatusCode::NOT_FOUND,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::IdempotencyKeyMissing
            | Self::IdempotencyKeyInvalid(_)
            | Self::InvalidAmount(_)
            | Self::InvalidCurrency(_)
            | Self::InvalidAccount(_)
            | Self::InvalidLedger(_)
            | Self::SameAccount
            | Self::InvalidScope(_)
            | Self::InvalidKeyName(_)
            | Self::InvalidExpiry(_)
            | Self::AdminKeyWithLedger
            | Self::WebhookUrlRefused(_)
            | Self::CaptureExceedsHold(_)
            | Self::InvalidBody(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// The stable machine-readable code clients match on.
    pub fn code(&self) -> &'static str {
        self.error_code().as_str()
    }

    /// The stable code as the type the problem body and the OpenAPI contract carry.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            Self::Unauthorized => ErrorCode::Unauthorized,
            Self::Forbidden(_) => ErrorCode::Forbidden,
            Self::IdempotencyKeyMissing => ErrorCode::IdempotencyKeyMissing,
            Self::IdempotencyKeyInvalid(_) => ErrorCode::IdempotencyKeyInvalid,
            Self::IdempotencyKeyReused => ErrorCode::IdempotencyKeyReused,
            Self::InvalidAmount(_) => ErrorCode::InvalidAmount,
            Self::InvalidCurrency(_) => ErrorCode::InvalidCurrency,
            Self::InvalidAccount(_) => ErrorCode::InvalidAccount,
            Self::SameAccount => ErrorCode::SameAccount,
            Self::InvalidBody(_) => ErrorCode::InvalidBody,
            Self::PayloadTooLarge(_) => ErrorCode::PayloadTooLarge,
            Self::UnsupportedMediaType(_) => ErrorCode::UnsupportedMediaType,
            Self::RequestTimeout(_) => ErrorCode::RequestTimeout,
            Self::Unavailable(_) => ErrorCode::Unavailable,
            Self::AccountExists(_) => ErrorCode::AccountExists,
            Self::AccountNotFound(_) => ErrorCode::AccountNotFound,
            Self::InvalidLedger(_) => ErrorCode::InvalidLedger,
            Self::LedgerForbidden(_) => ErrorCode::LedgerForbidden,
            Self::LedgerNotFound(_) => ErrorCode::LedgerNotFound,
            Self::AccountNotEmpty(..) => ErrorCode::AccountNotEmpty,
            Self::AccountClosed(_) => ErrorCode::AccountClosed,
            Self::TransferNotFound => ErrorCode::TransferNotFound,
            Self::TransferNotInReview(_) => ErrorCode::TransferNotInReview,
            Self::JobNotFound => ErrorCode::JobNotFound,
            Self::JobNotDead(_) => ErrorCode::JobNotDead,
            Self::TransferNotHeld(_) => ErrorCode::TransferNotHeld,
            Self::CaptureExceedsHold(_) => ErrorCode::CaptureExceedsHold,
            Self::TransferNotReversible(_) => ErrorCode::TransferNotReversible,
            Self::ReconciliationNotFound => ErrorCode::ReconciliationNotFound,
            Self::AnomalyNotFound => ErrorCode::AnomalyNotFound,
            Self::WebhookUrlRefused(_) => ErrorCode::WebhookUrlRefused,
            Self::WebhookEndpointNotFound => ErrorCode::WebhookEndpointNotFound,
            Self::LedgerExists(_) => ErrorCode::LedgerExists,
            Self::InvalidScope(_) => ErrorCode::InvalidScope,
            Self::InvalidKeyName(_) => ErrorCode::InvalidKeyName,
            Self::InvalidExpiry(_) => ErrorCode::InvalidExpiry,
            Self::AdminKeyWithLedger => ErrorCode::AdminKeyWithLedger,
            Self::KeyNotFound => ErrorCode::KeyNotFound,
            Self::KeyRevoked(_) => ErrorCode::KeyRevoked,
            Self::CannotRevokeOwnKey => ErrorCode::CannotRevokeOwnKey,
            Self::RateLimited { .. } => ErrorCode::RateLimited,
            Self::RouteNotFound => ErrorCode::NotFound,
            Self::Internal(_) => ErrorCode::Internal,
        }
    }

    /// The problem body, also used for per-item errors of the batch endpoint.
    pub fn problem(&self) -> Problem {
        Problem {
            problem_type: format!("urn:ferry:error:{}", self.code()),
            title: self
                .status()
                .canonical_reason()
                .unwrap_or("Error")
                .to_owned(),
            status: self.status().as_u16(),
            code: self.error_code(),
            detail: self.to_string(),
        }
    }
}

/// Every stable `code` a problem body can carry (README, HTTP API: errors). The OpenAPI
/// contract lists them as the enum of `Problem.code`, generated from this type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    Unauthorized,
    Forbidden,
    IdempotencyKeyMissing,
    IdempotencyKeyInvalid,
    IdempotencyKeyReused,
    InvalidAmount,
    InvalidCurrency,
    InvalidAccount,
    SameAccount,
    InvalidBody,
    PayloadTooLarge,
    UnsupportedMediaType,
    RequestTimeout,
    Unavailable,
    AccountExists,
    AccountNotFound,
    InvalidLedger,
    LedgerForbidden,
    LedgerNotFound,
    AccountNotEmpty,
    AccountClosed,
    TransferNotFound,
    TransferNotInReview,
    JobNotFound,
    JobNotDead,
    TransferNotHeld,
    CaptureExceedsHold,
    TransferNotReversible,
    ReconciliationNotFound,
    AnomalyNotFound,
    WebhookUrlRefused,
    WebhookEndpointNotFound,
    LedgerExists,
    InvalidScope,
    InvalidKeyName,
    InvalidExpiry,
    AdminKeyWithLedger,
    KeyNotFound,
    KeyRevoked,
    CannotRevokeOwnKey,
    RateLimited,
    NotFound,
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 43] = [
        Self::Unauthorized,
        Self::Forbidden,
        Self::IdempotencyKeyMissing,
        Self::IdempotencyKeyInvalid,
        Self::IdempotencyKeyReused,
        Self::InvalidAmount,
        Self::InvalidCurrency,
        Self::InvalidAccount,
        Self::SameAccount,
        Self::InvalidBody,
        Self::PayloadTooLarge,
        Self::UnsupportedMediaType,
        Self::RequestTimeout,
        Self::Unavailable,
        Self::AccountExists,
        Self::AccountNotFound,
        Self::InvalidLedger,
        Self::LedgerForbidden,
        Self::LedgerNotFound,
        Self::AccountNotEmpty,
        Self::AccountClosed,
        Self::TransferNotFound,
        Self::TransferNotInReview,
        Self::JobNotFound,
        Self::JobNotDead,
        Self::TransferNotHeld,
        Self::CaptureExceedsHold,
        Self::TransferNotReversible,
        Self::ReconciliationNotFound,
        Self::AnomalyNotFound,
        Self::WebhookUrlRefused,
        Self::WebhookEndpointNotFound,
        Self::LedgerExists,
        Self::InvalidScope,
        Self::InvalidKeyName,
        Self::InvalidExpiry,
        Self::AdminKeyWithLedger,
        Self::KeyNotFound,
        Self::KeyRevoked,
        Self::CannotRevokeOwnKey,
        Self::RateLimited,
        Self::NotFound,
        Self::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::IdempotencyKeyMissing => "idempotency_key_missing",
            Self::IdempotencyKeyInvalid => "idempotency_key_invalid",
            Self::IdempotencyKeyReused => "idempotency_key_reused",
            Self::InvalidAmount => "invalid_amount",
            Self::InvalidCurrency => "invalid_currency",
            Self::InvalidAccount => "invalid_account",
            Self::SameAccount => "same_account",
            Self::InvalidBody => "invalid_body",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::RequestTimeout => "request_timeout",
            Self::Unavailable => "unavailable",
            Self::AccountExists => "account_exists",
            Self::AccountNotFound => "account_not_found",
            Self::InvalidLedger => "invalid_ledger",
            Self::LedgerForbidden => "ledger_forbidden",
            Self::LedgerNotFound => "ledger_not_found",
            Self::AccountNotEmpty => "account_not_empty",
            Self::AccountClosed => "account_closed",
            Self::TransferNotFound => "transfer_not_found",
            Self::TransferNotInReview => "transfer_not_in_review",
            Self::JobNotFound => "job_not_found",
            Self::JobNotDead => "job_not_dead",
            Self::TransferNotHeld => "transfer_not_held",
            Self::CaptureExceedsHold => "capture_exceeds_hold",
            Self::TransferNotReversible => "transfer_not_reversible",
            Self::ReconciliationNotFound => "reconciliation_not_found",
            Self::AnomalyNotFound => "anomaly_not_found",
            Self::WebhookUrlRefused => "webhook_url_refused",
            Self::WebhookEndpointNotFound => "webhook_endpoint_not_found",
            Self::LedgerExists => "ledger_exists",
            Self::InvalidScope => "invalid_scope",
            Self::InvalidKeyName => "invalid_key_name",
            Self::InvalidExpiry => "invalid_expiry",
            Self::AdminKeyWithLedger => "admin_key_with_ledger",
            Self::KeyNotFound => "key_not_found",
            Self::KeyRevoked => "key_revoked",
            Self::CannotRevokeOwnKey => "cannot_revoke_own_key",
            Self::RateLimited => "rate_limited",
            Self::NotFound => "not_found",
            Self::Internal => "internal",
        }
    }
}

/// An RFC 9457 problem body (`application/problem+json`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// `urn:ferry:error:` followed by `code`.
    #[serde(rename = "type")]
    #[schema(
        pattern = "^urn:ferry:error:[a-z_]+$",
        example = "urn:ferry:error:invalid_amount"
    )]
    pub problem_type: String,
    /// The HTTP status's reason phrase.
    #[schema(example = "Bad Request")]
    pub title: String,
    /// The HTTP status code of the response.
    #[schema(minimum = 400, maximum = 599, example = 400)]
    pub status: u16,
    /// The stable machine-readable code: match on this, not on `detail`.
    pub code: ErrorCode,
    /// What went wrong, for people; the wording may change.
    #[schema(example = "amount must be greater than zero")]
    pub detail: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Self::Internal(cause) = &self {
            error!(error = ?cause, "request failed");
        }
        let mut response = (self.status(), axum::Json(self.problem())).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        match &self {
            Self::RateLimited { retry_after } => {
                // Whole seconds, rounded up, as RFC 9110 requires.
                let secs = retry_after.as_millis().div_ceil(1000).max(1);
                headers.insert(header::RETRY_AFTER, HeaderValue::from(secs as u64));
            }
            Self::Unavailable(_) => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(UNAVAILABLE_RETRY_AFTER_SECS),
                );
            }
            // RFC 9110 §15.5.9: the server should close a connection whose request it gave up
            // on; the rest of a trickled body is not worth reading.
            Self::RequestTimeout(_) => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }
}

/// What clients are told when the database is unavailable; the cause goes to the log only.
pub const DATABASE_UNAVAILABLE: &str = "the database is unavailable";

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if is_unavailable(&e) {
            warn!(error = %e, "database unavailable; answering 503");
            Self::Unavailable(DATABASE_UNAVAILABLE)
        } else {
            Self::Internal(e.into())
        }
    }
}

impl From<AcceptError> for ApiError {
    fn from(e: AcceptError) -> Self {
        match e {
            AcceptError::Database(e) => e.into(),
        }
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::Closed => Self::Unavailable("transfer intake is shutting down"),
            SubmitError::Unavailable => Self::Unavailable(DATABASE_UNAVAILABLE),
            SubmitError::Accept(e) => match &*e {
                AcceptError::Database(db) if is_unavailable(db) => {
                    warn!(error = %db, "database unavailable; answering 503");
                    Self::Unavailable(DATABASE_UNAVAILABLE)
                }
                AcceptError::Database(_) => Self::Internal(anyhow::Error::new(e)),
            },
        }
    }
}

impl From<ReviewError> for ApiError {
    fn from(e: ReviewError) -> Self {
        match e {
            ReviewError::NotFound => Self::TransferNotFound,
            ReviewError::NotInReview(_) => Self::TransferNotInReview(e.to_string()),
            ReviewError::Database(e) => e.into(),
            ReviewError::Enqueue(e) => Self::Internal(e.into()),
        }
    }
}

impl From<EndpointError> for ApiError {
    fn from(e: EndpointError) -> Self {
        match e {
            EndpointError::NotFound => Self::WebhookEndpointNotFound,
            EndpointError::LedgerNotFound(name) => Self::LedgerNotFound(name.to_string()),
            EndpointError::Database(e) => e.into(),
        }
    }
}

impl From<CreateLedgerError> for ApiError {
    fn from(e: CreateLedgerError) -> Self {
        match e {
            CreateLedgerError::Exists(name) => Self::LedgerExists(name.to_string()),
            CreateLedgerError::Database(e) => e.into(),
        }
    }
}

impl From<CreateKeyError> for ApiError {
    fn from(e: CreateKeyError) -> Self {
        match e {
            CreateKeyError::AdminWithLedger => Self::AdminKeyWithLedger,
            CreateKeyError::ViewerCombined => {
                Self::InvalidScope(CreateKeyError::ViewerCombined.to_string())
            }
            CreateKeyError::LedgerNotFound(name) => Self::LedgerNotFound(name.to_string()),
            CreateKeyError::InvalidName(e) => Self::InvalidKeyName(e.to_string()),
            CreateKeyError::Database(e) => e.into(),
        }
    }
}

impl From<RevokeKeyError> for ApiError {
    fn from(e: RevokeKeyError) -> Self {
        match e {
            RevokeKeyError::NotFound(_) => Self::KeyNotFound,
            RevokeKeyError::AlreadyRevoked(key) => Self::KeyRevoked(key.id),
            RevokeKeyError::Database(e) => e.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ALL` lists every code once, and the wire names are the ones `as_str` promises.
    #[test]
    fn every_error_code_serializes_as_its_stable_name() {
        for code in ErrorCode::ALL {
            // Exhaustive: a new code stops this compiling; add it here and to `ALL`.
            match code {
                ErrorCode::Unauthorized
                | ErrorCode::Forbidden
                | ErrorCode::IdempotencyKeyMissing
                | ErrorCode::IdempotencyKeyInvalid
                | ErrorCode::IdempotencyKeyReused
                | ErrorCode::InvalidAmount
                | ErrorCode::InvalidCurrency
                | ErrorCode::InvalidAccount
                | ErrorCode::SameAccount
                | ErrorCode::InvalidBody
                | ErrorCode::PayloadTooLarge
                | ErrorCode::UnsupportedMediaType
                | ErrorCode::RequestTimeout
                | ErrorCode::Unavailable
                | ErrorCode::AccountExists
                | ErrorCode::AccountNotFound
                | ErrorCode::InvalidLedger
                | ErrorCode::LedgerForbidden
                | ErrorCode::LedgerNotFound
                | ErrorCode::AccountNotEmpty
                | ErrorCode::AccountClosed
                | ErrorCode::TransferNotFound
                | ErrorCode::TransferNotInReview
                | ErrorCode::JobNotFound
                | ErrorCode::JobNotDead
                | ErrorCode::TransferNotHeld
                | ErrorCode::CaptureExceedsHold
                | ErrorCode::TransferNotReversible
                | ErrorCode::ReconciliationNotFound
                | ErrorCode::AnomalyNotFound
                | ErrorCode::WebhookUrlRefused
                | ErrorCode::WebhookEndpointNotFound
                | ErrorCode::LedgerExists
                | ErrorCode::InvalidScope
                | ErrorCode::InvalidKeyName
                | ErrorCode::InvalidExpiry
                | ErrorCode::AdminKeyWithLedger
                | ErrorCode::KeyNotFound
                | ErrorCode::KeyRevoked
                | ErrorCode::CannotRevokeOwnKey
                | ErrorCode::RateLimited
                | ErrorCode::NotFound
                | ErrorCode::Internal => {}
            }
            assert_eq!(
                serde_json::to_value(code).expect("serializes"),
                serde_json::Value::String(code.as_str().to_owned())
            );
        }
        let mut names: Vec<_> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ErrorCode::ALL.len(), "a code is listed twice");
    }
}
