//! The queue: jobs by queue and state, workers and their heartbeats, dead jobs with retry and
//! discard through `POST /v1/jobs/{id}/retry` and `/discard`.

use std::time::Duration;

use axum::Json;
use axum::extract::{Form, Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use chrono::Utc;
use maud::html;

use super::layout::{self, action_button, maybe_time, status, time};
use super::session::Viewer;
use super::{ActionForm, ConsoleState, FlashQuery, act};
use crate::intake::jobs as api;
use crate::queue::table;

/// Workers not seen for this long are left off the page (apalis keeps them a day).
const WORKERS_SEEN_WITHIN: Duration = Duration::from_secs(600);
/// Dead jobs listed on the page.
const DEAD_JOBS_SHOWN: usize = 100;

/// `GET /console/queue`.
pub async fn page(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    Query(flash): Query<FlashQuery>,
) -> Response {
    let flash = flash.outcome(&state, &viewer).await;
    let found = state
        .app
        .db(async {
            let mut conn = state.app.pool.acquire().await?;
            let counts = table::job_counts(&mut conn).await?;
            let workers = table::workers(&mut conn, WORKERS_SEEN_WITHIN).await?;
            let dead = table::dead_jobs(&mut conn, None, DEAD_JOBS_SHOWN).await?;
            Ok::<_, sqlx::Error>((counts, workers, dead))
        })
        .await;
    let (counts, workers, dead) = match found {
        Ok(found) => found,
        Err(e) => return layout::api_error_page(&e),
    };
    let now = Utc::now();
    let body = html! {
        h2 { "Jobs by queue and state" }
        (layout::table(&["queue", "state", "jobs"], counts.iter().map(|c| html! {
            tr { td { code { (c.queue) } } td { (status(&c.status)) } td.num { (c.jobs) } }
        }).collect(), "No jobs."))
        h2 { "Workers" }
        (layout::table(&["worker", "queue", "last heartbeat", "ago", "running jobs", "started"], workers.iter().map(|w| html! {
            tr {
                td { code { (w.id) } }
                td { code { (w.queue) } }
                td { (time(w.last_seen)) }
                td.num { (format!("{:.0} s", (now - w.last_seen).num_milliseconds() as f64 / 1_000.0)) }
                td.num { (w.running) }
                td { (maybe_time(w.started_at)) }
            }
        }).collect(), "No worker seen in the last 10 minutes."))
        h2 { "Dead jobs" }
        (layout::table(&["job", "queue", "state", "attempts", "died", "last result", ""], dead.iter().map(|j| html! {
            tr data-job=(j.id) {
                td { code { (j.id) } }
                td { code { (j.queue) } }
                td { (status(&j.status)) }
                td.num { (j.attempts) }
                td { (maybe_time(j.died_at)) }
                td { code.small { (j.last_result.as_deref().unwrap_or("")) } }
                td {
                    @if viewer.can_act() {
                        (action_button(&viewer, &format!("/console/queue/jobs/{}/retry", j.id), "Retry", html! {}))
                        (action_button(&viewer, &format!("/console/queue/jobs/{}/discard", j.id), "Discard", html! {}))
                    }
                }
            }
        }).collect(), "No dead jobs."))
    };
    layout::page(&viewer, "Queue", "/console/queue", flash.as_deref(), body)
}

/// What an operator does to a dead job.
#[derive(Debug, Clone, Copy)]
enum JobAction {
    Retry,
    Discard,
}

/// `POST /console/queue/jobs/{id}/retry`.
pub async fn retry(
    state: State<ConsoleState>,
    viewer: Viewer,
    headers: HeaderMap,
    path: Path<String>,
    form: Form<ActionForm>,
) -> Response {
    change(state, viewer, headers, path, form, JobAction::Retry).await
}

/// `POST /console/queue/jobs/{id}/discard`.
pub async fn discard(
    state: State<ConsoleState>,
    viewer: Viewer,
    headers: HeaderMap,
    path: Path<String>,
    form: Form<ActionForm>,
) -> Response {
    change(state, viewer, headers, path, form, JobAction::Discard).await
}

async fn change(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<ActionForm>,
    job_action: JobAction,
) -> Response {
    let action = match job_action {
        JobAction::Retry => "job.retry",
        JobAction::Discard => "job.discard",
    };
    act(
        &state,
        &viewer,
        &headers,
        &form,
        action,
        "/console/queue",
        || async {
            let app = State(state.app.clone());
            let (Json(job), done) = match job_action {
                JobAction::Retry => (
                    api::retry(app, viewer.caller(), Path(id.clone())).await?,
                    "back in its queue",
                ),
                JobAction::Discard => (
                    api::discard(app, viewer.caller(), Path(id.clone())).await?,
                    "discarded",
                ),
            };
            Ok(format!("Job {} ({}) {done}.", job.id, job.queue))
        },
    )
    .await
}
