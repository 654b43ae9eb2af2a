//! The page shell every console page shares, and the small pieces pages are built from:
//! action forms (CSRF token and nonce included), times, statuses, tables.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::session::{Viewer, nonce};
use crate::intake::error::ApiError;

/// The console's sections, in the order of the navigation bar: (path, label).
const SECTIONS: &[(&str, &str)] = &[
    ("/console", "Overview"),
    ("/console/transfers", "Transfers"),
    ("/console/ledgers", "Ledgers"),
    ("/console/reviews", "Reviews"),
    ("/console/reconciliation", "Reconciliation"),
    ("/console/alerts", "Alerts"),
    ("/console/webhooks", "Webhooks"),
    ("/console/queue", "Queue"),
];

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · ferry" }
            link rel="stylesheet" href="/console/assets/console.css";
            script src="/console/assets/console.js" defer {}
        }
    }
}

/// A whole page: navigation with `active` highlighted, who is signed in, the outcome of the
/// action just taken (if any), then `body`.
pub fn page(
    viewer: &Viewer,
    title: &str,
    active: &str,
    flash: Option<&str>,
    body: Markup,
) -> Response {
    let role = if viewer.can_act() { "admin" } else { "viewer" };
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
        (head(title))
        body {
            header.top {
                span.brand { "ferry" }
                nav {
                    @for (path, label) in SECTIONS {
                        a href=(path) class=[(*path == active).then_some("active")] { (label) }
                    }
                }
                span.who { "key " code { (short_id(&viewer.key.id.to_string())) } " · " (role) }
                form.inline method="post" action="/console/logout" {
                    input type="hidden" name="csrf" value=(viewer.csrf);
                    button.link type="submit" { "Sign out" }
                }
            }
            main {
                h1 { (title) }
                @if let Some(flash) = flash {
                    p.flash role="status" { (flash) }
                }
                (body)
            }
        }
        }
    };
    Html(markup.into_string()).into_response()
}

/// A page for someone not signed in (sign-in itself, and refusals).
pub fn bare_page(status: StatusCode, title: &str, body: Markup) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body.bare {
                main.narrow {
                    h1 { "ferry · " (title) }
                    (body)
                }
            }
        }
    };
    (status, Html(markup.into_string())).into_response()
}

/// A refusal or failure, with its status code and reason.
pub fn error_page(status: StatusCode, message: &str) -> Response {
    bare_page(
        status,
        status.canonical_reason().unwrap_or("Error"),
        html! {
            p.error role="alert" { (message) }
            p { a href="/console" { "Back to the console" } }
        },
    )
}

/// An API refusal shown as a page: its status, stable code and message.
pub fn api_error_page(error: &ApiError) -> Response {
    if error.status().is_server_error() {
        tracing::warn!(error = %error, "console request failed");
    }
    error_page(error.status(), &format!("{} ({})", error, error.code()))
}

/// A button that posts an action: the session's CSRF token and a fresh nonce ride along, so
/// the action needs this session and runs once however often the form is sent.
pub fn action_button(viewer: &Viewer, action: &str, label: &str, extra: Markup) -> Markup {
    html! {
        form.inline method="post" action=(action) {
            input type="hidden" name="csrf" value=(viewer.csrf);
            input type="hidden" name="nonce" value=(nonce());
            (extra)
            button type="submit" data-action=(label) { (label) }
        }
    }
}

pub fn time(at: DateTime<Utc>) -> Markup {
    html! { time datetime=(at.to_rfc3339()) { (at.format("%Y-%m-%d %H:%M:%S%.3f")) } }
}

pub fn maybe_time(at: Option<DateTime<Utc>>) -> Markup {
    match at {
        Some(at) => time(at),
        None => html! { span.muted { "—" } },
    }
}

/// A status as a coloured label; the colour follows the word.
pub fn status(word: &str) -> Markup {
    let tone = match word {
        "posted" | "delivered" | "Done" | "active" | "enabled" | "completed" | "closed_breaker"
        | "ok" => "good",
        "failed" | "Dead" | "Killed" | "frozen" | "disabled" | "open" | "rejected" | "critical" => {
            "bad"
        }
        "pending" | "in_review" | "held" | "Pending" | "Queued" | "Running" | "running"
        | "retry" | "half_open" | "warning" => "wait",
        _ => "plain",
    };
    html! { span class={ "status " (tone) } { (word) } }
}

/// The last 8 characters of a long id (UUIDv7s begin with their time, so their heads
/// repeat), the whole id on hover.
pub fn short_id(id: &str) -> Markup {
    let chars: Vec<char> = id.chars().collect();
    let short: String = chars[chars.len().saturating_sub(8)..].iter().collect();
    html! { span title=(id) { (short) } }
}

/// A table with a header row; `rows` are `tr`s. Says so when there are none.
pub fn table(headers: &[&str], rows: Vec<Markup>, empty: &str) -> Markup {
    html! {
        @if rows.is_empty() {
            p.muted.empty { (empty) }
        } @else {
            table {
                thead { tr { @for h in headers { th { (h) } } } }
                tbody { @for row in rows { (row) } }
            }
        }
    }
}

/// Literal text the page embeds as is (only for SVG built by [`super::chart`], whose every
/// interpolated value is a number or escaped there).
pub fn trusted(svg: String) -> Markup {
    PreEscaped(svg)
}
