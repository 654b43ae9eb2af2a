//! Reconciliation over two ledgers holding the same account ids (README, "Reconciliation"):
//! findings name their ledger, a run over one ledger checks and resolves only that ledger and
//! leaves the shared incremental watermark where it was, money moved across ledgers shows as
//! two unbalanced ledgers, and the database refuses an entry outside its transfer's ledger.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{
    TestApp, create_account_in, create_ledger, create_ledger_key, findings, findings_in, reconcile,
    reconcile_ledger, spawn_app, transfer,
};
use crate::reconciliation::{account_no, enqueue_posting_in_an_hour, finding_in, tamper};

/// The second ledger; the first is `default`, reached with the admin key.
const TWO: &str = "two";

/// Writes a posted transfer of `ledger` the way the posting engine leaves one: the transfer,
/// its debit and credit in the transfer's ledger, both balances; with every trigger on, the
/// entry reference check included.
async fn post_directly(
    app: &TestApp,
    ledger: &str,
    key: &str,
    from: &str,
    to: &str,
    amount: &str,
) -> Uuid {
    let id = Uuid::now_v7();
    let amount: rust_decimal::Decimal = amount.parse().expect("amount");
    let mut tx = app.pool.begin().await.expect("tx");
    sqlx::query(
        "INSERT INTO transfers (id, ledger, api_key_id, idempotency_key, request_fingerprint, \
           from_account, to_account, amount, currency, status, attempts, posted_at) \
         SELECT $1, $2, k.id, $3, '\\x00', $4, $5, $6, 'USD', 'posted', 1, now() \
         FROM api_keys k WHERE k.ledger = $2 LIMIT 1",
    )
    .bind(id)
    .bind(ledger)
    .bind(key)
    .bind(from)
    .bind(to)
    .bind(amount)
    .execute(&mut *tx)
    .await
    .expect("transfer");
    sqlx::query(
        "INSERT INTO entries (transfer_id, account_no, side, amount, currency, balance_after) \
         SELECT $2, a.no, CASE WHEN a.id = $3 THEN 'debit' ELSE 'credit' END, \
           CASE WHEN a.id = $3 THEN -$5::numeric ELSE $5 END, 'USD', \
           a.balance + CASE WHEN a.id = $3 THEN -$5::numeric ELSE $5 END \
         FROM accounts a WHERE a.ledger = $1 AND a.id IN ($3, $4)",
    )
    .bind(ledger)
    .bind(id)
    .bind(from)
    .bind(to)
    .bind(amount)
    .execute(&mut *tx)
    .await
    .expect("entries");
    sqlx::query(
        "UPDATE accounts SET balance = balance + CASE WHEN id = $2 THEN -$4::numeric ELSE $4 END \
         WHERE ledger = $1 AND id IN ($2, $3)",
    )
    .bind(ledger)
    .bind(from)
    .bind(to)
    .bind(amount)
    .execute(&mut *tx)
    .await
    .expect("balances");
    tx.commit().await.expect("commit");
    id
}

/// `default` and `two`, each with accounts `treasury`, `a` and `b`, and transfers
/// treasury → a → b posted: 50.00 and 20.00 in `default` (through the API), 70.00 and 30.00 in
/// `two`. A first, clean run folds the entries into the incremental sums. Returns the app and
/// `default`'s payment a → b.
async fn two_ledgers() -> (TestApp, Uuid) {
    let app = spawn_app().await;
    app.create_account("treasury", "USD", true).await;
    app.create_account("a", "USD", false).await;
    app.create_account("b", "USD", false).await;
    app.post_transfer("fund", &transfer("treasury", "a", "50.00"))
        .await;
    // Posted before the payment is sent: two jobs may post in either order (two workers), and
    // a payment posted first fails for want of funds (seen once in a full run: 6 entries, not 8).
    app.run_until_idle(Duration::from_secs(20)).await;
    let reply = app.post_transfer("pay", &transfer("a", "b", "20.00")).await;
    let payment = reply.body["id"]
        .as_str()
        .expect("id")
        .parse()
        .expect("uuid");
    app.run_until_idle(Duration::from_secs(20)).await;
    create_ledger(&app.pool, TWO).await;
    create_ledger_key(&app.pool, TWO, "transfers:write,transfers:read").await;
    create_account_in(&app.pool, TWO, "treasury", "USD", true).await;
    create_account_in(&app.pool, TWO, "a", "USD", false).await;
    create_account_in(&app.pool, TWO, "b", "USD", false).await;
    post_directly(&app, TWO, "fund", "treasury", "a", "70.00").await;
    post_directly(&app, TWO, "pay", "a", "b", "30.00").await;
    let clean = reconcile(&app, false).await;
    assert_eq!(findings(&clean), vec![], "{clean}");
    assert_eq!(clean["accounts_checked"], 6);
    (app, payment)
}

