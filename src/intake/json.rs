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
