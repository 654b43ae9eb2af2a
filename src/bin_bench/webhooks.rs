//! The cost of producer webhooks (README, "Events and webhooks"): `uniform-webhook` is
//! `uniform` with one endpoint subscribed to every transfer event, delivering to a receiver in
//! this process; `webhook-lag` sends at a fixed 1,000 transfers/s and measures each event's lag
//! from its commit (its `created_at`) to its arrival at the receiver; `webhook-lag-close` is
//! `webhook-lag` with a receiver that closes each connection (HTTP/1.0, Python's listen backlog
//! of 5: `ferry::harness::ClosingReceiver`), answering after 1 ms.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::HeaderMap;
use ferry::harness::ClosingReceiver;
use serde_json::json;

use super::Row;
use super::pipeline::{batched, item};
use super::processes::BenchedFerry;
use super::workload::{PlannedTransfer, percentile};

/// The offered rate of `webhook-lag`.
pub const LAG_RATE_PER_SEC: u64 = 1_000;
/// Transfers per request of `webhook-lag`: 1,000/s as 100 requests of 10 a second.
const LAG_BATCH_LEN: usize = 10;
/// Longest wait for the last deliveries.
const DELIVERY_TIMEOUT_SECS: u64 = 300;
/// How long the closing receiver of `webhook-lag-close` takes to answer (the 1 ms).
const CLOSING_ANSWER_MS: u64 = 1;

/// How the receiver treats connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connections {
    /// HTTP/1.1, kept alive (axum).
    KeptAlive,
    /// HTTP/1.0, closed after each answer, backlog 5.
    Closed,
}

/// A receiver on loopback that answers 204 and notes, per event, when it arrived and how long
/// after its commit.
#[derive(Clone, Default)]
struct Receiver {
    seen: Arc<Mutex<HashSet<String>>>,
    lags_ms: Arc<Mutex<Vec<f64>>>,
}

impl Receiver {
    /// A receiver, started, with one endpoint of `ferry` subscribed to every transfer event;
    /// the endpoint's id.
    async fn subscribed(
        ferry: &BenchedFerry,
        connections: Connections,
    ) -> anyhow::Result<(Self, String)> {
        let receiver = Self::default();
        let url = match connections {
            Connections::KeptAlive => receiver.start().await?,
            Connections::Closed => receiver.start_closing()?,
        };
        let endpoint = subscribe(ferry, &url).await?;
        Ok((receiver, endpoint))
    }

    fn start_closing(&self) -> anyhow::Result<String> {
        let state = self.clone();
        let answer_after = Duration::from_millis(CLOSING_ANSWER_MS);
        let closing = ClosingReceiver::start(answer_after, move |id, body| state.note(id, body))?;
        Ok(closing.url())
    }

    async fn start(&self) -> anyhow::Result<String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = self.clone();
        let app = axum::Router::new().fallback(move |headers: HeaderMap, body: Bytes| {
            let state = state.clone();
            async move {
                let id = headers
                    .get("webhook-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                state.note(id, &body);
                axum::http::StatusCode::NO_CONTENT
            }
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(format!("http://{addr}/hook"))
    }

    fn note(&self, id: &str, body: &[u8]) {
        let first = self
            .seen
            .lock()
            .map(|mut s| s.insert(id.to_owned()))
            .unwrap_or(false);
        if !first {
            return;
        }
        let committed = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|e| e["created_at"].as_str().map(str::to_owned))
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok());
        if let Some(committed) = committed {
            let lag = chrono::Utc::now().signed_duration_since(committed);
            if let Ok(mut lags) = self.lags_ms.lock() {
                lags.push(lag.as_seconds_f64() * 1000.0);
            }
        }
    }

    fn delivered(&self) -> usize {
        self.seen.lock().map(|s| s.len()).unwrap_or(0)
    }

