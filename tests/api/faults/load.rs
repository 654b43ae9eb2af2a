//! Paced load as producers send it: each client posts transfers at a fixed pace, retries a
//! `503` with the same Idempotency-Key after `Retry-After` (as a producer should), and records
//! every status it saw and the longest it waited for an answer.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::watch;
use uuid::Uuid;

/// Accounts that receive money; the treasury may go negative, so every transfer posts.
pub const RECEIVERS: usize = 16;
/// A client gives up on a request after this long; the suite asserts none comes close.
const CLIENT_TIMEOUT_MS: u64 = 15_000;
/// Longest pause a client honours from `Retry-After`, so load resumes soon after recovery.
const RETRY_AFTER_MS_MAX: u64 = 2_000;

#[derive(Debug, Default)]
pub struct LoadReport {
    /// Transfers answered `202` or `200`: acknowledged.
    pub acknowledged: Vec<Uuid>,
    /// How many answers of each kind (`"202"`, `"503"`, `"connect error"`, …).
    pub statuses: BTreeMap<String, usize>,
    pub longest_wait: Duration,
    /// Bodies of answers that were neither success nor `503` (should stay empty).
    pub unexpected: Vec<String>,
}

impl LoadReport {
    fn merge(&mut self, other: LoadReport) {
        self.acknowledged.extend(other.acknowledged);
        for (status, n) in other.statuses {
            *self.statuses.entry(status).or_default() += n;
        }
        self.longest_wait = self.longest_wait.max(other.longest_wait);
        self.unexpected.extend(other.unexpected);
    }
}

pub struct Producer {
    pub address: String,
    pub api_key: String,
    pub client: reqwest::Client,
}

impl Producer {
    pub fn new(address: &str, api_key: &str) -> Self {
        Self {
            address: address.to_owned(),
            api_key: api_key.to_owned(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_millis(CLIENT_TIMEOUT_MS))
                .build()
                .expect("client"),
        }
    }

    pub async fn create_accounts(&self) {
        let mut accounts =
            vec![json!({"id": "treasury", "currency": "USD", "allow_overdraft": true})];
        accounts.extend((0..RECEIVERS).map(|n| json!({"id": format!("r{n}"), "currency": "USD"})));
        for account in accounts {
            let response = self
                .client
                .post(format!("{}/v1/accounts", self.address))
                .bearer_auth(&self.api_key)
                .json(&account)
                .send()
                .await
                .expect("create account");
            assert_eq!(response.status(), StatusCode::CREATED);
        }
    }

    /// Runs `clients` clients at `rate_per_sec` in all until `stop` turns true.
    pub async fn run(
        self: Arc<Self>,
        clients: usize,
        rate_per_sec: u64,
        stop: watch::Receiver<bool>,
    ) -> LoadReport {
        let report = Arc::new(Mutex::new(LoadReport::default()));
        let period = Duration::from_secs_f64(clients as f64 / rate_per_sec as f64);
        let tasks: Vec<_> = (0..clients)
            .map(|client| {
                let producer = self.clone();
                let stop = stop.clone();
                let report = report.clone();
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(period);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    let mut n = 0usize;
                    while !*stop.borrow() {
                        tick.tick().await;
                        let body = json!({
                            "from_account": "treasury",
                            "to_account": format!("r{}", (client + n) % RECEIVERS),
                            "amount": "1.00",
                            "currency": "USD",
                        });
                        n += 1;
                        let own = producer.send_until_answered(&body, &stop).await;
                        report.lock().expect("report").merge(own);
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("client task");
        }
        Arc::try_unwrap(report)
            .expect("clients done")
            .into_inner()
            .expect("report")
    }

    /// One transfer: sent, and re-sent with the same key after each `503` or broken
    /// connection, until it is acknowledged, refused, or the load stops.
    async fn send_until_answered(&self, body: &Value, stop: &watch::Receiver<bool>) -> LoadReport {
        let mut report = LoadReport::default();
        let key = Uuid::new_v4().to_string();
        loop {
            let started = Instant::now();
            let sent = self
                .client
                .post(format!("{}/v1/transfers", self.address))
                .bearer_auth(&self.api_key)
                .header("Idempotency-Key", &key)
                .json(body)
                .send()
                .await;
            report.longest_wait = report.longest_wait.max(started.elapsed());
            let retry_in = match sent {
                Ok(response) => {
                    let status = response.status();
                    *report
                        .statuses
                        .entry(status.as_str().to_owned())
                        .or_default() += 1;
                    let retry_after_secs = response
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok());
                    let text = response.text().await.unwrap_or_default();
                    if status == StatusCode::ACCEPTED || status == StatusCode::OK {
                        let transfer: Value = serde_json::from_str(&text).unwrap_or_default();
                        let id = transfer["id"].as_str().and_then(|id| id.parse().ok());
                        report
                            .acknowledged
                            .push(id.expect("an acknowledged transfer has an id"));
                        return report;
                    }
                    if status != StatusCode::SERVICE_UNAVAILABLE {
                        report.unexpected.push(format!("{status}: {text}"));
                        return report;
                    }
                    if retry_after_secs.is_none() {
                        report
                            .unexpected
                            .push(format!("503 without Retry-After: {text}"));
                    }
                    Duration::from_millis(
                        (retry_after_secs.unwrap_or(1) * 1_000).min(RETRY_AFTER_MS_MAX),
                    )
                }
                Err(error) => {
                    let kind = if error.is_timeout() {
                        "timeout"
                    } else {
                        "connect error"
                    };
                    *report.statuses.entry(kind.to_owned()).or_default() += 1;
                    Duration::from_millis(500)
                }
            };
            if *stop.borrow() {
                return report;
            }
            tokio::time::sleep(retry_in).await;
        }
    }
}
