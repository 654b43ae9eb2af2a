//! Ledgers and accounts: balances (posted, reserved by holds, available), recent entries, and
//! freezing or unfreezing an account through the API's handlers.

use axum::Json;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use maud::html;
use serde::Deserialize;

use super::layout::{self, action_button, short_id, status, table, time};
use super::reads;
use super::session::Viewer;
use super::{ActionForm, ConsoleState, FlashQuery, act};
use crate::domain::{AccountId, AccountKey, LedgerName};
use crate::intake::accounts::{self as api, LedgerQuery};
use crate::intake::query::QueryParams;
use crate::store::accounts::StatusChange;
use crate::store::{accounts, ledgers};

#[derive(Debug, Default, Deserialize)]
pub struct LedgersQuery {
    #[serde(default)]
    ledger: String,
    #[serde(default)]
    after: String,
    /// From the look-up form: open this account of `ledger`.
    #[serde(default)]
    account: String,
}

/// `GET /console/ledgers`: the ledgers, and one ledger's accounts.
pub async fn ledgers(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    Query(query): Query<LedgersQuery>,
) -> Response {
    if !query.account.trim().is_empty() {
        let target = format!(
            "/console/ledgers/{}/accounts/{}",
            urlencode(&query.ledger),
            urlencode(query.account.trim())
        );
        return super::redirect_see_other(&target);
    }
    let pool = &state.app.pool;
    let all = match state.app.db(ledgers::list(pool, 500, None)).await {
        Ok(all) => all,
        Err(e) => return layout::api_error_page(&e),
    };
    let chosen = if query.ledger.is_empty() {
        all.first().map(|l| l.name.clone())
    } else {
        Some(query.ledger.clone())
    };
    let chosen = match chosen.as_deref().map(LedgerName::parse).transpose() {
        Ok(chosen) => chosen,
        Err(e) => return layout::error_page(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let after = (!query.after.is_empty()).then_some(query.after.as_str());
    let listed = match &chosen {
        Some(ledger) => match state.app.db(reads::accounts_of(pool, ledger, after)).await {
            Ok(rows) => rows,
            Err(e) => return layout::api_error_page(&e),
        },
        None => Vec::new(),
    };
    let body = html! {
        nav.tabs {
            @for ledger in &all {
                a href={ "/console/ledgers?ledger=" (ledger.name) }
                  class=[(chosen.as_ref().is_some_and(|c| c.as_str() == ledger.name)).then_some("active")] { (ledger.name) }
            }
        }
        @if let Some(ledger) = &chosen {
            form.search method="get" action="/console/ledgers" id="account-lookup" {
                input type="hidden" name="ledger" value=(ledger);
                input name="account" placeholder="account id" required;
                button type="submit" { "Open account" }
            }
            (table(&["account", "currency", "balance", "reserved", "status"], listed.iter().map(|a| html! {
                tr {
                    td { a href={ "/console/ledgers/" (ledger) "/accounts/" (a.id) } { (a.id) } }
                    td { (a.currency) }
                    td.num { (a.balance) }
                    td.num { (a.pending_debits) }
                    td { (status(&a.status)) }
                }
            }).collect(), "No accounts in this ledger."))
            @if let Some(last) = listed.last().filter(|_| listed.len() as i64 == reads::LIST_ROWS) {
                p { a href={ "/console/ledgers?ledger=" (ledger) "&after=" (last.id) } { "Next accounts →" } }
            }
        }
    };
    layout::page(
        &viewer,
        "Ledgers and accounts",
        "/console/ledgers",
        None,
        body,
    )
}

/// Percent-encodes everything but unreserved characters, for a path segment.
fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `GET /console/ledgers/{ledger}/accounts/{id}`.
pub async fn account(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    Path((ledger, id)): Path<(String, String)>,
    Query(flash): Query<FlashQuery>,
) -> Response {
    let flash = flash.outcome(&state, &viewer).await;
    let key = match (LedgerName::parse(&ledger), AccountId::parse(&id)) {
        (Ok(ledger), Ok(id)) => AccountKey::new(ledger, id),
        _ => return layout::error_page(StatusCode::NOT_FOUND, "account not found"),
    };
    let pool = &state.app.pool;
    let found = state
        .app
        .db(async {
            let Some(view) = accounts::get(pool, &key).await? else {
                return Ok(None);
            };
            let entries = accounts::entries(pool, &key, None, reads::LIST_ROWS).await?;
            Ok::<_, sqlx::Error>(Some((view, entries)))
        })
        .await;
    let (view, entries) = match found {
        Ok(Some(found)) => found,
        Ok(None) => return layout::error_page(StatusCode::NOT_FOUND, "account not found"),
        Err(e) => return layout::api_error_page(&e),
    };
    let base = format!("/console/ledgers/{}/accounts/{}", view.ledger, view.id);
    let body = html! {
        dl.facts {
            dt { "ledger" } dd { (view.ledger) }
            dt { "account" } dd { code { (view.id) } }
            dt { "status" } dd id="account-status" { (status(&view.status)) }
            dt { "balance" } dd.num { (view.balance) " " (view.currency) }
            dt { "reserved by holds" } dd.num { (view.pending_debits) }
            dt { "incoming holds" } dd.num { (view.pending_credits) }
            dt { "available" } dd.num { (view.available) }
            dt { "overdraft allowed" } dd { (view.allow_overdraft) }
            dt { "created" } dd { (time(view.created_at)) }
        }
        @if viewer.can_act() {
            div.actions {
                @if view.status == "active" { (action_button(&viewer, &format!("{base}/freeze"), "Freeze", html! {})) }
                @if view.status == "frozen" { (action_button(&viewer, &format!("{base}/unfreeze"), "Unfreeze", html! {})) }
            }
        }
        h2 { "Recent entries" }
        (table(&["entry", "transfer", "side", "amount", "balance after", "at"], entries.iter().map(|e| html! {
            tr {
                td { (e.id) }
                td { a href={ "/console/transfers/" (e.transfer_id) } { (short_id(&e.transfer_id.to_string())) } }
                td { (e.side) }
                td.num { (e.amount) " " (e.currency) }
                td.num { (e.balance_after) }
                td { (time(e.created_at)) }
            }
        }).collect(), "No entries yet."))
    };
    layout::page(
        &viewer,
        "Account",
        "/console/ledgers",
        flash.as_deref(),
        body,
    )
}

/// `POST …/freeze`: `POST /v1/accounts/{id}/freeze` with the signed-in key.
pub async fn freeze(
    state: State<ConsoleState>,
    viewer: Viewer,
    headers: HeaderMap,
    path: Path<(String, String)>,
    form: Form<ActionForm>,
) -> Response {
    change(state, viewer, headers, path, form, StatusChange::Freeze).await
}

/// `POST …/unfreeze`: `POST /v1/accounts/{id}/unfreeze` with the signed-in key.
pub async fn unfreeze(
    state: State<ConsoleState>,
    viewer: Viewer,
    headers: HeaderMap,
    path: Path<(String, String)>,
    form: Form<ActionForm>,
) -> Response {
    change(state, viewer, headers, path, form, StatusChange::Unfreeze).await
}

/// Changes the account's status through the API's handler (the console offers freeze and
/// unfreeze; closing is for good and left to the API and the CLI).
async fn change(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    headers: HeaderMap,
    Path((ledger, id)): Path<(String, String)>,
    Form(form): Form<ActionForm>,
    change: StatusChange,
) -> Response {
    let back = format!("/console/ledgers/{ledger}/accounts/{id}");
    let action = match change {
        StatusChange::Freeze => "account.freeze",
        StatusChange::Unfreeze => "account.unfreeze",
        StatusChange::Close => "account.close",
    };
    act(&state, &viewer, &headers, &form, action, &back, || async {
        let query = QueryParams(LedgerQuery::named(&ledger));
        let app = State(state.app.clone());
        let Json(view) = match change {
            StatusChange::Freeze => {
                api::freeze(app, viewer.caller(), Path(id.clone()), query).await?
            }
            StatusChange::Unfreeze => {
                api::unfreeze(app, viewer.caller(), Path(id.clone()), query).await?
            }
            StatusChange::Close => {
                api::close(app, viewer.caller(), Path(id.clone()), query).await?
            }
        };
        Ok(format!(
            "Account {} in {} is now {}.",
            view.id, view.ledger, view.status
        ))
    })
    .await
}
