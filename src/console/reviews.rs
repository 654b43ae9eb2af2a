//! Anomalies and the review queue: approve or reject a held transfer through the API's
//! review handlers.

use axum::Json;
use axum::extract::{Form, Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use maud::html;

use super::layout::{self, action_button, short_id, status, table, time};
use super::reads;
use super::session::Viewer;
use super::{ActionForm, ConsoleState, FlashQuery, act};
use crate::domain::ReviewDecision;
use crate::intake::reviews as api;

/// `GET /console/reviews`.
pub async fn page(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    Query(flash): Query<FlashQuery>,
) -> Response {
    let flash = flash.outcome(&state, &viewer).await;
    let pool = &state.app.pool;
    let found = state
        .app
        .db(async {
            let queue = reads::review_queue(pool).await?;
            let anomalies = reads::recent_anomalies(pool).await?;
            Ok::<_, sqlx::Error>((queue, anomalies))
        })
        .await;
    let (queue, anomalies) = match found {
        Ok(found) => found,
        Err(e) => return layout::api_error_page(&e),
    };
    let body = html! {
        h2 { "Waiting for review" }
        (table(&["transfer", "ledger", "from → to", "amount", "flags", "held since", ""], queue.iter().map(|t| html! {
            tr data-transfer=(t.id) {
                td { a href={ "/console/transfers/" (t.id) } { (short_id(&t.id.to_string())) } }
                td { (t.ledger) }
                td { (t.from_account) " → " (t.to_account) }
                td.num { (t.amount) " " (t.currency) }
                td { @for flag in &t.flags { span.status.wait { (flag.as_str()) } " " } }
                td { (time(t.updated_at)) }
                td {
                    @if viewer.can_act() {
                        (action_button(&viewer, &format!("/console/reviews/{}/approve", t.id), "Approve", html! {}))
                        (action_button(&viewer, &format!("/console/reviews/{}/reject", t.id), "Reject", html! {}))
                    }
                }
            }
        }).collect(), "Nothing waits for review."))
        h2 { "Recent anomalies" }
        (table(&["opened", "last hit", "rule", "severity", "ledger", "account", "transfers", "first transfer", "detail"], anomalies.iter().map(|a| html! {
            tr {
                td { (time(a.at)) }
                td { (time(a.last_hit_at)) }
                td { (a.rule) }
                td { (status(&a.severity)) }
                td { (a.ledger) }
                td { a href={ "/console/ledgers/" (a.ledger) "/accounts/" (a.account_id) } { (a.account_id) } }
                td.num { (a.transfers) }
                td { a href={ "/console/transfers/" (a.transfer_id) } { (short_id(&a.transfer_id.to_string())) } }
                td { code.small { (a.detail) } }
            }
        }).collect(), "No anomalies."))
    };
    layout::page(
        &viewer,
        "Reviews and anomalies",
        "/console/reviews",
        flash.as_deref(),
        body,
    )
}

/// `POST /console/reviews/{id}/approve`: `POST /v1/transfers/{id}/approve`.
pub async fn approve(
    state: State<ConsoleState>,
    viewer: Viewer,
    headers: HeaderMap,
    path: Path<String>,
    form: Form<ActionForm>,
) -> Response {
    decide(state, viewer, headers, path, form, ReviewDecision::Approved).await
}

/// `POST /console/reviews/{id}/reject`: `POST /v1/transfers/{id}/reject`.
pub async fn reject(
    state: State<ConsoleState>,
    viewer: Viewer,
    headers: HeaderMap,
    path: Path<String>,
    form: Form<ActionForm>,
) -> Response {
    decide(state, viewer, headers, path, form, ReviewDecision::Rejected).await
}

async fn decide(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<ActionForm>,
    decision: ReviewDecision,
) -> Response {
    let action = match decision {
        ReviewDecision::Approved => "transfer.approve",
        ReviewDecision::Rejected => "transfer.reject",
    };
    act(
        &state,
        &viewer,
        &headers,
        &form,
        action,
        "/console/reviews",
        || async {
            let app = State(state.app.clone());
            let (Json(view), verb) = match decision {
                ReviewDecision::Approved => (
                    api::approve(app, viewer.caller(), Path(id.clone())).await?,
                    "Approved",
                ),
                ReviewDecision::Rejected => (
                    api::reject(app, viewer.caller(), Path(id.clone())).await?,
                    "Rejected",
                ),
            };
            Ok(format!(
                "{verb} transfer {}: now {}.",
                view.id,
                view.status.as_str()
            ))
        },
    )
    .await
}
