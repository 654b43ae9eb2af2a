//! The operator console (README, "Operator console"): sign-in and sessions, CSRF and
//! same-origin checks, actions through the API's handlers (scopes, audit, once per form), the
//! dead-job API the queue page uses, and the pages driven in headless Chromium.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{ClientBuilder, Locator};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_SECURITY_POLICY, COOKIE, LOCATION, SET_COOKIE};
use serde_json::{Value, json};

use crate::helpers::{TestApp, create_api_key, create_ledger_key, spawn_app_with, transfer};
use ferry::anomaly::settings::LargeAmountRule;
use ferry::domain::RuleAction;

const PAGES: &[&str] = &[
    "/console",
    "/console/transfers",
    "/console/ledgers",
    "/console/reviews",
    "/console/reconciliation",
    "/console/alerts",
    "/console/webhooks",
    "/console/queue",
];

/// Amounts above 100.00 wait for review; the overview samples every 200 ms.
fn console_config(config: &mut ferry::config::Config) {
    config.anomaly.large_amount = LargeAmountRule {
        threshold: "100".parse().expect("decimal"),
        action: RuleAction::Review,
        ..LargeAmountRule::default()
    };
    config.intake.console_refresh = Duration::from_millis(200);
}

async fn console_app() -> TestApp {
    let app = spawn_app_with(console_config).await;
    app.create_account("treasury", "USD", true).await;
    app.create_account("shop", "USD", false).await;
    app
}

/// A client that shows redirects instead of following them, and keeps no cookies.
fn browserless() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

struct Answer {
    status: StatusCode,
    location: Option<String>,
    set_cookie: Option<String>,
    body: String,
}

async fn answer(request: reqwest::RequestBuilder) -> Answer {
    let response = request.send().await.expect("console answers");
    let header = |name| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (location, set_cookie) = (header(LOCATION), header(SET_COOKIE));
    Answer {
        status: response.status(),
        location,
        set_cookie,
        body: response.text().await.expect("body"),
    }
}

async fn post_form(app: &TestApp, path: &str, cookie: Option<&str>, form: &str) -> Answer {
    let mut request = browserless()
        .post(app.url(path))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form.to_owned());
    if let Some(cookie) = cookie {
        request = request.header(COOKIE, cookie);
    }
    answer(request).await
}

async fn get_page(app: &TestApp, path: &str, cookie: &str) -> Answer {
    answer(browserless().get(app.url(path)).header(COOKIE, cookie)).await
}

/// Signs in with `key`; returns the `name=value` of the session cookie.
async fn sign_in(app: &TestApp, key: &str) -> String {
    let signed_in = post_form(app, "/console/login", None, &format!("api_key={key}")).await;
    assert_eq!(
        signed_in.status,
        StatusCode::SEE_OTHER,
        "{}",
        signed_in.body
    );
    let cookie = signed_in.set_cookie.expect("a session cookie");
    cookie.split(';').next().expect("name=value").to_owned()
}

/// The value of hidden field `name` in the form posting to `action` on `page`.
fn form_field(page: &str, action: &str, name: &str) -> String {
    let form = page
        .split("<form")
        .find(|f| f.contains(&format!("action=\"{action}\"")))
        .unwrap_or_else(|| panic!("no form posts to {action}"));
    let marker = format!("name=\"{name}\" value=\"");
    let start = form.find(&marker).expect("field") + marker.len();
    form[start..].split('"').next().expect("value").to_owned()
}

async fn posted_transfer(app: &TestApp, key: &str, amount: &str) -> Value {
    let reply = app
        .post_transfer(key, &transfer("treasury", "shop", amount))
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    let id = reply.body["id"].as_str().expect("id").to_owned();
    app.wait_until_terminal(&id).await
}

