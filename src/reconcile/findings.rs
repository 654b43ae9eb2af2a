//! Storing findings: one open finding per problem, resolved when the problem is gone.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::checks::PAGE_ROWS;
use super::finding::{FindingKind, Observation, Severity};
use crate::domain::LedgerName;

/// How a run changed the set of open findings: counts only, so a run with a million
/// findings does not hold a million rows (alerts are raised page by page as they change).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FindingChanges {
    pub opened: usize,
    pub resolved: usize,
    pub open: usize,
}

/// A finding that opened or resolved in this run (what an alert needs to say). Read back
/// strictly: an unknown stored kind or severity is an error.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ChangedFinding {
    pub id: Uuid,
    #[sqlx(try_from = "String")]
    pub kind: FindingKind,
    /// `None` only for findings about no one ledger (`job_dead`).
    pub ledger: Option<String>,
    pub subject: String,
    #[sqlx(try_from = "String")]
    pub severity: Severity,
    pub detail: String,
}

/// A row of [`record_page`]: the finding, and whether this page opened it.
#[derive(sqlx::FromRow)]
struct RecordedRow {
    inserted: bool,
    #[sqlx(flatten)]
    finding: ChangedFinding,
}

fn kind_names(kinds: &[FindingKind]) -> Vec<&'static str> {
    kinds.iter().map(|k| k.as_str()).collect()
}

/// The ledger a run covers as a bind parameter: NULL for every ledger.
fn ledger_param(ledger: Option<&LedgerName>) -> Option<&str> {
    ledger.map(LedgerName::as_str)
}

/// The transfers named by open findings of `kinds` in `ledger` (every ledger when `None`), so
/// the windowed checks producing those kinds look at them again whatever window the run has.
/// Only those kinds: a windowed check needs its own open subjects, and `stuck_pending`
/// findings, which can number millions when posting is down, would only make this list
/// unbounded.
pub async fn open_transfer_subjects(
    conn: &mut PgConnection,
    kinds: &[FindingKind],
    ledger: Option<&LedgerName>,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT DISTINCT transfer_id FROM reconciliation_findings \
         WHERE resolved_at IS NULL AND transfer_id IS NOT NULL AND kind = ANY($1) \
           AND ($2::text IS NULL OR ledger = $2)",
    )
    .bind(kind_names(kinds))
    .bind(ledger_param(ledger))
    .fetch_all(conn)
    .await
}

/// Records one page of what `run_id` observed (each (kind, ledger, subject) at most once per page):
/// new problems open a finding, known ones are marked seen by this run. Returns the findings
/// this page opened. Nothing is resolved here: see [`resolve_unseen`].
pub async fn record_page(
    conn: &mut PgConnection,
    run_id: Uuid,
    observed: &[Observation],
) -> Result<Vec<ChangedFinding>, sqlx::Error> {
    if observed.is_empty() {
        return Ok(Vec::new());
    }
    let kinds: Vec<&str> = observed.iter().map(|o| o.kind.as_str()).collect();
    let ledgers: Vec<Option<&str>> = observed
        .iter()
        .map(|o| o.ledger.as_ref().map(LedgerName::as_str))
        .collect();
    let severities: Vec<&str> = observed
        .iter()
        .map(|o| o.kind.severity().as_str())
        .collect();
    let subjects: Vec<&str> = observed.iter().map(|o| o.subject.as_str()).collect();
    let transfers: Vec<Option<Uuid>> = observed.iter().map(|o| o.transfer_id).collect();
    let accounts: Vec<Option<&str>> = observed.iter().map(|o| o.account_id.as_deref()).collect();
    let details: Vec<&str> = observed.iter().map(|o| o.detail.as_str()).collect();
    let ids: Vec<Uuid> = observed.iter().map(|_| Uuid::now_v7()).collect();
    let rows = sqlx::query_as::<_, RecordedRow>(
        "INSERT INTO reconciliation_findings (id, kind, severity, subject, transfer_id, \
           account_id, detail, ledger, first_seen_run, last_seen_run) \
         SELECT u.id, u.kind, u.severity, u.subject, u.transfer_id, u.account_id, u.detail, \
           u.ledger, $9, $9 \
         FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::uuid[], $6::text[], \
           $7::text[], $8::text[]) \
           AS u(id, kind, severity, subject, transfer_id, account_id, detail, ledger) \
         ON CONFLICT (kind, ledger, subject) WHERE resolved_at IS NULL DO UPDATE \
           SET last_seen_run = EXCLUDED.last_seen_run, last_seen_at = now(), \
               detail = EXCLUDED.detail \
         RETURNING id, kind, ledger, subject, severity, detail, (xmax = 0) AS inserted",
    )
    .bind(&ids)
    .bind(&kinds)
    .bind(&severities)
    .bind(&subjects)
    .bind(&transfers)
    .bind(&accounts)
    .bind(&details)
    .bind(&ledgers)
    .bind(run_id)
    .fetch_all(&mut *conn)
    .await?;
    let mut opened = Vec::new();
    let mut seen = Vec::with_capacity(rows.len());
    for row in rows {
        seen.push(row.finding.id);
        if row.inserted {
            opened.push(row.finding);
        }
    }
    sqlx::query(
        "INSERT INTO reconciliation_run_findings (run_id, finding_id) \
         SELECT $1, unnest($2::uuid[]) ON CONFLICT DO NOTHING",
    )
    .bind(run_id)
    .bind(&seen)
    .execute(&mut *conn)
    .await?;
    Ok(opened)
}

