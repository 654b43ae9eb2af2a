//! The open-loop load generator (README, "Benchmarks"): requests leave on a fixed schedule —
//! request `i` at `start + i / rate` — whether or not earlier ones were answered, so a slow
//! server cannot slow the load down and hide its own latency (coordinated omission). Every
//! latency is measured from the request's *scheduled* time, not from when it was sent: if the
//! generator itself falls behind, that delay is counted too.
//!
//! Time to posted is measured as a producer sees it: from the scheduled send to the moment
//! the transfer's `transfer.posted` event is read from `GET /v1/events`, polled every
//! [`FEED_POLL_IDLE_MS`] when it has nothing new (so the figure includes up to that much
//! polling delay).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;
use tokio::task::JoinSet;

use super::pipeline::{BATCH_LEN, item, single};
use super::processes::BenchedFerry;
use super::stages::{self, PostingStepMean, StageTiming};
use super::workload::{PlannedTransfer, Planner};

/// How long the feed poller waits after an empty page.
pub const FEED_POLL_IDLE_MS: u64 = 5;
/// Longest wait, after the last request was answered, for its transfers to be posted.
const POSTED_TIMEOUT: Duration = Duration::from_secs(120);
/// Requests in flight at once, at most. Past saturation, answers slow down while requests keep
/// leaving on schedule; without a cap the generator opened a connection per waiting request
/// until it ran out of file descriptors (at 125 % of 5,166 single/s), and past ferry's own
/// limit of 1,024 connections the feed reader could not connect. A request that waits for
/// room still has its latency counted from its scheduled time, so the cap hides nothing.
const IN_FLIGHT_MAX: usize = 512;
/// The schedule starts this long after it is set up, so the first requests are not late.
const SCHEDULE_LEAD: Duration = Duration::from_millis(50);

/// How transfers are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// One `POST /v1/transfers` per transfer.
    Single,
    /// `POST /v1/transfers/batch` with [`BATCH_LEN`] transfers.
    Batch,
}

impl Mode {
    pub fn per_request(self) -> usize {
        match self {
            Self::Single => 1,
            Self::Batch => BATCH_LEN,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Single => "single",
            Self::Batch => "batch",
        }
    }
}

/// p50, p99, p99.9 and max of a set of latencies, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Percentiles {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    pub fn of(mut latencies_ms: Vec<f64>) -> Option<Self> {
        latencies_ms.sort_by(f64::total_cmp);
        Self::of_sorted(&latencies_ms)
    }

    /// The same of latencies already in ascending order.
    pub fn of_sorted(sorted_ms: &[f64]) -> Option<Self> {
        let at = |p| super::workload::percentile(sorted_ms, p);
        Some(Self {
            p50_ms: at(50.0)?,
            p99_ms: at(99.0)?,
            p999_ms: at(99.9)?,
            max_ms: *sorted_ms.last()?,
        })
    }
}

/// What one step of fixed offered load measured.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// What the step ran against, where a run has more than one (`growth`'s ledgers).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub label: String,
    pub mode: Mode,
    pub offered_per_sec: f64,
    /// Transfers sent (scheduled) in the step.
    pub sent: u64,
    /// Transfers posted per second: posted ÷ (last posted − first scheduled send).
    pub achieved_per_sec: f64,
    /// Requests refused or not answered (transport errors, non-2xx, refused batch items).
    pub errors: u64,
    /// Accepted transfers not seen posted within the wait (failed ones included).
    pub unposted: u64,
    /// From a request's scheduled time to its answer.
    pub intake: Percentiles,
    /// From a transfer's scheduled time to its `transfer.posted` event read from the feed.
    pub to_posted: Percentiles,
    /// Every posted transfer's time to posted, ms, in ascending order: for percentiles over
    /// several steps (`soak`'s first and last five minutes).
    #[serde(skip)]
    pub to_posted_ms: Vec<f64>,
    /// How long ferry took, before the step, to post probe transfers promptly again after
    /// the previous load (0 where not waited for).
    pub quiet_after_secs: f64,
    /// Where the step's transfers spent their time, by ferry's own stage histograms.
    pub stages: Vec<StageTiming>,
    /// The step's posting transactions: each step's mean (`ferry_posting_step_seconds`).
    pub posting_steps: Vec<PostingStepMean>,
}