/// The incremental watermark and the time of the last full scan over every ledger.
async fn reconciliation_state(app: &TestApp) -> (i64, Option<chrono::DateTime<chrono::Utc>>) {
    sqlx::query_as("SELECT entries_through_id, last_full_scan_at FROM reconciliation_state")
        .fetch_one(&app.pool)
        .await
        .expect("state")
}

#[tokio::test]
async fn a_drifted_balance_is_a_finding_of_its_own_ledger_only() {
    let (app, _) = two_ledgers().await;
    tamper(
        &app,
        "UPDATE accounts SET balance = balance + 1 WHERE ledger = 'two' AND id = 'b'",
    )
    .await;
    let run = reconcile(&app, false).await;
    assert_eq!(
        findings(&run),
        vec![finding_in(TWO, "balance_drift", "account:b", "critical")]
    );
    let detail = run["findings"][0]["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("31.00") && detail.contains("30.00"),
        "{detail}"
    );
    // A run over `default` sees nothing wrong there, and leaves `two`'s finding alone.
    let default = reconcile_ledger(&app, Some("default"), false).await;
    assert_eq!(default["ledger"], "default");
    assert_eq!(findings(&default), vec![], "{default}");
    assert_eq!(default["findings_resolved"], 0);
    assert_eq!(default["accounts_checked"], 3);
    let two = reconcile_ledger(&app, Some(TWO), false).await;
    assert_eq!(two["ledger"], TWO);
    assert_eq!(findings(&two), findings(&run));
    assert_eq!(two["findings"][0]["id"], run["findings"][0]["id"]);
    assert_eq!(two["findings_opened"], 0);
}

/// The alerts raised for findings: (action, dedup key, ledger in the details), oldest first.
async fn finding_alerts(app: &TestApp) -> Vec<(String, String, Option<String>)> {
    sqlx::query_as(
        "SELECT action, dedup_key, details->>'ledger' FROM alerts \
         WHERE event_type LIKE 'reconciliation.%' ORDER BY created_at, dedup_key",
    )
    .fetch_all(&app.pool)
    .await
    .expect("alerts")
}

fn alert(action: &str, dedup_key: &str, ledger: &str) -> (String, String, Option<String>) {
    (
        action.to_owned(),
        dedup_key.to_owned(),
        Some(ledger.to_owned()),
    )
}

