//! `anomalies` rows — incidents: one rule tripped on one account, and every transfer that
//! tripped it while it was open (`anomaly_hits`, each transfer's flag) — and the listings
//! `GET /v1/anomalies` and `GET /v1/anomalies/{id}/transfers` read (README, "Anomaly
//! detection").

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::rules::{AnomalySeverity, Hit, Rule, RuleAction};
use crate::domain::{AccountId, EventType, LedgerName};
use crate::events::{NewEvent, subject};

/// A hit as stored: the incident it opened or joined.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The `anomalies` row's id: the incident.
    pub anomaly_id: i64,
    pub hit: Hit,
    /// This hit opened the incident (its alert and its `anomaly.flagged` event are due).
    pub opens_incident: bool,
}

/// The advisory-lock key of an incident's (ledger, account, rule): ledger names and rules
/// cannot contain ':', so the account id, last, cannot be read two ways.
fn incident_key(hit: &Hit) -> String {
    format!(
        "ferry:anomaly:{}:{}:{}",
        hit.rule.as_str(),
        hit.account.ledger,
        hit.account.id
    )
}

/// Takes, until `tx` ends, the lock of each (account, rule) incident `hits` may open or join,
/// in one order for every caller: two processes judging one account at once then agree on one
/// incident. Take it before the event lock (the posting gate), as every caller does.
pub async fn lock_incidents(tx: &mut PgConnection, hits: &[Hit]) -> Result<(), sqlx::Error> {
    let mut keys: Vec<String> = hits.iter().map(incident_key).collect();
    keys.sort_unstable();
    keys.dedup();
    if keys.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtextextended(k, 0)) \
         FROM (SELECT k FROM unnest($1::text[]) WITH ORDINALITY AS u(k, n) ORDER BY n) AS keys",
    )
    .bind(&keys)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Stores `hits` (in `tx`, which holds [`lock_incidents`] for them); a hit already stored (the
/// same transfer and rule) is not stored twice. A hit joins the newest incident of its
/// (account, rule) if that incident's last hit is younger than the rule's window
/// (`window_secs`), and opens a new incident otherwise: a burst — or a treasury sending all
/// day — is one incident that counts its transfers, not one per transfer.
pub async fn store(
    tx: &mut PgConnection,
    hits: &[Hit],
    window_secs: impl Fn(&Hit) -> u64,
) -> Result<Vec<Stored>, sqlx::Error> {
    if hits.is_empty() {
        return Ok(Vec::new());
    }
    let fresh = unstored(&mut *tx, hits).await?;
    if fresh.is_empty() {
        return Ok(Vec::new());
    }
    // The hits of each (ledger, account, rule), in the order given.
    let mut incidents: Vec<Vec<&Hit>> = Vec::new();
    let mut index_of: HashMap<String, usize> = HashMap::new();
    for hit in fresh {
        let index = *index_of.entry(incident_key(hit)).or_insert_with(|| {
            incidents.push(Vec::new());
            incidents.len() - 1
        });
        incidents[index].push(hit);
    }
    let transfers = |hits: &[&Hit]| i64::try_from(hits.len()).unwrap_or(i64::MAX);
    let firsts: Vec<&Hit> = incidents.iter().map(|hits| hits[0]).collect();
    let open = open_incidents(&mut *tx, &firsts, &window_secs).await?;
    let joined: Vec<(i64, i64)> = open
        .iter()
        .map(|(n, id)| (*id, transfers(&incidents[*n])))
        .collect();
    grow(&mut *tx, &joined).await?;
    let opening: Vec<(usize, &Hit, i64)> = (0..incidents.len())
        .filter(|n| !open.contains_key(n))
        .map(|n| (n, incidents[n][0], transfers(&incidents[n])))
        .collect();
    let opened: HashMap<usize, i64> = open_new(&mut *tx, &opening).await?.into_iter().collect();
    let mut stored = Vec::new();
    for (n, hits) in incidents.iter().enumerate() {
        let (anomaly_id, opens) = match (open.get(&n), opened.get(&n)) {
            (Some(id), _) => (*id, false),
            (None, Some(id)) => (*id, true),
            (None, None) => continue,
        };
        stored.extend(hits.iter().enumerate().map(|(k, hit)| Stored {
            anomaly_id,
            hit: (*hit).clone(),
            opens_incident: opens && k == 0,
        }));
    }
    insert_hits(&mut *tx, &stored).await?;
    Ok(stored)
}

/// The hits of `hits` not stored yet, each (transfer, rule) once.
async fn unstored<'h>(tx: &mut PgConnection, hits: &'h [Hit]) -> Result<Vec<&'h Hit>, sqlx::Error> {
    let transfer_ids: Vec<Uuid> = hits.iter().map(|h| h.transfer_id).collect();
    let rules: Vec<&str> = hits.iter().map(|h| h.rule.as_str()).collect();
    let stored: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT h.transfer_id, h.rule FROM anomaly_hits h \
         JOIN unnest($1::uuid[], $2::text[]) AS i(transfer_id, rule) \
           ON h.transfer_id = i.transfer_id AND h.rule = i.rule",
    )
    .bind(&transfer_ids)
    .bind(&rules)
    .fetch_all(&mut *tx)
    .await?;
    let mut seen: HashSet<(Uuid, &str)> = stored
        .iter()
        .map(|(id, rule)| (*id, rule.as_str()))
        .collect();
    Ok(hits
        .iter()
        .filter(|h| seen.insert((h.transfer_id, h.rule.as_str())))
        .collect())
}

