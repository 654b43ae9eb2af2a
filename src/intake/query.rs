//! Query strings: strictly typed, errors as problem+json.

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// A query string decoded into `T`; wrong types and unknown parameters (with
/// `deny_unknown_fields` on `T`) are `invalid_body`, and so is a NUL byte anywhere in it:
/// PostgreSQL's `text` cannot hold one, so a `%00` in a cursor or filter would otherwise
/// reach the database as a 500. `%00` is the only way a decoded value gets a NUL (a raw NUL is
/// not a valid URI byte).
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if parts.uri.query().is_some_and(|q| q.contains("%00")) {
            return Err(ApiError::InvalidBody(
                "query parameters must not contain a NUL byte (%00)".into(),
            ));
        }
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(value)| QueryParams(value))
            .map_err(|rejection| ApiError::InvalidBody(rejection.body_text()))
    }
}