/// Resolves up to [`PAGE_ROWS`] open findings of `checked` kinds in `ledger` (every ledger
/// when `None`) that `run_id` did not see; call it until it returns fewer. A finding is
/// resolved only when it was checked and is gone: `checked` must name only kinds whose check
/// ran to completion in this run and covered every open finding of that kind in `ledger` (the
/// windowed checks re-check the subjects of open findings, see [`open_transfer_subjects`]).
/// Findings of any other kind, and of any other ledger, stay open, whatever this run saw.
pub async fn resolve_unseen(
    conn: &mut PgConnection,
    run_id: Uuid,
    checked: &[FindingKind],
    ledger: Option<&LedgerName>,
) -> Result<Vec<ChangedFinding>, sqlx::Error> {
    sqlx::query_as::<_, ChangedFinding>(
        "UPDATE reconciliation_findings SET resolved_at = now(), resolved_run = $1 \
         WHERE id IN ( \
           SELECT id FROM reconciliation_findings \
           WHERE resolved_at IS NULL AND kind = ANY($2) AND last_seen_run <> $1 \
             AND ($4::text IS NULL OR ledger = $4) \
           LIMIT $3) \
         RETURNING id, kind, ledger, subject, severity, detail",
    )
    .bind(run_id)
    .bind(kind_names(checked))
    .bind(PAGE_ROWS as i64)
    .bind(ledger_param(ledger))
    .fetch_all(&mut *conn)
    .await
}

/// Open findings per (kind, ledger) as run `run_id` left them: the ones it saw, plus a zero for
/// each (kind, ledger) whose finding it resolved, so a gauge falls to zero instead of keeping
/// its last value. `None`: findings of no one ledger.
pub async fn open_by_ledger(
    conn: &mut PgConnection,
    run_id: Uuid,
) -> Result<Vec<(FindingKind, Option<String>, usize)>, sqlx::Error> {
    let rows: Vec<(String, Option<String>, i64)> = sqlx::query_as(
        "SELECT kind, ledger, sum(open)::bigint FROM ( \
           SELECT f.kind, f.ledger, 1 AS open FROM reconciliation_run_findings r \
           JOIN reconciliation_findings f ON f.id = r.finding_id WHERE r.run_id = $1 \
           UNION ALL \
           SELECT kind, ledger, 0 FROM reconciliation_findings WHERE resolved_run = $1) u \
         GROUP BY kind, ledger ORDER BY kind, ledger",
    )
    .bind(run_id)
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|(kind, ledger, open)| {
            let kind =
                FindingKind::parse_known(&kind).map_err(|e| sqlx::Error::Decode(e.into()))?;
            Ok((kind, ledger, usize::try_from(open).unwrap_or(usize::MAX)))
        })
        .collect()
}