/// Of the incidents `firsts` (one hit each) would join, those open: the newest incident of the
/// (account, rule), if its last hit is younger than the rule's window. Index into `firsts` →
/// its id.
async fn open_incidents(
    tx: &mut PgConnection,
    firsts: &[&Hit],
    window_secs: &impl Fn(&Hit) -> u64,
) -> Result<HashMap<usize, i64>, sqlx::Error> {
    let ledgers: Vec<&str> = firsts.iter().map(|h| h.account.ledger.as_str()).collect();
    let accounts: Vec<&str> = firsts.iter().map(|h| h.account.id.as_str()).collect();
    let rules: Vec<&str> = firsts.iter().map(|h| h.rule.as_str()).collect();
    let windows: Vec<f64> = firsts.iter().map(|h| window_secs(h) as f64).collect();
    let rows: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT k.n - 1, a.id \
         FROM unnest($1::text[], $2::text[], $3::text[], $4::float8[]) WITH ORDINALITY \
           AS k(ledger, account_id, rule, window_secs, n) \
         JOIN LATERAL ( \
           SELECT id, last_hit_at FROM anomalies \
           WHERE ledger = k.ledger AND account_id = k.account_id AND rule = k.rule \
           ORDER BY id DESC LIMIT 1) AS a \
           ON a.last_hit_at > now() - make_interval(secs => k.window_secs)",
    )
    .bind(&ledgers)
    .bind(&accounts)
    .bind(&rules)
    .bind(&windows)
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(n, id)| Some((usize::try_from(n).ok()?, id)))
        .collect())
}

/// Opens an incident per `(index, first hit, transfers)`; index → the new incident's id.
async fn open_new(
    tx: &mut PgConnection,
    opening: &[(usize, &Hit, i64)],
) -> Result<Vec<(usize, i64)>, sqlx::Error> {
    if opening.is_empty() {
        return Ok(Vec::new());
    }
    let column = |f: fn(&Hit) -> String| opening.iter().map(|(_, h, _)| f(h)).collect::<Vec<_>>();
    let transfer_ids: Vec<Uuid> = opening.iter().map(|(_, h, _)| h.transfer_id).collect();
    let details: Vec<serde_json::Value> =
        opening.iter().map(|(_, h, _)| h.detail.clone()).collect();
    let counts: Vec<i64> = opening.iter().map(|(_, _, n)| *n).collect();
    let rows: Vec<(i64, i64)> = sqlx::query_as(
        "WITH input AS ( \
           SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], \
             $6::jsonb[], $7::text[], $8::bigint[]) WITH ORDINALITY \
             AS i(transfer_id, ledger, account_id, rule, severity, detail, action, transfers, n)), \
         opened AS ( \
           INSERT INTO anomalies (transfer_id, ledger, account_id, rule, severity, detail, \
             action, transfers) \
           SELECT transfer_id, ledger, account_id, rule, severity, detail, action, transfers \
           FROM input ORDER BY n \
           RETURNING id, transfer_id, rule) \
         SELECT i.n - 1, o.id FROM opened o \
         JOIN input i ON i.transfer_id = o.transfer_id AND i.rule = o.rule",
    )
    .bind(&transfer_ids)
    .bind(column(|h| h.account.ledger.as_str().to_owned()))
    .bind(column(|h| h.account.id.as_str().to_owned()))
    .bind(column(|h| h.rule.as_str().to_owned()))
    .bind(column(|h| h.rule.severity().as_str().to_owned()))
    .bind(&details)
    .bind(column(|h| h.action.as_str().to_owned()))
    .bind(&counts)
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(i, id)| Some((opening.get(usize::try_from(i).ok()?)?.0, id)))
        .collect())
}

