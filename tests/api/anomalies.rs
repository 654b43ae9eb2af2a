//! Anomaly detection (README, "Anomaly detection"): the four rules on real Redis windows, at
//! and below their thresholds, windows that expire, streaks a success resets, per-ledger
//! thresholds, the listing, and posting that goes on when Redis is gone.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::faults::deps::Redis;
use crate::helpers::{
    TestApp, create_account_in, create_ledger, create_ledger_key, spawn_app, spawn_app_with,
    transfer,
};
use ferry::anomaly::rules::Candidate;
use ferry::anomaly::settings::{LedgerRules, RuleSettings, WindowRule};
use ferry::anomaly::windows::{self, Counted, StreakStep};
use ferry::domain::{AccountId, AccountKey, Currency, LedgerName, RuleAction};

/// Posts `amount` from `from` to `to` under `key` and waits for it to end; returns the
/// transfer as `GET /v1/transfers/{id}` shows it once its flags have settled.
pub async fn send(app: &TestApp, key: &str, from: &str, to: &str, amount: &str) -> Value {
    let reply = app.post_transfer(key, &transfer(from, to, amount)).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    let id = reply.body["id"].as_str().expect("id").to_owned();
    app.wait_until_terminal(&id).await;
    // The job records the outcome in the account's streak (and stores a failed-streak hit)
    // just after posting, before it completes.
    jobs_done(app).await;
    app.get(&format!("/v1/transfers/{id}")).await.body
}

/// Waits until no job is waiting or running.
pub async fn jobs_done(app: &TestApp) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let busy: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM apalis.jobs WHERE status IN ('Pending', 'Queued', 'Running')",
        )
        .fetch_one(&app.pool)
        .await
        .expect("jobs");
        if busy == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{busy} jobs still busy");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The (event type, action, severity) of this app's alerts about anomalies, oldest first.
async fn anomaly_alerts(app: &TestApp) -> Vec<(String, String, String)> {
    let reply = app.get("/v1/alerts?limit=500").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let mut alerts: Vec<(String, String, String)> = reply.body["alerts"]
        .as_array()
        .expect("alerts")
        .iter()
        .filter(|a| {
            a["event_type"]
                .as_str()
                .is_some_and(|t| t.starts_with("anomaly."))
        })
        .map(|a| {
            let text = |k: &str| a[k].as_str().expect("text").to_owned();
            (text("event_type"), text("action"), text("severity"))
        })
        .collect();
    alerts.reverse();
    alerts
}

fn alert(event_type: &str, action: &str, severity: &str) -> (String, String, String) {
    (
        event_type.to_owned(),
        action.to_owned(),
        severity.to_owned(),
    )
}

pub fn flags(transfer: &Value) -> Vec<&str> {
    transfer["flags"]
        .as_array()
        .expect("flags")
        .iter()
        .map(|f| f.as_str().expect("rule"))
        .collect()
}

async fn funded(app: &TestApp, accounts: &[&str]) {
    app.create_account("treasury", "USD", true).await;
    for account in accounts {
        app.create_account(account, "USD", false).await;
        send(
            app,
            &format!("fund-{account}"),
            "treasury",
            account,
            "1000.00",
        )
        .await;
    }
}

