//! The operator console (README, "Operator console"): server-rendered pages under `/console`,
//! served by the intake role. Reads come from the same tables the API reads; every action
//! calls the API's own handler with the signed-in key as the caller, so it checks the same
//! scopes and writes the same audit events — the console has no side door into the database.

pub mod accounts;
pub mod alerts;
pub mod chart;
pub mod layout;
pub mod overview;
pub mod queue;
pub mod reads;
pub mod reconciliation;
pub mod reviews;
pub mod session;
pub mod transfers;
pub mod webhooks;

use std::future::Future;
use std::time::Duration;

use axum::Router;
use axum::extract::{Form, Request, State};
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, LOCATION, REFERRER_POLICY, SET_COOKIE,
    X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::html;
use serde::Deserialize;

use crate::intake::AppState;
use crate::intake::error::ApiError;
use crate::intake::request_id::RequestId;
use session::{Claimed, Viewer};

/// What the console's handlers share: the API's state (its pool, key cache and database
/// timeout) and the overview sampler's latest figures.
#[derive(Clone)]
pub struct ConsoleState {
    pub app: AppState,
    pub overview: overview::Overview,
    pub refresh: Duration,
}

/// `?action=<nonce>`: the page was reached by the redirect after an action.
#[derive(Debug, Deserialize)]
pub struct FlashQuery {
    action: Option<String>,
}

impl FlashQuery {
    /// The outcome of the action this page was redirected from, if it was this session's.
    pub async fn outcome(&self, state: &ConsoleState, viewer: &Viewer) -> Option<String> {
        let nonce = self.action.as_deref()?;
        session::outcome_of(&state.app.pool, viewer, nonce)
            .await
            .ok()
            .flatten()
    }
}

/// Nothing is loaded from anywhere but ferry, no inline script or style runs, no page can
/// frame the console, and forms post only to ferry.
pub const CONTENT_SECURITY_POLICY_VALUE: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; \
    frame-ancestors 'none'; base-uri 'none'";

pub fn router(state: ConsoleState) -> Router {
    Router::new()
        .route("/console", get(overview::page))
        .route("/console/login", get(sign_in_page).post(sign_in))
        .route("/console/logout", post(sign_out))
        .route("/console/assets/console.css", get(stylesheet))
        .route("/console/assets/console.js", get(script))
        .route("/console/transfers", get(transfers::search))
        .route("/console/transfers/{id}", get(transfers::timeline))
        .route("/console/ledgers", get(accounts::ledgers))
        .route(
            "/console/ledgers/{ledger}/accounts/{id}",
            get(accounts::account),
        )
        .route(
            "/console/ledgers/{ledger}/accounts/{id}/freeze",
            post(accounts::freeze),
        )
        .route(
            "/console/ledgers/{ledger}/accounts/{id}/unfreeze",
            post(accounts::unfreeze),
        )
        .route("/console/reviews", get(reviews::page))
        .route("/console/reviews/{id}/approve", post(reviews::approve))
        .route("/console/reviews/{id}/reject", post(reviews::reject))
        .route("/console/reconciliation", get(reconciliation::page))
        .route("/console/reconciliation/run", post(reconciliation::run_now))
        .route("/console/reconciliation/{id}", get(reconciliation::run))
        .route("/console/alerts", get(alerts::page))
        .route("/console/webhooks", get(webhooks::page))
        .route("/console/webhooks/{id}/replay", post(webhooks::replay))
        .route("/console/queue", get(queue::page))
        .route("/console/queue/jobs/{id}/retry", post(queue::retry))
        .route("/console/queue/jobs/{id}/discard", post(queue::discard))
        .layer(middleware::from_fn(security_headers))
        .with_state(state)
}

