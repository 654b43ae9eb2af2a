//! Alerts and their deliveries per sink, with each sink's circuit breaker.

use axum::extract::State;
use axum::response::Response;
use maud::html;

use super::ConsoleState;
use super::layout::{self, maybe_time, status, table, time};
use super::reads;
use super::session::Viewer;
use crate::alerts::outbox;

/// `GET /console/alerts`.
pub async fn page(State(state): State<ConsoleState>, viewer: Viewer) -> Response {
    let pool = &state.app.pool;
    let found = state
        .app
        .db(async {
            let alerts = outbox::list(pool, reads::LIST_ROWS, None).await?;
            let circuits = reads::sink_circuits(pool).await?;
            let health = reads::sink_health(pool).await?;
            Ok::<_, sqlx::Error>((alerts, circuits, health))
        })
        .await;
    let (alerts, circuits, health) = match found {
        Ok(found) => found,
        Err(e) => return layout::api_error_page(&e),
    };
    let body = html! {
        h2 { "Sinks" }
        (table(&["sink", "circuit", "since", "delivered", "not delivered", "last error"], health.iter().map(|h| {
            let circuit = circuits.iter().find(|c| c.sink == h.sink);
            html! {
                tr {
                    td { code { (h.sink) } }
                    td { (status(circuit.map_or("closed", |c| c.state.as_str()))) }
                    td { (maybe_time(circuit.map(|c| c.since))) }
                    td.num { (h.delivered) }
                    td.num { (h.failing) }
                    td { (h.last_error.as_deref().unwrap_or("")) }
                }
            }
        }).collect(), "No alert has been delivered yet."))
        p.muted.small { "Counts are of each sink's last 1,000 deliveries. A circuit opens when a \
            sink keeps failing and is reported to the other sinks; its state here is the last \
            such report." }
        h2 { "Alerts" }
        (table(&["at", "severity", "type", "action", "summary", "deliveries"], alerts.iter().map(|a| html! {
            tr {
                td { (time(a.created_at)) }
                td { (status(&a.severity)) }
                td { code { (a.event_type) } }
                td { (a.action) }
                td { (a.summary) }
                td {
                    @for d in &a.deliveries {
                        span title=(d.last_error.as_deref().unwrap_or("")) { (d.sink) " " (status(&d.status)) " ×" (d.attempts) } " "
                    }
                }
            }
        }).collect(), "No alerts."))
    };
    layout::page(&viewer, "Alerts", "/console/alerts", None, body)
}
