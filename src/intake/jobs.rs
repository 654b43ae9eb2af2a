//! `/v1/jobs/dead`: the dead-letter record (jobs apalis gave up on), and an operator's retry or
//! discard of one dead job (README, "Jobs").

use axum::Json;
use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, Problem};
use super::paging::{next_cursor, page_len};
use super::query::QueryParams;
use crate::domain::Scope;
use crate::queue::table::{self, DeadJob, DeadJobChange};
use crate::store::audit::{self, AuditAction};

pub const DEAD_JOBS_PAGE_LEN_DEFAULT: i64 = 50;
pub const DEAD_JOBS_PAGE_LEN_MAX: i64 = 500;
/// apalis job ids are ULIDs (26 characters); anything much longer is not one.
const JOB_ID_LEN_MAX: usize = 64;

/// Whether `s` could be a job id: ASCII letters and digits, 1 to [`JOB_ID_LEN_MAX`] of them.
/// apalis writes ULIDs; anything else (a NUL byte, which PostgreSQL's `text` refuses, or
/// other bytes no id has) is turned away here rather than sent to the database.
fn is_job_id_shaped(s: &str) -> bool {
    !s.is_empty() && s.len() <= JOB_ID_LEN_MAX && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadJobsQuery {
    after: Option<String>,
    limit: Option<i64>,
}

/// A page of dead jobs, by id.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeadJobsPage {
    jobs: Vec<DeadJob>,
    /// Pass as `after` for the next page; absent when this page is the last one so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_after: Option<String>,
}

/// Lists dead jobs: out of attempts, or killed.
#[utoipa::path(
    get,
    path = "/jobs/dead",
    tag = "jobs",
    operation_id = "listDeadJobs",
    description = "Scope: `admin`. Dead jobs are kept a week (`[reconcile.retention] \
        dead_secs`); reconciliation reports each as a `job_dead` finding.",
    params(
        ("after" = Option<String>, Query, max_length = 64,
            description = "`next_after` of the previous page."),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 500,
            description = "Jobs per page; default 50."),
    ),
    responses(
        (status = 200, description = "A page of dead jobs.", body = DeadJobsPage),
        (status = 400, description = "`invalid_body`: a bad `after` or `limit`.",
            body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = ["admin"])),
)]
pub async fn dead(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(query): QueryParams<DeadJobsQuery>,
) -> Result<Json<DeadJobsPage>, ApiError> {
    caller.require(Scope::Admin)?;
    let limit = page_len(
        query.limit,
        DEAD_JOBS_PAGE_LEN_DEFAULT,
        DEAD_JOBS_PAGE_LEN_MAX,
    )?;
    if query.after.as_deref().is_some_and(|a| !is_job_id_shaped(a)) {
        return Err(ApiError::InvalidBody(format!(
            "after must be a job id: 1 to {JOB_ID_LEN_MAX} ASCII letters and digits"
        )));
    }
    let jobs = state
        .db(async {
            let mut conn = state.pool.acquire().await?;
            let len = usize::try_from(limit).unwrap_or(usize::MAX);
            table::dead_jobs(&mut conn, query.after.as_deref(), len).await
        })
        .await?;
    let next_after = next_cursor(&jobs, limit, |j| j.id.clone());
    Ok(Json(DeadJobsPage { jobs, next_after }))
}

/// Puts a dead job back in its queue with its attempts reset.
#[utoipa::path(
    post,
    path = "/jobs/{id}/retry",
    tag = "jobs",
    operation_id = "retryDeadJob",
    description = "Scope: `admin`. The job runs again as if just enqueued; its work is \
        idempotent (a posting job skips transfers already posted or failed). Recorded as \
        `job.retried` in the audit trail. Retrying a job that is not dead (retried already, \
        running, done) is `409 job_not_dead`.",
    params(("id" = String, Path, description = "The job id.")),
    responses(
        (status = 200, description = "The job as it was while dead; now pending.",
            body = DeadJob),
        (status = 404, description = "`job_not_found`.", body = Problem,
            content_type = "application/problem+json"),
        (status = 409, description = "`job_not_dead`.", body = Problem,
            content_type = "application/problem+json"),
    ),
    security(("api_key" = ["admin"])),
)]
pub async fn retry(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<DeadJob>, ApiError> {
    change(state, caller, id, AuditAction::JobRetried).await
}

/// Deletes a dead job from the dead-letter record.
#[utoipa::path(
    post,
    path = "/jobs/{id}/discard",
    tag = "jobs",
    operation_id = "discardDeadJob",
    description = "Scope: `admin`. The job is deleted; a posting job's transfers still \
        pending stay pending, and reconciliation reports them (`stuck_pending`). Recorded as \
        `job.discarded` in the audit trail. Discarding a job that is gone is \
        `404 job_not_found`; one that is not dead, `409 job_not_dead`.",
    params(("id" = String, Path, description = "The job id.")),
    responses(
        (status = 200, description = "The job as it was, now deleted.", body = DeadJob),
        (status = 404, description = "`job_not_found`.", body = Problem,
            content_type = "application/problem+json"),
        (status = 409, description = "`job_not_dead`.", body = Problem,
            content_type = "application/problem+json"),
    ),
    security(("api_key" = ["admin"])),
)]
pub async fn discard(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<DeadJob>, ApiError> {
    change(state, caller, id, AuditAction::JobDiscarded).await
}

/// The change and its audit event commit together.
async fn change(
    state: AppState,
    caller: Caller,
    id: String,
    action: AuditAction,
) -> Result<Json<DeadJob>, ApiError> {
    let actor = caller.actor();
    caller.require(Scope::Admin)?;
    if !is_job_id_shaped(&id) {
        return Err(ApiError::JobNotFound);
    }
    let job = state
        .db(async {
            let mut tx = state.pool.begin().await?;
            let changed = match action {
                AuditAction::JobDiscarded => table::discard_dead(&mut tx, &id).await?,
                _ => table::retry_dead(&mut tx, &id).await?,
            };
            let job = match changed {
                DeadJobChange::Changed(job) => job,
                DeadJobChange::NotFound => return Err(ApiError::JobNotFound),
                DeadJobChange::NotDead => return Err(ApiError::JobNotDead(id.clone())),
            };
            let event = actor.event(
                action,
                None,
                audit::target::job(&job.id),
                serde_json::json!({"queue": job.queue, "status": job.status,
                    "attempts": job.attempts}),
            );
            audit::record(&mut *tx, &event).await?;
            tx.commit().await?;
            Ok::<_, ApiError>(job)
        })
        .await?;
    Ok(Json(job))
}
