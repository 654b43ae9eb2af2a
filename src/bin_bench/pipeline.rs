//! ferry's own scenarios: the whole pipeline (HTTP intake → commit with job → apalis →
//! posting) running in this process against the scratch database (started by
//! `ferry::harness`, as the tests start it).

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;

use super::Row;
use super::workload::PlannedTransfer;
use ferry::config::{Config, Roles};
use ferry::domain::Scopes;
use ferry::harness::{RunningFerry, spawn_in_process};
use ferry::store::api_keys;

/// Transfers per batch request (the issue: "batch endpoint, 100 per request").
pub const BATCH_LEN: usize = 100;
/// Batch requests in flight at once.
pub const BATCH_CLIENTS: usize = 8;
/// Concurrent clients of the single-transfer intake scenario.
pub const INTAKE_CLIENTS: usize = 64;
/// Longest wait for the queue to drain.
const DRAIN_TIMEOUT_SECS: u64 = 600;

/// ferry running in this process on the scratch database, with an admin key.
pub struct BenchedFerry {
    pub base_url: String,
    pub api_key: String,
    /// The settings it runs with, for a worker started beside it.
    config: Config,
    posting: Posting,
    client: reqwest::Client,
    ferry: RunningFerry,
}

/// Whether the ferry under test posts while it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Posting {
    /// Intake and workers in one process, as `ferry serve` runs by default.
    Concurrent,
    /// Intake alone (`--roles intake`); a worker is started to drain the queue afterwards.
    Afterwards,
}

impl BenchedFerry {
    pub async fn start(
        base: &Config,
        database_url: &str,
        posting: Posting,
    ) -> anyhow::Result<Self> {
        let mut config = base.clone();
        config.database.url = database_url.to_owned();
        config.http.addr = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        config.roles = Roles {
            intake: true,
            worker: posting == Posting::Concurrent,
            scheduler: false,
        };
        let running = spawn_in_process(config.clone()).await?;
        let port = running
            .port
            .ok_or_else(|| anyhow::anyhow!("intake did not bind"))?;
        let scopes = Scopes::parse_list("admin")?;
        let (_, api_key) = api_keys::create(&running.pool, "bench", &scopes, None).await?;
        Ok(Self {
            base_url: format!("http://127.0.0.1:{port}"),
            api_key,
            config,
            posting,
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(INTAKE_CLIENTS * 2)
                .build()?,
            ferry: running,
        })
    }

    /// Starts a worker-only ferry on the same database, for [`Posting::Afterwards`]; it stops
    /// when dropped.
    async fn start_worker(&self) -> anyhow::Result<RunningFerry> {
        let mut config = self.config.clone();
        config.roles = Roles {
            intake: false,
            worker: true,
            scheduler: false,
        };
        spawn_in_process(config).await
    }

    /// The client the scenarios send with (connections kept for every client at once).
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// The scratch database, for what a scenario reads back.
    pub fn pool(&self) -> &sqlx::PgPool {
        &self.ferry.pool
    }

    pub fn stop(self) {
        self.ferry.stop();
    }

    async fn pending(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT count(*) FROM transfers WHERE status = 'pending'")
            .fetch_one(&self.ferry.pool)
            .await
    }

    async fn drain(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(DRAIN_TIMEOUT_SECS);
        while self.pending().await? > 0 {
            anyhow::ensure!(Instant::now() < deadline, "transfers still pending");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    async fn failed_for_contention(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT count(*) FROM transfers WHERE failure_code = 'retries_exhausted'",
        )
        .fetch_one(&self.ferry.pool)
        .await
    }
}

pub fn item(t: &PlannedTransfer) -> serde_json::Value {
    json!({"idempotency_key": t.key, "from_account": t.from, "to_account": t.to,
           "amount": t.amount(), "currency": "USD"})
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
                .client
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
    ferry.drain().await?;
    let seconds = started.elapsed().as_secs_f64();
    let failed = u64::try_from(ferry.failed_for_contention().await?).unwrap_or(0);
    Ok(Row {
        scenario: scenario.to_owned(),
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
    transfers: &[PlannedTransfer],
) -> anyhow::Result<Row> {
    let url = format!("{}/v1/transfers", ferry.base_url);
    let started = Instant::now();
    let latencies: Vec<anyhow::Result<f64>> = futures::stream::iter(transfers)
        .map(|t| {
            let body = json!({"from_account": t.from, "to_account": t.to,
                              "amount": t.amount(), "currency": "USD"});
            let request = ferry
                .client
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
    let worker = match ferry.posting {
        Posting::Concurrent => None,
        Posting::Afterwards => Some(ferry.start_worker().await?),
    };
    let drained = ferry.drain().await;
    if let Some(worker) = worker {
        worker.stop();
    }
    drained?;
    let who = match ferry.posting {
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

/// Resident memory of this process in KiB (Linux), for the soak scenario.
pub fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// `soak`: uniform batches for `duration`, RSS at start, after warm-up, at half time and at
/// the end (is memory flat, and does growth level off?).
pub async fn soak(
    ferry: &BenchedFerry,
    transfers: &[PlannedTransfer],
    duration: Duration,
) -> anyhow::Result<Row> {
    let url = format!("{}/v1/transfers/batch", ferry.base_url);
    let started = Instant::now();
    let rss_start = rss_kib();
    let mut sent = 0u64;
    let mut round = 0u64;
    let mut rss_warm = None;
    let mut rss_half = None;
    while started.elapsed() < duration {
        send_soak_round(ferry, &url, transfers, round).await?;
        ferry.drain().await?;
        sent += transfers.len() as u64;
        round += 1;
        if round == 1 {
            rss_warm = rss_kib();
        }
        if rss_half.is_none() && started.elapsed() >= duration / 2 {
            rss_half = rss_kib();
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let mib = |kib: Option<u64>| {
        kib.map_or_else(|| "?".to_owned(), |k| format!("{:.1}", k as f64 / 1024.0))
    };
    Ok(Row {
        scenario: "soak".to_owned(),
        transfers: sent,
        seconds,
        transfers_per_sec: sent as f64 / seconds.max(f64::EPSILON),
        p50_ms: None,
        p99_ms: None,
        failed_contention: u64::try_from(ferry.failed_for_contention().await?).unwrap_or(0),
        note: format!(
            "uniform batches for {:.0}s; RSS MiB at start {}, after first round {}, \
             at half time {}, at end {}",
            duration.as_secs_f64(),
            mib(rss_start),
            mib(rss_warm),
            mib(rss_half),
            mib(rss_kib())
        ),
    })
}

/// One soak round: every planned transfer once, in batches from `BATCH_CLIENTS` clients, each
/// under a key of its own for `round` (so every round creates new transfers).
async fn send_soak_round(
    ferry: &BenchedFerry,
    url: &str,
    transfers: &[PlannedTransfer],
    round: u64,
) -> anyhow::Result<()> {
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(transfers.chunks(BATCH_LEN))
        .map(|chunk| {
            let items: Vec<_> = chunk
                .iter()
                .map(|t| {
                    let mut value = item(t);
                    value["idempotency_key"] = json!(format!("{}-r{round}", t.key));
                    value
                })
                .collect();
            let request = ferry
                .client
                .post(url)
                .bearer_auth(&ferry.api_key)
                .json(&json!({"transfers": items}));
            async move {
                let response = request.send().await?;
                anyhow::ensure!(response.status().is_success(), "batch refused");
                Ok(())
            }
        })
        .buffer_unordered(BATCH_CLIENTS)
        .collect()
        .await;
    results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    Ok(())
}
