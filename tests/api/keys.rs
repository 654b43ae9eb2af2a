//! API keys and ledgers (README, "Ledgers and authorization"): created, listed and revoked over
//! HTTP and through the CLI; revocation and expiry reach every process within 10 s; last use
//! is written at most once a minute; bad requests store nothing; secrets never reach a log.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry::config::Roles;
use ferry::harness::{RunningFerry, spawn_in_process};
use ferry::store::api_keys::{CACHE_TTL_MS, REVOCATION_BOUND_MS};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{Reply, TestApp, spawn_app, test_config};

/// A second ferry (intake only) on `app`'s database, as another process would be; its base URL.
pub async fn second_process(app: &TestApp) -> (RunningFerry, String) {
    let config = test_config(
        app.database.url(),
        Roles {
            intake: true,
            worker: false,
            scheduler: false,
        },
    );
    let ferry = spawn_in_process(config).await.expect("second ferry builds");
    let port = ferry.port.expect("intake port");
    (ferry, format!("http://127.0.0.1:{port}"))
}

/// `GET {base}{path}` with `key`.
pub async fn get_as(app: &TestApp, base: &str, key: &str, path: &str) -> Reply {
    app.send(app.client.get(format!("{base}{path}")).bearer_auth(key))
        .await
}

pub async fn create_key(app: &TestApp, body: &Value) -> Reply {
    app.post_json("/v1/api-keys", body).await
}

/// Creates a key over HTTP and returns (id, secret, the answer's body).
pub async fn new_key(app: &TestApp, body: &Value) -> (String, String, Value) {
    let reply = create_key(app, body).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let id = reply.body["id"].as_str().expect("id").to_owned();
    let secret = reply.body["key"].as_str().expect("key").to_owned();
    (id, secret, reply.body)
}

pub async fn revoke(app: &TestApp, id: &str) -> Reply {
    app.send(
        app.client
            .delete(app.url(&format!("/v1/api-keys/{id}")))
            .bearer_auth(&app.api_key),
    )
    .await
}

/// The id of the test app's own admin key.
pub async fn own_key_id(app: &TestApp) -> Uuid {
    sqlx::query_scalar("SELECT id FROM api_keys WHERE key_hash = $1")
        .bind(ferry::domain::api_key::hash_api_key(&app.api_key))
        .fetch_one(&app.pool)
        .await
        .expect("own key")
}

