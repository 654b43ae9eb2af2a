//! The cost of holds (README, "Holds, reversals and balance history"):
//! - `hold-capture` is `uniform` with every transfer placed as a hold (HTTP batches of 100, 8
//!   clients) and captured as soon as its `transfer.held` event is in the feed, in batches of
//!   100 (`POST /v1/transfers/settle`, 8 clients): two trips through intake and posting per
//!   transfer, against `uniform`'s one, with the same request shapes.
//! - `hold-capture-single` captures each hold with its own `POST /v1/transfers/{id}/capture`
//!   (64 clients), as a card processor would.
//! - `balance-at` reads `GET /v1/accounts/{id}/balance?at=` at random instants of an account
//!   with a 1,000,000-entry history, and, as the baseline in the same run, sums the account's
//!   entries up to the instant (the scan that storing the balance after each entry avoids).

use std::time::{Duration, Instant};

use futures::StreamExt;
use rand::Rng;
use rust_decimal::Decimal;
use serde_json::json;
use sqlx::PgPool;

use super::Row;
use super::pipeline::{BATCH_CLIENTS, BATCH_LEN, INTAKE_CLIENTS, item, send_batches};
use super::processes::BenchedFerry;
use super::workload::{PlannedTransfer, percentile};

/// Longest wait for every hold to be captured and posted.
const SETTLE_TIMEOUT_SECS: u64 = 600;
/// Balance reads at random instants, and clients sending them.
const BALANCE_READS: usize = 2_000;
const BALANCE_CLIENTS: usize = 8;
/// Scans summed for the baseline (each reads up to a million entries).
const BASELINE_SCANS: usize = 20;

/// How `hold-capture` sends its captures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Captures {
    /// `POST /v1/transfers/settle`, 100 a request, 8 clients.
    Batched,
    /// `POST /v1/transfers/{id}/capture`, 64 clients.
    Single,
}

/// `hold-capture`: every transfer held then captured; first request to last posted.
pub async fn hold_capture(
    scenario: &str,
    ferry: &BenchedFerry,
    transfers: &[PlannedTransfer],
    captures: Captures,
) -> anyhow::Result<Row> {
    // A run may follow another on the same ferry (warm-up, then the measured run): count and
    // read the feed from where the last one ended.
    let (ended_before, feed_after): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM transfers WHERE status IN ('posted', 'failed', 'voided')), \
                (SELECT coalesce(max(seq), 0) FROM events)",
    )
    .fetch_one(ferry.pool())
    .await?;
    let started = Instant::now();
    let (sent, captures_sent) = tokio::join!(
        send_holds(ferry, transfers),
        capture_held(
            ferry,
            (feed_after, ended_before + transfers.len() as i64),
            captures
        )
    );
    sent?;
    let mut latencies = captures_sent?;
    let seconds = started.elapsed().as_secs_f64();
    let posted: i64 = sqlx::query_scalar("SELECT count(*) FROM transfers WHERE status = 'posted'")
        .fetch_one(ferry.pool())
        .await?;
    anyhow::ensure!(
        posted == ended_before + transfers.len() as i64,
        "{posted} of {} holds captured and posted",
        transfers.len()
    );
    latencies.sort_by(f64::total_cmp);
    Ok(Row::measured(
        scenario,
        transfers.len() as u64,
        seconds,
        &latencies,
        format!(
            "holds in HTTP batches of {BATCH_LEN} ({BATCH_CLIENTS} clients), captured once \
             their transfer.held events are read from the feed, {}; first request to last \
             captured posted; latency = capture request",
            match captures {
                Captures::Batched => format!(
                    "in batches of {BATCH_LEN} (POST /v1/transfers/settle, {BATCH_CLIENTS} clients)"
                ),
                Captures::Single =>
                    format!("each by a single POST .../capture ({INTAKE_CLIENTS} clients)"),
            }
        ),
    ))
}

async fn send_holds(ferry: &BenchedFerry, transfers: &[PlannedTransfer]) -> anyhow::Result<()> {
    send_batches(ferry, transfers, |t| {
        let mut hold = item(t);
        hold["mode"] = json!("hold");
        hold
    })
    .await
}

