//! The audit trail and request ids (README, "Ledgers and authorization"): every act recorded
//! with its actor and request id, in the act's transaction; failed acts record nothing; the
//! table is append-only; the listing pages oldest first.

use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{TestApp, spawn_app};
use crate::keys::{ferry_cli, new_key, own_key_id};

async fn events(app: &TestApp, query: &str) -> Value {
    let reply = app.get(&format!("/v1/audit-events{query}")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    reply.body
}

/// `POST` with an `X-Request-Id`; returns the status, body and echoed id.
async fn post_with_id(app: &TestApp, path: &str, body: &Value, id: &str) -> (StatusCode, Value) {
    let reply = app
        .send(
            app.client
                .post(app.url(path))
                .bearer_auth(&app.api_key)
                .header("X-Request-Id", id)
                .json(body),
        )
        .await;
    assert_eq!(reply.headers["x-request-id"], id);
    (reply.status, reply.body)
}

#[tokio::test]
async fn every_act_is_recorded_with_its_actor_ledger_target_and_request_id() {
    let app = spawn_app().await;
    let admin = own_key_id(&app).await.to_string();
    let (status, _) =
        post_with_id(&app, "/v1/ledgers", &json!({"name": "shop"}), "req-ledger").await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, key) = post_with_id(
        &app,
        "/v1/api-keys",
        &json!({"name": "reader", "scopes": ["accounts:read"], "ledger": "shop",
                "expires_in_secs": 60}),
        "req-key",
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    let key_id = key["id"].as_str().expect("id");
    let secret = key["key"].as_str().expect("key");
    // No X-Request-Id sent: ferry makes one (a UUIDv7) and echoes it.
    let revoked = app
        .send(
            app.client
                .delete(app.url(&format!("/v1/api-keys/{key_id}")))
                .bearer_auth(&app.api_key),
        )
        .await;
    assert_eq!(revoked.status, StatusCode::OK);
    let generated = revoked.headers["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert_eq!(
        Uuid::parse_str(&generated).map(|u| u.get_version_num()),
        Ok(7)
    );
    let now = chrono::Utc::now();
    let (status, run) = post_with_id(
        &app,
        "/v1/reconciliations",
        &json!({"from": (now - chrono::Duration::minutes(5)).to_rfc3339(), "to": now.to_rfc3339()}),
        "req-run",
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{run}");

    let body = events(&app, "").await;
    let listed = body["events"].as_array().expect("events");
    assert!(!body.to_string().contains(secret), "no secret in the trail");
    let seen: Vec<(&str, &str, &str, &str, &str)> = listed
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or("-");
            (
                s("action"),
                s("actor_key_id"),
                s("ledger"),
                s("target"),
                s("request_id"),
            )
        })
        .collect();
    let key_target = format!("api_key:{key_id}");
    let run_target = format!("reconciliation:{}", run["id"].as_str().expect("run id"));
    let admin_target = format!("api_key:{admin}");
    assert_eq!(
        seen,
        [
            // The test's own key, created as an operator would: no actor, no request.
            ("api_key.created", "-", "-", admin_target.as_str(), "-"),
            (
                "ledger.created",
                admin.as_str(),
                "shop",
                "ledger:shop",
                "req-ledger"
            ),
            (
                "api_key.created",
                admin.as_str(),
                "shop",
                key_target.as_str(),
                "req-key"
            ),
            (
                "api_key.revoked",
                admin.as_str(),
                "shop",
                key_target.as_str(),
                generated.as_str()
            ),
            (
                "reconciliation.started",
                admin.as_str(),
                "-",
                run_target.as_str(),
                "req-run"
            ),
        ]
    );
    assert_eq!(listed[2]["detail"]["name"], "reader");
    assert_eq!(listed[2]["detail"]["scopes"], json!(["accounts:read"]));
    assert!(listed[2]["detail"]["expires_at"].is_string());
    assert_eq!(listed[3]["detail"], json!({"name": "reader"}));
    let ids: Vec<i64> = listed
        .iter()
        .map(|e| e["id"].as_i64().expect("id"))
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "oldest first: {ids:?}");
    assert!(listed.iter().all(|e| e["at"].is_string()));
}

