//! The baseline: how a typical wallet service moves money, written as its developers would —
//! its own three tables (accounts, transfers with a unique idempotency key, entries with
//! foreign keys to both) and one SERIALIZABLE transaction per transfer (read the payer,
//! update both balances, insert the transfer and its two entries), `40001`/`40P01` retried up
//! to 10 times with exponential backoff, 16 connections.
//!
//! It has a schema of its own (`baseline`, in the scenario's scratch database) rather than
//! ferry's: ferry's tables carry ferry's guards (the statement-level entry reference check
//! reads the transfers' and accounts' indexes), and under SERIALIZABLE those reads' page-level
//! locks made nearly every pair of concurrent baseline transfers conflict (40–150/s, most
//! transfers retried) — a cost of ferry's schema, not of the approach being compared.

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

/// Creates the baseline's schema with `accounts` accounts `acct1`… (as ferry's scenarios
/// name them), every one allowed to overdraw as in ferry's scenarios.
pub async fn create_schema(pool: &PgPool, accounts: u32) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(
        "CREATE SCHEMA baseline; \
         CREATE TABLE baseline.accounts ( \
           id text PRIMARY KEY, balance numeric NOT NULL DEFAULT 0, \
           allow_overdraft boolean NOT NULL DEFAULT false); \
         CREATE TABLE baseline.transfers ( \
           id uuid PRIMARY KEY, idempotency_key text NOT NULL UNIQUE, \
           from_account text NOT NULL REFERENCES baseline.accounts, \
           to_account text NOT NULL REFERENCES baseline.accounts, \
           amount numeric NOT NULL CHECK (amount > 0), \
           created_at timestamptz NOT NULL DEFAULT now()); \
         CREATE TABLE baseline.entries ( \
           id bigserial PRIMARY KEY, \
           transfer_id uuid NOT NULL REFERENCES baseline.transfers, \
           account_id text NOT NULL REFERENCES baseline.accounts, \
           amount numeric NOT NULL, balance_after numeric NOT NULL); \
         CREATE INDEX ON baseline.entries (account_id, id);",
    )
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO baseline.accounts (id, allow_overdraft) \
         SELECT 'acct' || n, true FROM generate_series(1, $1) n",
    )
    .bind(i64::from(accounts))
    .execute(pool)
    .await?;
    sqlx::query("ANALYZE baseline.accounts")
        .execute(pool)
        .await?;
    Ok(())
}

pub async fn run(
    scenario: &str,
    pool: &PgPool,
    transfers: &[PlannedTransfer],
) -> anyhow::Result<Row> {
    let started = Instant::now();
    let outcomes: Vec<(bool, f64)> = futures::stream::iter(transfers)
        .map(|t| async move {
            let begun = Instant::now();
            let ok = post_with_retry(pool, t).await.is_ok();
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
        run: 0,
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

async fn post_with_retry(pool: &PgPool, t: &PlannedTransfer) -> Result<(), sqlx::Error> {
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(2))
        .with_max_delay(Duration::from_millis(200))
        .with_max_times(BASELINE_TRIES_MAX - 1)
        .with_jitter();
    (|| post_once(pool, t))
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

async fn post_once(pool: &PgPool, t: &PlannedTransfer) -> Result<(), sqlx::Error> {
    let amount = Decimal::new(i64::from(t.cents), 2);
    let mut tx = pool
        .begin_with("BEGIN ISOLATION LEVEL SERIALIZABLE")
        .await?;
    let (balance, overdraft): (Decimal, bool) =
        sqlx::query_as("SELECT balance, allow_overdraft FROM baseline.accounts WHERE id = $1")
            .bind(&t.from)
            .fetch_one(&mut *tx)
            .await?;
    if !overdraft && balance < amount {
        return Err(sqlx::Error::RowNotFound);
    }
    let from_after: Decimal = sqlx::query_scalar(
        "UPDATE baseline.accounts SET balance = balance - $2 WHERE id = $1 RETURNING balance",
    )
    .bind(&t.from)
    .bind(amount)
    .fetch_one(&mut *tx)
    .await?;
    let to_after: Decimal = sqlx::query_scalar(
        "UPDATE baseline.accounts SET balance = balance + $2 WHERE id = $1 RETURNING balance",
    )
    .bind(&t.to)
    .bind(amount)
    .fetch_one(&mut *tx)
    .await?;
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO baseline.transfers (id, idempotency_key, from_account, to_account, amount) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(&t.key)
    .bind(&t.from)
    .bind(&t.to)
    .bind(amount)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO baseline.entries (transfer_id, account_id, amount, balance_after) \
         VALUES ($1, $2, $4, $6), ($1, $3, $5, $7)",
    )
    .bind(id)
    .bind(&t.from)
    .bind(&t.to)
    .bind(-amount)
    .bind(amount)
    .bind(from_after)
    .bind(to_after)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}
