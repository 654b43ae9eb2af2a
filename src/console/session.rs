//! Signing in to the console (README, "Operator console"): an API key once, then a session
//! cookie. Every page needs a live session of a live key; every action also needs the
//! session's CSRF token, a same-origin request, and a fresh form nonce (so a re-sent form acts
//! once).

use axum::extract::FromRequestParts;
use axum::http::header::{COOKIE, HOST, ORIGIN, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use super::ConsoleState;
use crate::domain::Scope;
use crate::intake::auth::Caller;
use crate::intake::request_id::RequestId;
use crate::store::api_keys::ApiKeyIdentity;
use crate::store::audit::{self, Actor, AuditAction};

/// The session cookie's name.
pub const COOKIE_NAME: &str = "ferry_console";
/// A session ends this long after sign-in (a shift), or earlier with its key.
pub const SESSION_TTL_SECS: i64 = 8 * 3_600;

/// Who is looking: a signed-in key, through a live session.
pub struct Viewer {
    pub key: ApiKeyIdentity,
    pub csrf: String,
    token_hash: Vec<u8>,
    request_id: RequestId,
}

impl Viewer {
    /// Admin keys act; `console:read` keys only look (and the API refuses them anyway).
    pub fn can_act(&self) -> bool {
        self.key.scopes.allows_admin()
    }

    /// The API caller this session stands for: actions go through the API's handlers with it,
    /// so they check the same scopes and record the same audit events.
    pub fn caller(&self) -> Caller {
        Caller(self.key.clone(), self.request_id.clone())
    }
}

/// Why a console request was refused.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("sign in first")]
    NoSession,
    #[error("this form is stale or was not sent by the console (CSRF token missing or wrong)")]
    BadCsrf,
    #[error("cross-site request refused")]
    CrossSite,
    #[error("the database did not answer")]
    Unavailable,
}

impl IntoResponse for SessionError {
    fn into_response(self) -> Response {
        match self {
            // Pages send the browser to sign in; nothing of the page is rendered.
            Self::NoSession => Redirect::to("/console/login").into_response(),
            Self::BadCsrf | Self::CrossSite => {
                super::layout::error_page(StatusCode::FORBIDDEN, &self.to_string())
            }
            Self::Unavailable => {
                super::layout::error_page(StatusCode::SERVICE_UNAVAILABLE, &self.to_string())
            }
        }
    }
}

impl FromRequestParts<ConsoleState> for Viewer {
    type Rejection = SessionError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ConsoleState,
    ) -> Result<Self, SessionError> {
        let token = session_token(&parts.headers).ok_or(SessionError::NoSession)?;
        let token_hash = hash(&token);
        let found = state
            .app
            .db(lookup(&state.app.pool, &token_hash))
            .await
            .map_err(|_| SessionError::Unavailable)?;
        let (key, csrf) = found.ok_or(SessionError::NoSession)?;
        let request_id = parts
            .extensions
            .get::<RequestId>()
            .cloned()
            .unwrap_or_else(RequestId::generate);
        Ok(Viewer {
            key,
            csrf,
            token_hash,
            request_id,
        })
    }
}

/// The session cookie's value, if the request carries exactly one.
fn session_token(headers: &HeaderMap) -> Option<String> {
    let mut found = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value.to_owned());
    match (found.next(), found.next()) {
        (Some(token), None) if !token.is_empty() => Some(token),
        _ => None,
    }
}

fn hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

