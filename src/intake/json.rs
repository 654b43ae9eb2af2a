//! JSON request bodies: size-limited, strictly typed, errors as problem+json.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// Largest request body accepted (DESIGN: bodies over 1 MiB get 413).
pub const BODY_BYTES_MAX: usize = 1024 * 1024;

/// A JSON body decoded into `T`; malformed JSON, wrong types and unknown fields (with
/// `deny_unknown_fields` on `T`) are `invalid_body`.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes =
            Bytes::from_request(req, state)
                .await
                .map_err(|rejection: BytesRejection| {
                    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                        ApiError::PayloadTooLarge(BODY_BYTES_MAX)
                    } else {
                        ApiError::InvalidBody(rejection.body_text())
                    }
                })?;
        parse(&bytes).map(JsonBody)
    }
}

/// Decodes JSON with a message that says where it went wrong.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::InvalidBody(format!("invalid JSON body: {e}")))
}

/// Decodes one JSON value (a batch item) into `T`.
pub fn from_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ApiError> {
    serde_json::from_value(value).map_err(|e| ApiError::InvalidBody(format!("invalid item: {e}")))
}

/// PostgreSQL text and jsonb cannot hold U+0000. Refuse it at the edge: inside a group commit
/// one such value would fail every other request of its group.
pub fn reject_nul(field: &str, value: &serde_json::Value) -> Result<(), ApiError> {
    let has_nul = |s: &str| s.contains('\0');
    let found = match value {
        serde_json::Value::String(s) => has_nul(s),
        serde_json::Value::Array(items) => {
            return items.iter().try_for_each(|v| reject_nul(field, v));
        }
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                if has_nul(key) {
                    return Err(nul_error(field));
                }
                reject_nul(field, v)?;
            }
            false
        }
        _ => false,
    };
    if found { Err(nul_error(field)) } else { Ok(()) }
}

fn nul_error(field: &str) -> ApiError {
    ApiError::InvalidBody(format!(
        "{field} must not contain the NUL character (U+0000)"
    ))
}
