//! What only the console reads: searches across ledgers and keys, a transfer's timeline, and
//! health figures per webhook endpoint and alert sink. Each query runs on an index or on a
//! table kept small, and is bounded by a row limit; the API's own reads are reused where they
//! exist.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::{LedgerName, TransferStatus};
use crate::events::first_id_at;
use crate::events::transfer::{TRANSFER_COLUMNS, TransferRow, TransferView};
use crate::store::transfers::with_flags;

/// Rows a console list shows.
pub const LIST_ROWS: i64 = 50;
/// How far back a search by account looks for failed and voided transfers (they have no
/// entries to find them by, and `from_account` has no index: intake pays for every index).
pub const SEARCH_RECENT_SECS: i64 = 3_600;

/// A transfer search; every field optional, combined with AND.
#[derive(Debug, Default)]
pub struct TransferSearch {
    pub id: Option<Uuid>,
    pub idempotency_key: Option<String>,
    pub ledger: Option<LedgerName>,
    pub account: Option<String>,
    pub status: Option<TransferStatus>,
}

/// Up to [`LIST_ROWS`] transfers, the most recently changed first. Each search runs under
/// a statement timeout of `timeout_ms`, so a search the indexes cannot serve is cut off on
/// the server, not left running after the page gave up.
///
/// By id: the primary key. By idempotency key: the `(api_key_id, idempotency_key)` unique
/// index, probed once per API key (keys are few). By account: the account's entries (posted
/// transfers, on `entries_by_account_time`), its open transfers (pending, in review, held: the
/// partial indexes) and its failed or voided ones among those changed in the last
/// [`SEARCH_RECENT_SECS`]. By status or ledger alone: the transfers changed last
/// (`transfers_by_updated_at`, read backwards), within the last day.
pub async fn search_transfers(
    pool: &PgPool,
    search: &TransferSearch,
    timeout_ms: u64,
) -> Result<Vec<TransferView>, sqlx::Error> {
    let status = search.status.map(|s| s.as_str());
    let ledger = search.ledger.as_ref().map(LedgerName::as_str);
    let mut tx = pool.begin().await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SET LOCAL statement_timeout = {timeout_ms}"
    )))
    .execute(&mut *tx)
    .await?;
    let rows: Vec<TransferRow> = if let Some(id) = search.id {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {TRANSFER_COLUMNS} FROM transfers WHERE id = $1"
        )))
        .bind(id)
        .fetch_all(&mut *tx)
        .await?
    } else if let Some(key) = &search.idempotency_key {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {TRANSFER_COLUMNS} FROM transfers WHERE idempotency_key = $1 \
               AND api_key_id IN (SELECT id FROM api_keys) \
               AND ($2::text IS NULL OR ledger = $2) \
             ORDER BY updated_at DESC LIMIT $3"
        )))
        .bind(key)
        .bind(ledger)
        .bind(LIST_ROWS)
        .fetch_all(&mut *tx)
        .await?
    } else if let Some(account) = &search.account {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "WITH posted AS ( \
               SELECT e.transfer_id AS id FROM accounts a \
               JOIN LATERAL (SELECT transfer_id FROM entries WHERE account_no = a.no \
                 ORDER BY created_at DESC, id DESC LIMIT $4) e ON true \
               WHERE a.id = $1 AND ($2::text IS NULL OR a.ledger = $2)), \
             open AS ( \
               SELECT id FROM transfers \
               WHERE (status = 'pending' OR status = 'in_review' OR status = 'held') \
                 AND (from_account = $1 OR to_account = $1)), \
             ended AS ( \
               SELECT id FROM transfers WHERE updated_at > now() - make_interval(secs => $5) \
                 AND status IN ('failed', 'voided') AND (from_account = $1 OR to_account = $1)) \
             SELECT {TRANSFER_COLUMNS} FROM transfers \
             WHERE id IN (SELECT id FROM posted UNION SELECT id FROM open \
                          UNION SELECT id FROM ended) \
               AND ($2::text IS NULL OR ledger = $2) AND ($3::text IS NULL OR status = $3) \
             ORDER BY updated_at DESC LIMIT $4"
        )))
        .bind(account)
        .bind(ledger)
        .bind(status)
        .bind(LIST_ROWS)
        .bind(SEARCH_RECENT_SECS as f64)
        .fetch_all(&mut *tx)
        .await?
    } else {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {TRANSFER_COLUMNS} FROM transfers \
             WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR ledger = $2) \
               AND updated_at > now() - interval '1 day' \
             ORDER BY updated_at DESC LIMIT $3"
        )))
        .bind(status)
        .bind(ledger)
        .bind(LIST_ROWS)
        .fetch_all(&mut *tx)
        .await?
    };
    tx.commit().await?;
    with_flags(pool, rows).await
}