#[tokio::test]
async fn cli_acts_are_recorded_without_an_actor() {
    let app = spawn_app().await;
    let output = ferry_cli(
        &app,
        &[
            "api-key",
            "create",
            "--name",
            "ops",
            "--scopes",
            "transfers:write",
            "--ledger",
            "west",
        ],
    )
    .await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let key_id: Uuid = sqlx::query_scalar("SELECT id FROM api_keys WHERE name = 'ops'")
        .fetch_one(&app.pool)
        .await
        .expect("key");
    let output = ferry_cli(&app, &["api-key", "revoke", &key_id.to_string()]).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = ferry_cli(&app, &["ledger", "create", "east"]).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let body = events(&app, "?after=1").await;
    let seen: Vec<(String, String, String)> = body["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| {
            assert!(
                e["actor_key_id"].is_null() && e["request_id"].is_null(),
                "{e}"
            );
            let s = |k: &str| e[k].as_str().unwrap_or("-").to_owned();
            (s("action"), s("ledger"), s("target"))
        })
        .collect();
    let target = format!("api_key:{key_id}");
    let expected = [
        ("ledger.created", "west", "ledger:west"),
        ("api_key.created", "west", target.as_str()),
        ("api_key.revoked", "west", target.as_str()),
        ("ledger.created", "east", "ledger:east"),
    ]
    .map(|(a, l, t)| (a.to_owned(), l.to_owned(), t.to_owned()));
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn refused_acts_record_nothing() {
    let app = spawn_app().await;
    let before = app.count("SELECT count(*) FROM audit_events").await;
    let own = own_key_id(&app).await;
    let refused = [
        app.post_json("/v1/ledgers", &json!({"name": "default"}))
            .await,
        app.post_json("/v1/ledgers", &json!({"name": "Nope"})).await,
        app.post_json(
            "/v1/api-keys",
            &json!({"name": "k", "scopes": ["admin"], "ledger": "x"}),
        )
        .await,
        app.post_json(
            "/v1/api-keys",
            &json!({"name": "k", "scopes": ["accounts:read"],
            "ledger": "missing"}),
        )
        .await,
        app.send(
            app.client
                .delete(app.url(&format!("/v1/api-keys/{own}")))
                .bearer_auth(&app.api_key),
        )
        .await,
        app.send(
            app.client
                .delete(app.url(&format!("/v1/api-keys/{}", Uuid::now_v7())))
                .bearer_auth(&app.api_key),
        )
        .await,
        app.post_json("/v1/reconciliations", &json!({"ledger": "missing"}))
            .await,
    ];
    for reply in refused {
        assert!(reply.status.is_client_error(), "{}", reply.body);
    }
    assert_eq!(app.count("SELECT count(*) FROM audit_events").await, before);
}

#[tokio::test]
async fn a_reconciliation_of_one_ledger_is_recorded_with_that_ledger_and_its_run() {
    let app = spawn_app().await;
    let started = app
        .post_json("/v1/reconciliations", &json!({"ledger": "default"}))
        .await;
    assert_eq!(started.status, StatusCode::ACCEPTED, "{}", started.body);
    let run = started.body["id"].as_str().expect("run id");
    let recorded: Vec<(String, Option<String>, String)> = sqlx::query_as(
        "SELECT action, ledger, target FROM audit_events \
         WHERE action = 'reconciliation.started'",
    )
    .fetch_all(&app.pool)
    .await
    .expect("audit events");
    assert_eq!(
        recorded,
        [(
            "reconciliation.started".to_owned(),
            Some("default".to_owned()),
            format!("reconciliation:{run}")
        )]
    );
    // The event committed with the run and its job: each exists with the other.
    let runs_without_event = app
        .count(
            "SELECT count(*) FROM reconciliation_runs r WHERE trigger <> 'schedule' \
             AND NOT EXISTS (SELECT 1 FROM audit_events e \
                             WHERE e.target = 'reconciliation:' || r.id::text)",
        )
        .await;
    assert_eq!(runs_without_event, 0);
}

#[tokio::test]
async fn the_audit_table_refuses_update_delete_and_truncate() {
    let app = spawn_app().await;
    assert!(app.count("SELECT count(*) FROM audit_events").await > 0);
    for statement in [
        "UPDATE audit_events SET action = 'api_key.revoked'",
        "UPDATE audit_events SET detail = '{}'",
        "DELETE FROM audit_events",
        "TRUNCATE audit_events",
    ] {
        let error = sqlx::query(statement)
            .execute(&app.pool)
            .await
            .expect_err(statement);
        let code = error
            .as_database_error()
            .and_then(|e| e.code())
            .map(|c| c.into_owned());
        assert_eq!(code.as_deref(), Some("23001"), "{statement}: {error}");
    }
    assert_eq!(app.count("SELECT count(*) FROM audit_events").await, 1);
}

#[tokio::test]
async fn audit_events_are_paged_oldest_first_by_id() {
    let app = spawn_app().await;
    for name in ["a", "b", "c", "d"] {
        let reply = app.post_json("/v1/ledgers", &json!({"name": name})).await;
        assert_eq!(reply.status, StatusCode::CREATED);
    }
    let first = events(&app, "?limit=2").await;
    let targets = |page: &Value| -> Vec<String> {
        page["events"]
            .as_array()
            .expect("events")
            .iter()
            .map(|e| e["target"].as_str().expect("target").to_owned())
            .collect()
    };
    assert_eq!(targets(&first)[1], "ledger:a");
    let after = first["next_after"]
        .as_i64()
        .expect("a full page says where to go on");
    let second = events(&app, &format!("?limit=2&after={after}")).await;
    assert_eq!(targets(&second), ["ledger:b", "ledger:c"]);
    let after = second["next_after"].as_i64().expect("next");
    let last = events(&app, &format!("?after={after}")).await;
    assert_eq!(targets(&last), ["ledger:d"]);
    assert!(last.get("next_after").is_none());
    for bad in [
        "?after=-1",
        "?limit=0",
        "?limit=1001",
        "?after=x",
        "?cursor=1",
    ] {
        let reply = app.get(&format!("/v1/audit-events{bad}")).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(reply.body["code"], "invalid_body", "{bad}");
    }
    let (_, reader, _) = new_key(&app, &json!({"name": "r", "scopes": ["accounts:read"]})).await;
    let reply = app
        .send(
            app.client
                .get(app.url("/v1/audit-events"))
                .bearer_auth(&reader),
        )
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
}

