//! Producer events (README, "Events and webhooks"): every change a producer cares about is an
//! `events` row written in the transaction that makes the change — no change without its
//! event, no event without its change — numbered per ledger with no gaps.
//!
//! **Why a reader never skips an event.** A writer takes its numbers from its ledger's
//! `event_counters` row, which it holds locked until it commits; the next writer waits on that
//! lock. So numbers are handed out in commit order: when `seq = N` is visible, every smaller
//! `seq` of the ledger is already committed, and a cursor `after = N` never misses an event
//! that commits later with a smaller number. Every writer takes the posting gate
//! ([`lock_sequence`]) before writing its events — posting holds it anyway — so that a
//! SERIALIZABLE posting transaction never finds the counter updated after its snapshot (which
//! would fail it with 40001); a writer that locks rows posting also locks takes it before
//! them, so none holds such a row while it waits for the gate.

pub mod transfer;

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::domain::{EventType, LedgerName};

/// An event about to be written.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub ledger: String,
    pub event_type: EventType,
    /// What it is about, as `<kind>:<id>`.
    pub subject: String,
    /// The resource as the API shows it, as JSON text (serialized once, straight from the
    /// view; PostgreSQL parses it into `jsonb`).
    pub payload: String,
}

impl NewEvent {
    pub fn about_transfer(
        event_type: EventType,
        view: &transfer::TransferView,
    ) -> Result<Self, serde_json::Error> {
        Ok(Self {
            ledger: view.ledger.clone(),
            event_type,
            subject: subject::transfer(view.id),
            payload: serde_json::to_string(view)?,
        })
    }
}

/// `events.subject` values.
pub mod subject {
    pub fn transfer(id: uuid::Uuid) -> String {
        format!("transfer:{id}")
    }

    pub fn account(id: &str) -> String {
        format!("account:{id}")
    }

    pub fn anomaly(id: i64) -> String {
        format!("anomaly:{id}")
    }
}

