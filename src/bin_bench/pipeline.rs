//! ferry's own scenarios: the whole pipeline (HTTP intake → commit with job → apalis →
//! posting), with ferry running as child processes on the scratch database
//! (`processes.rs`).

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;

use super::Row;
use super::processes::{BenchedFerry, stop_child};
use super::workload::PlannedTransfer;

/// Transfers per batch request (the issue: "batch endpoint, 100 per request").
pub const BATCH_LEN: usize = 100;
/// Batch requests in flight at once.
pub const BATCH_CLIENTS: usize = 8;
/// Concurrent clients of the single-transfer intake scenario.
pub const INTAKE_CLIENTS: usize = 64;
/// Longest wait for the queue to drain.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(600);

/// Whether the ferry under test posts while it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Posting {
    /// Intake and workers at once, as `ferry serve` runs by default.
    Concurrent,
    /// Intake alone (`--roles intake`); a worker is started to drain the queue afterwards.
    Afterwards,
}

/// The body of a single `POST /v1/transfers` (its key goes in the `Idempotency-Key` header).
pub fn single(t: &PlannedTransfer) -> serde_json::Value {
    json!({"from_account": t.from, "to_account": t.to, "amount": t.amount(), "currency": "USD"})
}

/// A `POST /v1/transfers/batch` item: the single body with its key.
pub fn item(t: &PlannedTransfer) -> serde_json::Value {
    let mut item = single(t);
    item["idempotency_key"] = json!(t.key);
    item
}

/// Sends `transfers` as `POST /v1/transfers/batch` requests of [`BATCH_LEN`] items (each
/// written by `to_item`), [`BATCH_CLIENTS`] at a time.
pub async fn send_batches(
    ferry: &BenchedFerry,
    transfers: &[PlannedTransfer],
    to_item: impl Fn(&PlannedTransfer) -> serde_json::Value,
) -> anyhow::Result<()> {
    let url = format!("{}/v1/transfers/batch", ferry.base_url);
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(transfers.chunks(BATCH_LEN))
        .map(|chunk| {
            let body = json!({"transfers": chunk.iter().map(&to_item).collect::<Vec<_>>()});
            let request = ferry
                .client()
                .post(&url)
                .bearer_auth(&ferry.api_key)
                .json(&body);
            async move {
                let response = request.send().await?;
                anyhow::ensure!(
                    response.status().is_success(),
                    "batch refused: {}",
                    response.status()
                );
                Ok(())
            }
        })
        .buffer_unordered(BATCH_CLIENTS)
        .collect()
        .await;
    results.into_iter().collect()
}

/// `uniform` / `hot`: batches of 100 from 8 clients; first request to last posted.
pub async fn batched(
    scenario: &str,
    ferry: &BenchedFerry,
    transfers: &[PlannedTransfer],
) -> anyhow::Result<Row> {
    let started = Instant::now();
    send_batches(ferry, transfers, item).await?;
    let accepted_secs = started.elapsed().as_secs_f64();
    ferry.drain(DRAIN_TIMEOUT).await?;
    let seconds = started.elapsed().as_secs_f64();
    let failed = u64::try_from(ferry.failed_for_contention().await?).unwrap_or(0);
    Ok(Row {
        scenario: scenario.to_owned(),
        run: 0,
        transfers: transfers.len() as u64,
        seconds,
        transfers_per_sec: transfers.len() as f64 / seconds.max(f64::EPSILON),
        p50_ms: None,
        p99_ms: None,
        failed_contention: failed,
        note: format!(
            "HTTP batch of {BATCH_LEN}, {BATCH_CLIENTS} clients; first request to last posted \
             (all accepted after {accepted_secs:.2}s)"
        ),
    })
}

/// `intake` / `intake-while-posting`: single `POST /v1/transfers` from 64 clients; accepted/s
/// and latency. Every accepted transfer must then post.
pub async fn intake(
    scenario: &str,
    ferry: &BenchedFerry,
    posting: Posting,
    transfers: &[PlannedTransfer],
) -> anyhow::Result<Row> {
    let url = format!("{}/v1/transfers", ferry.base_url);
    let started = Instant::now();
    let latencies: Vec<anyhow::Result<f64>> = futures::stream::iter(transfers)
        .map(|t| {
            let body = single(t);
            let request = ferry
                .client()
                .post(&url)
                .bearer_auth(&ferry.api_key)
                .header("Idempotency-Key", &t.key)
                .json(&body);
            async move {
                let begun = Instant::now();
                let response = request.send().await?;
                anyhow::ensure!(
                    response.status().as_u16() == 202,
                    "not accepted: {}",
                    response.status()
                );
                Ok(begun.elapsed().as_secs_f64() * 1000.0)
            }
        })
        .buffer_unordered(INTAKE_CLIENTS)
        .collect()
        .await;
    let seconds = started.elapsed().as_secs_f64();
    let mut latencies = latencies
        .into_iter()
        .collect::<anyhow::Result<Vec<f64>>>()?;
    latencies.sort_by(f64::total_cmp);
    // The worker is stopped once drained, so a next run's intake is alone again.
    let worker = match posting {
        Posting::Concurrent => None,
        Posting::Afterwards => Some(ferry.start_worker()?),
    };
    let drained = ferry.drain(DRAIN_TIMEOUT).await;
    if let Some(worker) = worker {
        stop_child(worker).await;
    }
    drained?;
    let who = match posting {
        Posting::Concurrent => "workers posting in the same process meanwhile",
        Posting::Afterwards => "intake role alone, posted afterwards",
    };
    Ok(Row::measured(
        scenario,
        transfers.len() as u64,
        seconds,
        &latencies,
        format!("single POST /v1/transfers, {INTAKE_CLIENTS} clients; accepted/s; {who}"),
    ))
}
