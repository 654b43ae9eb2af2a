//! Reconciliation: recent runs, open findings, one run's findings, and "run now" through
//! `POST /v1/reconciliations`.

use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use maud::{Markup, html};
use uuid::Uuid;

use super::layout::{self, action_button, maybe_time, short_id, status, table, time};
use super::reads;
use super::session::Viewer;
use super::{ActionForm, ConsoleState, FlashQuery, act};
use crate::intake::json::JsonBody;
use crate::intake::reconciliations::{self as api, StartRequest};
use crate::reconcile::findings::{self, FindingView};
use crate::reconcile::runs;
use crate::store::ledgers;

fn findings_table(found: &[FindingView], empty: &str) -> Markup {
    table(
        &[
            "severity",
            "kind",
            "ledger",
            "subject",
            "detail",
            "first seen",
            "last seen",
        ],
        found
            .iter()
            .map(|f| {
                html! {
                    tr {
                        td { (status(&f.severity)) }
                        td { code { (f.kind) } }
                        td { (f.ledger.as_deref().unwrap_or("—")) }
                        td {
                            @if let Some(transfer) = f.transfer_id {
                                a href={ "/console/transfers/" (transfer) } { (f.subject) }
                            } @else { (f.subject) }
                        }
                        td { (f.detail) }
                        td { (time(f.first_seen_at)) }
                        td { (time(f.last_seen_at)) }
                    }
                }
            })
            .collect(),
        empty,
    )
}

/// `GET /console/reconciliation`.
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
            let recent = runs::list(pool, reads::LIST_ROWS, None).await?;
            let open = findings::open(pool, reads::LIST_ROWS).await?;
            let all = ledgers::list(pool, 500, None).await?;
            Ok::<_, sqlx::Error>((recent, open, all))
        })
        .await;
    let (recent, open, all) = match found {
        Ok(found) => found,
        Err(e) => return layout::api_error_page(&e),
    };
    let body = html! {
        @if viewer.can_act() {
            div.actions id="run-now" {
                (action_button(&viewer, "/console/reconciliation/run", "Run now", html! {
                    select name="ledger" {
                        option value="" { "every ledger" }
                        @for ledger in &all { option value=(ledger.name) { (ledger.name) } }
                    }
                }))
                span.muted.small { " checks the last five minutes, like the scheduled run" }
            }
        }
        h2 { "Open findings" }
        (findings_table(&open, "No open findings."))
        h2 { "Runs" }
        (table(&["run", "trigger", "status", "ledger", "window", "transfers", "open", "opened", "resolved", "finished"], recent.iter().map(|r| html! {
            tr {
                td { a href={ "/console/reconciliation/" (r.id) } { (short_id(&r.id.to_string())) } }
                td { (r.trigger) }
                td { (status(&r.status)) }
                td { (r.ledger.as_deref().unwrap_or("every")) }
                td { (time(r.window_start)) " – " (time(r.window_end)) }
                td.num { (r.transfers_checked) }
                td.num { (r.findings_open) }
                td.num { (r.findings_opened) }
                td.num { (r.findings_resolved) }
                td { (maybe_time(r.finished_at)) }
            }
        }).collect(), "No runs yet."))
    };
    layout::page(
        &viewer,
        "Reconciliation",
        "/console/reconciliation",
        flash.as_deref(),
        body,
    )
}

/// `GET /console/reconciliation/{id}`.
pub async fn run(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Response {
    let Ok(id) = Uuid::parse_str(&id) else {
        return layout::error_page(StatusCode::NOT_FOUND, "run not found");
    };
    let pool = &state.app.pool;
    let found = state
        .app
        .db(async {
            let Some(run) = runs::get(pool, id).await? else {
                return Ok(None);
            };
            let seen = findings::seen_by_run(pool, id).await?;
            let resolved = findings::resolved_by_run(pool, id).await?;
            Ok::<_, sqlx::Error>(Some((run, seen, resolved)))
        })
        .await;
    let (run, seen, resolved) = match found {
        Ok(Some(found)) => found,
        Ok(None) => return layout::error_page(StatusCode::NOT_FOUND, "run not found"),
        Err(e) => return layout::api_error_page(&e),
    };
    let body = html! {
        dl.facts {
            dt { "run" } dd { code { (run.id) } }
            dt { "status" } dd id="run-status" { (status(&run.status)) }
            dt { "trigger" } dd { (run.trigger) }
            dt { "window" } dd { (time(run.window_start)) " – " (time(run.window_end)) }
            dt { "checked" } dd { (run.transfers_checked) " transfers, " (run.accounts_checked) " accounts" }
            dt { "finished" } dd { (maybe_time(run.finished_at)) }
            @if let Some(error) = &run.error { dt { "error" } dd.error { (error) } }
        }
        h2 { "Findings seen" }
        (findings_table(&seen, "This run found nothing wrong."))
        h2 { "Findings resolved" }
        (findings_table(&resolved, "None."))
    };
    layout::page(
        &viewer,
        "Reconciliation run",
        "/console/reconciliation",
        None,
        body,
    )
}

/// `POST /console/reconciliation/run`: `POST /v1/reconciliations` with the signed-in key.
pub async fn run_now(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Response {
    let ledger = form.ledger.clone().filter(|l| !l.is_empty());
    act(
        &state,
        &viewer,
        &headers,
        &form,
        "reconciliation.start",
        "/console/reconciliation",
        || async {
            let body = StartRequest::for_ledger(ledger);
            let response = api::start(
                State(state.app.clone()),
                viewer.caller(),
                Ok(JsonBody(body)),
            )
            .await?;
            let location = response
                .headers()
                .get(axum::http::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .and_then(|l| l.rsplit('/').next())
                .unwrap_or_default()
                .to_owned();
            Ok(format!(
                "Reconciliation run {location} queued; a worker runs it now."
            ))
        },
    )
    .await
}