#[tokio::test]
async fn the_seeds_demonstration_six_rapid_transfers_flag_velocity_then_duplicate_amount() {
    let app = spawn_app().await;
    funded(&app, &["card"]).await;
    app.create_account("shop", "USD", false).await;
    // The sixth repeats an amount for the third time; the first four stay under every rule.
    let amounts = ["10.00", "10.00", "20.00", "30.00", "40.00", "10.00"];
    let mut seen = Vec::new();
    for (n, amount) in amounts.iter().enumerate() {
        let done = send(&app, &format!("pay-{n}"), "card", "shop", amount).await;
        assert_eq!(
            done["status"], "posted",
            "flagged transfers still post: {done}"
        );
        seen.push(flags(&done).join("+"));
    }
    assert_eq!(
        seen,
        ["", "", "", "", "velocity", "velocity+duplicate_amount"]
    );
    let listed = app.get("/v1/anomalies?account=card").await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
    let hits = listed.body["anomalies"].as_array().expect("anomalies");
    let summary: Vec<(String, String, i64)> = hits
        .iter()
        .map(|h| {
            (
                h["rule"].as_str().expect("rule").to_owned(),
                h["severity"].as_str().expect("severity").to_owned(),
                h["transfers"].as_i64().expect("transfers"),
            )
        })
        .collect();
    let anomaly = |r: &str, s: &str, n| (r.to_owned(), s.to_owned(), n);
    // Two velocity hits on one account within its window: one anomaly of two transfers.
    assert_eq!(
        summary,
        [
            anomaly("velocity", "high", 2),
            anomaly("duplicate_amount", "medium", 1)
        ]
    );
    assert_eq!(hits[0]["detail"]["transfers"], 5);
    assert_eq!(hits[0]["detail"]["threshold"], 5);
    assert_eq!(hits[0]["detail"]["window_secs"], 60);
    assert_eq!(hits[1]["detail"]["transfers"], 3);
    assert_eq!(hits[1]["detail"]["amount"], "10.00");
    assert_eq!(hits[0]["ledger"], "default");
    assert_eq!(hits[0]["account_id"], "card");
    // Two hits of velocity on one account within its window: one incident.
    assert_eq!(
        anomaly_alerts(&app).await,
        [
            alert("anomaly.velocity", "trigger", "critical"),
            alert("anomaly.duplicate_amount", "trigger", "medium")
        ]
    );
}

#[tokio::test]
async fn a_burst_of_fifty_transfers_opens_one_incident_per_rule() {
    let app = spawn_app().await;
    app.create_account("treasury", "USD", true).await;
    app.create_account("shop", "USD", false).await;
    let items: Vec<Value> = (0..50)
        .map(|n| {
            json!({"idempotency_key": format!("burst-{n}"), "from_account": "treasury",
                   "to_account": "shop", "amount": "9.99", "currency": "USD"})
        })
        .collect();
    let reply = app
        .post_json("/v1/transfers/batch", &json!({"transfers": items}))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    app.run_until_idle(Duration::from_secs(20)).await;
    jobs_done(&app).await;
    let listed = app.get("/v1/anomalies?limit=1000").await.body;
    let transfers = |rule: &str| {
        listed["anomalies"]
            .as_array()
            .expect("list")
            .iter()
            .filter(|h| h["rule"] == rule)
            .map(|h| h["transfers"].as_i64().expect("transfers"))
            .collect::<Vec<_>>()
    };
    // The 5th to the 50th are a burst; the 3rd to the 50th repeat an amount (so that rule
    // trips first): one anomaly each, counting them.
    assert_eq!(
        (transfers("velocity"), transfers("duplicate_amount")),
        (vec![46], vec![48])
    );
    let flagged = app
        .count("SELECT count(*) FROM anomaly_hits WHERE rule = 'velocity'")
        .await;
    assert_eq!(flagged, 46, "each transfer keeps its flag");
    // One `anomaly.flagged` event per anomaly, not per transfer.
    let events = app
        .count("SELECT count(*) FROM events WHERE type = 'anomaly.flagged'")
        .await;
    assert_eq!(events, 2);
    assert_eq!(
        anomaly_alerts(&app).await,
        [
            alert("anomaly.duplicate_amount", "trigger", "medium"),
            alert("anomaly.velocity", "trigger", "critical")
        ]
    );
}

#[tokio::test]
async fn a_large_amount_is_flagged_above_the_threshold_not_at_it() {
    let app = spawn_app().await;
    app.create_account("treasury", "USD", true).await;
    app.create_account("b", "USD", false).await;
    let at = send(&app, "at", "treasury", "b", "5000.00").await;
    assert_eq!(flags(&at), Vec::<&str>::new());
    let above = send(&app, "above", "treasury", "b", "5000.01").await;
    assert_eq!(flags(&above), ["large_amount"]);
    assert_eq!(above["status"], "posted");
}

