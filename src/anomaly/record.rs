//! `anomalies` rows: the hits the rules record, and the listing `GET /v1/anomalies` reads
//! (README, "Anomaly detection").

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::rules::{AnomalySeverity, Hit, Rule};
use crate::domain::{AccountId, LedgerName};

/// Stores `hits`; a hit already stored (the same transfer and rule, from a redelivered job) is
/// not stored twice. Returns the rules of the hits stored now.
pub async fn insert(pool: &PgPool, hits: &[Hit]) -> Result<Vec<Rule>, sqlx::Error> {
    if hits.is_empty() {
        return Ok(Vec::new());
    }
    let transfer_ids: Vec<Uuid> = hits.iter().map(|h| h.transfer_id).collect();
    let ledgers: Vec<&str> = hits.iter().map(|h| h.account.ledger.as_str()).collect();
    let accounts: Vec<&str> = hits.iter().map(|h| h.account.id.as_str()).collect();
    let rules: Vec<&str> = hits.iter().map(|h| h.rule.as_str()).collect();
    let severities: Vec<&str> = hits.iter().map(|h| h.rule.severity().as_str()).collect();
    let details: Vec<serde_json::Value> = hits.iter().map(|h| h.detail.clone()).collect();
    let stored: Vec<(String,)> = sqlx::query_as(
        "INSERT INTO anomalies (transfer_id, ledger, account_id, rule, severity, detail) \
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], \
           $6::jsonb[]) \
         ON CONFLICT (transfer_id, rule) DO NOTHING RETURNING rule",
    )
    .bind(&transfer_ids)
    .bind(&ledgers)
    .bind(&accounts)
    .bind(&rules)
    .bind(&severities)
    .bind(&details)
    .fetch_all(pool)
    .await?;
    stored
        .into_iter()
        .map(|(rule,)| Rule::parse_known(&rule).map_err(|e| sqlx::Error::Decode(e.into())))
        .collect()
}

/// One hit as the API shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[schema(as = Anomaly)]
pub struct AnomalyView {
    /// Increasing; the listing's cursor.
    pub id: i64,
    #[sqlx(try_from = "String")]
    pub rule: Rule,
    #[sqlx(try_from = "String")]
    pub severity: AnomalySeverity,
    pub ledger: String,
    /// The source account of the transfer.
    pub account_id: String,
    pub transfer_id: Uuid,
    /// The numbers that tripped the rule, e.g. `{"transfers": 5, "threshold": 5,
    /// "window_secs": 60}`.
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
    pub at: DateTime<Utc>,
}

/// Which hits to list: one ledger's, optionally of one account and one rule, after an id.
pub struct AnomalyFilter<'a> {
    pub ledger: &'a LedgerName,
    pub account: Option<&'a AccountId>,
    pub rule: Option<Rule>,
    pub after: Option<i64>,
}

/// A page of hits, oldest first.
pub async fn list(
    pool: &PgPool,
    filter: &AnomalyFilter<'_>,
    limit: i64,
) -> Result<Vec<AnomalyView>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, rule, severity, ledger, account_id, transfer_id, detail, at FROM anomalies \
         WHERE ledger = $1 AND ($2::text IS NULL OR account_id = $2) \
           AND ($3::text IS NULL OR rule = $3) AND id > $4 \
         ORDER BY id LIMIT $5",
    )
    .bind(filter.ledger.as_str())
    .bind(filter.account.map(AccountId::as_str))
    .bind(filter.rule.map(Rule::as_str))
    .bind(filter.after.unwrap_or(0))
    .bind(limit)
    .fetch_all(pool)
    .await
}
