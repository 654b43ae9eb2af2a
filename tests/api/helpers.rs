//! `spawn_app()`: ferry on port 0 against a fresh, migrated database of its own, with helpers
//! that speak its HTTP API and read its tables.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ferry::app::ShutdownSettings;
use ferry::config::{Config, Roles};
use ferry::db::DatabaseSettings;
use ferry::domain::{LedgerName, Scopes};
use ferry::failpoint::Failpoint;
use ferry::harness::{RunningFerry, ScratchDatabase, spawn_in_process};
use ferry::intake::IntakeSettings;
use ferry::intake::rate_limit::{RateLimit, RedisSettings};
use ferry::intake::serve::HttpSettings;
use ferry::jobs::WorkerSettings;
use ferry::queue::QueueSettings;
use ferry::queue::table::Retention;
use ferry::reconcile::ReconcileSettings;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;

/// Server that test databases are created on. Each test gets its own database.
pub fn server_url() -> String {
    std::env::var("FERRY_TEST_DATABASE_SERVER")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

/// A database of one test, dropped when the test ends.
pub async fn test_database() -> ScratchDatabase {
    ScratchDatabase::create(&server_url(), "ferry_test")
        .await
        .expect("test database created")
}

/// Settings for test apps: a fast heartbeat so orphan recovery takes ~2 s, not 20 s.
pub fn test_config(database_url: &str, roles: Roles) -> Config {
    let queue = QueueSettings {
        heartbeat: Duration::from_secs(1),
        missed_heartbeats: 2,
        ..QueueSettings::default()
    };
    Config {
        roles,
        database: DatabaseSettings {
            url: database_url.to_owned(),
            pool_connections_max: 16,
            acquire_timeout: Duration::from_secs(10),
        },
        redis: RedisSettings {
            url: "redis://127.0.0.1:6379".into(),
        },
        http: HttpSettings {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..HttpSettings::default()
        },
        // Generous: parallel tests share two cores with builds. The outage tests use the
        // production default.
        intake: IntakeSettings {
            committers: 1,
            db_timeout: Duration::from_secs(5),
            ..IntakeSettings::default()
        },
        workers: WorkerSettings {
            posting_workers: 2,
            posting_concurrency: 16,
            queue,
        },
        shutdown: ShutdownSettings {
            grace: Duration::from_secs(2),
        },
        rate_limit: RateLimit {
            per_sec: 0,
            burst: 1,
        },
        reconcile: ReconcileSettings {
            cron: "0 */5 * * * *".into(),
            stuck_after: Duration::from_secs(600),
            stale_review_after: Duration::from_secs(86_400),
            job_rescue_after: Duration::from_secs(60),
            full_scan_every: Duration::from_secs(24 * 3600),
            retention: Retention {
                done: Duration::from_secs(3600),
                dead: Duration::from_secs(7 * 24 * 3600),
                events: Duration::from_secs(30 * 24 * 3600),
                workers: Duration::from_secs(24 * 3600),
            },
        },
        alerts: std::sync::Arc::new(ferry::alerts::config::AlertConfig::default()),
        // On, as in production; its Redis keys are namespaced by the test's database.
        anomaly: ferry::anomaly::settings::AnomalySettings::default(),
        // Local receivers on loopback; quick polling and retries so tests run in seconds.
        webhooks: ferry::webhooks::WebhookSettings {
            allow_insecure: true,
            poll_interval: Duration::from_millis(50),
            retry_base: Duration::from_millis(200),
            timeout: Duration::from_secs(2),
            ..ferry::webhooks::WebhookSettings::default()
        },
        failpoint: Failpoint::None,
    }
}

pub struct TestApp {
    pub address: String,
    pub pool: PgPool,
    pub client: reqwest::Client,
    pub api_key: String,
    /// Held only to stop ferry when the test app is dropped.
    _ferry: RunningFerry,
    // Last: the database goes after the app's connections.
    pub database: ScratchDatabase,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts ferry with `adjust` applied to the test configuration.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut Config)) -> TestApp {
    ferry::telemetry::init_test_logging();
    let database = test_database().await;
    // No scheduler: tests start reconciliation runs themselves.
    let mut config = test_config(
        database.url(),
        Roles {
            scheduler: false,
            ..Roles::ALL
        },
    );
    adjust(&mut config);
    let ferry = spawn_in_process(config).await.expect("ferry builds");
    let port = ferry.port.expect("intake role binds a port");
    let pool = ferry.pool.clone();
    let api_key = create_api_key(&pool, "admin").await;
    TestApp {
        address: format!("http://127.0.0.1:{port}"),
        pool,
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(128)
            .build()
            .expect("client"),
        api_key,
        _ferry: ferry,
        database,
    }
}