/// Runs the built `ferry` with `args` against `app`'s database, logging everything to stderr.
pub async fn ferry_cli(app: &TestApp, args: &[&str]) -> std::process::Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("FERRY_") {
            command.env_remove(name);
        }
    }
    command
        .args(args)
        .env("DATABASE_URL", app.database.url())
        .env("RUST_LOG", "trace")
        .kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("ferry finishes")
        .expect("ferry runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn an_admin_creates_lists_and_revokes_keys_over_http() {
    let app = spawn_app().await;
    let created = app.post_json("/v1/ledgers", &json!({"name": "shop"})).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let (id, secret, body) = new_key(
        &app,
        &json!({"name": "shop reader", "scopes": ["accounts:read", "transfers:read"],
                "ledger": "shop", "expires_in_secs": 3600}),
    )
    .await;
    assert!(
        secret.starts_with("ferry_") && secret.len() == 70,
        "{secret}"
    );
    assert_eq!(body["name"], "shop reader");
    assert_eq!(body["ledger"], "shop");
    assert_eq!(body["scopes"], json!(["accounts:read", "transfers:read"]));
    assert!(body["revoked_at"].is_null() && body["last_used_at"].is_null());
    let expires: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(body["expires_at"].clone()).expect("expires_at");
    let from_now = expires - chrono::Utc::now();
    assert!(
        (3590..=3600).contains(&from_now.num_seconds()),
        "{from_now}"
    );

    // The key authenticates: an admin route is forbidden to it, not unauthorized.
    let reply = get_as(&app, &app.address, &secret, "/v1/ledgers").await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.body);

    // A key without a ledger is bound to `default`; an admin key is global.
    let (_, _, plain) = new_key(&app, &json!({"name": "p", "scopes": ["transfers:write"]})).await;
    assert_eq!(plain["ledger"], "default");
    let (_, _, admin) = new_key(&app, &json!({"name": "a", "scopes": ["admin"]})).await;
    assert!(admin["ledger"].is_null());

    // Listed newest first, never with a secret or a hash.
    let listed = app.get("/v1/api-keys").await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
    let keys = listed.body["api_keys"].as_array().expect("keys");
    assert_eq!(keys.len(), 4, "{}", listed.body);
    assert_eq!(keys[2]["id"], id.as_str());
    assert_eq!(keys[3]["name"], "test");
    let raw = listed.body.to_string();
    assert!(!raw.contains(&secret) && !raw.contains(&app.api_key));
    for key in keys {
        assert!(
            key.get("key").is_none() && key.get("key_hash").is_none(),
            "{key}"
        );
    }
    let page = app.get("/v1/api-keys?limit=3").await;
    let cursor = page.body["next_cursor"]
        .as_str()
        .expect("a full page has a cursor");
    let rest = app
        .get(&format!("/v1/api-keys?limit=3&cursor={cursor}"))
        .await;
    assert_eq!(rest.body["api_keys"].as_array().map(Vec::len), Some(1));
    assert_eq!(rest.body["api_keys"][0]["name"], "test");

    // Revoked: refused by this process at once; a second revocation is a conflict.
    let revoked = revoke(&app, &id).await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.body);
    assert!(revoked.body["revoked_at"].is_string(), "{}", revoked.body);
    let reply = get_as(&app, &app.address, &secret, "/v1/ledgers").await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.body);
    let again = revoke(&app, &id).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.body);
    assert_eq!(again.body["code"], "key_revoked");
    for unknown in [Uuid::now_v7().to_string(), "not-a-key".to_owned()] {
        let reply = revoke(&app, &unknown).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.body);
        assert_eq!(reply.body["code"], "key_not_found");
    }

    // A key cannot revoke itself, and keeps working.
    let own = revoke(&app, &own_key_id(&app).await.to_string()).await;
    assert_eq!(own.status, StatusCode::CONFLICT, "{}", own.body);
    assert_eq!(own.body["code"], "cannot_revoke_own_key");
    assert_eq!(app.get("/v1/api-keys").await.status, StatusCode::OK);
    assert_eq!(
        app.count("SELECT count(*) FROM api_keys WHERE revoked_at IS NOT NULL")
            .await,
        1
    );
}