async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY_VALUE),
    );
    headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // Not `no-referrer`: under it browsers send `Origin: null` with forms, and the same-origin
    // check would refuse every action. `same-origin` keeps URLs from leaving ferry.
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    // Pages show money and keys' activity: never kept by a browser or a proxy.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn stylesheet() -> Response {
    (
        [(CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("assets/console.css"),
    )
        .into_response()
}

async fn script() -> Response {
    (
        [(CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("assets/console.js"),
    )
        .into_response()
}

async fn sign_in_page() -> Response {
    sign_in_form(StatusCode::OK, None)
}

fn sign_in_form(status: StatusCode, refusal: Option<&str>) -> Response {
    layout::bare_page(
        status,
        "Sign in",
        html! {
            @if let Some(refusal) = refusal { p.error role="alert" { (refusal) } }
            form method="post" action="/console/login" {
                label for="api_key" { "API key (admin, or console:read to look only)" }
                input id="api_key" name="api_key" type="password" autocomplete="off" required;
                button type="submit" { "Sign in" }
            }
            p.muted.small { "The key is checked once; the browser then holds a session cookie \
                that ends after 8 hours, at sign-out, or when the key is revoked." }
        },
    )
}

#[derive(Deserialize)]
struct SignInForm {
    api_key: String,
}

async fn sign_in(
    State(state): State<ConsoleState>,
    request_id: RequestId,
    headers: HeaderMap,
    Form(form): Form<SignInForm>,
) -> Response {
    if let Err(e) = session::same_origin(&headers) {
        return e.into_response();
    }
    match session::sign_in(&state, &headers, &form.api_key, &request_id).await {
        Ok(Ok(cookie)) => {
            let mut response = Redirect::to("/console").into_response();
            response.headers_mut().insert(SET_COOKIE, cookie);
            response
        }
        Ok(Err(refusal)) => {
            let status = match refusal {
                session::SignInError::UnknownKey => StatusCode::UNAUTHORIZED,
                session::SignInError::NotAllowed => StatusCode::FORBIDDEN,
            };
            sign_in_form(status, Some(&refusal.to_string()))
        }
        Err(e) => layout::api_error_page(&e),
    }
}

#[derive(Deserialize)]
struct SignOutForm {
    csrf: Option<String>,
}

async fn sign_out(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    headers: HeaderMap,
    Form(form): Form<SignOutForm>,
) -> Response {
    let checked = session::same_origin(&headers)
        .and_then(|()| session::check_csrf(&viewer, form.csrf.as_deref().unwrap_or_default()));
    if let Err(e) = checked {
        return e.into_response();
    }
    session::sign_out(&state, &viewer, &headers)
        .await
        .unwrap_or_else(|e| layout::api_error_page(&e))
}

/// The fields every action form carries, and the few some actions add.
#[derive(Debug, Deserialize)]
pub struct ActionForm {
    csrf: Option<String>,
    nonce: Option<String>,
    /// Reconciliation: the ledger to check (empty: every ledger).
    #[serde(default)]
    pub ledger: Option<String>,
    /// Webhook replay: re-send events after this `seq`.
    #[serde(default)]
    pub after: Option<String>,
}

/// Runs one action for `viewer`: same origin, the session's CSRF token, and a nonce not seen
/// before (a re-sent form shows what the first one did and acts no more). `run` calls the
/// API handler; success redirects to `back` with the outcome, a refusal is shown with the
/// API's status and code.
pub async fn act<Fut>(
    state: &ConsoleState,
    viewer: &Viewer,
    headers: &HeaderMap,
    form: &ActionForm,
    action: &str,
    back: &str,
    run: impl FnOnce() -> Fut,
) -> Response
where
    Fut: Future<Output = Result<String, ApiError>>,
{
    let checked = session::same_origin(headers)
        .and_then(|()| session::check_csrf(viewer, form.csrf.as_deref().unwrap_or_default()));
    if let Err(e) = checked {
        return e.into_response();
    }
    let Some(nonce) = form
        .nonce
        .as_deref()
        .filter(|n| (16..=64).contains(&n.len()))
    else {
        return layout::error_page(StatusCode::BAD_REQUEST, "the form carries no nonce");
    };
    let pool = &state.app.pool;
    let claimed = state
        .app
        .db(session::claim_nonce(pool, viewer, nonce, action))
        .await;
    let back_with = |nonce: &str| {
        let separator = if back.contains('?') { '&' } else { '?' };
        redirect_see_other(&format!("{back}{separator}action={nonce}"))
    };
    match claimed {
        Err(e) => layout::api_error_page(&e),
        Ok(Claimed::Done(_)) => back_with(nonce),
        Ok(Claimed::New) => match run().await {
            Ok(outcome) => {
                if let Err(e) = session::record_outcome(pool, nonce, &outcome).await {
                    tracing::warn!(error = %e, "could not record a console action's outcome");
                }
                back_with(nonce)
            }
            Err(refused) => {
                let outcome = format!("refused: {refused} ({})", refused.code());
                if let Err(e) = session::record_outcome(pool, nonce, &outcome).await {
                    tracing::warn!(error = %e, "could not record a console action's outcome");
                }
                layout::api_error_page(&refused)
            }
        },
    }
}

pub fn redirect_see_other(location: &str) -> Response {
    match HeaderValue::from_str(location) {
        Ok(value) => (StatusCode::SEE_OTHER, [(LOCATION, value)]).into_response(),
        Err(_) => Redirect::to("/console").into_response(),
    }
}