/// An event as the feed and webhooks show it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[schema(as = Event)]
pub struct EventView {
    /// Unique and stable: a webhook's `webhook-id`, the same on every retry and replay.
    pub id: Uuid,
    #[schema(example = "default")]
    pub ledger: String,
    /// The event's number in its ledger: 1, 2, 3, … without gaps, in commit order.
    #[schema(minimum = 1)]
    pub seq: i64,
    #[sqlx(rename = "type", try_from = "String")]
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// When the change committed (to within its transaction's duration).
    pub created_at: DateTime<Utc>,
    /// The resource as the API showed it then: a transfer, an account, or an anomaly hit.
    #[sqlx(rename = "payload")]
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

const EVENT_COLUMNS: &str = "id, ledger, seq, type, created_at, payload";

/// Takes the lock every event writer holds until it commits (the posting gate; see the module
/// comment). Before any row posting also locks (transfers, accounts), or the two can deadlock.
pub async fn lock_sequence(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("LOCK TABLE ledger_posting_gate IN EXCLUSIVE MODE")
        .execute(conn)
        .await?;
    Ok(())
}

/// Appends `events` in the caller's transaction, numbering them per ledger in the order given.
/// One statement, whatever the number of events and ledgers.
pub async fn append(conn: &mut PgConnection, events: &[NewEvent]) -> Result<usize, sqlx::Error> {
    if events.is_empty() {
        return Ok(0);
    }
    let ids: Vec<Uuid> = events.iter().map(|_| Uuid::now_v7()).collect();
    let ledgers: Vec<&str> = events.iter().map(|e| e.ledger.as_str()).collect();
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    let subjects: Vec<&str> = events.iter().map(|e| e.subject.as_str()).collect();
    let payloads: Vec<&str> = events.iter().map(|e| e.payload.as_str()).collect();
    // The counter rows are updated in ledger order, as every writer does, so two writers of
    // several ledgers cannot deadlock.
    let inserted = sqlx::query(
        "WITH batch AS ( \
           SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[]) \
             WITH ORDINALITY AS b(id, ledger, type, subject, payload, ord) \
         ), counts AS ( \
           SELECT ledger, count(*) AS n FROM batch GROUP BY ledger ORDER BY ledger \
         ), bumped AS ( \
           INSERT INTO event_counters AS c (ledger, last_seq) SELECT ledger, n FROM counts \
           ON CONFLICT (ledger) DO UPDATE SET last_seq = c.last_seq + EXCLUDED.last_seq \
           RETURNING ledger, last_seq \
         ) \
         INSERT INTO events (id, ledger, seq, type, subject, payload) \
         SELECT b.id, b.ledger, \
           bumped.last_seq - counts.n + row_number() OVER (PARTITION BY b.ledger ORDER BY b.ord), \
           b.type, b.subject, b.payload::json \
         FROM batch b JOIN counts USING (ledger) JOIN bumped USING (ledger)",
    )
    .bind(&ids)
    .bind(&ledgers)
    .bind(&types)
    .bind(&subjects)
    .bind(&payloads)
    .execute(conn)
    .await?
    .rows_affected();
    if inserted != events.len() as u64 {
        return Err(sqlx::Error::Protocol(format!(
            "{inserted} events written, {} expected",
            events.len()
        )));
    }
    for event_type in EventType::ALL {
        let n = events.iter().filter(|e| e.event_type == event_type).count();
        if n > 0 {
            metrics::counter!("ferry_events_total", "type" => event_type.as_str())
                .increment(n as u64);
        }
    }
    Ok(events.len())
}

/// The last `seq` a ledger has handed out (0 before its first event), as the caller's
/// transaction sees it.
pub async fn last_seq(
    db: impl sqlx::PgExecutor<'_>,
    ledger: &LedgerName,
) -> Result<i64, sqlx::Error> {
    let seq: Option<i64> =
        sqlx::query_scalar("SELECT last_seq FROM event_counters WHERE ledger = $1")
            .bind(ledger.as_str())
            .fetch_optional(db)
            .await?;
    Ok(seq.unwrap_or(0))
}

/// A page of `ledger`'s events after `after`, in `seq` order, of the given types (all when
/// `None`).
pub async fn page(
    pool: &PgPool,
    ledger: &LedgerName,
    after: i64,
    types: Option<&[EventType]>,
    limit: i64,
) -> Result<Vec<EventView>, sqlx::Error> {
    let types: Option<Vec<&str>> = types.map(|t| t.iter().map(|t| t.as_str()).collect());
    sqlx::query_as::<_, EventView>(sqlx::AssertSqlSafe(format!(
        "SELECT {EVENT_COLUMNS} FROM events \
         WHERE ledger = $1 AND seq > $2 AND ($3::text[] IS NULL OR type = ANY($3)) \
         ORDER BY seq LIMIT $4"
    )))
    .bind(ledger.as_str())
    .bind(after)
    .bind(types)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// The smallest UUIDv7 of `at`'s millisecond: ids made before it sort below, ids made at or
/// after it sort above, so a time range of events is a range of their primary key.
pub fn first_id_at(at: chrono::DateTime<chrono::Utc>) -> Uuid {
    let ms = u64::try_from(at.timestamp_millis()).unwrap_or(0);
    Uuid::from_u64_pair(ms << 16 | 0x7000, 0x8000_0000_0000_0000)
}

/// How many events `purge` deletes per statement: short transactions, no long lock on the
/// table's index pages.
const PURGE_CHUNK: i64 = 10_000;

/// Deletes events older than `retention` (and, with them, their webhook deliveries and
/// attempts). The counters stay, so numbering never restarts. Event ids are UUIDv7, whose
/// leading bits are their creation time in milliseconds, so "older than" is a range of the
/// primary key: no index on `created_at` to maintain at every posting.
pub async fn purge(conn: &mut PgConnection, retention: Duration) -> Result<u64, sqlx::Error> {
    let cutoff =
        chrono::Utc::now() - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
    // Every id below it is older.
    let cutoff_id = first_id_at(cutoff);
    let mut purged = 0;
    loop {
        let deleted = sqlx::query(
            "DELETE FROM events WHERE id IN ( \
               SELECT id FROM events WHERE id < $1 ORDER BY id LIMIT $2)",
        )
        .bind(cutoff_id)
        .bind(PURGE_CHUNK)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        purged += deleted;
        if deleted < PURGE_CHUNK as u64 {
            return Ok(purged);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Timestamp;

    /// The purge's cutoff id sorts below every UUIDv7 made at or after its millisecond and
    /// above every one made before.
    #[test]
    fn uuid_v7_ids_sort_by_time_as_the_purge_assumes() {
        let ms: u64 = 1_764_500_000_123;
        let cutoff = first_id_at(
            chrono::DateTime::from_timestamp_millis(i64::try_from(ms).unwrap_or(0))
                .expect("a time"),
        );
        let at = |ms: u64| {
            Uuid::new_v7(Timestamp::from_unix(
                uuid::NoContext,
                ms / 1000,
                u32::try_from(ms % 1000).unwrap_or(0) * 1_000_000,
            ))
        };
        for _ in 0..100 {
            assert!(at(ms - 1) < cutoff);
            assert!(at(ms) >= cutoff);
            assert!(at(ms + 1) > cutoff);
        }
    }
}