/// A posting job killed after it finished: dead, and harmless to retry.
async fn dead_job(app: &TestApp) -> String {
    let started = Instant::now();
    loop {
        let killed: Option<String> = sqlx::query_scalar(
            "UPDATE apalis.jobs SET status = 'Killed' WHERE id = \
               (SELECT id FROM apalis.jobs WHERE job_type = 'ferry.post_transfers' \
                AND status = 'Done' LIMIT 1) RETURNING id",
        )
        .fetch_optional(&app.pool)
        .await
        .expect("kill a job");
        if let Some(id) = killed {
            return id;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no job was acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn audit_count(app: &TestApp, action: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM audit_events WHERE action = $1")
        .bind(action)
        .fetch_one(&app.pool)
        .await
        .expect("count audit events")
}

#[tokio::test]
async fn pages_refuse_without_a_live_session() {
    let app = console_app().await;
    for cookie in [None, Some("ferry_console=not-a-session")] {
        for page in PAGES {
            let mut request = browserless().get(app.url(page));
            if let Some(cookie) = cookie {
                request = request.header(COOKIE, cookie);
            }
            let refused = answer(request).await;
            assert_eq!(refused.status, StatusCode::SEE_OTHER, "{page}");
            assert_eq!(
                refused.location.as_deref(),
                Some("/console/login"),
                "{page}"
            );
            assert!(!refused.body.contains("<main>"), "{page}: {}", refused.body);
        }
    }
    let login = answer(browserless().get(app.url("/console/login"))).await;
    assert_eq!(login.status, StatusCode::OK);

    // A revoked key's sessions end with it.
    let admin = create_api_key(&app.pool, "admin").await;
    let cookie = sign_in(&app, &admin).await;
    assert_eq!(
        get_page(&app, "/console", &cookie).await.status,
        StatusCode::OK
    );
    sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE key_hash = $1")
        .bind(ferry::domain::api_key::hash_api_key(&admin))
        .execute(&app.pool)
        .await
        .expect("revoke");
    let after = get_page(&app, "/console", &cookie).await;
    assert_eq!(after.status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn sign_in_takes_admin_and_viewer_keys_only_and_sets_a_strict_cookie() {
    let app = console_app().await;
    let unknown = post_form(&app, "/console/login", None, "api_key=ferry_nope").await;
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED);
    assert!(unknown.set_cookie.is_none());
    let producer = create_ledger_key(&app.pool, "default", "transfers:write,transfers:read").await;
    let refused = post_form(&app, "/console/login", None, &format!("api_key={producer}")).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(
        refused.body.contains("admin or console:read"),
        "{}",
        refused.body
    );
    assert!(refused.set_cookie.is_none());

    let viewer = create_api_key(&app.pool, "console:read").await;
    let signed_in = post_form(&app, "/console/login", None, &format!("api_key={viewer}")).await;
    assert_eq!(signed_in.status, StatusCode::SEE_OTHER);
    let cookie = signed_in.set_cookie.expect("cookie");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    assert!(
        !cookie.contains("Secure"),
        "loopback: plain HTTP keeps the cookie: {cookie}"
    );
    assert_eq!(audit_count(&app, "console.signed_in").await, 1);

    // Reached by a public name, the cookie is Secure.
    let public = answer(
        browserless()
            .post(app.url("/console/login"))
            .header("host", "ferry.example.com")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("api_key={viewer}")),
    )
    .await;
    assert!(public.set_cookie.expect("cookie").contains("; Secure"));

    // A viewer key is global and alone: no other scope rides along.
    let combined = app
        .post_json(
            "/v1/api-keys",
            &json!({"name": "v", "scopes": ["console:read", "transfers:write"]}),
        )
        .await;
    assert_eq!(
        combined.status,
        StatusCode::BAD_REQUEST,
        "{}",
        combined.body
    );
    assert_eq!(combined.body["code"], "invalid_scope");

    let cookie = sign_in(&app, &viewer).await;
    for page in PAGES {
        let seen = answer(browserless().get(app.url(page)).header(COOKIE, &cookie)).await;
        assert_eq!(seen.status, StatusCode::OK, "{page}: {}", seen.body);
    }
    let page = browserless()
        .get(app.url("/console"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .expect("page");
    let policy = page.headers()[CONTENT_SECURITY_POLICY]
        .to_str()
        .expect("csp");
    assert!(policy.contains("default-src 'none'") && policy.contains("script-src 'self'"));
    assert!(!policy.contains("unsafe-inline"), "{policy}");
}

#[tokio::test]
async fn actions_need_csrf_and_same_origin_and_act_once_per_form() {
    let app = console_app().await;
    let admin = create_api_key(&app.pool, "admin").await;
    let cookie = sign_in(&app, &admin).await;
    let page = get_page(&app, "/console/reconciliation", &cookie)
        .await
        .body;
    let action = "/console/reconciliation/run";
    let csrf = form_field(&page, action, "csrf");
    let nonce = form_field(&page, action, "nonce");
    let runs = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM reconciliation_runs")
            .fetch_one(&app.pool)
            .await
            .expect("count runs")
    };

    let no_csrf = post_form(
        &app,
        action,
        Some(&cookie),
        &format!("nonce={nonce}&ledger="),
    )
    .await;
    assert_eq!(no_csrf.status, StatusCode::FORBIDDEN, "{}", no_csrf.body);
    // One character changed (a token may well start with `x`).
    let other = if csrf.starts_with('x') { 'y' } else { 'x' };
    let wrong = format!("csrf={other}{}&nonce={nonce}&ledger=", &csrf[1..]);
    let wrong_csrf = post_form(&app, action, Some(&cookie), &wrong).await;
    assert_eq!(wrong_csrf.status, StatusCode::FORBIDDEN);
    let form = format!("csrf={csrf}&nonce={nonce}&ledger=");
    let cross_site = answer(
        browserless()
            .post(app.url(action))
            .header(COOKIE, &cookie)
            .header("origin", "https://evil.example")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form.clone()),
    )
    .await;
    assert_eq!(cross_site.status, StatusCode::FORBIDDEN);
    let no_session = post_form(&app, action, None, &form).await;
    assert_eq!(no_session.status, StatusCode::SEE_OTHER);
    assert_eq!(runs().await, 0, "a refused action changed nothing");

    let done = post_form(&app, action, Some(&cookie), &form).await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    let back = done.location.expect("back to the page");
    assert_eq!(back, format!("/console/reconciliation?action={nonce}"));
    let shown = get_page(&app, &back, &cookie).await.body;
    assert!(shown.contains("queued"), "{shown}");
    // The same form sent again (a double click, a reload) shows the outcome and acts no more.
    let again = post_form(&app, action, Some(&cookie), &form).await;
    assert_eq!(again.status, StatusCode::SEE_OTHER);
    assert_eq!(runs().await, 1);
    // Through the API's handler: its audit event, with the signed-in key as the actor.
    let actor: Option<uuid::Uuid> = sqlx::query_scalar(
        "SELECT actor_key_id FROM audit_events WHERE action = 'reconciliation.started'",
    )
    .fetch_one(&app.pool)
    .await
    .expect("audited");
    let admin_id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM api_keys WHERE key_hash = $1")
        .bind(ferry::domain::api_key::hash_api_key(&admin))
        .fetch_one(&app.pool)
        .await
        .expect("key");
    assert_eq!(actor, Some(admin_id));
}

#[tokio::test]
async fn a_viewer_sees_the_review_queue_but_cannot_act() {
    let app = console_app().await;
    let held = posted_transfer(&app, "big", "150.00").await;
    assert_eq!(held["status"], "in_review", "{held}");
    let id = held["id"].as_str().expect("id");
    let viewer = create_api_key(&app.pool, "console:read").await;
    let cookie = sign_in(&app, &viewer).await;
    let page = get_page(&app, "/console/reviews", &cookie).await.body;
    assert!(page.contains(id), "the held transfer is listed");
    assert!(!page.contains("/approve"), "no buttons for a viewer");

    // Even a hand-made form, with the viewer's own CSRF token, is refused by the API's scope.
    let csrf = form_field(&page, "/console/logout", "csrf");
    let form = format!("csrf={csrf}&nonce=viewer-nonce-0000000001");
    let refused = post_form(
        &app,
        &format!("/console/reviews/{id}/approve"),
        Some(&cookie),
        &form,
    )
    .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
    assert!(refused.body.contains("forbidden"), "{}", refused.body);
    let status: String = sqlx::query_scalar("SELECT status FROM transfers WHERE id = $1::uuid")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .expect("status");
    assert_eq!(status, "in_review");
    assert_eq!(audit_count(&app, "transfer.approved").await, 0);
    let frozen = post_form(
        &app,
        "/console/ledgers/default/accounts/shop/freeze",
        Some(&cookie),
        &format!("csrf={csrf}&nonce=viewer-nonce-0000000002"),
    )
    .await;
    assert_eq!(frozen.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn dead_jobs_are_listed_retried_and_discarded_through_the_api() {
    let app = console_app().await;
    posted_transfer(&app, "a", "10.00").await;
    let job = dead_job(&app).await;
    let listed = app.get("/v1/jobs/dead").await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
    assert_eq!(
        listed.body["jobs"][0]["id"],
        job.as_str(),
        "{}",
        listed.body
    );
    assert_eq!(listed.body["jobs"][0]["status"], "Killed");

    let retried = app
        .post_json(&format!("/v1/jobs/{job}/retry"), &json!({}))
        .await;
    assert_eq!(retried.status, StatusCode::OK, "{}", retried.body);
    let again = app
        .post_json(&format!("/v1/jobs/{job}/retry"), &json!({}))
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.body);
    assert_eq!(again.body["code"], "job_not_dead");
    assert_eq!(audit_count(&app, "job.retried").await, 1);
    // The retried job runs again and changes nothing: its transfer is posted already.
    let started = Instant::now();
    loop {
        let status: String = sqlx::query_scalar("SELECT status FROM apalis.jobs WHERE id = $1")
            .bind(&job)
            .fetch_one(&app.pool)
            .await
            .expect("job");
        if status == "Done" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "retried job is {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.count("SELECT count(*) FROM entries").await, 2);

    let job = dead_job(&app).await;
    let reader = create_ledger_key(&app.pool, "default", "transfers:read").await;
    let forbidden = app
        .post_json_as(&reader, &format!("/v1/jobs/{job}/discard"), &json!({}))
        .await;
    assert_eq!(forbidden.status, StatusCode::FORBIDDEN);
    let discarded = app
        .post_json(&format!("/v1/jobs/{job}/discard"), &json!({}))
        .await;
    assert_eq!(discarded.status, StatusCode::OK, "{}", discarded.body);
    let gone = app
        .post_json(&format!("/v1/jobs/{job}/discard"), &json!({}))
        .await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    assert_eq!(gone.body["code"], "job_not_found");
    assert_eq!(audit_count(&app, "job.discarded").await, 1);
    let empty = app.get("/v1/jobs/dead").await;
    assert_eq!(empty.body["jobs"], json!([]));
}

/// A cursor or path id no job could have (a NUL byte PostgreSQL's `text` refuses, bytes
/// outside ASCII, an overlong id) is a clear 400 or 404, never a 500 (schemathesis found
/// `after=%C2%9A%18y%00wr`).
#[tokio::test]
async fn job_ids_no_job_could_have_are_refused_before_the_database() {
    let app = console_app().await;
    for after in [
        "%C2%9A%18y%00wr",
        "abc%00",
        "%C3%A9t%C3%A9",
        "a-b",
        &"A".repeat(65),
    ] {
        let page = app.get(&format!("/v1/jobs/dead?after={after}")).await;
        assert_eq!(
            page.status,
            StatusCode::BAD_REQUEST,
            "{after}: {}",
            page.body
        );
        assert_eq!(page.body["code"], "invalid_body", "{after}");
    }
    let ok = app
        .get("/v1/jobs/dead?after=01JF0000000000000000000000")
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    for id in ["abc%00", "%C2%9A%18y%00wr", "a.b"] {
        for action in ["retry", "discard"] {
            let changed = app
                .post_json(&format!("/v1/jobs/{id}/{action}"), &json!({}))
                .await;
            assert_eq!(
                changed.status,
                StatusCode::NOT_FOUND,
                "{id}: {}",
                changed.body
            );
            assert_eq!(changed.body["code"], "job_not_found");
        }
    }
}

/// chromedriver on a free port, killed (by pid) when dropped.
struct Driver {
    child: Child,
    url: String,
    profile: tempdir::Profile,
}

mod tempdir {
    /// A Chromium profile directory of one test, removed when dropped.
    pub struct Profile(pub std::path::PathBuf);
    impl Drop for Profile {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Drop for Driver {
    /// Kills chromedriver's whole process group: the Chromium it started too, which a failed
    /// test never closed and which would outlive a chromedriver killed alone.
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
    }
}

/// Starts chromedriver, or says why not. CI installs Chromium (`.ci/run`); elsewhere a
/// machine without it skips the browser test, loudly.
fn start_driver() -> Option<Driver> {
    let available = Command::new("chromedriver")
        .arg("--version")
        .output()
        .is_ok();
    if !available {
        assert!(
            std::env::var("CI").is_err(),
            "chromedriver is missing: install Debian's chromium and chromium-driver"
        );
        eprintln!("SKIPPED: the console's browser test needs chromium and chromium-driver");
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    // A process group of its own (led by chromedriver), so `Driver::drop` can kill it whole.
    let child = Command::new("chromedriver")
        .process_group(0)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let profile = std::env::temp_dir().join(format!("ferry-console-{}", uuid::Uuid::now_v7()));
    Some(Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
        profile: tempdir::Profile(profile),
    })
}

/// A headless Chromium session through `driver`, flags as this machine needs them (no
/// network beyond loopback, no sandbox as root, a profile of its own).
async fn open_browser(driver: &Driver) -> fantoccini::Client {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert("browserName".into(), json!("chrome"));
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1400,1000",
                format!("--user-data-dir={}", driver.profile.0.display())],
        }),
    );
    let started = Instant::now();
    loop {
        let connected =
            ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(capabilities.clone())
                .connect(&driver.url)
                .await;
        match connected {
            Ok(browser) => return browser,
            Err(e) if started.elapsed() < Duration::from_secs(20) => {
                tracing::debug!(error = %e, "chromedriver not ready");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("no browser session: {e}"),
        }
    }
}

fn screenshots_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot directory");
    dir
}

#[tokio::test]
async fn the_console_works_in_a_real_browser() {
    let Some(driver) = start_driver() else { return };
    let app = console_app().await;
    let posted = posted_transfer(&app, "paid", "42.00").await;
    assert_eq!(posted["status"], "posted", "{posted}");
    let posted_id = posted["id"].as_str().expect("id").to_owned();
    let held = posted_transfer(&app, "large", "250.00").await;
    let held_id = held["id"].as_str().expect("id").to_owned();
    let job = dead_job(&app).await;
    let admin = create_api_key(&app.pool, "admin").await;

    let browser = open_browser(&driver).await;
    let shots = screenshots_dir();
    let shoot = |name: &'static str| {
        let browser = browser.clone();
        let path = shots.join(format!("{name}.png"));
        async move {
            let png = browser.screenshot().await.expect("screenshot");
            std::fs::write(&path, png).expect("screenshot saved");
        }
    };
    // Waits for `css` (a click that posts a form returns before the next page has loaded) and
    // returns its text.
    let text_of = |css: &'static str| {
        let browser = browser.clone();
        async move {
            let started = Instant::now();
            loop {
                // Found on the page being left, an element goes stale: look again.
                if let Ok(found) = browser.find(Locator::Css(css)).await
                    && let Ok(text) = found.text().await
                {
                    return text;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(15),
                    "no {css} on the page"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    // Reloads `path` until `css`'s text contains `wanted` (the overview is sampled, runs and
    // jobs are worked on in the background).
    let wait_for = |path: String, css: &'static str, wanted: String| {
        let browser = browser.clone();
        let url = app.url(&path);
        async move {
            let started = Instant::now();
            loop {
                browser.goto(&url).await.expect("page");
                let text = match browser.find(Locator::Css(css)).await {
                    Ok(found) => found.text().await.unwrap_or_default(),
                    Err(_) => String::new(),
                };
                if text.contains(&wanted) {
                    return text;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "{path}: {css} shows {text:?}, not {wanted:?}"
                );
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    };

    // Without a session: the sign-in page, nothing else.
    browser
        .goto(&app.url("/console/queue"))
        .await
        .expect("page");
    assert!(
        browser
            .current_url()
            .await
            .expect("url")
            .path()
            .ends_with("/console/login")
    );
    shoot("sign-in").await;
    browser
        .find(Locator::Css("#api_key"))
        .await
        .expect("key field")
        .send_keys(&admin)
        .await
        .expect("typed");
    browser
        .find(Locator::Css("main form button"))
        .await
        .expect("button")
        .click()
        .await
        .expect("signed in");
    let started = Instant::now();
    while browser.find(Locator::Css("#overview")).await.is_err() {
        if started.elapsed() > Duration::from_secs(10) {
            panic!(
                "not signed in: {}",
                browser.source().await.unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(browser.current_url().await.expect("url").path(), "/console");

    // The posted transfer on the overview, then found by search, then its timeline.
    let short: String = posted_id[posted_id.len() - 8..].to_owned();
    let row = wait_for("/console".into(), "main", short.clone()).await;
    assert!(row.contains("posted"), "{row}");
    let recent = text_of("tr[data-transfer]").await;
    assert!(!recent.is_empty());
    shoot("overview").await;
    browser
        .goto(&app.url("/console/transfers"))
        .await
        .expect("page");
    browser
        .find(Locator::Css("input[name=q]"))
        .await
        .expect("search")
        .send_keys(&posted_id)
        .await
        .expect("typed");
    browser
        .find(Locator::Css("form.search button"))
        .await
        .expect("search")
        .click()
        .await
        .expect("searched");
    // The page before the search lists recent transfers too: wait for the search's own.
    let started = Instant::now();
    while !browser
        .current_url()
        .await
        .expect("url")
        .query()
        .is_some_and(|q| q.contains(&posted_id))
    {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "search not sent"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let results = text_of("table").await;
    assert!(
        results.contains("posted") && results.contains("treasury → shop"),
        "{results}"
    );
    assert!(
        !results.contains(&held_id[held_id.len() - 8..]),
        "only the transfer searched for: {results}"
    );
    shoot("transfers").await;
    browser
        .find(Locator::Css("tbody a"))
        .await
        .expect("link")
        .click()
        .await
        .expect("opened");
    let timeline = text_of("#timeline").await;
    for step in ["accepted", "posted to the ledger", "transfer.posted"] {
        assert!(timeline.contains(step), "{step} missing from {timeline}");
    }
    shoot("transfer-timeline").await;

    // Approve the held transfer: it leaves the queue and posts.
    browser
        .goto(&app.url("/console/reviews"))
        .await
        .expect("page");
    shoot("reviews").await;
    let approve = format!("form[action='/console/reviews/{held_id}/approve'] button");
    browser
        .find(Locator::Css(&approve))
        .await
        .expect("approve button")
        .click()
        .await
        .expect("approved");
    let flash = text_of(".flash").await;
    assert!(flash.contains("Approved transfer"), "{flash}");
    let approved = app.wait_until_terminal(&held_id).await;
    assert_eq!(approved["status"], "posted", "{approved}");

    // Run a reconciliation now; the run completes with nothing found.
    browser
        .goto(&app.url("/console/reconciliation"))
        .await
        .expect("page");
    browser
        .find(Locator::Css("#run-now button"))
        .await
        .expect("run now")
        .click()
        .await
        .expect("ran");
    assert!(text_of(".flash").await.contains("queued"));
    let run_link = browser
        .find(Locator::Css("tbody a[href^='/console/reconciliation/']"))
        .await
        .expect("run listed");
    let run_path = run_link.attr("href").await.expect("href").expect("a link");
    wait_for(run_path, "#run-status", "completed".into()).await;
    shoot("reconciliation").await;

    // Retry the dead job: it leaves the dead list.
    browser
        .goto(&app.url("/console/queue"))
        .await
        .expect("page");
    shoot("queue").await;
    let retry = format!("form[action='/console/queue/jobs/{job}/retry'] button");
    browser
        .find(Locator::Css(&retry))
        .await
        .expect("retry button")
        .click()
        .await
        .expect("retried");
    assert!(text_of(".flash").await.contains("back in its queue"));
    let still_dead = browser
        .find(Locator::Css(&format!("tr[data-job='{job}']")))
        .await;
    assert!(still_dead.is_err(), "the retried job is not dead any more");

    // The money pages.
    browser
        .goto(&app.url("/console/ledgers/default/accounts/shop"))
        .await
        .expect("page");
    let balance = text_of("dl.facts").await;
    assert!(
        balance.contains("292.00"),
        "42.00 + 250.00 arrived: {balance}"
    );
    shoot("account").await;
    for (path, name) in [
        ("/console/alerts", "alerts"),
        ("/console/webhooks", "webhooks"),
        ("/console/ledgers", "ledgers"),
    ] {
        browser.goto(&app.url(path)).await.expect("page");
        shoot(name).await;
    }
    browser.close().await.expect("browser closed");
}

#[tokio::test]
async fn the_overview_sample_counts_the_window_exactly() {
    let app = console_app().await;
    let start: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&app.pool)
        .await
        .expect("now");
    for n in 0..5 {
        posted_transfer(&app, &format!("w{n}"), "1.00").await;
    }
    let failed = app
        .post_transfer("bad", &transfer("treasury", "nowhere", "1.00"))
        .await;
    let failed = app
        .wait_until_terminal(failed.body["id"].as_str().expect("id"))
        .await;
    assert_eq!(failed["status"], "failed");
    let held = posted_transfer(&app, "big", "500.00").await;
    assert_eq!(held["status"], "in_review");
    let end: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&app.pool)
        .await
        .expect("now");
    let window_secs = (end - start).num_milliseconds() as f64 / 1_000.0;
    let sampled = ferry::console::overview::sample_window(&app.pool, start, end)
        .await
        .expect("sampled");
    let per_sec = |n: f64| n / window_secs;
    let close = |a: f64, b: f64| (a - b).abs() < 1e-6;
    assert!(
        close(sampled.sample.accepted_per_sec, per_sec(7.0)),
        "{:?}",
        sampled.sample
    );
    assert!(
        close(sampled.sample.posted_per_sec, per_sec(5.0)),
        "{:?}",
        sampled.sample
    );
    assert!(
        close(sampled.sample.failed_per_sec, per_sec(1.0)),
        "{:?}",
        sampled.sample
    );
    let p50 = sampled.sample.ttp_p50_ms.expect("time to posted");
    let p99 = sampled.sample.ttp_p99_ms.expect("time to posted");
    assert!(0.0 < p50 && p50 <= p99 && p99 < 30_000.0, "{p50} {p99}");
    assert_eq!(sampled.sample.backlog, 0);
    assert_eq!(sampled.in_review, 1);
    // Nothing counted twice in the next window, nothing before the first.
    let later =
        ferry::console::overview::sample_window(&app.pool, end, end + chrono::Duration::seconds(5))
            .await
            .expect("sampled");
    assert_eq!(later.sample.accepted_per_sec, 0.0);
    assert_eq!(later.sample.posted_per_sec, 0.0);
    assert_eq!(sampled.recent.len(), 7);
}

/// The README's screenshots (`docs/console/`), taken of a running ferry with some history:
/// `FERRY_CONSOLE_URL=http://127.0.0.1:8080 FERRY_CONSOLE_KEY=ferry_… cargo test --test api
/// readme_screenshots -- --ignored`.
#[tokio::test]
#[ignore = "needs a running ferry with traffic: FERRY_CONSOLE_URL, FERRY_CONSOLE_KEY"]
async fn readme_screenshots() {
    let url = std::env::var("FERRY_CONSOLE_URL").expect("FERRY_CONSOLE_URL");
    let key = std::env::var("FERRY_CONSOLE_KEY").expect("FERRY_CONSOLE_KEY");
    let driver = start_driver().expect("chromedriver");
    let browser = open_browser(&driver).await;
    let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/console");
    std::fs::create_dir_all(&docs).expect("docs/console");
    browser
        .goto(&format!("{url}/console/login"))
        .await
        .expect("page");
    let field = browser
        .find(Locator::Css("#api_key"))
        .await
        .expect("key field");
    field.send_keys(&key).await.expect("typed");
    let button = browser
        .find(Locator::Css("main form button"))
        .await
        .expect("button");
    button.click().await.expect("signed in");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let png = browser.screenshot().await.expect("screenshot");
    std::fs::write(docs.join("overview.png"), png).expect("saved");
    let posted = browser
        .find(Locator::XPath("//tr[td/span[text()='posted']]//a"))
        .await
        .expect("a posted transfer in the latest activity");
    posted.click().await.expect("timeline");
    let png = browser.screenshot().await.expect("screenshot");
    std::fs::write(docs.join("timeline.png"), png).expect("saved");
    browser.close().await.expect("closed");
}

#[tokio::test]
async fn an_admin_freezes_and_unfreezes_an_account_as_the_api_would() {
    let app = console_app().await;
    let admin = create_api_key(&app.pool, "admin").await;
    let cookie = sign_in(&app, &admin).await;
    let account = "/console/ledgers/default/accounts/shop";
    let status = || async {
        sqlx::query_scalar::<_, String>("SELECT status FROM accounts WHERE id = 'shop'")
            .fetch_one(&app.pool)
            .await
            .expect("status")
    };
    for (verb, after) in [("freeze", "frozen"), ("unfreeze", "active")] {
        let page = get_page(&app, account, &cookie).await.body;
        let action = format!("{account}/{verb}");
        let form = format!(
            "csrf={}&nonce={}",
            form_field(&page, &action, "csrf"),
            form_field(&page, &action, "nonce")
        );
        let done = post_form(&app, &action, Some(&cookie), &form).await;
        assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
        assert_eq!(status().await, after);
        let shown = get_page(&app, &done.location.expect("back"), &cookie)
            .await
            .body;
        assert!(shown.contains(&format!("is now {after}")), "{shown}");
    }
    assert_eq!(audit_count(&app, "account.frozen").await, 1);
    assert_eq!(audit_count(&app, "account.unfrozen").await, 1);
    // A frozen account's page offers unfreeze only, an active one's freeze only.
    let page = get_page(&app, account, &cookie).await.body;
    assert!(
        page.contains("/freeze\"") && !page.contains("/unfreeze\""),
        "{page}"
    );
}

/// "N samples" as the overview's footer says it.
fn samples_taken(page: &str) -> u64 {
    let end = page
        .find(" samples, the last took")
        .expect("sample count on the page");
    page[..end]
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a number")
}

#[tokio::test]
async fn open_pages_do_not_add_overview_queries() {
    // One sample a minute: every page view within the minute must read the same sample.
    let app = spawn_app_with(|c| c.intake.console_refresh = Duration::from_secs(60)).await;
    let admin = create_api_key(&app.pool, "admin").await;
    let cookie = sign_in(&app, &admin).await;
    // The sampler's first tick is at start; wait for it to land.
    let started = Instant::now();
    while samples_taken(&get_page(&app, "/console", &cookie).await.body) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no first sample"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let views = (0..100).map(|_| get_page(&app, "/console", &cookie));
    for page in futures::future::join_all(views).await {
        assert_eq!(page.status, StatusCode::OK);
        assert_eq!(samples_taken(&page.body), 1, "a page view sampled");
    }
}
