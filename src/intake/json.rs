//! JSON request bodies: size-limited, strictly typed, errors as problem+json.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, StatusCode, header};
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// Largest request body accepted (README, "HTTP API": bodies over 1 MiB get 413).
pub const BODY_BYTES_MAX: usize = 1024 * 1024;

/// A JSON body decoded into `T`; malformed JSON, wrong types and unknown fields (with
/// `deny_unknown_fields` on `T`) are `invalid_body`; a `Content-Type` that is not JSON is
/// `unsupported_media_type`, checked before the body is read.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        require_json(req.headers())?;
        let bytes = read_body(req, state).await?;
        parse(&bytes).map(JsonBody)
    }
}

/// A JSON body that may be left out, for actions whose every field is optional (`POST
/// …/void`): no body at all reads as `T::default()`; a body that is sent is held to
/// [`JsonBody`]'s rules.
pub struct OptionalJsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for OptionalJsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let typed = req.headers().contains_key(header::CONTENT_TYPE);
        if typed {
            require_json(req.headers())?;
        }
        let bytes = read_body(req, state).await?;
        if bytes.is_empty() {
            return Ok(Self(T::default()));
        }
        if !typed {
            require_json(&HeaderMap::new())?;
        }
        parse(&bytes).map(OptionalJsonBody)
    }
}

async fn read_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state)
        .await
        .map_err(|rejection: BytesRejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge(BODY_BYTES_MAX)
            } else {
                ApiError::InvalidBody(rejection.body_text())
            }
        })
}

/// Accepts exactly one `Content-Type` naming JSON: `application/json` or `application/*+json`
/// (RFC 6839), in any letter case, with no `charset` other than UTF-8 (RFC 8259 §8.1: JSON
/// between systems is UTF-8). A missing `Content-Type` is refused too (README, HTTP API):
/// guessing would accept form posts and `text/plain` bodies that were never meant as JSON.
pub fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    const EXPECTED: &str = "Content-Type must be application/json";
    let mut values = headers.get_all(header::CONTENT_TYPE).iter();
    let value = match (values.next(), values.next()) {
        (Some(value), None) => value,
        (None, _) => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "{EXPECTED}; none was sent"
            )));
        }
        (Some(_), Some(_)) => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "{EXPECTED}; send exactly one Content-Type header"
            )));
        }
    };
    let refused = || {
        let shown = value.to_str().unwrap_or("(not visible ASCII)");
        ApiError::UnsupportedMediaType(format!("{EXPECTED}, not {shown:?}"))
    };
    let text = value.to_str().map_err(|_| refused())?;
    let mut parts = text.split(';');
    let essence = parts.next().unwrap_or_default().trim();
    let (kind, subtype) = essence.split_once('/').ok_or_else(refused)?;
    let subtype = subtype.to_ascii_lowercase();
    let is_json = kind.eq_ignore_ascii_case("application")
        && (subtype == "json" || (subtype.len() > "+json".len() && subtype.ends_with("+json")));
    if !is_json {
        return Err(refused());
    }
    for parameter in parts {
        let (name, value) = parameter.split_once('=').unwrap_or((parameter, ""));
        if name.trim().eq_ignore_ascii_case("charset")
            && !value.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
        {
            return Err(refused());
        }
    }
    Ok(())
}

/// Decodes a JSON object with a message that says where it went wrong.
///
/// Every request body is an object (docs/openapi.json). serde's derived structs would also
/// take an array of their fields in order — `[null, null]` started a reconciliation run — so
/// anything but an object is refused before decoding.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let first = bytes
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if first.is_some_and(|b| *b != b'{') {
        return Err(ApiError::InvalidBody(
            "invalid JSON body: the body must be a JSON object".into(),
        ));
    }
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

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn check(values: &[&str]) -> Result<(), &'static str> {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(
                header::CONTENT_TYPE,
                HeaderValue::from_str(value).expect("header value"),
            );
        }
        require_json(&headers).map_err(|e| e.code())
    }

    #[test]
    fn json_content_types_are_accepted() {
        for value in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON;Charset=\"UTF-8\"",
            "application/merge-patch+json",
            "application/problem+json; charset=utf-8",
        ] {
            assert_eq!(check(&[value]), Ok(()), "{value}");
        }
    }

    #[test]
    fn anything_else_is_unsupported_media_type() {
        for values in [
            &[][..],
            &["text/plain"],
            &["text/json"],
            &["application/x-www-form-urlencoded"],
            &["application/jsonx"],
            &["application/+json"],
            &["application/json; charset=latin1"],
            &["json"],
            &["application/json", "application/json"],
        ] {
            assert_eq!(check(values), Err("unsupported_media_type"), "{values:?}");
        }
    }
}