/// Captures holds as they become held — following the `transfer.held` events through the
/// feed after `feed_after`, as a producer would, and handing their ids to 64 clients — until
/// `ended_expected` transfers have ended; returns each capture request's latency (ms).
async fn capture_held(
    ferry: &BenchedFerry,
    (feed_after, ended_expected): (i64, i64),
    captures: Captures,
) -> anyhow::Result<Vec<f64>> {
    let (ids, incoming) = tokio::sync::mpsc::channel::<String>(ended_expected.max(1) as usize);
    let poll = async move {
        let deadline = Instant::now() + Duration::from_secs(SETTLE_TIMEOUT_SECS);
        let mut after = feed_after;
        loop {
            anyhow::ensure!(Instant::now() < deadline, "holds still open");
            let page: serde_json::Value = ferry
                .client()
                .get(format!(
                    "{}/v1/events?types=transfer.held&limit=1000&after={after}",
                    ferry.base_url
                ))
                .bearer_auth(&ferry.api_key)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            let events = page["events"].as_array().cloned().unwrap_or_default();
            for event in &events {
                let id = event["data"]["id"].as_str().unwrap_or_default().to_owned();
                ids.send(id).await?;
            }
            after = page["next_after"].as_i64().unwrap_or(after);
            if events.is_empty() {
                let ended: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM transfers \
                     WHERE status IN ('posted', 'failed', 'voided')",
                )
                .fetch_one(ferry.pool())
                .await?;
                if ended >= ended_expected {
                    // Dropping the sender ends the clients' stream.
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    let ids = futures::stream::unfold(incoming, |mut incoming| async move {
        incoming.recv().await.map(|id| (id, incoming))
    });
    let capture = async {
        match captures {
            Captures::Single => {
                ids.map(|id| {
                    let request = ferry
                        .client()
                        .post(format!("{}/v1/transfers/{id}/capture", ferry.base_url))
                        .bearer_auth(&ferry.api_key)
                        .header("Idempotency-Key", format!("capture-{id}"));
                    timed(request, 202)
                })
                .buffer_unordered(INTAKE_CLIENTS)
                .collect::<Vec<anyhow::Result<f64>>>()
                .await
            }
            Captures::Batched => {
                let url = format!("{}/v1/transfers/settle", ferry.base_url);
                // Whatever has arrived, up to 100 a request: batches fill under load.
                ids.ready_chunks(BATCH_LEN)
                    .map(|chunk| {
                        let items: Vec<_> = chunk
                            .iter()
                            .map(|id| {
                                json!({"idempotency_key": format!("capture-{id}"),
                                       "transfer_id": id, "action": "capture"})
                            })
                            .collect();
                        let request = ferry
                            .client()
                            .post(&url)
                            .bearer_auth(&ferry.api_key)
                            .json(&json!({"settlements": items}));
                        timed(request, 200)
                    })
                    .buffer_unordered(BATCH_CLIENTS)
                    .collect::<Vec<anyhow::Result<f64>>>()
                    .await
            }
        }
    };
    let (polled, latencies) = tokio::join!(poll, capture);
    polled?;
    latencies.into_iter().collect()
}

/// Sends `request`; its latency (ms) if answered `status`.
async fn timed(request: reqwest::RequestBuilder, status: u16) -> anyhow::Result<f64> {
    let begun = Instant::now();
    let response = request.send().await?;
    anyhow::ensure!(
        response.status().as_u16() == status,
        "capture not accepted: {}",
        response.status()
    );
    if status == 200 {
        // A batch: every item must be accepted.
        let body: serde_json::Value = response.json().await?;
        let results = body["results"].as_array().cloned().unwrap_or_default();
        anyhow::ensure!(
            results.iter().all(|r| r["outcome"] == "accepted"),
            "a capture of the batch was not accepted: {body}"
        );
    }
    Ok(begun.elapsed().as_secs_f64() * 1000.0)
}

/// `balance-at`: p50/p99 of the balance at random instants of a 1M-entry history, each
/// checked against the sum of the entries up to it for a sample; the baseline scan's times
/// in the note.
pub async fn balance_at(
    scenario: &str,
    ferry: &BenchedFerry,
    history_entries: i64,
) -> anyhow::Result<Row> {
    let seeded = Instant::now();
    let (first, last) = seed_history(ferry.pool(), history_entries).await?;
    let seed_secs = seeded.elapsed().as_secs_f64();
    let span_ms = (last - first).num_milliseconds().max(1);
    let instants: Vec<chrono::DateTime<chrono::Utc>> = {
        let mut rng = rand::rng();
        (0..BALANCE_READS)
            .map(|_| first + chrono::Duration::milliseconds(rng.random_range(0..=span_ms)))
            .collect()
    };
    let url = format!("{}/v1/accounts/history-a/balance", ferry.base_url);
    let started = Instant::now();
    let reads: Vec<anyhow::Result<(f64, Decimal)>> = futures::stream::iter(instants.clone())
        .map(|at| {
            let at = at.to_rfc3339();
            let url = reqwest::Url::parse_with_params(&url, [("at", at.as_str())]);
            let client = ferry.client().clone();
            let api_key = ferry.api_key.clone();
            async move {
                let request = client.get(url?).bearer_auth(api_key);
                let begun = Instant::now();
                let response = request.send().await?;
                anyhow::ensure!(response.status().is_success(), "{}", response.status());
                let body: serde_json::Value = response.json().await?;
                let latency = begun.elapsed().as_secs_f64() * 1000.0;
                let balance = body["balance"].as_str().unwrap_or_default().parse()?;
                Ok((latency, balance))
            }
        })
        .buffered(BALANCE_CLIENTS)
        .collect()
        .await;
    let seconds = started.elapsed().as_secs_f64();
    let reads = reads.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    // The baseline, and the check: summing the entries up to the instant gives the same.
    let mut scans_ms = Vec::with_capacity(BASELINE_SCANS);
    for (at, (_, balance)) in instants.iter().zip(&reads).take(BASELINE_SCANS) {
        let begun = Instant::now();
        let summed: Decimal = sqlx::query_scalar(
            "SELECT coalesce(sum(e.amount), 0) FROM entries e \
             JOIN accounts a ON a.no = e.account_no \
             WHERE a.ledger = 'default' AND a.id = 'history-a' AND e.created_at <= $1",
        )
        .bind(at)
        .fetch_one(ferry.pool())
        .await?;
        scans_ms.push(begun.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(
            summed == *balance,
            "balance at {at}: API {balance}, entries sum to {summed}"
        );
    }
    scans_ms.sort_by(f64::total_cmp);
    let mut latencies: Vec<f64> = reads.iter().map(|(ms, _)| *ms).collect();
    latencies.sort_by(f64::total_cmp);
    Ok(Row::measured(
        scenario,
        BALANCE_READS as u64,
        seconds,
        &latencies,
        format!(
            "GET /v1/accounts/{{id}}/balance?at= at random instants of a {history_entries}-entry \
             account, {BALANCE_CLIENTS} clients (rows = reads); baseline: summing the entries \
             up to the instant, p50 {:.1} ms / max {:.1} ms over {BASELINE_SCANS} instants, each \
             equal to the API's answer; history written in {seed_secs:.0}s",
            percentile(&scans_ms, 50.0).unwrap_or_default(),
            scans_ms.last().copied().unwrap_or_default(),
        ),
    ))
}

/// Writes a posted history straight into the tables: `history-a` and `history-b` exchange
/// `entries` transfers, one millisecond apart, each entry with its balance after it
/// (as posting writes them). Returns the first and last instants.
async fn seed_history(
    pool: &PgPool,
    entries: i64,
) -> anyhow::Result<(chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)> {
    let mut tx = pool.begin().await?;
    let api_key = uuid::Uuid::now_v7();
    sqlx::query(
        "INSERT INTO api_keys (id, name, key_hash, scopes) VALUES ($1, 'history', $2, '{admin}')",
    )
    .bind(api_key)
    .bind(api_key.as_bytes().to_vec())
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO accounts (ledger, id, currency, allow_overdraft) \
         VALUES ('default', 'history-a', 'USD', true), ('default', 'history-b', 'USD', true)",
    )
    .execute(&mut *tx)
    .await?;
    let first: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT now() - interval '2 hours'")
            .fetch_one(&mut *tx)
            .await?;
    // Transfer n goes a → b when n is even, b → a when odd, for (n % 97 + 1).00.
    sqlx::query(
        "INSERT INTO transfers (id, api_key_id, idempotency_key, request_fingerprint, \
           from_account, to_account, amount, currency, ledger, status, posted_at, attempts, \
           created_at, updated_at) \
         SELECT md5('h' || n)::uuid, $1, 'h' || n, '\\x00', \
           CASE WHEN n % 2 = 0 THEN 'history-a' ELSE 'history-b' END, \
           CASE WHEN n % 2 = 0 THEN 'history-b' ELSE 'history-a' END, \
           n % 97 + 1, 'USD', 'default', 'posted', $2 + n * interval '1 ms', 1, \
           $2 + n * interval '1 ms', $2 + n * interval '1 ms' \
         FROM generate_series(1, $3) n",
    )
    .bind(api_key)
    .bind(first)
    .bind(entries)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO entries (transfer_id, account_no, side, amount, currency, balance_after, \
           created_at) \
         SELECT transfer_id, account_no, side, amount, 'USD', \
           sum(amount) OVER (PARTITION BY account_no ORDER BY n, side), at \
         FROM ( \
           SELECT n, md5('h' || n)::uuid AS transfer_id, $1 + n * interval '1 ms' AS at, \
             s.side, a.no AS account_no, \
             CASE WHEN s.side = 'debit' THEN -(n % 97 + 1) ELSE n % 97 + 1 END AS amount \
           FROM generate_series(1, $2) n \
           CROSS JOIN (VALUES ('debit'), ('credit')) AS s(side) \
           JOIN accounts a ON a.ledger = 'default' AND a.id = CASE \
             WHEN (s.side = 'debit') = (n % 2 = 0) THEN 'history-a' ELSE 'history-b' END \
         ) h ORDER BY n, side",
    )
    .bind(first)
    .bind(entries)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE accounts a SET balance = s.total \
         FROM (SELECT account_no, sum(amount) AS total FROM entries GROUP BY account_no) s \
         WHERE a.no = s.account_no",
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    sqlx::query("ANALYZE entries").execute(pool).await?;
    let last = first + chrono::Duration::milliseconds(entries);
    Ok((first, last))
}
