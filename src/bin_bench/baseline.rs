//! The baseline: how typical wallet services move money — one SERIALIZABLE transaction per
//! transfer (read the payer, update both balances, insert the transfer and its two entries),
//! `40001`/`40P01` retried up to 10 times with exponential backoff, 16 connections.

use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use futures::StreamExt;
use rust_decimal::Decimal;
use sqlx::PgPool;
use uuid::Uuid;

use super::Row;
use super::workload::{PlannedTransfer, percentile};

/// Connections and concurrent transfers of the baseline.
pub const BASELINE_CONNECTIONS: u32 = 16;
const BASELINE_TRIES_MAX: usize = 10;

pub async fn run(
    scenario: &str,
    pool: &PgPool,
    api_key_id: Uuid,
    transfers: &[PlannedTransfer],
) -> anyhow::Result<Row> {
    let started = Instant::now();
    let outcomes: Vec<(bool, f64)> = futures::stream::iter(transfers)
        .map(|t| async move {
            let begun = Instant::now();
            let ok = post_with_retry(pool, api_key_id, t).await.is_ok();
            (ok, begun.elapsed().as_secs_f64() * 1000.0)
        })
        .buffer_unordered(BASELINE_CONNECTIONS as usize)
        .collect()
        .await;
    let seconds = started.elapsed().as_secs_f64();
    let failed = outcomes.iter().filter(|(ok, _)| !ok).count() as u64;
    let mut latencies: Vec<f64> = outcomes.iter().map(|(_, ms)| *ms).collect();
    latencies.sort_by(f64::total_cmp);
    let posted = transfers.len() as u64 - failed;
    Ok(Row {
        scenario: scenario.to_owned(),
        transfers: transfers.len() as u64,
        seconds,
        transfers_per_sec: posted as f64 / seconds.max(f64::EPSILON),
        p50_ms: percentile(&latencies, 50.0),
        p99_ms: percentile(&latencies, 99.0),
        failed_contention: failed,
        note: format!(
            "one SERIALIZABLE transaction per transfer, {BASELINE_CONNECTIONS} connections; \
             transfers/s counts posted ones"
        ),
    })
}

async fn post_with_retry(
    pool: &PgPool,
    api_key_id: Uuid,
    t: &PlannedTransfer,
) -> Result<(), sqlx::Error> {
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(2))
        .with_max_delay(Duration::from_millis(200))
        .with_max_times(BASELINE_TRIES_MAX - 1)
        .with_jitter();
    (|| post_once(pool, api_key_id, t))
        .retry(backoff)
        .sleep(tokio::time::sleep)
        .when(|e: &sqlx::Error| {
            let code = match e {
                sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
                _ => None,
            };
            matches!(code.as_deref(), Some("40001" | "40P01"))
        })
        .await
}

async fn post_once(
    pool: &PgPool,
    api_key_id: Uuid,
    t: &PlannedTransfer,
) -> Result<(), sqlx::Error> {
    let amount = Decimal::new(i64::from(t.cents), 2);
    let id = Uuid::now_v7();
    let mut tx = pool
        .begin_with("BEGIN ISOLATION LEVEL SERIALIZABLE")
        .await?;
    let (balance, overdraft): (Decimal, bool) = sqlx::query_as(
        "SELECT balance, allow_overdraft FROM accounts \
             WHERE ledger = 'default' AND id = $1",
    )
    .bind(&t.from)
    .fetch_one(&mut *tx)
    .await?;
    if !overdraft && balance < amount {
        return Err(sqlx::Error::RowNotFound);
    }
    let (from_no, from_after): (i64, Decimal) = sqlx::query_as(
        "UPDATE accounts SET balance = balance - $2 WHERE ledger = 'default' AND id = $1 \
         RETURNING no, balance",
    )
    .bind(&t.from)
    .bind(amount)
    .fetch_one(&mut *tx)
    .await?;
    let (to_no, to_after): (i64, Decimal) = sqlx::query_as(
        "UPDATE accounts SET balance = balance + $2 WHERE ledger = 'default' AND id = $1 \
         RETURNING no, balance",
    )
    .bind(&t.to)
    .bind(amount)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO transfers (id, api_key_id, idempotency_key, request_fingerprint, \
           from_account, to_account, amount, currency, status, attempts, posted_at, ledger) \
         VALUES ($1, $2, $3, '\\x00', $4, $5, $6, 'USD', 'posted', 1, now(), 'default')",
    )
    .bind(id)
    .bind(api_key_id)
    .bind(&t.key)
    .bind(&t.from)
    .bind(&t.to)
    .bind(amount)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO entries (transfer_id, account_no, side, amount, currency, balance_after) \
         VALUES ($1, $2, 'debit', $4, 'USD', $6), ($1, $3, 'credit', $5, 'USD', $7)",
    )
    .bind(id)
    .bind(from_no)
    .bind(to_no)
    .bind(-amount)
    .bind(amount)
    .bind(from_after)
    .bind(to_after)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}