/// How many findings the run saw per kind (every kind, zeros included), from
/// [`open_by_ledger`]'s rows.
pub fn per_kind(
    open_by_ledger: &[(FindingKind, Option<String>, usize)],
) -> Vec<(FindingKind, usize)> {
    FindingKind::ALL
        .into_iter()
        .map(|kind| {
            let open = open_by_ledger
                .iter()
                .filter(|(k, ..)| *k == kind)
                .map(|(.., open)| open)
                .sum();
            (kind, open)
        })
        .collect()
}

/// A finding as the API and the CLI report show it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = Finding)]
pub struct FindingView {
    pub id: Uuid,
    pub kind: String,
    /// `info`, `medium` or `critical`.
    #[schema(pattern = "^(info|medium|critical)$")]
    pub severity: String,
    /// The ledger the finding is about; absent only for findings about no one ledger
    /// (`job_dead`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[a-z0-9_-]{1,64}$")]
    pub ledger: Option<String>,
    pub subject: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transfer_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    pub detail: String,
    pub first_seen_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
}

const FINDING_COLUMNS: &str = "f.id, f.kind, f.severity, f.ledger, f.subject, f.transfer_id, \
    f.account_id, f.detail, f.first_seen_at, f.last_seen_at, f.resolved_at";

/// Up to `limit` open findings of every ledger, most severe and newest first.
pub async fn open(pool: &PgPool, limit: i64) -> Result<Vec<FindingView>, sqlx::Error> {
    let rows = sqlx::query_as::<_, FindingRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {FINDING_COLUMNS} FROM reconciliation_findings f WHERE f.resolved_run IS NULL \
         ORDER BY f.severity = 'critical' DESC, f.last_seen_at DESC LIMIT $1"
    )))
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(FindingView::from).collect())
}

/// Findings `run_id` observed (open or since resolved), most severe first.
pub async fn seen_by_run(pool: &PgPool, run_id: Uuid) -> Result<Vec<FindingView>, sqlx::Error> {
    let rows = sqlx::query_as::<_, FindingRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {FINDING_COLUMNS} FROM reconciliation_findings f \
         JOIN reconciliation_run_findings r ON r.finding_id = f.id \
         WHERE r.run_id = $1 \
         ORDER BY f.severity = 'critical' DESC, f.kind, f.ledger, f.subject"
    )))
    .bind(run_id)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(FindingView::from).collect())
}

/// Findings `run_id` resolved.
pub async fn resolved_by_run(pool: &PgPool, run_id: Uuid) -> Result<Vec<FindingView>, sqlx::Error> {
    let rows = sqlx::query_as::<_, FindingRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {FINDING_COLUMNS} FROM reconciliation_findings f \
         WHERE f.resolved_run = $1 ORDER BY f.kind, f.ledger, f.subject"
    )))
    .bind(run_id)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(FindingView::from).collect())
}

/// A `reconciliation_findings` row with the columns of `FINDING_COLUMNS`; kind and severity
/// read back strictly (ARCHITECTURE.md, `src/reconcile/`).
#[derive(sqlx::FromRow)]
struct FindingRow {
    id: Uuid,
    #[sqlx(try_from = "String")]
    kind: FindingKind,
    #[sqlx(try_from = "String")]
    severity: Severity,
    ledger: Option<String>,
    subject: String,
    transfer_id: Option<Uuid>,
    account_id: Option<String>,
    detail: String,
    first_seen_at: DateTime<Utc>,
    last_seen_at: DateTime<Utc>,
    resolved_at: Option<DateTime<Utc>>,
}

impl From<FindingRow> for FindingView {
    fn from(row: FindingRow) -> Self {
        Self {
            id: row.id,
            kind: row.kind.as_str().to_owned(),
            severity: row.severity.as_str().to_owned(),
            ledger: row.ledger,
            subject: row.subject,
            transfer_id: row.transfer_id,
            account_id: row.account_id,
            detail: row.detail,
            first_seen_at: row.first_seen_at,
            last_seen_at: row.last_seen_at,
            resolved_at: row.resolved_at,
        }
    }
}
