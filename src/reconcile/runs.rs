//! Reconciliation runs: created by the scheduler, the API or the CLI; one per scheduled window.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use super::window::Window;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Schedule,
    Api,
    Cli,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Schedule => "schedule",
            Self::Api => "api",
            Self::Cli => "cli",
        }
    }
}

/// A run as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = ReconciliationRun)]
pub struct RunView {
    pub id: Uuid,
    /// `schedule`, `api` or `cli`.
    #[schema(pattern = "^(schedule|api|cli)$")]
    pub trigger: String,
    /// `running`, `completed` or `failed`.
    #[schema(pattern = "^(running|completed|failed)$")]
    pub status: String,
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    pub full_scan: bool,
    pub transfers_checked: i64,
    pub accounts_checked: i64,
    pub findings_open: i32,
    pub findings_opened: i32,
    pub findings_resolved: i32,
    pub transfers_redriven: i32,
    pub jobs_purged: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

const RUN_COLUMNS: &str = "id, trigger, status, window_start, window_end, full_scan, \
    transfers_checked, accounts_checked, findings_open, findings_opened, findings_resolved, \
    transfers_redriven, jobs_purged, error, created_at, started_at, finished_at";

/// Creates a run. A scheduled run whose window already has one is not created (`None`): every
/// replica's scheduler fires, and the first insert wins.
pub async fn create(
    conn: &mut PgConnection,
    trigger: Trigger,
    window: Window,
    full_scan: bool,
) -> Result<Option<RunView>, sqlx::Error> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO reconciliation_runs (id, trigger, window_start, window_end, full_scan) \
         VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (window_start) WHERE trigger = 'schedule' DO NOTHING \
         RETURNING {RUN_COLUMNS}"
    )))
    .bind(Uuid::now_v7())
    .bind(trigger.as_str())
    .bind(window.start)
    .bind(window.end)
    .bind(full_scan)
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(run_view).transpose()
}

pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<RunView>, sqlx::Error> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {RUN_COLUMNS} FROM reconciliation_runs WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await?;
    row.as_ref().map(run_view).transpose()
}

/// Newest first, `before` (a run id) for the next page.
pub async fn list(
    pool: &PgPool,
    limit: i64,
    before: Option<Uuid>,
) -> Result<Vec<RunView>, sqlx::Error> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {RUN_COLUMNS} FROM reconciliation_runs \
         WHERE $2::uuid IS NULL OR id < $2 ORDER BY id DESC LIMIT $1"
    )))
    .bind(limit)
    .bind(before)
    .fetch_all(pool)
    .await?;
    rows.iter().map(run_view).collect()
}

fn run_view(row: &PgRow) -> Result<RunView, sqlx::Error> {
    Ok(RunView {
        id: row.try_get("id")?,
        trigger: row.try_get("trigger")?,
        status: row.try_get("status")?,
        window_start: row.try_get("window_start")?,
        window_end: row.try_get("window_end")?,
        full_scan: row.try_get("full_scan")?,
        transfers_checked: row.try_get("transfers_checked")?,
        accounts_checked: row.try_get("accounts_checked")?,
        findings_open: row.try_get("findings_open")?,
        findings_opened: row.try_get("findings_opened")?,
        findings_resolved: row.try_get("findings_resolved")?,
        transfers_redriven: row.try_get("transfers_redriven")?,
        jobs_purged: row.try_get("jobs_purged")?,
        error: row.try_get("error")?,
        created_at: row.try_get("created_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
    })
}