/// One line of a transfer's timeline besides what its row says.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TimelineEntry {
    pub at: DateTime<Utc>,
    /// `audit`, `anomaly`, `event`, `delivery`.
    pub source: String,
    pub what: String,
    pub detail: Option<String>,
}

/// What else happened to transfer `view`: audit events on it (reviews, settlements), anomaly
/// hits, producer events and each webhook delivery of them. Events are found by primary key
/// range (their ids are UUIDv7, made while the transfer changed), never by scanning.
pub async fn timeline(
    pool: &PgPool,
    view: &TransferView,
) -> Result<(Option<String>, Option<String>, Vec<TimelineEntry>), sqlx::Error> {
    let (last_error, key_name): (Option<String>, Option<String>) = sqlx::query_as(
        "SELECT t.last_error, k.name FROM transfers t LEFT JOIN api_keys k ON k.id = t.api_key_id \
         WHERE t.id = $1",
    )
    .bind(view.id)
    .fetch_optional(pool)
    .await?
    .unwrap_or((None, None));
    let first = first_id_at(view.created_at - chrono::Duration::seconds(1));
    let last = first_id_at(view.updated_at + chrono::Duration::seconds(60));
    let subject = format!("transfer:{}", view.id);
    let mut entries: Vec<TimelineEntry> = sqlx::query_as(
        "SELECT at, 'audit' AS source, action AS what, detail::text AS detail FROM audit_events \
           WHERE target = $1 AND at >= $4 \
         UNION ALL \
         SELECT h.at, 'anomaly', h.rule || ' (' || a.severity || ', anomaly #' || a.id || ')', \
           h.detail::text FROM anomaly_hits h JOIN anomalies a ON a.id = h.anomaly_id \
           WHERE h.transfer_id = $5 \
         UNION ALL \
         SELECT created_at, 'event', type || ' #' || seq, NULL FROM events \
           WHERE id >= $2 AND id < $3 AND subject = $1 \
         UNION ALL \
         SELECT coalesce(d.delivered_at, d.created_at), 'delivery', \
           'webhook ' || d.status || ' to ' || w.url || ' (' || e.type || ')', \
           'attempts ' || d.attempts || coalesce('; last error: ' || d.last_error, '') \
           FROM events e JOIN webhook_deliveries d ON d.event_id = e.id \
           JOIN webhook_endpoints w ON w.id = d.endpoint_id \
           WHERE e.id >= $2 AND e.id < $3 AND e.subject = $1 \
         ORDER BY 1",
    )
    .bind(&subject)
    .bind(first)
    .bind(last)
    .bind(view.created_at - chrono::Duration::seconds(1))
    .bind(view.id)
    .fetch_all(pool)
    .await?;
    entries.sort_by_key(|e| e.at);
    Ok((last_error, key_name, entries))
}

/// An account as a ledger's list shows it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AccountRow {
    pub id: String,
    pub currency: String,
    pub balance: String,
    pub pending_debits: String,
    pub status: String,
}

/// A ledger's accounts by id, after `after` (the primary key `(ledger, id)`).
pub async fn accounts_of(
    pool: &PgPool,
    ledger: &LedgerName,
    after: Option<&str>,
) -> Result<Vec<AccountRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, trim(currency) AS currency, balance::text AS balance, \
           pending_debits::text AS pending_debits, status \
         FROM accounts WHERE ledger = $1 AND id > coalesce($2, '') ORDER BY id LIMIT $3",
    )
    .bind(ledger.as_str())
    .bind(after)
    .bind(LIST_ROWS)
    .fetch_all(pool)
    .await
}

/// Transfers held for review in every ledger, longest held first (the partial index).
pub async fn review_queue(pool: &PgPool) -> Result<Vec<TransferView>, sqlx::Error> {
    let rows: Vec<TransferRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {TRANSFER_COLUMNS} FROM transfers WHERE status = 'in_review' \
         ORDER BY updated_at, id LIMIT $1"
    )))
    .bind(LIST_ROWS)
    .fetch_all(pool)
    .await?;
    with_flags(pool, rows).await
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AnomalyRow {
    pub transfer_id: Uuid,
    pub ledger: String,
    pub account_id: String,
    pub rule: String,
    pub severity: String,
    pub detail: String,
    /// Transfers that tripped it so far.
    pub transfers: i64,
    pub at: DateTime<Utc>,
    pub last_hit_at: DateTime<Utc>,
}