#[tokio::test]
async fn bad_key_requests_are_refused_with_a_clear_code_and_store_nothing() {
    let app = spawn_app().await;
    let long_name = "x".repeat(201);
    let cases = [
        (
            json!({"name": "k", "scopes": ["transfers:read"], "ledger": "nope"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "ledger_not_found",
        ),
        (
            json!({"name": "k", "scopes": ["transfers:read"], "ledger": "Shop!"}),
            StatusCode::BAD_REQUEST,
            "invalid_ledger",
        ),
        (
            json!({"name": "k", "scopes": ["admin"], "ledger": "default"}),
            StatusCode::BAD_REQUEST,
            "admin_key_with_ledger",
        ),
        (
            json!({"name": "k", "scopes": ["admin"], "expires_in_secs": 0}),
            StatusCode::BAD_REQUEST,
            "invalid_expiry",
        ),
        (
            json!({"name": "k", "scopes": ["admin"], "expires_in_secs": -60}),
            StatusCode::BAD_REQUEST,
            "invalid_expiry",
        ),
        (
            json!({"name": "k", "scopes": ["admin"], "expires_in_secs": 315_360_001}),
            StatusCode::BAD_REQUEST,
            "invalid_expiry",
        ),
        (
            json!({"name": "k", "scopes": ["admin"], "expires_in_secs": i64::MAX}),
            StatusCode::BAD_REQUEST,
            "invalid_expiry",
        ),
        (
            json!({"name": "k", "scopes": ["admin"], "expires_in_secs": 1e30}),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            json!({"name": "k", "scopes": ["admin"], "expires_in_secs": 1.5}),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            json!({"name": "k", "scopes": []}),
            StatusCode::BAD_REQUEST,
            "invalid_scope",
        ),
        (
            json!({"name": "k", "scopes": ["root"]}),
            StatusCode::BAD_REQUEST,
            "invalid_scope",
        ),
        (
            json!({"name": "", "scopes": ["admin"]}),
            StatusCode::BAD_REQUEST,
            "invalid_key_name",
        ),
        (
            json!({"name": "a\nb", "scopes": ["admin"]}),
            StatusCode::BAD_REQUEST,
            "invalid_key_name",
        ),
        (
            json!({"name": "a\u{0}b", "scopes": ["admin"]}),
            StatusCode::BAD_REQUEST,
            "invalid_key_name",
        ),
        (
            json!({"name": long_name, "scopes": ["admin"]}),
            StatusCode::BAD_REQUEST,
            "invalid_key_name",
        ),
        (
            json!({"name": "k", "scopes": ["admin"], "key": "ferry_mine"}),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            json!({"scopes": ["admin"]}),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
    ];
    for (body, status, code) in cases {
        let reply = create_key(&app, &body).await;
        assert_eq!(reply.status, status, "{body}: {}", reply.body);
        assert_eq!(reply.body["code"], code, "{body}: {}", reply.body);
    }
    // Only the test's own key, the `default` ledger, and the key's creation event.
    assert_eq!(app.count("SELECT count(*) FROM api_keys").await, 1);
    assert_eq!(app.count("SELECT count(*) FROM ledgers").await, 1);
    assert_eq!(app.count("SELECT count(*) FROM audit_events").await, 1);

    // Without the admin scope nothing is created, listed or revoked.
    let (id, writer, _) = new_key(&app, &json!({"name": "w", "scopes": ["transfers:write"]})).await;
    for reply in [
        app.send(
            app.client
                .post(app.url("/v1/api-keys"))
                .bearer_auth(&writer)
                .json(&json!({"name": "k", "scopes": ["admin"]})),
        )
        .await,
        app.send(app.client.get(app.url("/v1/api-keys")).bearer_auth(&writer))
            .await,
        app.send(
            app.client
                .delete(app.url(&format!("/v1/api-keys/{id}")))
                .bearer_auth(&writer),
        )
        .await,
    ] {
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.body);
    }
    assert_eq!(app.count("SELECT count(*) FROM api_keys").await, 2);
    assert_eq!(
        app.count("SELECT count(*) FROM api_keys WHERE revoked_at IS NOT NULL")
            .await,
        0
    );
}

#[tokio::test]
async fn ledgers_are_created_once_and_listed_by_name() {
    let app = spawn_app().await;
    for name in ["shop-eu", "b2b_1"] {
        let reply = app.post_json("/v1/ledgers", &json!({"name": name})).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
        assert_eq!(reply.body["name"], name);
        assert!(reply.body["created_at"].is_string());
    }
    let again = app
        .post_json("/v1/ledgers", &json!({"name": "shop-eu"}))
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.body);
    assert_eq!(again.body["code"], "ledger_exists");
    for bad in [
        json!("Shop"),
        json!(""),
        json!("a b"),
        json!("x".repeat(65)),
        json!(7),
    ] {
        let reply = app.post_json("/v1/ledgers", &json!({"name": bad})).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{bad}: {}",
            reply.body
        );
        let code = if bad.is_string() {
            "invalid_ledger"
        } else {
            "invalid_body"
        };
        assert_eq!(reply.body["code"], code, "{bad}");
    }
    let listed = app.get("/v1/ledgers").await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
    let names: Vec<&str> = listed.body["ledgers"]
        .as_array()
        .expect("ledgers")
        .iter()
        .map(|l| l["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["b2b_1", "default", "shop-eu"]);
    let page = app.get("/v1/ledgers?limit=2").await;
    assert_eq!(page.body["next_cursor"], "default");
    let rest = app.get("/v1/ledgers?limit=2&cursor=default").await;
    assert_eq!(rest.body["ledgers"][0]["name"], "shop-eu");
    assert!(rest.body.get("next_cursor").is_none());
    let bad_cursor = app.get("/v1/ledgers?cursor=NOPE").await;
    assert_eq!(bad_cursor.status, StatusCode::BAD_REQUEST);
    assert_eq!(app.count("SELECT count(*) FROM ledgers").await, 3);
}

/// The promise: a key revoked through one process is refused by every other within 10 s
/// (README, "Ledgers and authorization"), however recently they let it in.
#[tokio::test]
async fn a_revoked_key_is_refused_by_another_process_within_10_s() {
    let app = spawn_app().await;
    let (_other, other) = second_process(&app).await;
    let (id, secret, _) = new_key(&app, &json!({"name": "doomed", "scopes": ["admin"]})).await;
    // Both processes let the key in, so both have it cached.
    for base in [&app.address, &other] {
        let reply = get_as(&app, base, &secret, "/v1/ledgers").await;
        assert_eq!(reply.status, StatusCode::OK, "{base}: {}", reply.body);
    }
    let reply = revoke(&app, &id).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let revoked = Instant::now();
    // The revoking process refuses it at once.
    let reply = get_as(&app, &app.address, &secret, "/v1/ledgers").await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    // The other one within the bound.
    loop {
        let reply = get_as(&app, &other, &secret, "/v1/ledgers").await;
        if reply.status == StatusCode::UNAUTHORIZED {
            break;
        }
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        assert!(
            revoked.elapsed() <= Duration::from_millis(REVOCATION_BOUND_MS),
            "still accepted {:?} after revocation",
            revoked.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let latency = revoked.elapsed();
    eprintln!("revocation reached the other process after {latency:?}");
    assert!(
        latency <= Duration::from_millis(REVOCATION_BOUND_MS),
        "{latency:?}"
    );
}

/// An expired key is refused at once, even by a process that let it in a moment ago and still
/// has it cached.
#[tokio::test]
async fn an_expired_key_is_refused_at_once_even_when_cached() {
    let app = spawn_app().await;
    let (_, secret, body) = new_key(
        &app,
        &json!({"name": "brief", "scopes": ["admin"], "expires_in_secs": 2}),
    )
    .await;
    let expires: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(body["expires_at"].clone()).expect("expires_at");
    let reply = get_as(&app, &app.address, &secret, "/v1/ledgers").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let cached = Instant::now();
    let wait = (expires - chrono::Utc::now() + chrono::Duration::milliseconds(100))
        .to_std()
        .unwrap_or_default();
    tokio::time::sleep(wait).await;
    let reply = get_as(&app, &app.address, &secret, "/v1/ledgers").await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.body);
    // Still within the cache's time: the refusal came from the cached expiry.
    assert!(cached.elapsed() < Duration::from_millis(CACHE_TTL_MS));
    // Listed with its expiry, not revoked.
    let listed = app.get("/v1/api-keys").await;
    assert_eq!(listed.body["api_keys"][0]["name"], "brief");
    assert!(listed.body["api_keys"][0]["revoked_at"].is_null());
}

/// `last_used_at` is written on a cache miss only, and at most once a minute per key: a
/// second process's look-up a moment later writes nothing (the row version, `xmin`, stays).
#[tokio::test]
async fn last_use_is_written_at_most_once_a_minute() {
    let app = spawn_app().await;
    let (id, secret, _) = new_key(&app, &json!({"name": "used", "scopes": ["admin"]})).await;
    let id = Uuid::parse_str(&id).expect("uuid");
    let row = |pool: sqlx::PgPool| async move {
        sqlx::query_as::<_, (Option<chrono::DateTime<chrono::Utc>>, String)>(
            "SELECT last_used_at, xmin::text FROM api_keys WHERE id = $1",
        )
        .bind(id)
        .fetch_one(&pool)
        .await
        .expect("key row")
    };
    let (never, _) = row(app.pool.clone()).await;
    assert_eq!(never, None);

    for _ in 0..3 {
        let reply = get_as(&app, &app.address, &secret, "/v1/ledgers").await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    let (first, version) = row(app.pool.clone()).await;
    assert!(first.is_some(), "the first use is recorded");

    // Another process looks the key up (a cache miss there): no second write.
    let (_other, other) = second_process(&app).await;
    let reply = get_as(&app, &other, &secret, "/v1/ledgers").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(row(app.pool.clone()).await, (first, version));

    // A minute later (simulated), a cached key still writes nothing per request...
    sqlx::query("UPDATE api_keys SET last_used_at = now() - interval '2 minutes' WHERE id = $1")
        .bind(id)
        .execute(&app.pool)
        .await
        .expect("backdated");
    let backdated = row(app.pool.clone()).await;
    for base in [&app.address, &other] {
        let reply = get_as(&app, base, &secret, "/v1/ledgers").await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    assert_eq!(row(app.pool.clone()).await, backdated);
    // ...and the next look-up from the database writes it again.
    let (_third, third) = second_process(&app).await;
    let reply = get_as(&app, &third, &secret, "/v1/ledgers").await;
    assert_eq!(reply.status, StatusCode::OK);
    let (refreshed, _) = row(app.pool.clone()).await;
    let refreshed = refreshed.expect("last use");
    assert!(refreshed > backdated.0.expect("backdated") + chrono::Duration::seconds(100));
}

#[tokio::test]
async fn the_cli_creates_lists_and_revokes_keys() {
    let app = spawn_app().await;
    // --ledger names a ledger that does not exist yet: the CLI creates it.
    let created = ferry_cli(
        &app,
        &[
            "api-key",
            "create",
            "--name",
            "cli reader",
            "--scopes",
            "accounts:read,transfers:read",
            "--ledger",
            "branch-7",
            "--expires-in",
            "90m",
        ],
    )
    .await;
    let stdout = text(&created.stdout);
    assert!(
        created.status.success(),
        "{stdout}{}",
        text(&created.stderr)
    );
    let secret = stdout.lines().last().expect("the key, last").to_owned();
    assert!(secret.starts_with("ferry_"), "{stdout}");
    assert!(stdout.contains("ledger branch-7"), "{stdout}");
    assert_eq!(
        app.count("SELECT count(*) FROM ledgers WHERE name = 'branch-7'")
            .await,
        1
    );
    let (id, expires_in): (Uuid, f64) = sqlx::query_as(
        "SELECT id, extract(epoch FROM expires_at - created_at)::float8 FROM api_keys \
         WHERE name = 'cli reader' AND ledger = 'branch-7'",
    )
    .fetch_one(&app.pool)
    .await
    .expect("stored key");
    assert!((expires_in - 5400.0).abs() < 1.0, "{expires_in}");
    let reply = get_as(&app, &app.address, &secret, "/v1/ledgers").await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "the key authenticates");

    let listed = ferry_cli(&app, &["api-key", "list"]).await;
    let table = text(&listed.stdout);
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    assert!(table.starts_with("ID "), "{table}");
    let line = table
        .lines()
        .find(|l| l.starts_with(&id.to_string()))
        .expect("the key is listed");
    for shown in ["cli reader", "branch-7", "accounts:read,transfers:read"] {
        assert!(line.contains(shown), "{shown}: {line}");
    }
    assert!(table.contains("(global)"), "the admin key: {table}");
    assert!(!table.contains(&secret) && !table.contains(&app.api_key));

    // Revoked: refused by the running ferry within the bound (its cache expires).
    let revoked = ferry_cli(&app, &["api-key", "revoke", &id.to_string()]).await;
    assert!(revoked.status.success(), "{}", text(&revoked.stderr));
    let started = Instant::now();
    while get_as(&app, &app.address, &secret, "/v1/ledgers")
        .await
        .status
        != StatusCode::UNAUTHORIZED
    {
        assert!(started.elapsed() <= Duration::from_millis(REVOCATION_BOUND_MS));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Clear errors and a non-zero exit, storing nothing.
    let before = app.count("SELECT count(*) FROM audit_events").await;
    let keys_before = app.count("SELECT count(*) FROM api_keys").await;
    let unknown = Uuid::now_v7().to_string();
    let id = id.to_string();
    for (args, says) in [
        (vec!["api-key", "revoke", id.as_str()], "already revoked"),
        (vec!["api-key", "revoke", unknown.as_str()], "no API key"),
        (vec!["api-key", "revoke", "nonsense"], "not an API key id"),
        (
            vec![
                "api-key", "create", "--name", "x", "--scopes", "admin", "--ledger", "default",
            ],
            "admin and console:read keys are global",
        ),
        (
            vec![
                "api-key",
                "create",
                "--name",
                "x",
                "--scopes",
                "console:read,transfers:read",
            ],
            "console:read is a viewer key's only scope",
        ),
        (
            vec![
                "api-key",
                "create",
                "--name",
                "x",
                "--scopes",
                "admin",
                "--expires-in",
                "0d",
            ],
            "--expires-in",
        ),
        (
            vec![
                "api-key",
                "create",
                "--name",
                "x",
                "--scopes",
                "admin",
                "--expires-in",
                "3651d",
            ],
            "--expires-in",
        ),
        (
            vec![
                "api-key",
                "create",
                "--name",
                "x",
                "--scopes",
                "admin",
                "--expires-in",
                "1w",
            ],
            "--expires-in",
        ),
        (
            vec!["api-key", "create", "--name", "x", "--scopes", "root"],
            "--scopes",
        ),
        (
            vec![
                "api-key",
                "create",
                "--name",
                "x",
                "--scopes",
                "transfers:read",
                "--ledger",
                "B!",
            ],
            "--ledger",
        ),
        (
            vec!["api-key", "create", "--name", "", "--scopes", "admin"],
            "--name",
        ),
    ] {
        let output = ferry_cli(&app, &args).await;
        let stderr = text(&output.stderr);
        assert!(!output.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    assert_eq!(app.count("SELECT count(*) FROM audit_events").await, before);
    assert_eq!(
        app.count("SELECT count(*) FROM api_keys").await,
        keys_before
    );
    assert_eq!(app.count("SELECT count(*) FROM ledgers").await, 2);
}

#[tokio::test]
async fn the_cli_creates_and_lists_ledgers() {
    let app = spawn_app().await;
    let created = ferry_cli(&app, &["ledger", "create", "north"]).await;
    assert!(created.status.success(), "{}", text(&created.stderr));
    assert!(text(&created.stdout).contains("created ledger north"));
    for (name, says) in [("north", "already exists"), ("North", "ledger name")] {
        let output = ferry_cli(&app, &["ledger", "create", name]).await;
        assert!(!output.status.success(), "{name}");
        assert!(
            text(&output.stderr).contains(says),
            "{}",
            text(&output.stderr)
        );
    }
    let listed = ferry_cli(&app, &["ledger", "list"]).await;
    let table = text(&listed.stdout);
    let names: Vec<&str> = table
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(names, ["default", "north"], "{table}");
}

/// A `MakeWriter` that keeps everything written, for reading back.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut kept) = self.0.lock() {
            kept.extend_from_slice(bytes);
        }
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

impl Captured {
    fn text(&self) -> String {
        self.0
            .lock()
            .map(|kept| String::from_utf8_lossy(&kept).into_owned())
            .unwrap_or_default()
    }
}

/// Secrets never reach a log: every event at every level, of ferry and its libraries, while
/// keys are created (API, store, CLI), used, listed and revoked, is captured and searched.
#[tokio::test]
async fn key_secrets_never_reach_the_logs() {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(logs.clone())
        .finish();
    // This test's runtime is single-threaded: ferry's tasks all run on this thread, under
    // this subscriber.
    let _logging = tracing::subscriber::set_default(subscriber);
    let app = spawn_app().await;
    let (id, over_http, _) = new_key(&app, &json!({"name": "h", "scopes": ["admin"]})).await;
    let reply = get_as(&app, &app.address, &over_http, "/v1/api-keys").await;
    assert_eq!(reply.status, StatusCode::OK);
    let request_id = reply.headers["x-request-id"]
        .to_str()
        .expect("id")
        .to_owned();
    let bad = get_as(&app, &app.address, "ferry_not_a_key", "/v1/api-keys").await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
    assert_eq!(revoke(&app, &id).await.status, StatusCode::OK);
    let refused = get_as(&app, &app.address, &over_http, "/v1/api-keys").await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    let from_store = crate::helpers::create_api_key(&app.pool, "transfers:read").await;
    let reply = get_as(&app, &app.address, &from_store, "/v1/api-keys").await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);

    let cli = ferry_cli(
        &app,
        &[
            "api-key",
            "create",
            "--name",
            "c",
            "--scopes",
            "admin",
            "--expires-in",
            "1d",
        ],
    )
    .await;
    assert!(cli.status.success(), "{}", text(&cli.stderr));
    let stdout = text(&cli.stdout);
    let from_cli = stdout.lines().last().expect("key").to_owned();
    let reply = get_as(&app, &app.address, &from_cli, "/v1/api-keys").await;
    assert_eq!(reply.status, StatusCode::OK);
    let cli_logs = text(&cli.stderr);
    assert!(
        cli_logs.contains("TRACE") || cli_logs.contains("DEBUG"),
        "{cli_logs}"
    );
    assert_eq!(
        stdout.matches(&from_cli).count(),
        1,
        "printed once: {stdout}"
    );

    let logs = logs.text();
    // The capture works: the request's span, with its id, is in it.
    assert!(logs.contains(&request_id), "nothing captured");
    for secret in [&over_http, &from_store, &from_cli, &app.api_key] {
        assert!(
            !logs.contains(secret.as_str()),
            "a key reached ferry's logs"
        );
        assert!(
            !cli_logs.contains(secret.as_str()),
            "a key reached the CLI's logs"
        );
        // Nor its unprefixed random part.
        let random = secret.trim_start_matches("ferry_");
        assert!(!logs.contains(random) && !cli_logs.contains(random));
    }
}

/// Issue 27: `ferry api-key create` printed sqlx's `INFO … already exists, skipping` lines
/// (PostgreSQL's notices from the migrations' `IF NOT EXISTS`) before the key. A one-shot
/// command logs warnings and errors only unless `RUST_LOG` says otherwise; `serve` keeps INFO.
#[tokio::test]
async fn api_key_create_prints_its_key_and_no_info_logs() {
    let database = crate::helpers::test_database().await;
    let create = |name: &'static str| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"));
        for (var, _) in std::env::vars_os() {
            let var_text = var.to_string_lossy();
            if var_text.starts_with("FERRY_") || var_text == "RUST_LOG" {
                command.env_remove(var);
            }
        }
        command
            .args([
                "api-key",
                "create",
                "--name",
                name,
                "--scopes",
                "accounts:read",
            ])
            .env("DATABASE_URL", database.url())
            .kill_on_drop(true);
        async move {
            tokio::time::timeout(Duration::from_secs(60), command.output())
                .await
                .expect("ferry finishes")
                .expect("ferry runs")
        }
    };
    // The first run migrates the fresh database; the second finds it migrated, which is when
    // every `IF NOT EXISTS` notices something.
    for name in ["first", "second"] {
        let output = create(name).await;
        let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
        assert!(output.status.success(), "{stderr}");
        for line in stdout.lines().chain(stderr.lines()) {
            assert!(!line.contains("INFO"), "{name}: an INFO line: {line}");
        }
        let key = stdout.lines().last().unwrap_or_default();
        assert!(
            key.starts_with("ferry_") && key.len() == 70,
            "{name}: {stdout}"
        );
        assert_eq!(stdout.lines().count(), 3, "{name}: {stdout}");
    }
}