/// ferry with the intake role alone: accepted transfers stay pending until a worker starts.
pub async fn spawn_intake_only_app() -> TestApp {
    spawn_app_with(|c| {
        c.roles = Roles {
            intake: true,
            worker: false,
            scheduler: false,
        }
    })
    .await
}

pub async fn create_api_key(pool: &PgPool, scopes: &str) -> String {
    let scopes = Scopes::parse_list(scopes).expect("scopes");
    ferry::store::api_keys::create(pool, "test", &scopes, None)
        .await
        .expect("api key")
        .1
}

/// Creates ledger `name` (ledgers have no API of their own in these tests).
pub async fn create_ledger(pool: &PgPool, name: &str) {
    sqlx::query("INSERT INTO ledgers (name) VALUES ($1)")
        .bind(name)
        .execute(pool)
        .await
        .expect("ledger created");
}

/// A key bound to `ledger` with `scopes` (not `admin`: admin keys are global).
pub async fn create_ledger_key(pool: &PgPool, ledger: &str, scopes: &str) -> String {
    let scopes = Scopes::parse_list(scopes).expect("scopes");
    let ledger = LedgerName::parse(ledger).expect("ledger name");
    ferry::store::api_keys::create(pool, "test", &scopes, Some(&ledger))
        .await
        .expect("api key")
        .1
}

/// Creates account `id` in `ledger` directly in the table, as account creation stores it.
pub async fn create_account_in(
    pool: &PgPool,
    ledger: &str,
    id: &str,
    currency: &str,
    allow_overdraft: bool,
) {
    sqlx::query(
        "INSERT INTO accounts (ledger, id, currency, allow_overdraft) VALUES ($1, $2, $3, $4)",
    )
    .bind(ledger)
    .bind(id)
    .bind(currency)
    .bind(allow_overdraft)
    .execute(pool)
    .await
    .expect("account created");
}

/// The balance of account `id` of `ledger`, as text (`"20.00"`).
pub async fn balance_in(pool: &PgPool, ledger: &str, id: &str) -> String {
    sqlx::query_scalar("SELECT balance::text FROM accounts WHERE ledger = $1 AND id = $2")
        .bind(ledger)
        .bind(id)
        .fetch_one(pool)
        .await
        .expect("account exists")
}

/// Σ balances per (ledger, currency), as `(ledger, currency, total)`, ordered.
pub async fn totals_per_ledger(pool: &PgPool) -> Vec<(String, String, String)> {
    sqlx::query_as(
        "SELECT ledger, currency::text, sum(balance)::text FROM accounts \
         GROUP BY ledger, currency ORDER BY ledger, currency",
    )
    .fetch_all(pool)
    .await
    .expect("totals")
}

/// Starts a worker-only ferry on an existing database (a second process would do the same);
/// it stops when the returned value is dropped.
pub async fn spawn_worker(database_url: &str, adjust: impl FnOnce(&mut Config)) -> RunningFerry {
    let mut config = test_config(
        database_url,
        Roles {
            intake: false,
            worker: true,
            scheduler: false,
        },
    );
    adjust(&mut config);
    spawn_in_process(config).await.expect("worker builds")
}