/// The newest anomalies (incidents) in every ledger.
pub async fn recent_anomalies(pool: &PgPool) -> Result<Vec<AnomalyRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT transfer_id, ledger, account_id, rule, severity, detail::text AS detail, \
           transfers, at, last_hit_at \
         FROM anomalies ORDER BY id DESC LIMIT $1",
    )
    .bind(LIST_ROWS)
    .fetch_all(pool)
    .await
}

/// An alert sink's circuit breaker, as its last transition alert tells it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SinkCircuit {
    pub sink: String,
    /// `open` (the last transition opened it) or `closed`.
    pub state: String,
    pub since: DateTime<Utc>,
    pub last_error: Option<String>,
}

/// Each sink's last circuit transition. Circuits live in the worker processes' memory; what
/// every process can see is the alert each transition raises (`alerts.sink_circuit`).
pub async fn sink_circuits(pool: &PgPool) -> Result<Vec<SinkCircuit>, sqlx::Error> {
    sqlx::query_as(
        "SELECT DISTINCT ON (details->>'sink') details->>'sink' AS sink, \
           CASE WHEN action = 'trigger' THEN 'open' ELSE 'closed' END AS state, \
           created_at AS since, details->>'last_error' AS last_error \
         FROM alerts WHERE event_type = 'alerts.sink_circuit' \
         ORDER BY details->>'sink', created_at DESC",
    )
    .fetch_all(pool)
    .await
}

/// Sinks' delivery figures over their last 1,000 deliveries.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SinkHealth {
    pub sink: String,
    pub delivered: i64,
    pub failing: i64,
    pub last_error: Option<String>,
}

pub async fn sink_health(pool: &PgPool) -> Result<Vec<SinkHealth>, sqlx::Error> {
    sqlx::query_as(
        "WITH recent AS (SELECT * FROM alert_deliveries ORDER BY updated_at DESC LIMIT 1000) \
         SELECT sink, count(*) FILTER (WHERE status = 'delivered') AS delivered, \
           count(*) FILTER (WHERE status <> 'delivered') AS failing, \
           (array_agg(last_error ORDER BY updated_at DESC) \
             FILTER (WHERE last_error IS NOT NULL))[1] AS last_error \
         FROM recent GROUP BY sink ORDER BY sink",
    )
    .fetch_all(pool)
    .await
}

/// A webhook endpoint with its delivery lag and recent failures.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EndpointHealth {
    pub id: Uuid,
    pub ledger: String,
    pub url: String,
    pub status: String,
    pub disabled_reason: Option<String>,
    pub failing_since: Option<DateTime<Utc>>,
    pub fanned_out_through: i64,
    pub pending: i64,
    /// Age of the oldest delivery not yet made.
    pub lag_secs: Option<f64>,
    /// Of the last 100 attempts, those that did not deliver.
    pub recent_failures: i64,
    pub last_error: Option<String>,
}

/// Every endpoint (a few per ledger), its pending deliveries read on their partial index.
pub async fn endpoints(pool: &PgPool) -> Result<Vec<EndpointHealth>, sqlx::Error> {
    sqlx::query_as(
        "WITH pending AS ( \
           SELECT endpoint_id, count(*) AS n, min(created_at) AS oldest \
           FROM webhook_deliveries WHERE status = 'pending' GROUP BY endpoint_id) \
         SELECT w.id, w.ledger, w.url, w.status, w.disabled_reason, w.failing_since, \
           w.fanned_out_through, coalesce(p.n, 0) AS pending, \
           extract(epoch FROM now() - p.oldest)::float8 AS lag_secs, \
           coalesce(a.failures, 0) AS recent_failures, a.last_error \
         FROM webhook_endpoints w LEFT JOIN pending p ON p.endpoint_id = w.id \
         LEFT JOIN LATERAL ( \
           SELECT count(*) FILTER (WHERE outcome <> 'delivered') AS failures, \
             (array_agg(error ORDER BY id DESC) FILTER (WHERE error IS NOT NULL))[1] AS last_error \
           FROM (SELECT id, outcome, error FROM webhook_attempts WHERE endpoint_id = w.id \
                 ORDER BY id DESC LIMIT 100) recent) a ON true \
         ORDER BY w.ledger, w.created_at LIMIT 500",
    )
    .fetch_all(pool)
    .await
}
