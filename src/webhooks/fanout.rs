//! Fan-out: turns each enabled endpoint's new events into delivery rows. Each endpoint keeps a
//! cursor (`fanned_out_through`) into its ledger's event sequence; because sequence order is
//! commit order (the `events` module), reading `seq > cursor` never misses an event. One
//! statement serves every endpoint; endpoints another process is fanning out are skipped
//! (`SKIP LOCKED`), so replicas share the work without doing it twice.

use sqlx::PgPool;

/// Events read per endpoint per statement.
pub const FAN_OUT_BATCH: i64 = 2_000;

/// Creates the deliveries of events newer than each endpoint's cursor (of its types) and moves
/// the cursors past every event read; returns how many deliveries were created and whether an
/// endpoint had more than one batch waiting.
pub async fn fan_out(pool: &PgPool) -> Result<(u64, bool), sqlx::Error> {
    let (created, full): (i64, bool) = sqlx::query_as(
        "WITH ep AS ( \
           SELECT id, ledger, event_types, fanned_out_through FROM webhook_endpoints \
           WHERE status = 'enabled' FOR UPDATE SKIP LOCKED \
         ), ev AS ( \
           SELECT ep.id AS endpoint_id, ep.event_types, e.id AS event_id, e.seq, e.type \
           FROM ep CROSS JOIN LATERAL ( \
             SELECT id, seq, type FROM events \
             WHERE ledger = ep.ledger AND seq > ep.fanned_out_through \
             ORDER BY seq LIMIT $1) e \
         ), created AS ( \
           INSERT INTO webhook_deliveries (endpoint_id, event_id) \
           SELECT endpoint_id, event_id FROM ev WHERE type = ANY(event_types) ORDER BY seq \
           ON CONFLICT (endpoint_id, event_id) DO NOTHING RETURNING 1 \
         ), moved AS ( \
           UPDATE webhook_endpoints w SET fanned_out_through = m.through \
           FROM (SELECT endpoint_id, max(seq) AS through, count(*) AS n \
                 FROM ev GROUP BY endpoint_id) m \
           WHERE w.id = m.endpoint_id RETURNING m.n \
         ) \
         SELECT (SELECT count(*) FROM created), \
                coalesce((SELECT max(n) FROM moved), 0) >= $1",
    )
    .bind(FAN_OUT_BATCH)
    .fetch_one(pool)
    .await?;
    Ok((u64::try_from(created).unwrap_or(0), full))
}