/// Adds `(incident, transfers)` to the incidents' counts; their last hit is now.
async fn grow(tx: &mut PgConnection, joined: &[(i64, i64)]) -> Result<(), sqlx::Error> {
    if joined.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = joined.iter().map(|(id, _)| *id).collect();
    let counts: Vec<i64> = joined.iter().map(|(_, n)| *n).collect();
    sqlx::query(
        "UPDATE anomalies a SET transfers = a.transfers + u.n, last_hit_at = now() \
         FROM unnest($1::bigint[], $2::bigint[]) AS u(id, n) WHERE a.id = u.id",
    )
    .bind(&ids)
    .bind(&counts)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Each transfer's flag: one `anomaly_hits` row per stored hit.
async fn insert_hits(tx: &mut PgConnection, stored: &[Stored]) -> Result<(), sqlx::Error> {
    if stored.is_empty() {
        return Ok(());
    }
    let anomaly_ids: Vec<i64> = stored.iter().map(|s| s.anomaly_id).collect();
    let transfer_ids: Vec<Uuid> = stored.iter().map(|s| s.hit.transfer_id).collect();
    let rules: Vec<&str> = stored.iter().map(|s| s.hit.rule.as_str()).collect();
    let actions: Vec<&str> = stored.iter().map(|s| s.hit.action.as_str()).collect();
    let details: Vec<serde_json::Value> = stored.iter().map(|s| s.hit.detail.clone()).collect();
    sqlx::query(
        "INSERT INTO anomaly_hits (anomaly_id, transfer_id, rule, action, detail) \
         SELECT * FROM unnest($1::bigint[], $2::uuid[], $3::text[], $4::text[], $5::jsonb[]) \
         ON CONFLICT (transfer_id, rule) DO NOTHING",
    )
    .bind(&anomaly_ids)
    .bind(&transfer_ids)
    .bind(&rules)
    .bind(&actions)
    .bind(&details)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// An anomaly — an incident — as the API shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[schema(as = Anomaly)]
pub struct AnomalyView {
    /// Increasing; the listing's cursor.
    pub id: i64,
    #[sqlx(try_from = "String")]
    pub rule: Rule,
    #[sqlx(try_from = "String")]
    pub severity: AnomalySeverity,
    /// Of the hit that opened it: `review` held its transfer for review; `flag`: the transfer
    /// proceeded. Each transfer's own is in `GET /v1/anomalies/{id}/transfers`.
    #[sqlx(try_from = "String")]
    pub action: RuleAction,
    pub ledger: String,
    /// The source account of its transfers.
    pub account_id: String,
    /// The transfer that opened it.
    pub transfer_id: Uuid,
    /// The numbers that tripped the rule for the transfer that opened it, e.g.
    /// `{"transfers": 5, "threshold": 5, "window_secs": 60}`.
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
    /// How many transfers have tripped the rule on the account while it was open (each is
    /// flagged): it stays open while the rule keeps tripping within its window.
    pub transfers: i64,
    /// When it was opened.
    pub at: DateTime<Utc>,
    /// When a transfer last joined it.
    pub last_hit_at: DateTime<Utc>,
}

const ANOMALY_COLUMNS: &str = "id, rule, severity, action, ledger, account_id, transfer_id, \
    detail, transfers, at, last_hit_at";

/// One transfer that tripped an anomaly's rule, as `GET /v1/anomalies/{id}/transfers` shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[schema(as = AnomalyHit)]
pub struct AnomalyHitView {
    /// Increasing; the listing's cursor.
    pub id: i64,
    pub transfer_id: Uuid,
    /// `review`: the hit held the transfer for review; `flag`: the transfer proceeded.
    #[sqlx(try_from = "String")]
    pub action: RuleAction,
    /// The numbers that tripped the rule for this transfer.
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
    pub at: DateTime<Utc>,
}

/// Writes, in the caller's transaction, an `anomaly.flagged` event for each of the anomalies
/// `ids` just opened, carrying it as `GET /v1/anomalies` shows it. The caller took the event
/// lock first (README, "Events and webhooks").
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

/// A page of the transfers that tripped anomaly `anomaly_id` of `ledger`, oldest first; `None`
/// if the ledger has no such anomaly.
pub async fn list_hits(
    pool: &PgPool,
    ledger: &LedgerName,
    anomaly_id: i64,
    after: Option<i64>,
    limit: i64,
) -> Result<Option<Vec<AnomalyHitView>>, sqlx::Error> {
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM anomalies WHERE id = $1 AND ledger = $2)")
            .bind(anomaly_id)
            .bind(ledger.as_str())
            .fetch_one(pool)
            .await?;
    if !exists {
        return Ok(None);
    }
    let hits = sqlx::query_as(
        "SELECT id, transfer_id, action, detail, at FROM anomaly_hits \
         WHERE anomaly_id = $1 AND id > $2 ORDER BY id LIMIT $3",
    )
    .bind(anomaly_id)
    .bind(after.unwrap_or(0))
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(Some(hits))
}