/// Every answer carries an `X-Request-Id`: the client's when well-formed (1-200 visible ASCII),
/// else a new UUIDv7 — on errors, the fallback and public routes too.
#[tokio::test]
async fn every_answer_carries_a_request_id() {
    let app = spawn_app().await;
    let fresh = |reply: &crate::helpers::Reply| {
        let id = reply.headers["x-request-id"]
            .to_str()
            .expect("ascii")
            .to_owned();
        assert_eq!(
            Uuid::parse_str(&id).map(|u| u.get_version_num()),
            Ok(7),
            "{id}"
        );
        id
    };
    let kept = "x".repeat(200);
    for (sent, keep) in [
        (Some("abc-123"), true),
        (Some(kept.as_str()), true),
        (Some("has space"), false),
        (Some(&*"y".repeat(201)), false),
        (Some(""), false),
        (None, false),
    ] {
        for path in ["/v1/ledgers", "/healthz", "/v1/nowhere"] {
            let mut request = app.client.get(app.url(path)).bearer_auth(&app.api_key);
            if let Some(sent) = sent {
                request = request.header("X-Request-Id", sent);
            }
            let reply = app.send(request).await;
            if keep {
                assert_eq!(reply.headers["x-request-id"], sent.unwrap_or_default());
            } else {
                fresh(&reply);
            }
        }
    }
    let unauthorized = app.send(app.client.get(app.url("/v1/ledgers"))).await;
    assert_eq!(unauthorized.status, StatusCode::UNAUTHORIZED);
    let a = fresh(&unauthorized);
    let b = fresh(&app.send(app.client.get(app.url("/v1/ledgers"))).await);
    assert_ne!(a, b);
    // Two X-Request-Id headers: neither is trusted.
    let reply = app
        .send(
            app.client
                .get(app.url("/healthz"))
                .header("X-Request-Id", "one")
                .header("X-Request-Id", "two"),
        )
        .await;
    fresh(&reply);
}

#[tokio::test]
async fn the_trail_filters_by_ledger_and_action() {
    let app = spawn_app().await;
    for name in ["shop", "cafe"] {
        let reply = app.post_json("/v1/ledgers", &json!({"name": name})).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    }
    for (ledger, id) in [("shop", "till"), ("cafe", "till"), ("shop", "safe")] {
        let reply = app
            .post_json(
                "/v1/accounts",
                &json!({"id": id, "currency": "USD", "ledger": ledger}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    }
    let reply = app
        .post_json("/v1/accounts/till/freeze?ledger=shop", &json!({}))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let listed = |page: &Value| -> Vec<(String, String)> {
        page["events"]
            .as_array()
            .expect("events")
            .iter()
            .map(|e| {
                let text = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
                (text("action"), text("target"))
            })
            .collect()
    };
    let pair = |action: &str, target: &str| (action.to_owned(), target.to_owned());
    assert_eq!(
        listed(&events(&app, "?ledger=shop").await),
        [
            pair("ledger.created", "ledger:shop"),
            pair("account.created", "account:till"),
            pair("account.created", "account:safe"),
            pair("account.frozen", "account:till"),
        ]
    );
    assert_eq!(
        listed(&events(&app, "?action=account.created").await),
        [
            pair("account.created", "account:till"),
            pair("account.created", "account:till"),
            pair("account.created", "account:safe"),
        ]
    );
    assert_eq!(
        listed(&events(&app, "?ledger=cafe&action=account.created").await),
        [pair("account.created", "account:till")]
    );
    // A filtered page still pages by event id.
    let first = events(&app, "?ledger=shop&limit=3").await;
    let after = first["next_after"].as_i64().expect("a full page goes on");
    assert_eq!(
        listed(&events(&app, &format!("?ledger=shop&after={after}")).await),
        [pair("account.frozen", "account:till")]
    );
    assert_eq!(listed(&events(&app, "?ledger=nowhere").await), []);
    app.assert_bad_queries(
        "/v1/audit-events",
        &[
            ("?action=account.deleted", "invalid_body"),
            ("?action=", "invalid_body"),
            ("?ledger=Shop!", "invalid_ledger"),
            ("?ledger=", "invalid_ledger"),
        ],
    )
    .await;
}