fn random_token() -> String {
    let mut bytes = [0_u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A fresh nonce for one action form.
pub fn nonce() -> String {
    random_token()
}

/// A live session of a live key: neither ended nor expired, its key neither revoked nor
/// expired (so revoking a key signs its sessions out at their next request).
async fn lookup(
    pool: &PgPool,
    token_hash: &[u8],
) -> Result<Option<(ApiKeyIdentity, String)>, sqlx::Error> {
    let row: Option<(Uuid, Vec<String>, Option<String>, String)> = sqlx::query_as(
        "SELECT k.id, k.scopes, k.ledger, s.csrf_token FROM console_sessions s \
         JOIN api_keys k ON k.id = s.api_key_id \
         WHERE s.token_hash = $1 AND s.ended_at IS NULL AND s.expires_at > now() \
           AND k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > now())",
    )
    .bind(token_hash)
    .fetch_optional(pool)
    .await?;
    Ok(row
        .map(|(id, scopes, ledger, csrf)| (ApiKeyIdentity::from_stored(id, &scopes, ledger), csrf)))
}

/// Why a sign-in was refused.
#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    #[error("unknown, revoked or expired API key")]
    UnknownKey,
    #[error("this key may not use the console: it needs the admin or console:read scope")]
    NotAllowed,
}

/// Opens a session for the key `presented` and records `console.signed_in`. Returns the
/// cookie to set.
pub async fn sign_in(
    state: &ConsoleState,
    headers: &HeaderMap,
    presented: &str,
    request_id: &RequestId,
) -> Result<Result<HeaderValue, SignInError>, crate::intake::error::ApiError> {
    let app = &state.app;
    let Some(key) = app
        .db(app.api_keys.find(&app.pool, presented.trim()))
        .await?
    else {
        return Ok(Err(SignInError::UnknownKey));
    };
    if !(key.scopes.allows_admin() || key.scopes.allows(Scope::ConsoleRead)) {
        return Ok(Err(SignInError::NotAllowed));
    }
    let token = random_token();
    let actor = Actor {
        key_id: Some(key.id),
        request_id: Some(request_id.as_str().to_owned()),
    };
    app.db(async {
        let mut tx = app.pool.begin().await?;
        // Sessions over a day past their end go (their actions with them): sign-ins are rare,
        // so the table stays small without a job of its own.
        sqlx::query("DELETE FROM console_sessions WHERE expires_at < now() - interval '1 day'")
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO console_sessions (token_hash, api_key_id, csrf_token, expires_at) \
             VALUES ($1, $2, $3, now() + make_interval(secs => $4))",
        )
        .bind(hash(&token))
        .bind(key.id)
        .bind(random_token())
        .bind(SESSION_TTL_SECS as f64)
        .execute(&mut *tx)
        .await?;
        let event = actor.event(
            AuditAction::ConsoleSignedIn,
            None,
            audit::target::api_key(key.id),
            serde_json::json!({}),
        );
        audit::record(&mut *tx, &event).await?;
        tx.commit().await
    })
    .await?;
    let cookie = format!(
        "{COOKIE_NAME}={token}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={SESSION_TTL_SECS}{}",
        secure_attribute(headers)
    );
    HeaderValue::from_str(&cookie).map(Ok).map_err(|e| {
        crate::intake::error::ApiError::Internal(anyhow::anyhow!("session cookie: {e}"))
    })
}

/// Ends the session and clears its cookie.
pub async fn sign_out(
    state: &ConsoleState,
    viewer: &Viewer,
    headers: &HeaderMap,
) -> Result<Response, crate::intake::error::ApiError> {
    let app = &state.app;
    app.db(
        sqlx::query("UPDATE console_sessions SET ended_at = now() WHERE token_hash = $1")
            .bind(&viewer.token_hash)
            .execute(&app.pool),
    )
    .await?;
    let cookie = format!(
        "{COOKIE_NAME}=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0{}",
        secure_attribute(headers)
    );
    let mut response = Redirect::to("/console/login").into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(SET_COOKIE, value);
    }
    Ok(response)
}

/// `; Secure` unless the browser reached ferry on loopback: there plain HTTP is how a
/// developer or a test reaches it, and a Secure cookie would not be sent back. Anywhere else the
/// console must be behind TLS, so the cookie never crosses the network in clear.
fn secure_attribute(headers: &HeaderMap) -> &'static str {
    let host = headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    if is_loopback_host(host) {
        ""
    } else {
        "; Secure"
    }
}

fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Refuses a form posted from another site: its `Origin` (browsers send it on every POST)
/// must name this host, and `Sec-Fetch-Site` must not say `cross-site`.
pub fn same_origin(headers: &HeaderMap) -> Result<(), SessionError> {
    let fetch_site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    if fetch_site.is_some_and(|site| site == "cross-site" || site == "same-site") {
        return Err(SessionError::CrossSite);
    }
    let Some(origin) = headers.get(ORIGIN) else {
        return Ok(());
    };
    let host = headers.get(HOST).and_then(|h| h.to_str().ok());
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, rest)| rest.trim_end_matches('/'));
    match (origin_host, host) {
        (Some(origin_host), Some(host)) if origin_host.eq_ignore_ascii_case(host) => Ok(()),
        _ => Err(SessionError::CrossSite),
    }
}

/// The CSRF token a form carried, compared in constant time with the session's.
pub fn check_csrf(viewer: &Viewer, presented: &str) -> Result<(), SessionError> {
    let expected = viewer.csrf.as_bytes();
    let presented = presented.as_bytes();
    let differs = expected.len() != presented.len()
        || expected
            .iter()
            .zip(presented)
            .fold(0_u8, |acc, (a, b)| acc | (a ^ b))
            != 0;
    if differs {
        Err(SessionError::BadCsrf)
    } else {
        Ok(())
    }
}

/// What a form's nonce says about this submission.
pub enum Claimed {
    /// First time: act, then [`record_outcome`].
    New,
    /// Sent before: this is what it did (`None` while it still runs).
    Done(Option<String>),
}

/// Claims `nonce` for `action` in this session.
pub async fn claim_nonce(
    pool: &PgPool,
    viewer: &Viewer,
    nonce: &str,
    action: &str,
) -> Result<Claimed, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO console_actions (nonce, token_hash, action) VALUES ($1, $2, $3) \
         ON CONFLICT (nonce) DO NOTHING",
    )
    .bind(nonce)
    .bind(&viewer.token_hash)
    .bind(action)
    .execute(pool)
    .await?
    .rows_affected();
    if inserted == 1 {
        return Ok(Claimed::New);
    }
    let outcome: Option<Option<String>> = sqlx::query_scalar(
        "SELECT outcome FROM console_actions WHERE nonce = $1 AND token_hash = $2",
    )
    .bind(nonce)
    .bind(&viewer.token_hash)
    .fetch_optional(pool)
    .await?;
    Ok(Claimed::Done(outcome.flatten()))
}

pub async fn record_outcome(pool: &PgPool, nonce: &str, outcome: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE console_actions SET outcome = $2 WHERE nonce = $1")
        .bind(nonce)
        .bind(outcome)
        .execute(pool)
        .await?;
    Ok(())
}

/// The outcome of this session's action `nonce`, to show after the redirect.
pub async fn outcome_of(
    pool: &PgPool,
    viewer: &Viewer,
    nonce: &str,
) -> Result<Option<String>, sqlx::Error> {
    let outcome: Option<Option<String>> = sqlx::query_scalar(
        "SELECT outcome FROM console_actions WHERE nonce = $1 AND token_hash = $2",
    )
    .bind(nonce)
    .bind(&viewer.token_hash)
    .fetch_optional(pool)
    .await?;
    Ok(outcome.flatten())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_are_recognised() {
        for host in [
            "localhost",
            "localhost:8080",
            "127.0.0.1:3000",
            "[::1]:80",
            "[::1]",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in ["ferry.example.com", "10.0.0.1:80", "localhost.evil.com", ""] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[test]
    fn only_one_session_cookie_is_accepted() {
        let mut headers = HeaderMap::new();
        headers.insert(
            COOKIE,
            HeaderValue::from_static("a=1; ferry_console=abc; b=2"),
        );
        assert_eq!(session_token(&headers).as_deref(), Some("abc"));
        headers.append(COOKIE, HeaderValue::from_static("ferry_console=def"));
        assert_eq!(session_token(&headers), None);
    }
}