#[tokio::test]
async fn a_run_over_one_ledger_resolves_only_that_ledgers_findings() {
    let (app, _) = two_ledgers().await;
    let shift = |delta: &str| {
        format!(
            "UPDATE accounts SET balance = balance + {delta} WHERE id = 'b' \
             AND ledger IN ('default', 'two')"
        )
    };
    tamper(&app, &shift("1")).await;
    let run = reconcile(&app, false).await;
    assert_eq!(
        findings(&run),
        vec![
            finding_in("default", "balance_drift", "account:b", "critical"),
            finding_in(TWO, "balance_drift", "account:b", "critical"),
        ]
    );
    // Two problems, two incidents: the dedup key names the ledger (`default` keeps the key it
    // had before ledgers existed).
    let (default_key, two_key) = (
        "ferry:finding:balance_drift:account:b",
        "ferry:finding:balance_drift:two/account:b",
    );
    let mut raised = finding_alerts(&app).await;
    raised.sort();
    assert_eq!(
        raised,
        [
            alert("trigger", default_key, "default"),
            alert("trigger", two_key, TWO)
        ]
    );
    tamper(&app, &shift("-1")).await;
    let default = reconcile_ledger(&app, Some("default"), false).await;
    assert_eq!(findings(&default), vec![]);
    assert_eq!(
        findings_in(&default, "resolved"),
        vec![finding_in(
            "default",
            "balance_drift",
            "account:b",
            "critical"
        )]
    );
    let still_open: Vec<String> =
        sqlx::query_scalar("SELECT ledger FROM reconciliation_findings WHERE resolved_at IS NULL")
            .fetch_all(&app.pool)
            .await
            .expect("open findings");
    assert_eq!(
        still_open,
        [TWO],
        "a run over default resolved another ledger's finding"
    );
    let two = reconcile_ledger(&app, Some(TWO), false).await;
    assert_eq!(
        findings_in(&two, "resolved"),
        vec![finding_in(TWO, "balance_drift", "account:b", "critical")]
    );
    let resolves: Vec<_> = finding_alerts(&app)
        .await
        .into_iter()
        .filter(|(action, _, _)| action == "resolve")
        .collect();
    assert_eq!(
        resolves,
        [
            alert("resolve", default_key, "default"),
            alert("resolve", two_key, TWO)
        ]
    );
}

