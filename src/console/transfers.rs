//! Transfers: search by id, idempotency key, account and status; one transfer's timeline.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, html};
use serde::Deserialize;
use uuid::Uuid;

use super::ConsoleState;
use super::layout::{self, maybe_time, short_id, status, table, time};
use super::reads::{self, TransferSearch};
use super::session::Viewer;
use crate::domain::{LedgerName, TransferStatus};
use crate::events::transfer::TransferView;
use crate::store::transfers;

#[derive(Debug, Default, Deserialize)]
pub struct SearchQuery {
    /// A transfer id or an idempotency key.
    #[serde(default)]
    q: String,
    #[serde(default)]
    account: String,
    #[serde(default)]
    ledger: String,
    #[serde(default)]
    status: String,
}

impl SearchQuery {
    /// The search as typed, or why it cannot run.
    fn parse(&self) -> Result<TransferSearch, String> {
        let q = self.q.trim();
        let mut search = TransferSearch::default();
        if !q.is_empty() {
            match Uuid::parse_str(q) {
                Ok(id) => search.id = Some(id),
                Err(_) => search.idempotency_key = Some(q.to_owned()),
            }
        }
        let account = self.account.trim();
        if !account.is_empty() {
            search.account = Some(account.to_owned());
        }
        let ledger = self.ledger.trim();
        if !ledger.is_empty() {
            search.ledger = Some(LedgerName::parse(ledger).map_err(|e| e.to_string())?);
        }
        let wanted = self.status.trim();
        if !wanted.is_empty() {
            search.status = Some(
                wanted
                    .parse::<TransferStatus>()
                    .map_err(|_| format!("unknown status {wanted:?}"))?,
            );
        }
        Ok(search)
    }
}

const STATUSES: &[&str] = &["pending", "in_review", "held", "posted", "failed", "voided"];

fn transfer_rows(transfers: &[TransferView]) -> Vec<Markup> {
    transfers
        .iter()
        .map(|t| {
            html! {
                tr {
                    td { a href={ "/console/transfers/" (t.id) } { (short_id(&t.id.to_string())) } }
                    td { (t.ledger) }
                    td { (t.from_account) " → " (t.to_account) }
                    td.num { (t.amount) " " (t.currency) }
                    td { (status(t.status.as_str())) }
                    td { code { (t.idempotency_key) } }
                    td { (time(t.created_at)) }
                }
            }
        })
        .collect()
}

const TRANSFER_HEADERS: &[&str] = &[
    "id",
    "ledger",
    "from → to",
    "amount",
    "status",
    "idempotency key",
    "created",
];

/// `GET /console/transfers`.
pub async fn search(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    Query(query): Query<SearchQuery>,
) -> Response {
    let searched = query.parse();
    let results = match &searched {
        Ok(search) => {
            let timeout_ms = u64::try_from(state.app.db_timeout.as_millis()).unwrap_or(u64::MAX);
            let found = reads::search_transfers(&state.app.pool, search, timeout_ms);
            Some(state.app.db(found).await)
        }
        Err(_) => None,
    };
    let body = html! {
        form.search method="get" action="/console/transfers" {
            input name="q" placeholder="transfer id or idempotency key" value=(query.q);
            input name="account" placeholder="account" value=(query.account);
            input name="ledger" placeholder="ledger" value=(query.ledger);
            select name="status" {
                option value="" { "any status" }
                @for s in STATUSES {
                    option value=(s) selected[query.status == *s] { (s) }
                }
            }
            button type="submit" { "Search" }
        }
        @match (&searched, results) {
            (Err(e), _) => p.error role="alert" { (e) },
            (_, Some(Ok(found))) => {
                (table(TRANSFER_HEADERS, transfer_rows(&found), "No transfer matches."))
                p.muted.small { "Most recently changed first, at most " (reads::LIST_ROWS) ". By \
                    account: posted transfers from the account's entries, open ones (pending, \
                    in review, held), and failed or voided ones of the last hour. By status \
                    alone: those changed in the last day." }
            },
            (_, Some(Err(e))) => p.error role="alert" { (e) },
            _ => {},
        }
    };
    layout::page(&viewer, "Transfers", "/console/transfers", None, body)
}

/// `GET /console/transfers/{id}`: the transfer and what happened to it, in order.
pub async fn timeline(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Response {
    let Ok(id) = Uuid::parse_str(&id) else {
        return layout::error_page(StatusCode::NOT_FOUND, "transfer not found");
    };
    let pool = &state.app.pool;
    let found = state.app.db(transfers::get_in_ledger(pool, id, None)).await;
    let view = match found {
        Ok(Some(view)) => view,
        Ok(None) => return layout::error_page(StatusCode::NOT_FOUND, "transfer not found"),
        Err(e) => return layout::api_error_page(&e),
    };
    let (last_error, key_name, entries) = match state.app.db(reads::timeline(pool, &view)).await {
        Ok(found) => found,
        Err(e) => return layout::api_error_page(&e),
    };
    let mut steps: Vec<(chrono::DateTime<chrono::Utc>, &str, String, Option<String>)> = vec![(
        view.created_at,
        "accepted",
        format!(
            "accepted from key {}",
            key_name.as_deref().unwrap_or("(unknown)")
        ),
        None,
    )];
    if let Some(hold) = &view.hold
        && let Some(held_at) = hold.held_at
    {
        steps.push((held_at, "held", "funds reserved (hold)".into(), None));
    }
    if let Some(review) = &view.review {
        steps.push((
            review.at,
            "review",
            format!("review: {}", review.decision.as_str()),
            None,
        ));
    }
    for entry in &entries {
        steps.push((
            entry.at,
            entry.source.as_str(),
            entry.what.clone(),
            entry.detail.clone(),
        ));
    }
    if let Some(at) = view.posted_at {
        steps.push((at, "posted", "posted to the ledger".into(), None));
    }
    if let Some(at) = view.failed_at {
        let code = view.failure_code.map_or("", |c| c.as_str());
        steps.push((at, "failed", format!("failed: {code}"), None));
    }
    steps.sort_by_key(|s| s.0);
    let body = html! {
        dl.facts {
            dt { "id" } dd { code { (view.id) } }
            dt { "status" } dd { (status(view.status.as_str())) }
            dt { "ledger" } dd { (view.ledger) }
            dt { "from → to" } dd {
                a href={ "/console/ledgers/" (view.ledger) "/accounts/" (view.from_account) } { (view.from_account) }
                " → "
                a href={ "/console/ledgers/" (view.ledger) "/accounts/" (view.to_account) } { (view.to_account) }
            }
            dt { "amount" } dd { (view.amount) " " (view.currency) }
            dt { "idempotency key" } dd { code { (view.idempotency_key) } }
            dt { "mode" } dd { (view.mode) }
            dt { "posting attempts" } dd { (view.attempts) }
            @if let Some(error) = &last_error {
                dt { "last error" } dd.error { (error) }
            }
            @if !view.flags.is_empty() {
                dt { "flags" } dd { @for flag in &view.flags { span.status.wait { (flag.as_str()) } " " } }
            }
            dt { "posted" } dd { (maybe_time(view.posted_at)) }
        }
        h2 { "Timeline" }
        ol.timeline id="timeline" {
            @for (at, kind, what, detail) in &steps {
                li class={ "step " (kind) } {
                    (time(*at)) " "
                    span.kind { (kind) } " "
                    span.what { (what) }
                    @if let Some(detail) = detail { div.detail { code { (detail) } } }
                }
            }
        }
    };
    layout::page(&viewer, "Transfer", "/console/transfers", None, body)
}
