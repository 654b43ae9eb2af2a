//! Request ids (README, HTTP API): every request gets one — the client's `X-Request-Id` when it
//! is 1–200 visible ASCII characters, else a new UUIDv7 — echoed as the `X-Request-Id` response
//! header, carried by the request's log span, and recorded with audit events.
//!
//! Hand-written rather than tower-http's `request-id` layers: `SetRequestId` keeps any incoming
//! value unchecked, so validating it would take a second layer in front of it anyway.

use std::convert::Infallible;

use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;
use uuid::Uuid;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Longest incoming request id kept.
pub const REQUEST_ID_LEN_MAX: usize = 200;

/// The id of the request being served (a request extension, and an extractor).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(String);

impl RequestId {
    pub fn generate() -> Self {
        Self(Uuid::now_v7().to_string())
    }

    /// The client's id if it sent exactly one well-formed `X-Request-Id`.
    pub fn from_client(headers: &HeaderMap) -> Option<Self> {
        let mut values = headers.get_all(&X_REQUEST_ID).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return None;
        };
        let bytes = value.as_bytes();
        let visible = |b: &u8| (b'!'..=b'~').contains(b);
        if bytes.is_empty() || bytes.len() > REQUEST_ID_LEN_MAX || !bytes.iter().all(visible) {
            return None;
        }
        value.to_str().ok().map(|text| Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Gives the request its id (replacing a malformed incoming one), runs it in a span naming the
/// id, and echoes the id on the response.
pub async fn assign(mut request: Request, next: Next) -> Response {
    let id = RequestId::from_client(request.headers()).unwrap_or_else(RequestId::generate);
    // Visible ASCII by construction (checked, or a UUID), so always a valid header value.
    let value = HeaderValue::from_str(id.as_str()).ok();
    if let Some(value) = &value {
        request.headers_mut().insert(X_REQUEST_ID, value.clone());
    }
    let span = tracing::info_span!("request", request_id = %id.as_str());
    request.extensions_mut().insert(id);
    let mut response = next.run(request).instrument(span).await;
    if let Some(value) = value {
        response.headers_mut().insert(X_REQUEST_ID, value);
    }
    response
}

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        Ok(parts
            .extensions
            .get::<RequestId>()
            .cloned()
            // Only a handler served outside `intake::router` lacks one.
            .unwrap_or_else(RequestId::generate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(values: &[&[u8]]) -> Option<String> {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(
                X_REQUEST_ID,
                HeaderValue::from_bytes(value).expect("header value"),
            );
        }
        RequestId::from_client(&headers).map(|id| id.0)
    }

    #[test]
    fn a_well_formed_client_id_is_kept() {
        assert_eq!(from(&[b"abc-123"]).as_deref(), Some("abc-123"));
        let longest = "x".repeat(REQUEST_ID_LEN_MAX);
        assert_eq!(from(&[longest.as_bytes()]), Some(longest));
        assert_eq!(from(&[b"!~{}"]).as_deref(), Some("!~{}"));
    }

    #[test]
    fn a_malformed_missing_or_repeated_client_id_is_replaced() {
        let too_long = "x".repeat(REQUEST_ID_LEN_MAX + 1);
        for values in [
            &[][..],
            &[b"" as &[u8]],
            &[b"a b"],
            &[b"tab\there"],
            &["é".as_bytes()],
            &[too_long.as_bytes()],
            &[b"a", b"b"],
        ] {
            assert_eq!(from(values), None, "{values:?}");
        }
        assert_ne!(RequestId::generate(), RequestId::generate());
    }
}