#[tokio::test]
async fn three_failures_in_a_row_are_a_failed_streak_and_a_success_resets_it() {
    let app = spawn_app().await;
    funded(&app, &["thin"]).await;
    app.create_account("b", "USD", false).await;
    let outcome = |t: &Value| {
        format!(
            "{}{}",
            t["status"].as_str().expect("status"),
            if flags(t).contains(&"failed_streak") {
                "+streak"
            } else {
                ""
            }
        )
    };
    let mut seen = Vec::new();
    // 2,000.00 is more than `thin` has: insufficient funds, each time. Amounts differ so the
    // duplicate rule stays out of it.
    for (n, amount) in [
        "2000.01", "2000.02", "2000.03", "2000.04", "1.00", "2000.05", "2000.06",
    ]
    .iter()
    .enumerate()
    {
        let done = send(&app, &format!("try-{n}"), "thin", "b", amount).await;
        seen.push(outcome(&done));
    }
    assert_eq!(
        seen,
        [
            "failed",
            "failed",
            "failed+streak",
            "failed+streak",
            "posted",
            "failed",
            "failed"
        ]
    );
}

#[tokio::test]
async fn a_transfer_after_the_window_is_not_counted() {
    // Three transfers within 4 s trip velocity, three of one amount trip duplicates.
    let window = WindowRule {
        count: 3,
        window_secs: 4,
        action: RuleAction::Flag,
    };
    let app = spawn_app_with(|config| {
        config.anomaly.velocity = window;
        config.anomaly.duplicate_amount = window;
    })
    .await;
    app.create_account("treasury", "USD", true).await;
    app.create_account("b", "USD", false).await;
    let first_sent = Instant::now();
    let first = send(&app, "first", "treasury", "b", "1.00").await;
    tokio::time::sleep(Duration::from_secs(2).saturating_sub(first_sent.elapsed())).await;
    let middle = send(&app, "middle", "treasury", "b", "1.00").await;
    assert_eq!(flags(&first), Vec::<&str>::new());
    assert_eq!(flags(&middle), Vec::<&str>::new());
    // Past the first's window, inside the middle one's (which keeps the key alive, so only
    // the window itself can leave the first out): two more, accepted together.
    tokio::time::sleep(Duration::from_millis(4_300).saturating_sub(first_sent.elapsed())).await;
    let item = |key: &str| {
        json!({"idempotency_key": key, "from_account": "treasury", "to_account": "b",
               "amount": "1.00", "currency": "USD"})
    };
    let batch = app
        .post_json(
            "/v1/transfers/batch",
            &json!({"transfers": [item("late"), item("prompt")]}),
        )
        .await;
    assert_eq!(batch.status, StatusCode::OK, "{}", batch.body);
    let mut seen = Vec::new();
    for result in batch.body["results"].as_array().expect("results") {
        let id = result["transfer"]["id"].as_str().expect("id");
        app.wait_until_terminal(id).await;
        jobs_done(&app).await;
        let done = app.get(&format!("/v1/transfers/{id}")).await.body;
        seen.push(flags(&done).join("+"));
    }
    // late: middle and itself (two); prompt: the third.
    assert_eq!(seen, ["", "velocity+duplicate_amount"]);
}

