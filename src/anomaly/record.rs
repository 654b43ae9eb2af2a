//! `anomalies` rows: the hits the rules record, and the listing `GET /v1/anomalies` reads
//! (README, "Anomaly detection").

use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::HashSet;

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::rules::{AnomalySeverity, Hit, Rule, RuleAction};
use crate::domain::{AccountId, EventType, LedgerName};
use crate::events::{NewEvent, subject};

/// A hit as stored, and whether it opens an incident (see [`store`]).
#[derive(Debug, Clone)]
pub struct Stored {
    /// The `anomalies` row's id.
    pub id: i64,
    pub hit: Hit,
    pub opens_incident: bool,
}

/// Stores `hits` (in `tx`); a hit already stored (the same transfer and rule) is not stored
/// twice. Of those stored now, the first of each (rule, ledger, account) opens an incident
/// unless an earlier hit of the same kind on the account is younger than the rule's incident
/// window (`incident_secs`): a burst of fifty transfers is one incident, not fifty.
pub async fn store(
    tx: &mut PgConnection,
    hits: &[Hit],
    incident_secs: impl Fn(&Hit) -> u64,
) -> Result<Vec<Stored>, sqlx::Error> {
    if hits.is_empty() {
        return Ok(Vec::new());
    }
    let transfer_ids: Vec<Uuid> = hits.iter().map(|h| h.transfer_id).collect();
    let ledgers: Vec<&str> = hits.iter().map(|h| h.account.ledger.as_str()).collect();
    let accounts: Vec<&str> = hits.iter().map(|h| h.account.id.as_str()).collect();
    let rules: Vec<&str> = hits.iter().map(|h| h.rule.as_str()).collect();
    let severities: Vec<&str> = hits.iter().map(|h| h.rule.severity().as_str()).collect();
    let actions: Vec<&str> = hits.iter().map(|h| h.action.as_str()).collect();
    let details: Vec<serde_json::Value> = hits.iter().map(|h| h.detail.clone()).collect();
    let windows: Vec<f64> = hits.iter().map(|h| incident_secs(h) as f64).collect();
    // The outer query reads the table as it was before this statement: earlier hits only.
    // Rows come back as (index into `hits`, no earlier hit within the window).
    let rows: Vec<(i64, bool, i64)> = sqlx::query_as(
        "WITH input AS ( \
           SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], \
             $6::jsonb[], $7::float8[], $8::text[]) WITH ORDINALITY \
             AS i(transfer_id, ledger, account_id, rule, severity, detail, window_secs, action, \
               n)), \
         stored AS ( \
           INSERT INTO anomalies (transfer_id, ledger, account_id, rule, severity, detail, action) \
           SELECT transfer_id, ledger, account_id, rule, severity, detail, action FROM input \
           ON CONFLICT (transfer_id, rule) DO NOTHING \
           RETURNING id, transfer_id, ledger, account_id, rule, at) \
         SELECT i.n - 1, NOT EXISTS ( \
             SELECT 1 FROM anomalies a \
             WHERE a.ledger = s.ledger AND a.account_id = s.account_id AND a.rule = s.rule \
               AND a.at > s.at - make_interval(secs => i.window_secs)) AS quiet_before, s.id \
         FROM stored s JOIN input i ON i.transfer_id = s.transfer_id AND i.rule = s.rule \
         ORDER BY s.id",
    )
    .bind(&transfer_ids)
    .bind(&ledgers)
    .bind(&accounts)
    .bind(&rules)
    .bind(&severities)
    .bind(&details)
    .bind(&windows)
    .bind(&actions)
    .fetch_all(&mut *tx)
    .await?;
    let mut opened = HashSet::new();
    Ok(rows
        .into_iter()
        .filter_map(|(index, quiet_before, id)| {
            let hit = hits.get(usize::try_from(index).ok()?)?.clone();
            let first_now = opened.insert((hit.rule, hit.account.clone()));
            Some(Stored {
                id,
                opens_incident: quiet_before && first_now,
                hit,
            })
        })
        .collect())
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
    /// `review`: the hit held its transfer for review; `flag`: the transfer proceeded.
    #[sqlx(try_from = "String")]
    pub action: RuleAction,
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

const ANOMALY_COLUMNS: &str =
    "id, rule, severity, action, ledger, account_id, transfer_id, detail, at";

/// Writes, in the caller's transaction, an `anomaly.flagged` event for each of the hits `ids`
/// just stored, carrying the hit as `GET /v1/anomalies` shows it. The caller took the event
/// lock before storing them (README, "Events and webhooks").
pub async fn record_events(tx: &mut PgConnection, ids: &[i64]) -> Result<usize, sqlx::Error> {
    if ids.is_empty() {
        return Ok(0);
    }
    let views: Vec<AnomalyView> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ANOMALY_COLUMNS} FROM anomalies WHERE id = ANY($1) ORDER BY id"
    )))
    .bind(ids)
    .fetch_all(&mut *tx)
    .await?;
    let events = views
        .iter()
        .map(|view| {
            Ok(NewEvent {
                ledger: view.ledger.clone(),
                event_type: EventType::AnomalyFlagged,
                subject: subject::anomaly(view.id),
                payload: serde_json::to_string(view)?,
            })
        })
        .collect::<Result<Vec<_>, serde_json::Error>>()
        .map_err(|e| sqlx::Error::Encode(e.into()))?;
    crate::events::append(tx, &events).await
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
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ANOMALY_COLUMNS} FROM anomalies \
         WHERE ledger = $1 AND ($2::text IS NULL OR account_id = $2) \
           AND ($3::text IS NULL OR rule = $3) AND id > $4 \
         ORDER BY id LIMIT $5"
    )))
    .bind(filter.ledger.as_str())
    .bind(filter.account.map(AccountId::as_str))
    .bind(filter.rule.map(Rule::as_str))
    .bind(filter.after.unwrap_or(0))
    .bind(limit)
    .fetch_all(pool)
    .await
}