#[tokio::test]
async fn money_moved_across_ledgers_unbalances_both() {
    let (app, id) = two_ledgers().await;
    let state = reconciliation_state(&app).await;
    // The credit of `default`'s 20.00 payment lands on `two`'s account `b` instead; both
    // balances follow their entries, so no balance drifts: only the ledger totals show it.
    let two_b = account_no(TWO, "b");
    tamper(
        &app,
        &format!(
            "UPDATE entries SET account_no = {two_b} \
               WHERE transfer_id = '{id}' AND side = 'credit'; \
             UPDATE accounts SET balance = balance - 20 WHERE ledger = 'default' AND id = 'b'; \
             UPDATE accounts SET balance = balance + 20 WHERE ledger = 'two' AND id = 'b';"
        ),
    )
    .await;
    let unbalanced =
        |ledger: &str| finding_in(ledger, "ledger_unbalanced", "currency:USD", "critical");
    let misposted = finding_in(
        "default",
        "posted_without_entries",
        &format!("transfer:{id}"),
        "critical",
    );
    // Entries were edited by hand: full scans, one ledger at a time.
    let two = reconcile_ledger(&app, Some(TWO), true).await;
    assert_eq!(findings(&two), vec![unbalanced(TWO)], "{two}");
    assert_eq!(two["full_scan"], true);
    let default = reconcile_ledger(&app, Some("default"), true).await;
    assert_eq!(
        findings(&default),
        vec![unbalanced("default"), misposted.clone()],
        "{default}"
    );
    // Full scans of one ledger rebuilt that ledger's sums only, and moved neither the
    // watermark nor the time of the last full scan over every ledger.
    assert_eq!(reconciliation_state(&app).await, state);
    // An incremental run over every ledger reads the rebuilt sums: the same three findings.
    let all = reconcile(&app, false).await;
    assert_eq!(
        findings(&all),
        vec![unbalanced("default"), unbalanced(TWO), misposted],
        "{all}"
    );
    assert_eq!(all["findings_opened"], 0);
    let details: Vec<String> = all["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter(|f| f["kind"] == "ledger_unbalanced")
        .map(|f| f["detail"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(details[0].contains("sum to -20"), "{details:?}");
    assert!(details[1].contains("sum to 20"), "{details:?}");
    let default_b = account_no("default", "b");
    tamper(
        &app,
        &format!(
            "UPDATE entries SET account_no = {default_b} \
               WHERE transfer_id = '{id}' AND side = 'credit'; \
             UPDATE accounts SET balance = balance + 20 WHERE ledger = 'default' AND id = 'b'; \
             UPDATE accounts SET balance = balance - 20 WHERE ledger = 'two' AND id = 'b';"
        ),
    )
    .await;
    let repaired = reconcile(&app, true).await;
    assert_eq!(findings(&repaired), vec![]);
    assert_eq!(repaired["findings_resolved"], 3);
}

#[tokio::test]
async fn entries_on_an_account_number_no_account_has_are_balance_drift() {
    let (app, id) = two_ledgers().await;
    // The credit of `default`'s payment moved onto an account number no account has.
    tamper(
        &app,
        &format!(
            "UPDATE entries SET account_no = -1 \
               WHERE transfer_id = '{id}' AND side = 'credit'; \
             UPDATE accounts SET balance = balance - 20 WHERE ledger = 'default' AND id = 'b';"
        ),
    )
    .await;
    let run = reconcile(&app, true).await;
    assert_eq!(
        findings(&run),
        vec![
            finding_in("", "balance_drift", "account_no:-1", "critical"),
            finding_in("default", "ledger_unbalanced", "currency:USD", "critical"),
            finding_in(
                "default",
                "posted_without_entries",
                &format!("transfer:{id}"),
                "critical"
            ),
        ],
        "{run}"
    );
    let detail = run["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .find(|f| f["kind"] == "balance_drift")
        .and_then(|f| f["detail"].as_str())
        .unwrap_or_default()
        .to_owned();
    assert!(
        detail.contains("no account has number -1, yet entries name it (sum 20"),
        "{detail}"
    );
}

#[tokio::test]
async fn a_run_over_one_ledger_moves_no_watermark_and_counts_newer_entries() {
    let (app, _) = two_ledgers().await;
    let state = reconciliation_state(&app).await;
    // After the watermark: an orphan pair in `default` (balances adjusted to match), and new
    // postings in both ledgers.
    let ghost = Uuid::new_v4();
    let (a, b) = (account_no("default", "a"), account_no("default", "b"));
    tamper(
        &app,
        &format!(
            "INSERT INTO entries (transfer_id, account_no, side, amount, currency, balance_after) VALUES \
               ('{ghost}', {a}, 'debit', -5, 'USD', 0), ('{ghost}', {b}, 'credit', 5, 'USD', 0); \
             UPDATE accounts SET balance = balance - 5 WHERE ledger = 'default' AND id = 'a'; \
             UPDATE accounts SET balance = balance + 5 WHERE ledger = 'default' AND id = 'b';"
        ),
    )
    .await;
    app.post_transfer("more", &transfer("a", "b", "1.00")).await;
    app.run_until_idle(Duration::from_secs(20)).await;
    post_directly(&app, TWO, "more", "a", "b", "2.00").await;
    // A run over `two` adds its entries after the watermark to the stored sums: no drift.
    let two = reconcile_ledger(&app, Some(TWO), false).await;
    assert_eq!(findings(&two), vec![], "{two}");
    assert_eq!(
        reconciliation_state(&app).await,
        state,
        "the watermark moved"
    );
    // So the next run over every ledger still looks at every entry after the watermark,
    // `default`'s orphans included.
    let all = reconcile(&app, false).await;
    assert_eq!(
        findings(&all),
        vec![finding_in(
            "default",
            "orphan_entry",
            &format!("transfer:{ghost}"),
            "critical"
        )]
    );
    assert!(reconciliation_state(&app).await.0 > state.0);
}

/// Inserts `entries` (SQL `VALUES` rows) with every trigger on; the error code if refused.
async fn insert_entries(app: &TestApp, values: &str) -> Option<String> {
    let mut tx = app.pool.begin().await.expect("tx");
    let result = sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO entries (transfer_id, account_no, side, amount, currency, balance_after) VALUES {values}"
    )))
    .execute(&mut *tx)
    .await;
    // Rolled back either way: the test only asks whether the database takes such rows.
    tx.rollback().await.expect("rollback");
    match result {
        Ok(_) => None,
        Err(sqlx::Error::Database(e)) => e.code().map(|c| c.into_owned()),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test]
async fn an_entry_outside_its_transfers_ledger_is_refused_by_the_database() {
    let (app, _) = two_ledgers().await;
    create_account_in(&app.pool, TWO, "only-in-two", "USD", false).await;
    // A pending transfer of `default` from `a` to `b`: entries for it are only ever written in
    // `default`, on `default`'s accounts.
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO transfers (id, ledger, api_key_id, idempotency_key, request_fingerprint, \
           from_account, to_account, amount, currency) \
         SELECT $1, 'default', id, 'pending', '\\x00', 'a', 'b', 1, 'USD' \
         FROM api_keys WHERE ledger IS NULL LIMIT 1",
    )
    .bind(id)
    .execute(&app.pool)
    .await
    .expect("transfer");
    // Each entry names its account by number: `a` of the debit's ledger, `credit_account`
    // of the credit's.
    let pair = |debit_ledger: &str, credit_ledger: &str, credit_account: &str| {
        format!(
            "('{id}', {}, 'debit', -1, 'USD', 0), ('{id}', {}, 'credit', 1, 'USD', 0)",
            account_no(debit_ledger, "a"),
            account_no(credit_ledger, credit_account)
        )
    };
    // The control: in its transfer's ledger, the pair is taken.
    assert_eq!(
        insert_entries(&app, &pair("default", "default", "b")).await,
        None
    );
    // The same pair with its credit in `two`, where account `b` exists too: refused.
    assert_eq!(
        insert_entries(&app, &pair("default", "two", "b"))
            .await
            .as_deref(),
        Some("23503")
    );
    // Naming an account only `two` has: refused.
    assert_eq!(
        insert_entries(&app, &pair("default", "two", "only-in-two"))
            .await
            .as_deref(),
        Some("23503")
    );
    // Both entries in `two`, where both accounts exist, but the transfer is `default`'s.
    assert_eq!(
        insert_entries(&app, &pair("two", "two", "b"))
            .await
            .as_deref(),
        Some("23503")
    );
    // An account number no account has: refused.
    assert_eq!(
        insert_entries(
            &app,
            &format!(
                "('{id}', {}, 'debit', -1, 'USD', 0), ('{id}', -1, 'credit', 1, 'USD', 0)",
                account_no("default", "a")
            )
        )
        .await
        .as_deref(),
        Some("23503")
    );
    assert_eq!(
        app.count("SELECT count(*) FROM entries").await,
        8,
        "two transfers per ledger, two entries each"
    );
}

#[tokio::test]
async fn a_stuck_transfer_is_reported_only_by_runs_over_its_ledger() {
    let (app, _) = two_ledgers().await;
    // Pending in `two` for 11 minutes, its job delayed an hour: stuck, but not re-driven.
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO transfers (id, ledger, api_key_id, idempotency_key, request_fingerprint, \
           from_account, to_account, amount, currency, created_at, updated_at) \
         SELECT $1, 'two', id, 'aged', '\\x00', 'treasury', 'b', 3, 'USD', \
           now() - interval '11 minutes', now() - interval '11 minutes' \
         FROM api_keys WHERE ledger = 'two' LIMIT 1",
    )
    .bind(id)
    .execute(&app.pool)
    .await
    .expect("aged transfer");
    enqueue_posting_in_an_hour(&app, vec![id]).await;
    let stuck = vec![finding_in(
        TWO,
        "stuck_pending",
        &format!("transfer:{id}"),
        "medium",
    )];
    let default = reconcile_ledger(&app, Some("default"), false).await;
    assert_eq!(findings(&default), vec![], "{default}");
    let two = reconcile_ledger(&app, Some(TWO), false).await;
    assert_eq!(findings(&two), stuck);
    assert_eq!(two["transfers_redriven"], 0);
    let all = reconcile(&app, false).await;
    assert_eq!(findings(&all), stuck);
    assert_eq!(all["findings"][0]["id"], two["findings"][0]["id"]);
}