    async fn wait_for(&self, count: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(DELIVERY_TIMEOUT_SECS);
        while self.delivered() < count {
            anyhow::ensure!(
                Instant::now() < deadline,
                "{} of {count} events delivered",
                self.delivered()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    fn lags(&self) -> Vec<f64> {
        let mut lags = self.lags_ms.lock().map(|l| l.clone()).unwrap_or_default();
        lags.sort_by(f64::total_cmp);
        lags
    }
}

/// Subscribes `url` to every transfer event; the endpoint's id.
async fn subscribe(ferry: &BenchedFerry, url: &str) -> anyhow::Result<String> {
    let response = ferry
        .client()
        .post(format!("{}/v1/webhook-endpoints", ferry.base_url))
        .bearer_auth(&ferry.api_key)
        .json(&json!({"url": url, "event_types": ["transfer.posted", "transfer.failed"]}))
        .send()
        .await?;
    anyhow::ensure!(
        response.status().as_u16() == 201,
        "endpoint refused: {}",
        response.text().await?
    );
    let endpoint: serde_json::Value = response.json().await?;
    endpoint["id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("no endpoint id in {endpoint}"))
}

/// Deletes the endpoint, so a next run on the same ferry delivers to its own receiver only.
async fn unsubscribe(ferry: &BenchedFerry, endpoint: &str) -> anyhow::Result<()> {
    ferry
        .client()
        .delete(format!(
            "{}/v1/webhook-endpoints/{endpoint}",
            ferry.base_url
        ))
        .bearer_auth(&ferry.api_key)
        .send()
        .await?
        .error_for_status()?;
    Ok(())
}

/// `uniform-webhook`: the `uniform` run with one endpoint subscribed to every transfer event.
/// Throughput is posting's (first request to last posted), as in `uniform`; the note says when
/// the last event arrived.
pub async fn uniform(
    scenario: &str,
    ferry: &BenchedFerry,
    transfers: &[PlannedTransfer],
) -> anyhow::Result<Row> {
    let (receiver, endpoint) = Receiver::subscribed(ferry, Connections::KeptAlive).await?;
    let started = Instant::now();
    let mut row = batched(scenario, ferry, transfers).await?;
    let delivered_when_posted = receiver.delivered();
    receiver.wait_for(transfers.len()).await?;
    let all_delivered_secs = started.elapsed().as_secs_f64();
    unsubscribe(ferry, &endpoint).await?;
    let lags = receiver.lags();
    row.p50_ms = percentile(&lags, 50.0);
    row.p99_ms = percentile(&lags, 99.0);
    row.note = format!(
        "{}; one endpoint subscribed to every transfer event: {delivered_when_posted} events \
         delivered when the last transfer posted, all after {all_delivered_secs:.2}s; p50/p99 \
         = event lag (commit → receiver)",
        row.note
    );
    Ok(row)
}

/// `webhook-lag` (and `-close`): 1,000 transfers/s offered open-loop (a batch of 10 every
/// 10 ms, whether or not earlier ones were answered) with one endpoint subscribed; p50/p99 =
/// event lag; deliveries/s from the first transfer sent to the last event delivered.
pub async fn lag(
    scenario: &str,
    ferry: &BenchedFerry,
    transfers: &[PlannedTransfer],
    connections: Connections,
) -> anyhow::Result<Row> {
    let (receiver, _endpoint) = Receiver::subscribed(ferry, connections).await?;
    let url = format!("{}/v1/transfers/batch", ferry.base_url);
    let client = reqwest::Client::new();
    let interval = Duration::from_secs(1) * LAG_BATCH_LEN as u32 / LAG_RATE_PER_SEC as u32;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut sends = tokio::task::JoinSet::new();
    for chunk in transfers.chunks(LAG_BATCH_LEN) {
        tick.tick().await;
        let body = json!({"transfers": chunk.iter().map(item).collect::<Vec<_>>()});
        let request = client.post(&url).bearer_auth(&ferry.api_key).json(&body);
        sends.spawn(async move {
            let response = request.send().await?;
            anyhow::ensure!(response.status().is_success(), "batch refused");
            anyhow::Ok(())
        });
    }
    while let Some(sent) = sends.join_next().await {
        sent??;
    }
    let offered_secs = started.elapsed().as_secs_f64();
    receiver.wait_for(transfers.len()).await?;
    let seconds = started.elapsed().as_secs_f64();
    let lags = receiver.lags();
    Ok(Row {
        scenario: scenario.to_owned(),
        run: 0,
        transfers: transfers.len() as u64,
        seconds,
        transfers_per_sec: transfers.len() as f64 / offered_secs.max(f64::EPSILON),
        p50_ms: percentile(&lags, 50.0),
        p99_ms: percentile(&lags, 99.0),
        failed_contention: 0,
        note: format!(
            "{LAG_RATE_PER_SEC} transfers/s offered open-loop (batches of {LAG_BATCH_LEN}), one \
             endpoint subscribed, its receiver {}; {:.0} deliveries/s (first sent → last \
             delivered); p50/p99 = event lag (commit → receiver), max {:.0} ms",
            match connections {
                Connections::KeptAlive => "keeping connections alive",
                Connections::Closed => "closing each connection (HTTP/1.0, backlog 5)",
            },
            transfers.len() as f64 / seconds.max(f64::EPSILON),
            lags.last().copied().unwrap_or(0.0)
        ),
    })
}
