//! Webhook endpoints: delivery lag, recent failures, and replay through
//! `POST /v1/webhook-endpoints/{id}/replay`.

use axum::Json;
use axum::extract::{Form, Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use maud::html;

use super::layout::{self, action_button, maybe_time, short_id, status, table};
use super::reads;
use super::session::Viewer;
use super::{ActionForm, ConsoleState, FlashQuery, act};
use crate::intake::error::ApiError;
use crate::intake::json::JsonBody;
use crate::intake::webhooks::{self as api, Replay};

/// `GET /console/webhooks`.
pub async fn page(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    Query(flash): Query<FlashQuery>,
) -> Response {
    let flash = flash.outcome(&state, &viewer).await;
    let endpoints = match state.app.db(reads::endpoints(&state.app.pool)).await {
        Ok(endpoints) => endpoints,
        Err(e) => return layout::api_error_page(&e),
    };
    let body = html! {
        (table(&["endpoint", "ledger", "url", "status", "pending", "lag", "failures (last 100)", "last error", "failing since", ""], endpoints.iter().map(|e| html! {
            tr {
                td { (short_id(&e.id.to_string())) }
                td { (e.ledger) }
                td { code { (e.url) } }
                td { (status(&e.status)) @if let Some(reason) = &e.disabled_reason { " " span.muted { (reason) } } }
                td.num { (e.pending) }
                td.num { (e.lag_secs.map_or_else(|| "—".to_owned(), |s| format!("{s:.1} s"))) }
                td.num { (e.recent_failures) }
                td { (e.last_error.as_deref().unwrap_or("")) }
                td { (maybe_time(e.failing_since)) }
                td {
                    @if viewer.can_act() {
                        (action_button(&viewer, &format!("/console/webhooks/{}/replay", e.id), "Replay", html! {
                            input.narrow name="after" type="number" min="0" value="0" title="re-send events after this seq";
                        }))
                    }
                }
            }
        }).collect(), "No webhook endpoints."))
        p.muted.small { "Replay re-sends the endpoint's events after the given sequence number \
            (0: all kept events), already delivered ones included." }
    };
    layout::page(
        &viewer,
        "Webhooks",
        "/console/webhooks",
        flash.as_deref(),
        body,
    )
}

/// `POST /console/webhooks/{id}/replay`.
pub async fn replay(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<ActionForm>,
) -> Response {
    let after = form.after.clone().unwrap_or_default();
    act(
        &state,
        &viewer,
        &headers,
        &form,
        "webhook_endpoint.replay",
        "/console/webhooks",
        || async {
            let after: i64 = after
                .trim()
                .parse()
                .map_err(|_| ApiError::InvalidBody("after must be a whole number".into()))?;
            let app = State(state.app.clone());
            let (_, Json(replayed)) = api::replay(
                app,
                viewer.caller(),
                Path(id.clone()),
                JsonBody(Replay::after(after)),
            )
            .await?;
            Ok(format!(
                "Replay of endpoint {id}: {} deliveries scheduled.",
                replayed.scheduled()
            ))
        },
    )
    .await
}
