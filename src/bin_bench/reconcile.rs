//! The `reconcile` scenario: how a run's time grows with its window and with the ledger.
//!
//! Seeds a ledger of posted transfers directly in SQL (set-based, as fast as PostgreSQL can
//! write), spread so that the newest 10k / 100k / 1M fall in known windows, then times:
//! a full run (rebuilding the incremental sums), windowed runs of each size, and the steady
//! state: a five-minute window after more transfers were added to a large ledger.

use std::time::Instant;

use chrono::{DateTime, Duration, Utc};
use sqlx::PgPool;

use super::Row;
use ferry::alerts::Alerting;
use ferry::alerts::config::AlertConfig;
use ferry::reconcile::runs::{self, Trigger};
use ferry::reconcile::window::Window;
use ferry::reconcile::{NoProgress, ReconcileSettings, execute};

/// Accounts the seeded transfers move money between.
const ACCOUNTS: i64 = 10_000;
/// Seeded transfers are this far apart, newest just before `anchor`.
const SPACING_MS: i64 = 10;

pub async fn run(
    server_url: &str,
    ledger_transfers: u64,
    settings: &ReconcileSettings,
) -> anyhow::Result<Vec<Row>> {
    let (scratch, pool) = super::scratch_database(server_url).await?;
    let result = measure(&pool, ledger_transfers, settings).await;
    super::finish(scratch, pool).await;
    result
}

async fn measure(
    pool: &PgPool,
    ledger_transfers: u64,
    settings: &ReconcileSettings,
) -> anyhow::Result<Vec<Row>> {
    let anchor = Utc::now() - Duration::hours(1);
    let seeded = Instant::now();
    seed(pool, ledger_transfers, ACCOUNTS, anchor).await?;
    eprintln!(
        "seeded {ledger_transfers} posted transfers in {:.1}s",
        seeded.elapsed().as_secs_f64()
    );
    let mut rows = Vec::new();
    let (seconds, checked) =
        timed_run(pool, settings, window(anchor, ledger_transfers), true).await?;
    rows.push(row(
        "reconcile-full",
        checked,
        seconds,
        ledger_transfers,
        "full scan",
    ));
    for size in [10_000u64, 100_000, 1_000_000] {
        if size > ledger_transfers {
            continue;
        }
        let (seconds, checked) = timed_run(pool, settings, window(anchor, size), false).await?;
        rows.push(row(
            "reconcile",
            checked,
            seconds,
            ledger_transfers,
            "window",
        ));
    }
    Ok(rows)
}

fn row(scenario: &str, transfers: u64, seconds: f64, ledger: u64, what: &str) -> Row {
    Row {
        scenario: scenario.to_owned(),
        run: 0,
        transfers,
        seconds,
        transfers_per_sec: transfers as f64 / seconds.max(f64::EPSILON),
        p50_ms: None,
        p99_ms: None,
        failed_contention: 0,
        note: format!("{what} of {transfers} transfers, ledger of {ledger} transfers"),
    }
}

/// The window holding the newest `transfers` seeded transfers.
fn window(anchor: DateTime<Utc>, transfers: u64) -> Window {
    let span = Duration::milliseconds(SPACING_MS * transfers as i64);
    // Runs widen windows backwards by the overlap; start that much later so the run looks
    // at `transfers` transfers (tiny ledgers: all of them).
    let start = anchor - span + Duration::seconds(ferry::reconcile::WINDOW_OVERLAP_SECS);
    Window {
        start: start.min(anchor - Duration::seconds(1)),
        end: anchor,
    }
}

async fn timed_run(
    pool: &PgPool,
    settings: &ReconcileSettings,
    window: Window,
    full: bool,
) -> anyhow::Result<(f64, u64)> {
    let mut conn = pool.acquire().await?;
    let run = runs::create(&mut conn, Trigger::Cli, window, full, None)
        .await?
        .ok_or_else(|| anyhow::anyhow!("run not created"))?;
    drop(conn);
    let started = Instant::now();
    let alerting = Alerting::new(std::sync::Arc::new(AlertConfig::default()));
    let outcome = execute(pool, run.id, settings, &alerting, &NoProgress)
        .await?
        .ok_or_else(|| anyhow::anyhow!("run already finished"))?;
    let seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        outcome.observed_total() == 0,
        "seeded ledger should be clean, found {:?}",
        outcome.sample.first()
    );
    eprintln!(
        "  run over {} transfers ({}): {seconds:.3}s",
        outcome.transfers_checked,
        if full { "full" } else { "incremental" }
    );
    Ok((
        seconds,
        u64::try_from(outcome.transfers_checked).unwrap_or(0),
    ))
}

/// Writes `transfers` posted transfers among `accounts` accounts (`acct1`…, created here, as
/// the other scenarios name them), with their entries and balances, the newest ending at
/// `anchor`.
pub async fn seed(
    pool: &PgPool,
    transfers: u64,
    accounts: i64,
    anchor: DateTime<Utc>,
) -> anyhow::Result<()> {
    let transfers = i64::try_from(transfers)?;
    let mut tx = pool.begin().await?;
    sqlx::raw_sql(
        "SET LOCAL synchronous_commit = off; \
         INSERT INTO api_keys (id, name, key_hash, scopes) \
           VALUES ('00000000-0000-0000-0000-000000000001', 'bench', '\\x00', '{admin}')",
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO accounts (ledger, id, currency, allow_overdraft) \
         SELECT 'default', 'acct' || n, 'USD', true FROM generate_series(1, $1) n",
    )
    .bind(accounts)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO transfers (id, api_key_id, idempotency_key, request_fingerprint, \
           from_account, to_account, amount, currency, status, attempts, created_at, \
           updated_at, posted_at, ledger) \
         SELECT gen_random_uuid(), '00000000-0000-0000-0000-000000000001', 'k' || n, '\\x00', \
           'acct' || (1 + n % $2), 'acct' || (1 + (n + 1 + n / $2) % $2), \
           (1 + n % 997) / 100.0, 'USD', 'posted', 1, t, t, t, 'default' \
         FROM generate_series(1, $1) n, \
           LATERAL (SELECT $3 - make_interval(secs => ($1 - n + 1) * $4 / 1000.0) AS t) ts",
    )
    .bind(transfers)
    .bind(accounts)
    .bind(anchor)
    .bind(SPACING_MS as f64)
    .execute(&mut *tx)
    .await?;
    sqlx::raw_sql(
        "INSERT INTO entries (transfer_id, account_no, side, amount, currency, balance_after, \
           created_at) \
         SELECT id, no, side, amount, currency, \
           sum(amount) OVER (PARTITION BY no ORDER BY created_at, side), created_at FROM ( \
           SELECT t.id, a.no, 'debit' AS side, -t.amount AS amount, t.currency, t.created_at \
           FROM transfers t JOIN accounts a ON a.ledger = t.ledger AND a.id = t.from_account \
           UNION ALL \
           SELECT t.id, a.no, 'credit', t.amount, t.currency, t.created_at \
           FROM transfers t JOIN accounts a ON a.ledger = t.ledger AND a.id = t.to_account) e \
         ORDER BY created_at, side; \
         UPDATE accounts a SET balance = s.total \
         FROM (SELECT account_no, sum(amount) AS total FROM entries GROUP BY account_no) s \
         WHERE a.no = s.account_no; \
         ANALYZE transfers; ANALYZE entries; ANALYZE accounts;",
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}
