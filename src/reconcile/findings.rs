//! Storing findings: one open finding per problem, resolved when the problem is gone.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use super::finding::Observation;

/// How a run changed the set of open findings.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FindingChanges {
    pub opened: Vec<ChangedFinding>,
    pub resolved: Vec<ChangedFinding>,
    pub open: usize,
}

/// A finding that opened or resolved in this run (what an alert needs to say).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangedFinding {
    pub id: Uuid,
    pub kind: String,
    pub subject: String,
    pub severity: String,
    pub detail: String,
}

fn changed(row: &sqlx::postgres::PgRow) -> Result<ChangedFinding, sqlx::Error> {
    Ok(ChangedFinding {
        id: row.try_get("id")?,
        kind: row.try_get("kind")?,
        subject: row.try_get("subject")?,
        severity: row.try_get("severity")?,
        detail: row.try_get("detail")?,
    })
}

/// The subjects of open findings, so windowed checks look at them again.
pub async fn open_transfer_subjects(conn: &mut PgConnection) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT DISTINCT transfer_id FROM reconciliation_findings \
         WHERE resolved_at IS NULL AND transfer_id IS NOT NULL",
    )
    .fetch_all(conn)
    .await
}

/// Records what `run_id` observed: new problems open a finding, known ones are marked seen,
/// and open findings not observed again are resolved.
pub async fn record(
    conn: &mut PgConnection,
    run_id: Uuid,
    observed: &[Observation],
) -> Result<FindingChanges, sqlx::Error> {
    let kinds: Vec<&str> = observed.iter().map(|o| o.kind.as_str()).collect();
    let severities: Vec<&str> = observed
        .iter()
        .map(|o| o.kind.severity().as_str())
        .collect();
    let subjects: Vec<&str> = observed.iter().map(|o| o.subject.as_str()).collect();
    let transfers: Vec<Option<Uuid>> = observed.iter().map(|o| o.transfer_id).collect();
    let accounts: Vec<Option<&str>> = observed.iter().map(|o| o.account_id.as_deref()).collect();
    let details: Vec<&str> = observed.iter().map(|o| o.detail.as_str()).collect();
    let ids: Vec<Uuid> = observed.iter().map(|_| Uuid::now_v7()).collect();
    let rows = sqlx::query(
        "INSERT INTO reconciliation_findings (id, kind, severity, subject, transfer_id, \
           account_id, detail, first_seen_run, last_seen_run) \
         SELECT u.id, u.kind, u.severity, u.subject, u.transfer_id, u.account_id, u.detail, $8, $8 \
         FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::uuid[], $6::text[], \
           $7::text[]) AS u(id, kind, severity, subject, transfer_id, account_id, detail) \
         ON CONFLICT (kind, subject) WHERE resolved_at IS NULL DO UPDATE \
           SET last_seen_run = EXCLUDED.last_seen_run, last_seen_at = now(), \
               detail = EXCLUDED.detail \
         RETURNING id, kind, subject, severity, detail, (xmax = 0) AS inserted",
    )
    .bind(&ids)
    .bind(&kinds)
    .bind(&severities)
    .bind(&subjects)
    .bind(&transfers)
    .bind(&accounts)
    .bind(&details)
    .bind(run_id)
    .fetch_all(&mut *conn)
    .await?;
    let mut changes = FindingChanges {
        open: rows.len(),
        ..FindingChanges::default()
    };
    let mut seen = Vec::with_capacity(rows.len());
    for row in rows {
        let id: Uuid = row.try_get("id")?;
        if row.try_get::<bool, _>("inserted")? {
            changes.opened.push(changed(&row)?);
        }
        seen.push(id);
    }
    sqlx::query(
        "INSERT INTO reconciliation_run_findings (run_id, finding_id) \
         SELECT $1, unnest($2::uuid[]) ON CONFLICT DO NOTHING",
    )
    .bind(run_id)
    .bind(&seen)
    .execute(&mut *conn)
    .await?;
    let resolved = sqlx::query(
        "UPDATE reconciliation_findings SET resolved_at = now(), resolved_run = $1 \
         WHERE resolved_at IS NULL AND NOT (id = ANY($2)) \
         RETURNING id, kind, subject, severity, detail",
    )
    .bind(run_id)
    .bind(&seen)
    .fetch_all(&mut *conn)
    .await?;
    changes.resolved = resolved.iter().map(changed).collect::<Result<_, _>>()?;
    Ok(changes)
}

/// A finding as the API and the CLI report show it.
#[derive(Debug, Clone, Serialize)]
pub struct FindingView {
    pub id: Uuid,
    pub kind: String,
    pub severity: String,
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

const FINDING_COLUMNS: &str = "f.id, f.kind, f.severity, f.subject, f.transfer_id, \
    f.account_id, f.detail, f.first_seen_at, f.last_seen_at, f.resolved_at";

/// Findings `run_id` observed (open or since resolved), most severe first.
pub async fn seen_by_run(pool: &PgPool, run_id: Uuid) -> Result<Vec<FindingView>, sqlx::Error> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {FINDING_COLUMNS} FROM reconciliation_findings f \
         JOIN reconciliation_run_findings r ON r.finding_id = f.id \
         WHERE r.run_id = $1 \
         ORDER BY f.severity = 'critical' DESC, f.kind, f.subject"
    )))
    .bind(run_id)
    .fetch_all(pool)
    .await?;
    rows.iter().map(finding_view).collect()
}

/// Findings `run_id` resolved.
pub async fn resolved_by_run(pool: &PgPool, run_id: Uuid) -> Result<Vec<FindingView>, sqlx::Error> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {FINDING_COLUMNS} FROM reconciliation_findings f \
         WHERE f.resolved_run = $1 ORDER BY f.kind, f.subject"
    )))
    .bind(run_id)
    .fetch_all(pool)
    .await?;
    rows.iter().map(finding_view).collect()
}

fn finding_view(row: &sqlx::postgres::PgRow) -> Result<FindingView, sqlx::Error> {
    Ok(FindingView {
        id: row.try_get("id")?,
        kind: row.try_get("kind")?,
        severity: row.try_get("severity")?,
        subject: row.try_get("subject")?,
        transfer_id: row.try_get("transfer_id")?,
        account_id: row.try_get("account_id")?,
        detail: row.try_get("detail")?,
        first_seen_at: row.try_get("first_seen_at")?,
        last_seen_at: row.try_get("last_seen_at")?,
        resolved_at: row.try_get("resolved_at")?,
    })
}