/// One request's result: when it was due, when answered, and the transfers it got accepted.
struct Answer {
    due: Instant,
    answered: Instant,
    accepted_ids: Vec<String>,
    refused: u64,
}

/// Offers `rate_per_sec` transfers per second from `planner` for `seconds`, then waits until
/// every accepted one is posted (or [`POSTED_TIMEOUT`]). Runs on a ferry whose earlier work is
/// done: the feed is read from its current end.
pub async fn step(
    ferry: &BenchedFerry,
    planner: &mut Planner,
    mode: Mode,
    rate_per_sec: f64,
    seconds: f64,
) -> anyhow::Result<Step> {
    anyhow::ensure!(rate_per_sec > 0.0, "the offered rate must be above zero");
    let per_request = mode.per_request();
    let requests = ((rate_per_sec * seconds) / per_request as f64)
        .ceil()
        .max(1.0) as usize;
    let plan = planner.take((requests * per_request) as u64);
    let feed_after: i64 = sqlx::query_scalar("SELECT coalesce(max(seq), 0) FROM events")
        .fetch_one(ferry.pool())
        .await?;
    let posted = Arc::new(Mutex::new(HashMap::<String, Instant>::new()));
    let (stop_feed, feed_stopped) = tokio::sync::watch::channel(false);
    let endpoint = Endpoint::of(ferry);
    let stages_before = stages::scrape(&endpoint.client, &endpoint.base_url).await;
    let follower = tokio::spawn(follow_feed(
        endpoint.clone(),
        feed_after,
        posted.clone(),
        feed_stopped,
    ));

    let interval = Duration::from_secs_f64(per_request as f64 / rate_per_sec);
    let start = Instant::now() + SCHEDULE_LEAD;
    let mut sends = JoinSet::new();
    let room = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT_MAX));
    for (i, chunk) in plan.chunks(per_request).enumerate() {
        let due = start + interval * u32::try_from(i)?;
        tokio::time::sleep_until(due.into()).await;
        let (endpoint, chunk, room) = (endpoint.clone(), chunk.to_vec(), room.clone());
        sends.spawn(async move {
            let _in_flight = room.acquire_owned().await?;
            send(endpoint, mode, chunk, due).await
        });
    }
    let mut answers = Vec::with_capacity(requests);
    let mut errors = 0u64;
    while let Some(answer) = sends.join_next().await {
        match answer? {
            Ok(answer) => {
                errors += answer.refused;
                answers.push(answer);
            }
            Err(_) => errors += per_request as u64,
        }
    }
    let accepted: usize = answers.iter().map(|a| a.accepted_ids.len()).sum();
    let deadline = Instant::now() + POSTED_TIMEOUT;
    loop {
        let seen = posted.lock().map(|p| p.len()).unwrap_or(0);
        if seen >= accepted || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop_feed.send(true);
    follower.await??;
    let posted = posted.lock().map(|p| p.clone()).unwrap_or_default();
    let stages_after = stages::scrape(&endpoint.client, &endpoint.base_url).await;
    let posting_steps = stages_after.posting_steps_since(&stages_before);
    let stages = stages_after.since(&stages_before);

    let ms = |later: Instant, earlier: Instant| later.duration_since(earlier).as_secs_f64() * 1e3;
    let intake: Vec<f64> = answers.iter().map(|a| ms(a.answered, a.due)).collect();
    let mut to_posted = Vec::with_capacity(accepted);
    let mut last_posted = start;
    for answer in &answers {
        for id in &answer.accepted_ids {
            if let Some(at) = posted.get(id) {
                to_posted.push(ms(*at, answer.due));
                last_posted = last_posted.max(*at);
            }
        }
    }
    to_posted.sort_by(f64::total_cmp);
    let posted_count = to_posted.len() as u64;
    Ok(Step {
        label: String::new(),
        mode,
        offered_per_sec: rate_per_sec,
        sent: plan.len() as u64,
        achieved_per_sec: posted_count as f64
            / last_posted
                .duration_since(start)
                .as_secs_f64()
                .max(f64::EPSILON),
        errors,
        unposted: accepted as u64 - posted_count,
        intake: Percentiles::of(intake).unwrap_or_default(),
        to_posted: Percentiles::of_sorted(&to_posted).unwrap_or_default(),
        to_posted_ms: to_posted,
        quiet_after_secs: 0.0,
        stages,
        posting_steps,
    })
}