#[tokio::test]
async fn runs_name_their_ledger_and_an_unknown_ledger_is_refused_with_nothing_stored() {
    let app = spawn_app().await;
    create_ledger(&app.pool, TWO).await;
    let stored = || async {
        (
            app.count("SELECT count(*) FROM reconciliation_runs").await,
            app.count("SELECT count(*) FROM apalis.jobs WHERE job_type = 'ferry.reconcile'")
                .await,
        )
    };
    let unknown = app
        .post_json("/v1/reconciliations", &json!({"ledger": "nope"}))
        .await;
    assert_eq!(
        unknown.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        unknown.body
    );
    assert_eq!(unknown.body["code"], "ledger_not_found");
    assert!(
        unknown.body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("nope")),
        "{}",
        unknown.body
    );
    let malformed = app
        .post_json("/v1/reconciliations", &json!({"ledger": "Not A Name"}))
        .await;
    assert_eq!(
        malformed.status,
        StatusCode::BAD_REQUEST,
        "{}",
        malformed.body
    );
    assert_eq!(malformed.body["code"], "invalid_body");
    assert_eq!(stored().await, (0, 0));

    let database_url = app.database.url();
    let cli = |ledger: &'static str| async move {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["reconcile", "--ledger", ledger])
            .env("DATABASE_URL", database_url)
            .env("RUST_LOG", "warn")
            .output()
            .await
    };
    let refused = cli("nope").await.expect("ferry reconcile runs");
    let stderr = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(!refused.status.success(), "{stderr}");
    assert!(stderr.contains("ledger nope does not exist"), "{stderr}");
    assert_eq!(stored().await, (0, 0));
    let checked = cli("two").await.expect("ferry reconcile runs");
    let report = String::from_utf8_lossy(&checked.stdout).into_owned();
    assert!(checked.status.success(), "{report}");
    assert!(report.contains("ledger      two"), "{report}");

    let run = reconcile_ledger(&app, Some(TWO), false).await;
    assert_eq!(run["ledger"], TWO);
    let all = reconcile(&app, false).await;
    assert_eq!(all["ledger"], Value::Null);
    let list = app.get("/v1/reconciliations?limit=10").await;
    let ledgers: Vec<Value> = list.body["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .map(|r| r["ledger"].clone())
        .collect();
    assert_eq!(ledgers, [Value::Null, json!(TWO), json!(TWO)]);
}

