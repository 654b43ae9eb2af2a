//! Reconciliation runs: created by the scheduler, the API or the CLI; one per scheduled window.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::window::Window;
use crate::domain::{LedgerName, stored_as_text};

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

stored_as_text!(
    Trigger,
    "run trigger",
    [Trigger::Schedule, Trigger::Api, Trigger::Cli]
);

/// Where a run is: `running` until it ends `completed` or `failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    Running,
    Completed,
    Failed,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
        }
    }
}

stored_as_text!(
    RunStatus,
    "run status",
    [RunStatus::Running, RunStatus::Completed, RunStatus::Failed]
);

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
    /// The one ledger the run checks; `null`: every ledger (scheduled runs always are).
    #[schema(pattern = "^[a-z0-9_-]{1,64}$")]
    pub ledger: Option<String>,
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

const RUN_COLUMNS: &str = "id, trigger, status, ledger, window_start, window_end, full_scan, \
    transfers_checked, accounts_checked, findings_open, findings_opened, findings_resolved, \
    transfers_redriven, jobs_purged, error, created_at, started_at, finished_at";

#[derive(Debug, thiserror::Error)]
pub enum CreateRunError {
    #[error("ledger {0} does not exist")]
    UnknownLedger(LedgerName),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Creates a run over `ledger` (every ledger when `None`). A scheduled run whose window
/// already has one is not created (`None`): every replica's scheduler fires, and the first
/// insert wins. A ledger that does not exist is an error, and nothing is stored (ledgers are
/// never deleted, so the check cannot go stale before the insert).
pub async fn create(
    conn: &mut PgConnection,
    trigger: Trigger,
    window: Window,
    full_scan: bool,
    ledger: Option<&LedgerName>,
) -> Result<Option<RunView>, CreateRunError> {
    if let Some(ledger) = ledger {
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM ledgers WHERE name = $1)")
                .bind(ledger.as_str())
                .fetch_one(&mut *conn)
                .await?;
        if !exists {
            return Err(CreateRunError::UnknownLedger(ledger.clone()));
        }
    }
    let row = sqlx::query_as::<_, RunRow>(sqlx::AssertSqlSafe(format!(
        "INSERT INTO reconciliation_runs (id, trigger, window_start, window_end, full_scan, \
           ledger) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (window_start) WHERE trigger = 'schedule' DO NOTHING \
         RETURNING {RUN_COLUMNS}"
    )))
    .bind(Uuid::now_v7())
    .bind(trigger.as_str())
    .bind(window.start)
    .bind(window.end)
    .bind(full_scan)
    .bind(ledger.map(LedgerName::as_str))
    .fetch_optional(conn)
    .await?;
    Ok(row.map(RunView::from))
}

/// The ledger run `run_id` checks; `None`: every ledger (or no such run).
pub async fn ledger_of(
    conn: &mut PgConnection,
    run_id: Uuid,
) -> Result<Option<LedgerName>, sqlx::Error> {
    let ledger: Option<Option<String>> =
        sqlx::query_scalar("SELECT ledger FROM reconciliation_runs WHERE id = $1")
            .bind(run_id)
            .fetch_optional(conn)
            .await?;
    Ok(ledger.flatten().map(LedgerName::from_trusted))
}

pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<RunView>, sqlx::Error> {
    let row = sqlx::query_as::<_, RunRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {RUN_COLUMNS} FROM reconciliation_runs WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(RunView::from))
}

/// Newest first, `before` (a run id) for the next page.
pub async fn list(
    pool: &PgPool,
    limit: i64,
    before: Option<Uuid>,
) -> Result<Vec<RunView>, sqlx::Error> {
    let rows = sqlx::query_as::<_, RunRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {RUN_COLUMNS} FROM reconciliation_runs \
         WHERE $2::uuid IS NULL OR id < $2 ORDER BY id DESC LIMIT $1"
    )))
    .bind(limit)
    .bind(before)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(RunView::from).collect())
}

/// A `reconciliation_runs` row with the columns of `RUN_COLUMNS`; trigger and status read
/// back strictly (ARCHITECTURE.md, `src/reconcile/`).
#[derive(sqlx::FromRow)]
struct RunRow {
    id: Uuid,
    #[sqlx(try_from = "String")]
    trigger: Trigger,
    #[sqlx(try_from = "String")]
    status: RunStatus,
    ledger: Option<String>,
    window_start: DateTime<Utc>,
    window_end: DateTime<Utc>,
    full_scan: bool,
    transfers_checked: i64,
    accounts_checked: i64,
    findings_open: i32,
    findings_opened: i32,
    findings_resolved: i32,
    transfers_redriven: i32,
    jobs_purged: i64,
    error: Option<String>,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
}

impl From<RunRow> for RunView {
    fn from(row: RunRow) -> Self {
        Self {
            id: row.id,
            trigger: row.trigger.as_str().to_owned(),
            status: row.status.as_str().to_owned(),
            ledger: row.ledger,
            window_start: row.window_start,
            window_end: row.window_end,
            full_scan: row.full_scan,
            transfers_checked: row.transfers_checked,
            accounts_checked: row.accounts_checked,
            findings_open: row.findings_open,
            findings_opened: row.findings_opened,
            findings_resolved: row.findings_resolved,
            transfers_redriven: row.transfers_redriven,
            jobs_purged: row.jobs_purged,
            error: row.error,
            created_at: row.created_at,
            started_at: row.started_at,
            finished_at: row.finished_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_stored_trigger_or_status_is_an_error_not_a_default() {
        for trigger in [Trigger::Schedule, Trigger::Api, Trigger::Cli] {
            assert_eq!(Trigger::try_from(trigger.as_str().to_owned()), Ok(trigger));
        }
        for status in [RunStatus::Running, RunStatus::Completed, RunStatus::Failed] {
            assert_eq!(RunStatus::try_from(status.as_str().to_owned()), Ok(status));
        }
        assert_eq!(
            Trigger::try_from("cron".to_owned()).map_err(|e| e.to_string()),
            Err("unknown run trigger \"cron\"".to_owned())
        );
        assert!(RunStatus::try_from("paused".to_owned()).is_err());
    }
}