/// Where requests go; cheap to clone into each request's task.
#[derive(Clone)]
struct Endpoint {
    client: reqwest::Client,
    base_url: Arc<str>,
    api_key: Arc<str>,
}

impl Endpoint {
    fn of(ferry: &BenchedFerry) -> Self {
        Self {
            client: ferry.client().clone(),
            base_url: ferry.base_url.as_str().into(),
            api_key: ferry.api_key.as_str().into(),
        }
    }
}

async fn send(
    endpoint: Endpoint,
    mode: Mode,
    chunk: Vec<PlannedTransfer>,
    due: Instant,
) -> anyhow::Result<Answer> {
    let base_url = &endpoint.base_url;
    let request = match (mode, chunk.first()) {
        (Mode::Single, Some(t)) => endpoint
            .client
            .post(format!("{base_url}/v1/transfers"))
            .header("Idempotency-Key", &t.key)
            .json(&single(t)),
        _ => endpoint
            .client
            .post(format!("{base_url}/v1/transfers/batch"))
            .json(&json!({"transfers": chunk.iter().map(item).collect::<Vec<_>>()})),
    };
    let response = request.bearer_auth(&*endpoint.api_key).send().await?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    let answered = Instant::now();
    let accepted_ids: Vec<String> = match mode {
        Mode::Single if status.as_u16() == 202 => {
            body["id"].as_str().into_iter().map(str::to_owned).collect()
        }
        Mode::Single => Vec::new(),
        Mode::Batch => body["results"]
            .as_array()
            .map(|results| {
                results
                    .iter()
                    .filter(|r| r["outcome"] == "accepted")
                    .filter_map(|r| r["transfer"]["id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
    };
    Ok(Answer {
        due,
        answered,
        refused: (chunk.len() - accepted_ids.len()) as u64,
        accepted_ids,
    })
}

/// Reads `transfer.posted` events after `after` into `posted` (transfer id → when read) until
/// `stop` turns true.
async fn follow_feed(
    endpoint: Endpoint,
    mut after: i64,
    posted: Arc<Mutex<HashMap<String, Instant>>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    while !*stop.borrow() {
        let page: serde_json::Value = endpoint
            .client
            .get(format!(
                "{}/v1/events?types=transfer.posted&limit=1000&after={after}",
                endpoint.base_url
            ))
            .bearer_auth(&*endpoint.api_key)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let read_at = Instant::now();
        let events = page["events"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        if let Ok(mut posted) = posted.lock() {
            for event in events {
                if let Some(id) = event["data"]["id"].as_str() {
                    posted.entry(id.to_owned()).or_insert(read_at);
                }
            }
        }
        after = page["next_after"].as_i64().unwrap_or(after);
        if events.is_empty() {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(FEED_POLL_IDLE_MS)) => {}
                _ = stop.changed() => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_sorted_latencies_and_max_is_the_largest() {
        let latencies: Vec<f64> = (1..=1000).rev().map(f64::from).collect();
        let p = Percentiles::of(latencies).expect("some");
        assert_eq!(p.p50_ms, 501.0);
        assert_eq!(p.p99_ms, 990.0);
        assert_eq!(p.p999_ms, 999.0);
        assert_eq!(p.max_ms, 1000.0);
        assert!(Percentiles::of(Vec::new()).is_none());
    }
}