#[tokio::test]
async fn a_batch_counted_again_counts_as_it_did_the_first_time() {
    let (mut connection, namespace) = windows_of_its_own().await;
    let rules = RuleSettings::default();
    // Three transfers accepted in one commit: one acceptance time, ids in acceptance order.
    let candidates: Vec<Candidate> = (0..3)
        .map(|_| Candidate {
            transfer_id: uuid::Uuid::now_v7(),
            account: AccountKey::new(
                LedgerName::default_ledger(),
                AccountId::parse("card").expect("id"),
            ),
            amount: "10.00".parse().expect("amount"),
            currency: Currency::parse("USD").expect("USD"),
            accepted_at_ms: 1_700_000_000_000,
        })
        .collect();
    let judged: Vec<_> = candidates
        .iter()
        .map(|c| (c, StreakStep::Failed, Some(&rules)))
        .collect();
    let timeout = Duration::from_secs(1);
    let first = windows::count(&mut connection, &namespace, &judged, timeout)
        .await
        .expect("counted");
    // The same transfers counted again (a check retried): nothing is counted twice, and each
    // still sees only those accepted before it.
    let again = windows::count(&mut connection, &namespace, &judged, timeout)
        .await
        .expect("counted");
    let summary = |counts: &[Counted]| {
        counts
            .iter()
            .map(|c| (c.windows.transfers, c.windows.same_amount))
            .collect::<Vec<_>>()
    };
    assert_eq!(summary(&first), [(1, 1), (2, 2), (3, 3)]);
    assert_eq!(summary(&again), summary(&first));
    // Three failures make a streak of three, however often they are recorded.
    assert_eq!(
        first.iter().map(|c| c.streak).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(
        again.iter().map(|c| c.streak).collect::<Vec<_>>(),
        [3, 3, 3]
    );
}

/// A connection to the shared Redis and a key namespace no other test uses.
async fn windows_of_its_own() -> (redis::aio::ConnectionManager, String) {
    let client = redis::Client::open("redis://127.0.0.1:6379").expect("url");
    let connection = redis::aio::ConnectionManager::new(client)
        .await
        .expect("Redis");
    (
        connection,
        format!("test_{}", uuid::Uuid::new_v4().simple()),
    )
}

/// Counts `(at_secs, amount)` transfers out of one account, one script call each, under a
/// 10 s velocity window and a 100 s duplicate window; returns (transfers, same amount) each.
async fn count_one_by_one(transfers: &[(i64, &str)]) -> Vec<(u64, u64)> {
    let (mut connection, namespace) = windows_of_its_own().await;
    let window = |window_secs| WindowRule {
        count: 2,
        window_secs,
        action: RuleAction::Flag,
    };
    let rules = RuleSettings {
        velocity: window(10),
        duplicate_amount: window(100),
        ..RuleSettings::default()
    };
    let mut seen = Vec::new();
    for (at_secs, amount) in transfers {
        let candidate = Candidate {
            transfer_id: uuid::Uuid::now_v7(),
            account: AccountKey::new(
                LedgerName::default_ledger(),
                AccountId::parse("card").expect("id"),
            ),
            amount: amount.parse().expect("amount"),
            currency: Currency::parse("USD").expect("USD"),
            accepted_at_ms: 1_700_000_000_000 + at_secs * 1000,
        };
        let judged = [(&candidate, StreakStep::Posted, Some(&rules))];
        let counted = windows::count(&mut connection, &namespace, &judged, Duration::from_secs(1))
            .await
            .expect("counted");
        seen.push((counted[0].windows.transfers, counted[0].windows.same_amount));
    }
    seen
}

#[tokio::test]
async fn each_window_slides_on_its_own_and_a_lone_transfers_amount_still_counts_later() {
    let seen = count_one_by_one(&[
        (0, "10.00"),
        // Past the velocity window, inside the duplicate one: the first counts only there
        // (it was alone in its account's window, so it is copied into its amount's now).
        (20, "10"),
        (25, "5.00"),
        // Exactly one velocity window after the third: out of it; the two tens are in.
        (35, "10.0"),
        // 100 s after the first: it is out of the duplicate window; the others are in.
        (100, "10.00"),
        // Every earlier one is out of both windows: alone again, and still counted by the next.
        (300, "7"),
        (305, "7"),
    ])
    .await;
    assert_eq!(
        seen,
        [(1, 1), (1, 2), (2, 1), (1, 3), (1, 3), (1, 1), (2, 2)]
    );
}

/// An app whose ledger `strict` has its own velocity rule, with `treasury` (overdraft allowed)
/// and `b` in both `default` and `strict`; returns it and a `strict` key that writes and reads.
pub async fn app_with_strict_velocity(velocity: WindowRule) -> (TestApp, String) {
    let app = spawn_app_with(|config| {
        let strict = LedgerRules {
            velocity: Some(velocity),
            ..LedgerRules::default()
        };
        config.anomaly.ledgers = BTreeMap::from([("strict".to_owned(), strict)]);
    })
    .await;
    create_ledger(&app.pool, "strict").await;
    let strict_key = create_ledger_key(&app.pool, "strict", "transfers:write,transfers:read").await;
    for ledger in ["default", "strict"] {
        create_account_in(&app.pool, ledger, "treasury", "USD", true).await;
        create_account_in(&app.pool, ledger, "b", "USD", false).await;
    }
    (app, strict_key)
}

#[tokio::test]
async fn each_ledger_has_its_thresholds_and_sees_only_its_anomalies() {
    let (app, strict_key) = app_with_strict_velocity(WindowRule {
        count: 2,
        window_secs: 60,
        action: RuleAction::Flag,
    })
    .await;
    // Two transfers in each ledger: only `strict`'s second is a burst.
    for n in 0..2 {
        let body = transfer("treasury", "b", &format!("{}.00", n + 1));
        let key = format!("t{n}");
        let default = app.post_transfer(&key, &body).await;
        let strict = app.post_transfer_as(&strict_key, &key, &body).await;
        app.wait_until_terminal(default.body["id"].as_str().expect("id"))
            .await;
        let strict_id = strict.body["id"].as_str().expect("id");
        app.wait_until_terminal_as(&strict_key, strict_id).await;
        // Flags are stored just after posting, before the job completes.
        jobs_done(&app).await;
        let done = app
            .get_as(&strict_key, &format!("/v1/transfers/{strict_id}"))
            .await
            .body;
        assert_eq!(flags(&done), if n == 0 { vec![] } else { vec!["velocity"] });
    }
    let own = app.get_as(&strict_key, "/v1/anomalies").await;
    assert_eq!(own.body["anomalies"].as_array().expect("list").len(), 1);
    assert_eq!(own.body["anomalies"][0]["ledger"], "strict");
    assert_eq!(own.body["anomalies"][0]["detail"]["threshold"], 2);
    let default = app.get("/v1/anomalies").await;
    assert_eq!(default.body["anomalies"], json!([]));
    let admin_names_it = app.get("/v1/anomalies?ledger=strict").await;
    assert_eq!(admin_names_it.body, own.body);
    let foreign = app
        .get_as(&strict_key, "/v1/anomalies?ledger=default")
        .await;
    assert_eq!(foreign.status, StatusCode::FORBIDDEN);
    assert_eq!(foreign.body["code"], "ledger_forbidden");
}

#[tokio::test]
async fn the_listing_filters_pages_and_refuses_bad_parameters() {
    let app = spawn_app().await;
    app.create_account("treasury", "USD", true).await;
    for account in ["b", "c", "d"] {
        app.create_account(account, "USD", true).await;
    }
    // b: two large amounts (one anomaly of two transfers); c and d: one each.
    for (n, from) in ["b", "c", "b", "d"].iter().enumerate() {
        let done = send(
            &app,
            &format!("big-{n}"),
            from,
            "treasury",
            &format!("600{n}.00"),
        )
        .await;
        assert_eq!(flags(&done), ["large_amount"]);
    }
    let page = |query: &str| {
        let query = query.to_owned();
        let app = &app;
        async move {
            let reply = app.get(&format!("/v1/anomalies{query}")).await;
            assert_eq!(reply.status, StatusCode::OK, "{query}: {}", reply.body);
            reply.body
        }
    };
    let accounts = |body: &Value| -> Vec<String> {
        body["anomalies"]
            .as_array()
            .expect("list")
            .iter()
            .map(|h| h["account_id"].as_str().expect("account").to_owned())
            .collect()
    };
    assert_eq!(accounts(&page("").await), ["b", "c", "d"]);
    let own = page("?account=b&rule=large_amount").await;
    assert_eq!(accounts(&own), ["b"]);
    assert_eq!(own["anomalies"][0]["transfers"], 2);
    assert_eq!(
        accounts(&page("?rule=velocity").await),
        Vec::<String>::new()
    );
    let first = page("?limit=2").await;
    let after = first["next_after"].as_i64().expect("a full page goes on");
    let rest = page(&format!("?after={after}")).await;
    assert_eq!(accounts(&rest), ["d"]);
    assert!(rest.get("next_after").is_none());
    app.assert_bad_queries(
        "/v1/anomalies",
        &[
            ("?rule=speed", "invalid_body"),
            ("?limit=0", "invalid_body"),
            ("?after=-1", "invalid_body"),
            ("?account=not%20an%20id", "invalid_account"),
            ("?ledger=Nope!", "invalid_ledger"),
            ("?cursor=1", "invalid_body"),
        ],
    )
    .await;
}

/// `ferry_anomaly_checks_skipped_total` in this process, every reason Redis can give.
pub async fn redis_skips(app: &TestApp) -> f64 {
    let mut total = 0.0;
    for reason in ["unavailable", "timeout", "error"] {
        total += skipped(app, reason).await;
    }
    total
}

/// The value of `ferry_anomaly_checks_skipped_total{reason}` in this process.
async fn skipped(app: &TestApp, reason: &str) -> f64 {
    let series = format!("ferry_anomaly_checks_skipped_total{{reason=\"{reason}\"}}");
    app.metric(&series).await.unwrap_or(0.0)
}

#[tokio::test]
async fn with_redis_gone_transfers_still_post_and_the_skips_are_counted() {
    let mut redis = Redis::start_new();
    let url = redis.url();
    let app = spawn_app_with(move |config| {
        config.redis.url = url;
        config.anomaly.skip_alert_after = Duration::from_secs(1);
    })
    .await;
    app.create_account("treasury", "USD", true).await;
    app.create_account("b", "USD", false).await;
    let large = send(&app, "before", "treasury", "b", "6000.00").await;
    assert_eq!(flags(&large), ["large_amount"], "Redis up: checked");
    redis.kill();
    let skipped_before = redis_skips(&app).await;
    let started = Instant::now();
    for n in 0..5 {
        let done = send(&app, &format!("during-{n}"), "treasury", "b", "6000.00").await;
        assert_eq!(done["status"], "posted");
        // The windows are gone (six of one amount would be duplicates), the large amount is
        // still seen: it needs no window.
        assert_eq!(
            flags(&done),
            ["large_amount"],
            "Redis down: windows skipped"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "posting was held back: {:?}",
        started.elapsed()
    );
    // One skip per job (`send` waited for each job to finish).
    let skipped_after = redis_skips(&app).await;
    assert!(
        skipped_after - skipped_before >= 5.0,
        "{skipped_before} → {skipped_after}"
    );
    // Unchecked for over a second (this test's setting): alerted once. Redis back: resolved.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    send(&app, "still-down", "treasury", "b", "1.00").await;
    send(&app, "still-down-2", "treasury", "b", "1.00").await;
    redis.start();
    tokio::time::sleep(Duration::from_secs(6)).await;
    send(&app, "after", "treasury", "b", "1.00").await;
    let skipped_alerts: Vec<_> = anomaly_alerts(&app)
        .await
        .into_iter()
        .filter(|a| a.0 == "anomaly.windows_skipped")
        .collect();
    assert_eq!(
        skipped_alerts,
        [
            alert("anomaly.windows_skipped", "trigger", "medium"),
            alert("anomaly.windows_skipped", "resolve", "medium")
        ]
    );
}

#[tokio::test]
async fn an_exempt_account_is_never_judged_and_the_others_still_are() {
    let app = spawn_app_with(|config| {
        let house = LedgerRules {
            exempt_accounts: vec!["treasury".to_owned()],
            ..LedgerRules::default()
        };
        config.anomaly.ledgers = BTreeMap::from([("default".to_owned(), house)]);
    })
    .await;
    funded(&app, &["card"]).await;
    app.create_account("shop", "USD", false).await;
    // The funding and five more large, repeated transfers out of the treasury: nothing.
    for n in 0..5 {
        let done = send(&app, &format!("house-{n}"), "treasury", "shop", "9000.00").await;
        assert_eq!(flags(&done), Vec::<&str>::new(), "{done}");
    }
    let mut seen = Vec::new();
    for n in 0..5 {
        let done = send(&app, &format!("card-{n}"), "card", "shop", "1.00").await;
        seen.push(flags(&done).join("+"));
    }
    assert_eq!(
        seen,
        [
            "",
            "",
            "duplicate_amount",
            "duplicate_amount",
            "velocity+duplicate_amount"
        ]
    );
    let hits_on_treasury = app
        .count("SELECT count(*) FROM anomalies WHERE account_id = 'treasury'")
        .await;
    assert_eq!(hits_on_treasury, 0);
}

/// The transfers of `candidates` (one account, accepted in this order) a velocity rule of
/// `count` within 60 s trips when posting judges them in `order`, `per_call` at a time: the
/// index of each, whether its own count tripped it or a transfer judged after it did.
async fn tripped_when_judged(
    candidates: &[Candidate],
    order: &[usize],
    per_call: usize,
    count: u64,
) -> Vec<usize> {
    let (mut connection, namespace) = windows_of_its_own().await;
    let rules = RuleSettings {
        velocity: WindowRule {
            count,
            window_secs: 60,
            action: RuleAction::Flag,
        },
        ..RuleSettings::default()
    };
    let mut tripped = Vec::new();
    for call in order.chunks(per_call) {
        let judged: Vec<_> = call
            .iter()
            .map(|n| (&candidates[*n], StreakStep::Posted, Some(&rules)))
            .collect();
        let counted = windows::count(&mut connection, &namespace, &judged, Duration::from_secs(1))
            .await
            .expect("counted");
        for (n, counted) in call.iter().zip(&counted) {
            if counted.windows.transfers >= count {
                tripped.push(*n);
            }
            for late in &counted.late_velocity {
                let index = candidates.iter().position(|c| c.transfer_id == *late);
                tripped.push(index.expect("a transfer of the burst"));
            }
        }
    }
    tripped.sort_unstable();
    tripped
}

/// `n` transfers out of `card`, accepted 100 ms apart in this order.
fn burst(n: usize) -> Vec<Candidate> {
    (0..n)
        .map(|i| Candidate {
            transfer_id: uuid::Uuid::now_v7(),
            account: AccountKey::new(
                LedgerName::default_ledger(),
                AccountId::parse("card").expect("id"),
            ),
            amount: format!("{}.00", i + 1).parse().expect("amount"),
            currency: Currency::parse("USD").expect("USD"),
            accepted_at_ms: 1_700_000_000_000 + i as i64 * 100,
        })
        .collect()
}

#[tokio::test]
async fn a_burst_judged_out_of_order_still_trips_its_rule() {
    // Exactly five within the window: only the fifth trips a rule of five, whatever order
    // posting judges them in (two workers, a retried job, a batch split across jobs).
    let five = burst(5);
    for order in [
        vec![0, 1, 2, 3, 4],
        // The case: the 4th judged after the 5th (each then counted four).
        vec![0, 1, 2, 4, 3],
        vec![4, 3, 2, 1, 0],
        vec![2, 4, 0, 3, 1],
    ] {
        for per_call in [1, 5] {
            assert_eq!(
                tripped_when_judged(&five, &order, per_call, 5).await,
                [4],
                "order {order:?}, {per_call} per call"
            );
        }
    }
    // Six: the fifth and the sixth, in any order.
    let six = burst(6);
    for order in [
        vec![5, 4, 3, 2, 1, 0],
        vec![0, 5, 1, 4, 2, 3],
        vec![3, 0, 1, 2, 5, 4],
    ] {
        assert_eq!(
            tripped_when_judged(&six, &order, 1, 5).await,
            [4, 5],
            "order {order:?}"
        );
    }
    // Four are no burst, in any order.
    assert_eq!(
        tripped_when_judged(&burst(4), &[3, 2, 1, 0], 1, 5).await,
        Vec::<usize>::new()
    );
}

#[tokio::test]
async fn the_screener_flags_the_fifth_of_a_burst_it_judges_in_reverse() {
    let app = spawn_app().await;
    let tasks = tokio_util::task::TaskTracker::new();
    let stopping = tokio_util::sync::CancellationToken::new();
    let redis = ferry::redis_slot::RedisSlot::connect(
        "redis://127.0.0.1:6379",
        1_000,
        "test",
        &tasks,
        &stopping,
    )
    .await
    .expect("Redis");
    let screener = ferry::anomaly::screen::Screener::new(
        std::sync::Arc::new(ferry::anomaly::settings::AnomalySettings::default()),
        redis,
        &format!("test_{}", uuid::Uuid::new_v4().simple()),
        std::sync::Arc::default(),
    );
    let five = burst(5);
    // One job at a time, newest first: each is judged before the ones accepted earlier.
    for candidate in five.iter().rev() {
        screener
            .judge(&app.pool, &[(candidate.clone(), false)])
            .await;
    }
    let flagged: Vec<(uuid::Uuid, Value)> =
        sqlx::query_as("SELECT transfer_id, detail FROM anomaly_hits WHERE rule = 'velocity'")
            .fetch_all(&app.pool)
            .await
            .expect("hits");
    assert_eq!(flagged.len(), 1, "{flagged:?}");
    assert_eq!(flagged[0].0, five[4].transfer_id, "the fifth, flagged late");
    assert_eq!(flagged[0].1["transfers"], 5);
    stopping.cancel();
}

#[tokio::test]
async fn hits_on_one_account_are_one_anomaly_until_its_window_passes_quietly() {
    // Two transfers within 2 s trip velocity.
    let app = spawn_app_with(|config| {
        config.anomaly.velocity = WindowRule {
            count: 2,
            window_secs: 2,
            action: RuleAction::Flag,
        };
    })
    .await;
    app.create_account("treasury", "USD", true).await;
    app.create_account("b", "USD", false).await;
    let mut sent = Vec::new();
    for n in 0..3 {
        sent.push(
            send(
                &app,
                &format!("first-{n}"),
                "treasury",
                "b",
                &format!("{n}.01"),
            )
            .await,
        );
    }
    // Quiet for longer than the window: the next hit opens a new anomaly.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    for n in 0..2 {
        sent.push(
            send(
                &app,
                &format!("then-{n}"),
                "treasury",
                "b",
                &format!("{n}.02"),
            )
            .await,
        );
    }
    let flagged: Vec<Vec<&str>> = sent.iter().map(flags).collect();
    assert_eq!(
        flagged,
        [
            vec![],
            vec!["velocity"],
            vec!["velocity"],
            vec![],
            vec!["velocity"]
        ],
        "each transfer keeps its flag"
    );
    let listed = app.get("/v1/anomalies?rule=velocity").await.body;
    let anomalies = listed["anomalies"].as_array().expect("anomalies");
    let counts: Vec<i64> = anomalies
        .iter()
        .map(|a| a["transfers"].as_i64().expect("transfers"))
        .collect();
    assert_eq!(counts, [2, 1], "{listed}");
    assert_eq!(
        anomalies[0]["transfer_id"], sent[1]["id"],
        "opened by the 2nd"
    );
    assert!(anomalies[0]["last_hit_at"].as_str() > anomalies[0]["at"].as_str());
    // One event and one alert per anomaly.
    let events = app
        .count("SELECT count(*) FROM events WHERE type = 'anomaly.flagged'")
        .await;
    assert_eq!(events, 2);
    assert_eq!(
        anomaly_alerts(&app).await,
        [
            alert("anomaly.velocity", "trigger", "critical"),
            alert("anomaly.velocity", "trigger", "critical")
        ]
    );

    // Its transfers, paged.
    let first = anomalies[0]["id"].as_i64().expect("id");
    let page = app
        .get(&format!("/v1/anomalies/{first}/transfers?limit=1"))
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_eq!(page.body["transfers"][0]["transfer_id"], sent[1]["id"]);
    assert_eq!(page.body["transfers"][0]["action"], "flag");
    assert_eq!(page.body["transfers"][0]["detail"]["transfers"], 2);
    let after = page.body["next_after"]
        .as_i64()
        .expect("a full page has a cursor");
    let rest = app
        .get(&format!("/v1/anomalies/{first}/transfers?after={after}"))
        .await;
    let rest = rest.body["transfers"]
        .as_array()
        .expect("transfers")
        .clone();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0]["transfer_id"], sent[2]["id"]);

    // No such anomaly, in this ledger or at all: 404; bad paging: 400.
    create_ledger(&app.pool, "other").await;
    let other_key = create_ledger_key(&app.pool, "other", "transfers:read").await;
    let elsewhere = app
        .get_as(&other_key, &format!("/v1/anomalies/{first}/transfers"))
        .await;
    assert_eq!(
        elsewhere.status,
        StatusCode::NOT_FOUND,
        "{}",
        elsewhere.body
    );
    assert_eq!(elsewhere.body["code"], "anomaly_not_found");
    for id in ["999999", "0", "-1", "abc", "1e3", "99999999999999999999"] {
        let reply = app.get(&format!("/v1/anomalies/{id}/transfers")).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{id}: {}", reply.body);
        assert_eq!(reply.body["code"], "anomaly_not_found");
    }
    for query in ["limit=0", "limit=1001", "after=-1", "after=x", "bogus=1"] {
        let reply = app
            .get(&format!("/v1/anomalies/{first}/transfers?{query}"))
            .await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{query}: {}",
            reply.body
        );
    }
}