/// The value of `ferry_reconciliation_open_findings{kind, ledger}` this process exports.
async fn open_findings_gauge(app: &TestApp, kind: &str, ledger: &str) -> Option<f64> {
    let series =
        format!("ferry_reconciliation_open_findings{{kind=\"{kind}\",ledger=\"{ledger}\"}}");
    app.metric(&series).await
}

#[tokio::test]
async fn the_open_findings_gauge_counts_each_ledger_and_falls_to_zero_when_resolved() {
    let (app, _) = two_ledgers().await;
    // A ledger no other test uses: the metrics recorder is shared by every test in the process.
    let own = format!("gauge-{}", Uuid::new_v4().simple());
    create_ledger(&app.pool, &own).await;
    for id in ["x", "y"] {
        create_account_in(&app.pool, &own, id, "USD", false).await;
    }
    tamper(
        &app,
        &format!(
            "UPDATE accounts SET balance = 5 WHERE ledger = '{own}'; \
                  UPDATE accounts SET balance = 1 WHERE ledger = '{TWO}' AND id = 'b';"
        ),
    )
    .await;
    let run = reconcile(&app, false).await;
    assert_eq!(run["findings_open"], 3, "{run}");
    assert_eq!(
        open_findings_gauge(&app, "balance_drift", &own).await,
        Some(2.0)
    );
    // A run over one ledger sees only some findings: it sets no gauge.
    tamper(
        &app,
        &format!("UPDATE accounts SET balance = 0 WHERE ledger = '{own}' AND id = 'x';"),
    )
    .await;
    reconcile_ledger(&app, Some(&own), false).await;
    assert_eq!(
        open_findings_gauge(&app, "balance_drift", &own).await,
        Some(2.0)
    );
    tamper(
        &app,
        &format!("UPDATE accounts SET balance = 0 WHERE ledger = '{own}';"),
    )
    .await;
    let repaired = reconcile(&app, false).await;
    assert_eq!(repaired["findings_open"], 1, "{repaired}");
    assert_eq!(
        open_findings_gauge(&app, "balance_drift", &own).await,
        Some(0.0)
    );
}
