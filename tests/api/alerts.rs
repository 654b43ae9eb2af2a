//! Alert delivery against real HTTP receivers on loopback.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use ferry::alerts::config::{AlertConfig, decode_webhook_secret};
use ferry::alerts::payload::{Action, sign};
use ferry::alerts::{finding_event, outbox};
use ferry::domain::Severity;
use serde_json::Value;

use crate::helpers::{TestApp, findings, reconcile, spawn_app_with, transfer};

const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

#[derive(Clone)]
struct Received {
    at: Instant,
    headers: HeaderMap,
    body: Bytes,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// A receiver answering from a script of (status, Retry-After), then 200s.
struct Receiver {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    async fn start(script: Vec<(u16, Option<&'static str>)>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        Self::serve(listener, script)
    }

    fn serve(listener: tokio::net::TcpListener, script: Vec<(u16, Option<&'static str>)>) -> Self {
        let addr = listener.local_addr().expect("addr");
        let received = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(VecDeque::from(script)));
        let log = received.clone();
        let app = axum::Router::new().fallback(move |headers: HeaderMap, body: Bytes| {
            let log = log.clone();
            let script = script.clone();
            async move {
                if let Ok(mut log) = log.lock() {
                    log.push(Received {
                        at: Instant::now(),
                        headers,
                        body,
                    });
                }
                let (status, retry_after) = script
                    .lock()
                    .ok()
                    .and_then(|mut s| s.pop_front())
                    .unwrap_or((200, None));
                let mut response_headers = HeaderMap::new();
                if let Some(value) = retry_after {
                    response_headers.insert("retry-after", value.parse().expect("header"));
                }
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
                (status, response_headers, "ok")
            }
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, received }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().map(|r| r.clone()).unwrap_or_default()
    }

    async fn wait_for(&self, count: usize, within: Duration) -> Vec<Received> {
        let deadline = Instant::now() + within;
        loop {
            let received = self.received();
            if received.len() >= count {
                return received;
            }
            assert!(
                Instant::now() < deadline,
                "got {} of {count} requests",
                received.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn config(toml: &str) -> Arc<AlertConfig> {
    Arc::new(AlertConfig::parse(toml, &|_| None).expect("alert config"))
}

async fn app_with(alerts: &Arc<AlertConfig>) -> TestApp {
    let alerts = alerts.clone();
    spawn_app_with(move |c| c.alerts = alerts).await
}

async fn raise(app: &TestApp, alerts: &AlertConfig, kind: &str) {
    let event = finding_event(
        Action::Trigger,
        kind,
        Some("default"),
        "account:a",
        Severity::Critical,
        "test",
    );
    let mut tx = app.pool.begin().await.expect("tx");
    outbox::raise(&mut tx, alerts, &event, None)
        .await
        .expect("raise");
    tx.commit().await.expect("commit");
}

async fn delivery_state(app: &TestApp) -> Value {
    let reply = app.get("/v1/alerts").await;
    assert_eq!(reply.status, reqwest::StatusCode::OK, "{}", reply.body);
    reply.body["alerts"][0]["deliveries"][0].clone()
}

fn webhook_sink(url: &str, extra: &str) -> String {
    format!(
        "[[alerts.sinks]]\nkind = \"webhook\"\nname = \"ops\"\nurl = \"{url}\"\n\
         secret = \"{SECRET}\"\ntimeout_ms = 2000\n{extra}\n"
    )
}

#[tokio::test]
async fn a_signed_webhook_is_retried_after_503s_with_the_same_id_and_delivered_on_attempt_3() {
    let receiver = Receiver::start(vec![(503, None), (503, None)]).await;
    let alerts = config(&webhook_sink(&receiver.url(), ""));
    let app = app_with(&alerts).await;
    raise(&app, &alerts, "balance_drift").await;
    let received = receiver.wait_for(3, Duration::from_secs(20)).await;
    let ids: Vec<_> = received
        .iter()
        .map(|r| r.headers["webhook-id"].clone())
        .collect();
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "webhook-id changed: {ids:?}"
    );
    let key = decode_webhook_secret(SECRET).expect("key");
    for request in &received {
        let id = request.headers["webhook-id"].to_str().expect("id");
        let timestamp: i64 = request.headers["webhook-timestamp"]
            .to_str()
            .ok()
            .and_then(|t| t.parse().ok())
            .expect("timestamp");
        assert!((chrono::Utc::now().timestamp() - timestamp).abs() < 300);
        let signature = request.headers["webhook-signature"]
            .to_str()
            .expect("signature");
        assert_eq!(signature, sign(&key, id, timestamp, &request.body));
    }
    let body = received[2].json();
    assert_eq!(body["type"], "reconciliation.balance_drift");
    assert!(body["timestamp"].is_string());
    assert_eq!(body["data"]["action"], "trigger");
    assert_eq!(body["data"]["severity"], "critical");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let delivery = delivery_state(&app).await;
    assert_eq!(delivery["status"], "delivered", "{delivery}");
    assert_eq!(delivery["attempts"], 3);
    assert_eq!(receiver.received().len(), 3, "nothing after delivery");
    let attempts = app.count("SELECT count(*) FROM alert_attempts").await;
    assert_eq!(attempts, 3);
}

#[tokio::test]
async fn a_429_is_retried_no_sooner_than_retry_after() {
    // The first retry's own backoff is at most 1 s (full jitter under a 1 s ceiling,
    // jobs/deliver_alert.rs), due at most a second later once apalis rounds it up to a whole
    // second (src/queue/mod.rs): a retry at 5 s or later can only come from `Retry-After`.
    let receiver = Receiver::start(vec![(429, Some("5"))]).await;
    let alerts = config(&webhook_sink(&receiver.url(), ""));
    let app = app_with(&alerts).await;
    raise(&app, &alerts, "job_dead").await;
    let received = receiver.wait_for(2, Duration::from_secs(20)).await;
    let gap = received[1].at - received[0].at;
    assert!(gap >= Duration::from_secs(5), "retried after {gap:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(delivery_state(&app).await["status"], "delivered");
}

#[tokio::test]
async fn a_400_is_permanent_and_not_retried() {
    let receiver = Receiver::start(vec![(400, None)]).await;
    let alerts = config(&webhook_sink(&receiver.url(), ""));
    let app = app_with(&alerts).await;
    raise(&app, &alerts, "double_posted").await;
    receiver.wait_for(1, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(receiver.received().len(), 1, "a 400 must not be retried");
    let delivery = delivery_state(&app).await;
    assert_eq!(delivery["status"], "failed");
    assert_eq!(delivery["attempts"], 1);
    assert_eq!(delivery["last_status"], 400);
    assert!(
        delivery["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("400"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_is_down_opens_the_circuit_and_recovery_closes_it() {
    // A port with nothing listening: connection refused.
    let down = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let down_addr = down.local_addr().expect("addr");
    drop(down);
    let watcher = Receiver::start(vec![]).await;
    let alerts = config(&format!(
        "[alerts.breaker]\nwindow = 2\nmin_calls = 2\nfailure_ratio = 0.5\nopen_ms = 1500\n\n\
         [[alerts.sinks]]\nkind = \"webhook\"\nname = \"flaky\"\nurl = \"http://{down_addr}/hook\"\n\
         secret = \"{SECRET}\"\ntimeout_ms = 1000\n\n\
         [[alerts.sinks]]\nkind = \"webhook\"\nname = \"watcher\"\nurl = \"{}\"\n\
         secret = \"{SECRET}\"\n",
        watcher.url()
    ));
    let app = app_with(&alerts).await;
    raise(&app, &alerts, "balance_drift").await;
    raise(&app, &alerts, "orphan_entry").await;
    // The watcher gets both alerts, then the flaky sink's circuit-open alert.
    let deadline = Instant::now() + Duration::from_secs(20);
    let opened = loop {
        let circuit: Vec<Value> = watcher
            .received()
            .iter()
            .map(Received::json)
            .filter(|b| b["type"] == "alerts.sink_circuit")
            .collect();
        if let Some(first) = circuit.first() {
            break first.clone();
        }
        assert!(Instant::now() < deadline, "circuit never opened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(opened["data"]["action"], "trigger");
    assert!(
        opened["data"]["summary"]
            .as_str()
            .unwrap_or_default()
            .contains("flaky")
    );
    // The receiver comes back on the same address; the half-open probe closes the circuit.
    let back = tokio::net::TcpListener::bind(down_addr)
        .await
        .expect("rebind");
    let flaky = Receiver::serve(back, vec![]);
    let resolved = loop {
        let resolve: Vec<Value> = watcher
            .received()
            .iter()
            .map(Received::json)
            .filter(|b| b["type"] == "alerts.sink_circuit" && b["data"]["action"] == "resolve")
            .collect();
        if let Some(first) = resolve.first() {
            break first.clone();
        }
        assert!(
            Instant::now() < deadline + Duration::from_secs(20),
            "circuit never closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(resolved["data"]["dedup_key"], opened["data"]["dedup_key"]);
    // The alerts held back while the circuit was open reach the sink once it is back.
    flaky.wait_for(2, Duration::from_secs(30)).await;
}

#[tokio::test]
async fn a_finding_triggers_once_and_its_repair_resolves_with_the_same_dedup_key() {
    let pagerduty = Receiver::start(vec![]).await;
    let slack = Receiver::start(vec![]).await;
    let alerts = config(&format!(
        "[[alerts.sinks]]\nkind = \"pagerduty\"\nurl = \"{}\"\nrouting_key = \"R0UTINGKEY\"\n\
         min_severity = \"critical\"\n\n\
         [[alerts.sinks]]\nkind = \"slack\"\nurl = \"{}\"\nmin_severity = \"medium\"\n",
        pagerduty.url(),
        slack.url()
    ));
    let app = app_with(&alerts).await;
    app.create_account("treasury", "USD", true).await;
    app.create_account("b", "USD", false).await;
    app.post_transfer("k", &transfer("treasury", "b", "5.00"))
        .await;
    app.run_until_idle(Duration::from_secs(20)).await;
    sqlx::query("UPDATE accounts SET balance = balance + 1 WHERE ledger = 'default' AND id = 'b'")
        .execute(&app.pool)
        .await
        .expect("corrupt");
    let run = reconcile(&app, false).await;
    assert_eq!(findings(&run).len(), 1);
    reconcile(&app, false).await; // still open: no second trigger
    let triggers = pagerduty.wait_for(1, Duration::from_secs(20)).await;
    let trigger = triggers[0].json();
    assert_eq!(trigger["event_action"], "trigger");
    assert_eq!(trigger["routing_key"], "R0UTINGKEY");
    assert_eq!(trigger["payload"]["source"], "ferry");
    assert_eq!(trigger["payload"]["severity"], "critical");
    let summary = trigger["payload"]["summary"].as_str().unwrap_or_default();
    assert!(
        summary.contains("balance_drift") && summary.len() <= 1024,
        "{summary}"
    );
    assert_eq!(trigger["payload"]["custom_details"]["subject"], "account:b");
    assert_eq!(trigger["payload"]["custom_details"]["ledger"], "default");
    // `default`'s findings keep the dedup key they had before ledgers existed.
    assert_eq!(
        trigger["dedup_key"],
        "ferry:finding:balance_drift:account:b"
    );
    let slack_message = slack.wait_for(1, Duration::from_secs(20)).await[0].json();
    assert!(
        slack_message["text"]
            .as_str()
            .unwrap_or_default()
            .contains("balance_drift")
    );
    assert!(
        slack_message["blocks"]
            .as_array()
            .is_some_and(|b| !b.is_empty())
    );
    sqlx::query("UPDATE accounts SET balance = balance - 1 WHERE ledger = 'default' AND id = 'b'")
        .execute(&app.pool)
        .await
        .expect("repair");
    reconcile(&app, false).await;
    let all = pagerduty.wait_for(2, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(pagerduty.received().len(), 2, "one trigger, one resolve");
    let resolve = all[1].json();
    assert_eq!(resolve["event_action"], "resolve");
    assert_eq!(resolve["dedup_key"], trigger["dedup_key"]);
    let listed = app.get("/v1/alerts").await;
    let listed = listed.body["alerts"].as_array().expect("alerts").clone();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0]["action"], "resolve");
    assert_eq!(listed[0]["deliveries"].as_array().map(Vec::len), Some(2));
}

#[tokio::test]
async fn ferry_alerts_test_reports_each_sink_and_fails_on_a_refusal() {
    let good = Receiver::start(vec![]).await;
    let refusing = Receiver::start(vec![(400, None)]).await;
    let dir = std::env::temp_dir().join(format!("ferry-alerts-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("dir");
    let run = |toml: String| {
        let path = dir.join(format!("{}.toml", uuid::Uuid::new_v4()));
        std::fs::write(&path, toml).expect("config");
        async move {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
                .args(["alerts", "test"])
                .env("FERRY_CONFIG", &path)
                .env("RUST_LOG", "warn")
                .output()
                .await
                .expect("ferry alerts test runs")
        }
    };
    let ok = run(webhook_sink(&good.url(), "")).await;
    let report = String::from_utf8_lossy(&ok.stdout).into_owned();
    assert!(ok.status.success(), "{report}");
    assert!(
        report.contains("ops") && report.contains("delivered HTTP 200"),
        "{report}"
    );
    assert_eq!(good.received().len(), 2, "a trigger and its resolve");
    assert_eq!(good.received()[0].json()["type"], "ferry.test");
    let failed = run(webhook_sink(&refusing.url(), "")).await;
    let report = String::from_utf8_lossy(&failed.stdout).into_owned();
    assert!(!failed.status.success(), "{report}");
    assert!(report.contains("REFUSED"), "{report}");
}

#[tokio::test]
async fn an_invalid_alert_config_stops_ferry_at_start_naming_the_sink_and_field() {
    let path = std::env::temp_dir().join(format!("ferry-bad-{}.toml", uuid::Uuid::new_v4()));
    std::fs::write(
        &path,
        "[[alerts.sinks]]\nkind = \"pagerduty\"\nrouting_key = \"${FERRY_TEST_UNSET_KEY}\"\n",
    )
    .expect("config");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["serve"])
        .env("FERRY_CONFIG", &path)
        .output()
        .await
        .expect("ferry runs");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success());
    assert!(stderr.contains("alerts.sinks[0] (pagerduty)"), "{stderr}");
    assert!(stderr.contains("routing_key"), "{stderr}");
}
