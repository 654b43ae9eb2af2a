//! `/v1/reconciliations`: start a run now, list runs, read a run with its findings.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, Problem};
use super::json::JsonBody;
use super::paging::{PageQuery, next_cursor, page_len};
use super::query::QueryParams;
use crate::domain::{LedgerName, Scope};
use crate::reconcile::findings::{self, FindingView};
use crate::reconcile::runs::{self, RunView, Trigger};
use crate::reconcile::schedule::{ScheduleError, enqueue_run_in};
use crate::reconcile::window::Window;
use crate::store::audit::{self, AuditAction};

/// Window of an on-demand run when the request names none: the last five minutes.
pub const DEFAULT_WINDOW_SECS: i64 = 300;
pub const RUNS_PAGE_LEN_DEFAULT: i64 = 20;
pub const RUNS_PAGE_LEN_MAX: i64 = 200;

/// The body of `POST /v1/reconciliations`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    /// Window start; default: `to` minus five minutes.
    from: Option<DateTime<Utc>>,
    /// Window end, after `from`; default: now.
    to: Option<DateTime<Utc>>,
    /// Rebuild the incremental balance sums from the whole ledger (of `ledger`, if named).
    #[serde(default)]
    full: bool,
    /// Check this ledger only; default: every ledger.
    #[schema(pattern = "^[a-z0-9_-]{1,64}$")]
    ledger: Option<String>,
}

impl StartRequest {
    /// The default window (the last five minutes) of `ledger`, or of every ledger.
    pub fn for_ledger(ledger: Option<String>) -> Self {
        Self {
            ledger,
            ..Self::default()
        }
    }
}

/// Starts a reconciliation run now; a worker executes it.
#[utoipa::path(
    post,
    path = "/reconciliations",
    tag = "reconciliations",
    operation_id = "startReconciliation",
    description = "Scope: `admin`.",
    request_body = StartRequest,
    responses(
        (status = 202, description = "The run, queued for a worker.", body = RunView,
            headers(("Location" = String, description = "`/v1/reconciliations/{id}`")),
            links(("GetReconciliation" = (operation_id = "getReconciliation",
                parameters(("id" = "$response.body#/id")))))),
        (status = 422, description = "`ledger_not_found`: `ledger` names no ledger; nothing \
            was stored.", body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = ["admin"])),
)]
pub async fn start(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<JsonBody<StartRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let actor = caller.actor();
    caller.require(Scope::Admin)?;
    let JsonBody(body) = body?;
    let to = body.to.unwrap_or_else(Utc::now);
    let from = body
        .from
        .unwrap_or(to - Duration::seconds(DEFAULT_WINDOW_SECS));
    let window = Window::new(from, to).map_err(|e| ApiError::InvalidBody(e.to_string()))?;
    let ledger = body
        .ledger
        .as_deref()
        .map(LedgerName::parse)
        .transpose()
        .map_err(|e| ApiError::InvalidBody(format!("ledger: {e}")))?;
    // The run, its job and its audit event commit together.
    let run = state
        .db(async {
            let mut tx = state.pool.begin().await?;
            let run = enqueue_run_in(&mut tx, Trigger::Api, window, body.full, ledger.as_ref())
                .await
                .map_err(|e| match e {
                    ScheduleError::UnknownLedger(ledger) => {
                        ApiError::LedgerNotFound(ledger.to_string())
                    }
                    ScheduleError::Database(e) => ApiError::from(e),
                    ScheduleError::Enqueue(e) => ApiError::Internal(e.into()),
                })?
                .ok_or_else(|| {
                    ApiError::Internal(anyhow::anyhow!("on-demand run was not created"))
                })?;
            let started = actor.event(
                AuditAction::ReconciliationStarted,
                ledger.as_ref(),
                audit::target::reconciliation(run.id),
                serde_json::json!({"from": from, "to": to, "full": body.full}),
            );
            audit::record(&mut *tx, &started).await?;
            tx.commit().await?;
            Ok::<_, ApiError>(run)
        })
        .await?;
    let location = HeaderValue::from_str(&format!("/v1/reconciliations/{}", run.id))
        .map_err(|e| ApiError::Internal(e.into()))?;
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(run),
    )
        .into_response())
}

/// A page of reconciliation runs, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RunsPage {
    runs: Vec<RunView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<Uuid>,
}

/// Lists reconciliation runs, newest first.
#[utoipa::path(
    get,
    path = "/reconciliations",
    tag = "reconciliations",
    operation_id = "listReconciliations",
    description = "Scope: `admin`.",
    params(
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 200,
            description = "Runs per page; default 20."),
        ("cursor" = Option<Uuid>, Query, description = "`next_cursor` of the previous page."),
    ),
    responses((status = 200, description = "A page of runs.", body = RunsPage)),
    security(("api_key" = ["admin"])),
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(query): QueryParams<PageQuery>,
) -> Result<Json<RunsPage>, ApiError> {
    caller.require(Scope::Admin)?;
    let limit = page_len(query.limit, RUNS_PAGE_LEN_DEFAULT, RUNS_PAGE_LEN_MAX)?;
    let runs = state
        .db(runs::list(&state.pool, limit, query.cursor))
        .await?;
    let next_cursor = next_cursor(&runs, limit, |r| r.id);
    Ok(Json(RunsPage { runs, next_cursor }))
}

/// A reconciliation run with its findings.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RunDetail {
    #[serde(flatten)]
    run: RunView,
    /// Findings this run saw (still open, or resolved by a later run).
    findings: Vec<FindingView>,
    /// Findings this run found gone.
    resolved: Vec<FindingView>,
}

/// Reads a reconciliation run with its findings.
#[utoipa::path(
    get,
    path = "/reconciliations/{id}",
    tag = "reconciliations",
    operation_id = "getReconciliation",
    description = "Scope: `admin`.",
    params(("id" = Uuid, Path, description = "The run id.")),
    responses(
        (status = 200, description = "The run; `findings` is `[]` when clean.", body = RunDetail),
        (status = 404, description = "`reconciliation_not_found`.", body = Problem,
            content_type = "application/problem+json"),
    ),
    security(("api_key" = ["admin"])),
)]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<RunDetail>, ApiError> {
    caller.require(Scope::Admin)?;
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::ReconciliationNotFound)?;
    state
        .db(async {
            let run = runs::get(&state.pool, id)
                .await?
                .ok_or(ApiError::ReconciliationNotFound)?;
            Ok::<_, ApiError>(Json(RunDetail {
                findings: findings::seen_by_run(&state.pool, id).await?,
                resolved: findings::resolved_by_run(&state.pool, id).await?,
                run,
            }))
        })
        .await
}