/// A response read once: status, headers and JSON body.
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        let response = request.send().await.expect("request sent");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("body read");
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Reply {
        self.post_json_as(&self.api_key, path, body).await
    }

    /// `post_json` with another API key (one bound to a ledger, say).
    pub async fn post_json_as(&self, api_key: &str, path: &str, body: &Value) -> Reply {
        self.send(
            self.client
                .post(self.url(path))
                .bearer_auth(api_key)
                .json(body),
        )
        .await
    }

    /// `GET /metrics` as text.
    pub async fn metrics(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }

    /// The value of the series `series` (name and labels, as exported) in `/metrics`, if any.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        self.metrics()
            .await
            .lines()
            .find_map(|line| line.strip_prefix(series))
            .map(|value| value.trim().parse().expect("a number"))
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.get_as(&self.api_key, path).await
    }

    /// `get` with another API key.
    /// Asserts that each `(query, code)` on `path` is refused `400` with that code.
    pub async fn assert_bad_queries(&self, path: &str, cases: &[(&str, &str)]) {
        for (bad, code) in cases {
            let reply = self.get(&format!("{path}{bad}")).await;
            assert_eq!(
                reply.status,
                StatusCode::BAD_REQUEST,
                "{bad}: {}",
                reply.body
            );
            assert_eq!(reply.body["code"], *code, "{bad}");
        }
    }

    pub async fn get_as(&self, api_key: &str, path: &str) -> Reply {
        self.send(self.client.get(self.url(path)).bearer_auth(api_key))
            .await
    }

    pub async fn create_account(&self, id: &str, currency: &str, allow_overdraft: bool) {
        let reply = self
            .post_json(
                "/v1/accounts",
                &json!({"id": id, "currency": currency, "allow_overdraft": allow_overdraft}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    }

    pub async fn post_transfer(&self, key: &str, body: &Value) -> Reply {
        self.post_transfer_as(&self.api_key, key, body).await
    }

    /// `post_transfer` with another API key: the transfer moves money in that key's ledger.
    pub async fn post_transfer_as(&self, api_key: &str, key: &str, body: &Value) -> Reply {
        self.send(
            self.client
                .post(self.url("/v1/transfers"))
                .bearer_auth(api_key)
                .header("Idempotency-Key", key)
                .json(body),
        )
        .await
    }

    pub async fn balance(&self, account: &str) -> String {
        let reply = self.get(&format!("/v1/accounts/{account}")).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        reply.body["balance"].as_str().expect("balance").to_owned()
    }

    /// Waits until no transfer is pending (the queue has drained), up to `timeout`.
    pub async fn run_until_idle(&self, timeout: Duration) {
        let started = Instant::now();
        loop {
            let pending: i64 =
                sqlx::query_scalar("SELECT count(*) FROM transfers WHERE status = 'pending'")
                    .fetch_one(&self.pool)
                    .await
                    .expect("count pending");
            if pending == 0 {
                return;
            }
            assert!(
                started.elapsed() < timeout,
                "{pending} transfers still pending after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until transfer `id` is terminal and returns it.
    pub async fn wait_until_terminal(&self, id: &str) -> Value {
        self.wait_until_terminal_as(&self.api_key, id).await
    }

    /// `wait_until_terminal` for a transfer of another API key (transfers are visible only to
    /// the key that created them).
    pub async fn wait_until_terminal_as(&self, api_key: &str, id: &str) -> Value {
        let started = Instant::now();
        loop {
            let reply = self.get_as(api_key, &format!("/v1/transfers/{id}")).await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
            if reply.body["status"] != "pending" {
                return reply.body;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "still pending");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn count(&self, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&self.pool)
            .await
            .expect("count query")
    }
}

pub fn transfer(from: &str, to: &str, amount: &str) -> Value {
    json!({"from_account": from, "to_account": to, "amount": amount, "currency": "USD"})
}

/// Starts a run over every ledger and the last hour via the API and waits for it to finish.
pub async fn reconcile(app: &TestApp, full: bool) -> Value {
    reconcile_ledger(app, None, full).await
}

/// Starts a run over `ledger` (every ledger when `None`) and the last hour via the API and
/// waits for it to finish.
pub async fn reconcile_ledger(app: &TestApp, ledger: Option<&str>, full: bool) -> Value {
    let now = chrono::Utc::now();
    let mut body = json!({
        "from": (now - chrono::Duration::hours(1)).to_rfc3339(),
        "to": (now + chrono::Duration::minutes(1)).to_rfc3339(),
        "full": full,
    });
    if let Some(ledger) = ledger {
        body["ledger"] = json!(ledger);
    }
    let started = app.post_json("/v1/reconciliations", &body).await;
    assert_eq!(started.status, StatusCode::ACCEPTED, "{}", started.body);
    let id = started.body["id"].as_str().expect("run id").to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let run = app.get(&format!("/v1/reconciliations/{id}")).await;
        assert_eq!(run.status, StatusCode::OK, "{}", run.body);
        match run.body["status"].as_str() {
            Some("completed") => return run.body,
            Some("failed") => panic!("run failed: {}", run.body),
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "run did not finish: {}",
            run.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A finding as [`findings`] lists it: (kind, ledger, subject, severity); the ledger is ""
/// for findings about no one ledger (`job_dead`).
pub type FindingKey = (String, String, String, String);

/// The (kind, ledger, subject, severity) of the findings a run saw (`"findings"`) or resolved
/// (`"resolved"`), sorted.
pub fn findings_in(run: &Value, list: &str) -> Vec<FindingKey> {
    let mut found: Vec<_> = run[list]
        .as_array()
        .expect("findings")
        .iter()
        .map(|f| {
            let text = |k: &str| f[k].as_str().unwrap_or_default().to_owned();
            (
                text("kind"),
                text("ledger"),
                text("subject"),
                text("severity"),
            )
        })
        .collect();
    found.sort();
    found
}

/// The (kind, ledger, subject, severity) of the findings a run saw, sorted.
pub fn findings(run: &Value) -> Vec<FindingKey> {
    findings_in(run, "findings")
}
