//! Reconciliation: every finding kind caught after deliberate corruption, exactly once, and
//! resolved after repair; a clean ledger reports nothing; one run per scheduled window.

use std::collections::HashSet;
use std::time::Duration;

use ferry::config::Roles;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    FindingKey, TestApp, create_api_key, findings, reconcile, spawn_app, spawn_worker, transfer,
};

/// A finding of the `default` ledger, as [`findings`] lists it.
fn finding(kind: &str, subject: &str, severity: &str) -> FindingKey {
    finding_in("default", kind, subject, severity)
}

/// A finding of `ledger` ("" for findings about no one ledger), as [`findings`] lists it.
pub fn finding_in(ledger: &str, kind: &str, subject: &str, severity: &str) -> FindingKey {
    (
        kind.to_owned(),
        ledger.to_owned(),
        subject.to_owned(),
        severity.to_owned(),
    )
}

fn resolved_kinds(run: &Value) -> Vec<String> {
    let mut kinds: Vec<_> = run["resolved"]
        .as_array()
        .expect("resolved")
        .iter()
        .map(|f| f["kind"].as_str().unwrap_or_default().to_owned())
        .collect();
    kinds.sort();
    kinds
}

/// An app with a treasury, accounts `a` and `b`, and one posted transfer treasury → a → b.
async fn app_with_posted_transfer() -> (TestApp, String) {
    let app = spawn_app().await;
    app.create_account("treasury", "USD", true).await;
    app.create_account("a", "USD", false).await;
    app.create_account("b", "USD", false).await;
    app.post_transfer("fund", &transfer("treasury", "a", "50.00"))
        .await;
    // Posted before the payment is sent: two jobs may post in either order (two workers), and
    // a payment posted first fails for want of funds.
    app.run_until_idle(Duration::from_secs(20)).await;
    let reply = app.post_transfer("pay", &transfer("a", "b", "20.00")).await;
    let id = reply.body["id"].as_str().expect("id").to_owned();
    app.run_until_idle(Duration::from_secs(20)).await;
    // A first, clean run folds the existing entries into the incremental sums.
    let clean = reconcile(&app, false).await;
    assert_eq!(findings(&clean), vec![], "{clean}");
    (app, id)
}

/// Runs SQL as a superuser session with triggers and foreign keys off, the way someone
/// tampering with the database would.
/// The SQL for the number of account `id` of `ledger`, for entries written by hand.
pub fn account_no(ledger: &str, id: &str) -> String {
    format!("(SELECT no FROM accounts WHERE ledger = '{ledger}' AND id = '{id}')")
}

pub async fn tamper(app: &TestApp, sql: &str) {
    let statement = format!("SET session_replication_role = replica; {sql}");
    sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
        .execute(&app.pool)
        .await
        .expect("tampering statement");
    sqlx::raw_sql("SET session_replication_role = origin")
        .execute(&app.pool)
        .await
        .expect("reset");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_ledger_under_concurrent_traffic_reports_no_findings() {
    let app = spawn_app().await;
    app.create_account("treasury", "USD", true).await;
    for n in 0..5 {
        app.create_account(&format!("acct{n}"), "USD", false).await;
    }
    let item = |key: String, from: String, to: String, n: usize| {
        json!({"idempotency_key": key, "from_account": from, "to_account": to,
               "amount": format!("{}.{:02}", n % 40 + 1, n % 100), "currency": "USD"})
    };
    let funding: Vec<_> = (0..5)
        .map(|n| item(format!("f{n}"), "treasury".into(), format!("acct{n}"), n))
        .collect();
    let funded = app
        .post_json("/v1/transfers/batch", &json!({"transfers": funding}))
        .await;
    assert_eq!(funded.status, StatusCode::OK);
    app.run_until_idle(Duration::from_secs(30)).await;
    // Traffic keeps posting while reconciliation runs one after another: the incremental
    // balance sums, the windowed transfer checks and the currency totals all read a ledger
    // that moves under them (README, "Reconciliation": one snapshot per run).
    let traffic_stop = std::sync::atomic::AtomicBool::new(false);
    let traffic = async {
        let mut sent = 0usize;
        let mut batch = 0usize;
        while !traffic_stop.load(std::sync::atomic::Ordering::Relaxed) {
            let items: Vec<_> = (0..25)
                .map(|i| {
                    let n = batch * 25 + i;
                    let (from, to) = (format!("acct{}", n % 5), format!("acct{}", (n + 1) % 5));
                    item(format!("t{batch}-{i}"), from, to, n)
                })
                .collect();
            let reply = app
                .post_json("/v1/transfers/batch", &json!({"transfers": items}))
                .await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
            sent += 25;
            batch += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        sent
    };
    let runs = async {
        let (mut runs, mut runs_during_posting) = (0, 0);
        // Several runs that each saw entries committed while they ran.
        while runs_during_posting < 5 {
            let entries_before = app.count("SELECT count(*) FROM entries").await;
            let run = reconcile(&app, false).await;
            let entries_after = app.count("SELECT count(*) FROM entries").await;
            assert_eq!(findings(&run), vec![], "run {runs} during traffic: {run}");
            runs += 1;
            if entries_after > entries_before {
                runs_during_posting += 1;
            }
            assert!(
                runs < 60,
                "only {runs_during_posting} of {runs} runs overlapped posting"
            );
        }
        traffic_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    };
    let (sent, ()) = tokio::join!(traffic, runs);
    app.run_until_idle(Duration::from_secs(30)).await;
    let run = reconcile(&app, false).await;
    assert_eq!(findings(&run), vec![], "{run}");
    assert_eq!(run["transfers_checked"], 5 + sent);
    assert_eq!(run["accounts_checked"], 6);
    let full = reconcile(&app, true).await;
    assert_eq!(findings(&full), vec![], "{full}");
    assert_eq!(full["full_scan"], true);
}

#[tokio::test]
async fn deleted_entries_are_posted_without_entries_and_resolve_when_restored() {
    let (app, id) = app_with_posted_transfer().await;
    tamper(
        &app,
        &format!(
            "CREATE TABLE deleted AS SELECT * FROM entries WHERE transfer_id = '{id}'; \
             DELETE FROM entries WHERE transfer_id = '{id}';"
        ),
    )
    .await;
    let run = reconcile(&app, false).await;
    let subject = format!("transfer:{id}");
    assert_eq!(
        findings(&run),
        vec![finding("posted_without_entries", &subject, "critical")]
    );
    // A full scan also sees that the balances no longer match the remaining entries.
    let full = reconcile(&app, true).await;
    assert_eq!(
        findings(&full),
        vec![
            finding("balance_drift", "account:a", "critical"),
            finding("balance_drift", "account:b", "critical"),
            finding("posted_without_entries", &subject, "critical"),
        ]
    );
    tamper(
        &app,
        "INSERT INTO entries OVERRIDING SYSTEM VALUE SELECT * FROM deleted",
    )
    .await;
    let repaired = reconcile(&app, true).await;
    assert_eq!(findings(&repaired), vec![]);
    assert_eq!(
        resolved_kinds(&repaired),
        ["balance_drift", "balance_drift", "posted_without_entries"]
    );
}

#[tokio::test]
async fn a_changed_balance_is_balance_drift_and_resolves_when_reverted() {
    let (app, _) = app_with_posted_transfer().await;
    tamper(
        &app,
        "UPDATE accounts SET balance = balance + 1 WHERE id = 'b' AND ledger = 'default'",
    )
    .await;
    let run = reconcile(&app, false).await;
    assert_eq!(
        findings(&run),
        vec![finding("balance_drift", "account:b", "critical")]
    );
    let detail = run["findings"][0]["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("21.00") && detail.contains("20.00"),
        "{detail}"
    );
    // Still there on the next run: the same finding, not a second one.
    let again = reconcile(&app, false).await;
    assert_eq!(again["findings"][0]["id"], run["findings"][0]["id"]);
    assert_eq!(again["findings_opened"], 0);
    assert_eq!(again["findings_open"], 1);
    tamper(
        &app,
        "UPDATE accounts SET balance = balance - 1 WHERE id = 'b' AND ledger = 'default'",
    )
    .await;
    let repaired = reconcile(&app, false).await;
    assert_eq!(findings(&repaired), vec![]);
    assert_eq!(resolved_kinds(&repaired), ["balance_drift"]);
    assert!(repaired["resolved"][0]["resolved_at"].is_string());
}

#[tokio::test]
async fn an_entry_without_a_transfer_is_orphan_entry() {
    let (app, _) = app_with_posted_transfer().await;
    let ghost = uuid::Uuid::new_v4();
    // A balanced pair on real accounts, balances adjusted: only the missing transfer is wrong.
    let (a, b) = (account_no("default", "a"), account_no("default", "b"));
    tamper(
        &app,
        &format!(
            "INSERT INTO entries (transfer_id, account_no, side, amount, currency, balance_after) VALUES \
               ('{ghost}', {a}, 'debit', -5, 'USD', 0), \
               ('{ghost}', {b}, 'credit', 5, 'USD', 0); \
             UPDATE accounts SET balance = balance - 5 WHERE id = 'a' AND ledger = 'default'; \
             UPDATE accounts SET balance = balance + 5 WHERE id = 'b' AND ledger = 'default';"
        ),
    )
    .await;
    let run = reconcile(&app, false).await;
    assert_eq!(
        findings(&run),
        vec![finding(
            "orphan_entry",
            &format!("transfer:{ghost}"),
            "critical"
        )]
    );
    tamper(
        &app,
        &format!(
            "DELETE FROM entries WHERE transfer_id = '{ghost}'; \
             UPDATE accounts SET balance = balance + 5 WHERE id = 'a' AND ledger = 'default'; \
             UPDATE accounts SET balance = balance - 5 WHERE id = 'b' AND ledger = 'default';"
        ),
    )
    .await;
    // Entries were removed by hand, so the incremental sums need a full rescan.
    let repaired = reconcile(&app, true).await;
    assert_eq!(findings(&repaired), vec![]);
    assert_eq!(resolved_kinds(&repaired), ["orphan_entry"]);
}

#[tokio::test]
async fn a_second_debit_and_credit_for_one_transfer_is_double_posted() {
    let (app, id) = app_with_posted_transfer().await;
    let (a, b) = (account_no("default", "a"), account_no("default", "b"));
    tamper(
        &app,
        &format!(
            "ALTER TABLE entries DROP CONSTRAINT entries_one_per_side; \
             INSERT INTO entries (transfer_id, account_no, side, amount, currency, balance_after) VALUES \
               ('{id}', {a}, 'debit', -20, 'USD', 0), \
               ('{id}', {b}, 'credit', 20, 'USD', 0); \
             UPDATE accounts SET balance = balance - 20 WHERE id = 'a' AND ledger = 'default'; \
             UPDATE accounts SET balance = balance + 20 WHERE id = 'b' AND ledger = 'default';"
        ),
    )
    .await;
    let run = reconcile(&app, false).await;
    assert_eq!(
        findings(&run),
        vec![finding(
            "double_posted",
            &format!("transfer:{id}"),
            "critical"
        )]
    );
    tamper(
        &app,
        &format!(
            "DELETE FROM entries WHERE id IN (SELECT max(id) FROM entries \
               WHERE transfer_id = '{id}' GROUP BY side); \
             UPDATE accounts SET balance = balance + 20 WHERE id = 'a' AND ledger = 'default'; \
             UPDATE accounts SET balance = balance - 20 WHERE id = 'b' AND ledger = 'default';"
        ),
    )
    .await;
    let repaired = reconcile(&app, true).await;
    assert_eq!(findings(&repaired), vec![]);
    assert_eq!(resolved_kinds(&repaired), ["double_posted"]);
}

/// Marks posted transfer `id` failed behind ferry's back, keeping its entries; `also_set` adds
/// assignments (", updated_at = …").
async fn mark_failed(app: &TestApp, id: &str, also_set: &str) {
    tamper(
        app,
        &format!(
            "UPDATE transfers SET status = 'failed', failure_code = 'insufficient_funds', \
               posted_at = NULL, failed_at = now(){also_set} WHERE id = '{id}'"
        ),
    )
    .await;
}

/// What a run lists when transfer `id` is failed but has entries, and nothing else is wrong.
fn failed_with_entries(id: &str) -> Vec<FindingKey> {
    vec![finding(
        "failed_with_entries",
        &format!("transfer:{id}"),
        "critical",
    )]
}

#[tokio::test]
async fn a_posted_transfer_marked_failed_is_failed_with_entries() {
    let (app, id) = app_with_posted_transfer().await;
    mark_failed(&app, &id, "").await;
    let run = reconcile(&app, false).await;
    assert_eq!(findings(&run), failed_with_entries(&id), "{run}");
    tamper(
        &app,
        &format!(
            "UPDATE transfers SET status = 'posted', failure_code = NULL, posted_at = now(), \
               failed_at = NULL WHERE id = '{id}'"
        ),
    )
    .await;
    let repaired = reconcile(&app, false).await;
    assert_eq!(findings(&repaired), vec![]);
    assert_eq!(resolved_kinds(&repaired), ["failed_with_entries"]);
}

#[tokio::test]
async fn a_window_past_one_page_is_checked_whole_and_ties_across_a_page_boundary_are_not_skipped() {
    let (app, id) = app_with_posted_transfer().await;
    // More transfers than one page of the transfer check, every one changed at the same
    // instant (as a posting batch stamps them), with ids below any v7 id: the broken transfer
    // below sorts after all of them, on the second page, among ties of the first page's last
    // row. A cursor on `updated_at` alone skips it, and so does a check that stops at a page.
    let page_rows = ferry::reconcile::checks::TRANSFER_PAGE_ROWS;
    let fillers = page_rows + 50;
    sqlx::query(
        "INSERT INTO transfers (id, ledger, api_key_id, idempotency_key, request_fingerprint, \
           from_account, to_account, amount, currency, status, failure_code, failed_at, \
           created_at, updated_at) \
         SELECT ('00000000-0000-4000-8000-' || lpad(to_hex(n), 12, '0'))::uuid, 'default', \
           k.id, 'filler' || n, '\\x00', 'a', 'b', 1, 'USD', 'failed', 'insufficient_funds', \
           now(), now() - interval '10 minutes', now() - interval '10 minutes' \
         FROM generate_series(1, $1) AS n, (SELECT id FROM api_keys LIMIT 1) AS k",
    )
    .bind(fillers)
    .execute(&app.pool)
    .await
    .expect("filler transfers");
    mark_failed(
        &app,
        &id,
        ", updated_at = (SELECT updated_at FROM transfers WHERE idempotency_key = 'filler1')",
    )
    .await;
    let run = reconcile(&app, false).await;
    assert_eq!(findings(&run), failed_with_entries(&id), "{run}");
    // The fillers, the broken one and the treasury's funding transfer, each once.
    assert_eq!(run["transfers_checked"], fillers + 2, "{run}");
}

/// Queues a posting job for `transfer_ids` due in an hour: their job is alive.
pub async fn enqueue_posting_in_an_hour(app: &TestApp, transfer_ids: Vec<uuid::Uuid>) {
    let mut conn = app.pool.acquire().await.expect("conn");
    let job = ferry::queue::payloads::PostTransfers { transfer_ids };
    ferry::queue::enqueue(
        &mut conn,
        ferry::queue::POST_TRANSFERS_QUEUE,
        &job,
        Some(Duration::from_secs(3600)),
    )
    .await
    .expect("enqueue");
}

/// Inserts a transfer that has been pending for 11 minutes (as if intake had committed it
/// and its job had since vanished).
async fn insert_aged_pending(app: &TestApp, key: &str) -> uuid::Uuid {
    let id = uuid::Uuid::now_v7();
    sqlx::query(
        "INSERT INTO transfers (id, ledger, api_key_id, idempotency_key, request_fingerprint, \
           from_account, to_account, amount, currency, created_at, updated_at) \
         SELECT $1, 'default', id, $2, '\\x00', 'treasury', 'b', 3, 'USD', \
           now() - interval '11 minutes', now() - interval '11 minutes' \
         FROM api_keys LIMIT 1",
    )
    .bind(id)
    .bind(key)
    .execute(&app.pool)
    .await
    .expect("aged transfer");
    id
}

#[tokio::test]
async fn a_stuck_transfer_without_a_job_is_reported_and_re_driven_once() {
    let (app, _) = app_with_posted_transfer().await;
    let id = insert_aged_pending(&app, "aged").await;
    let run = reconcile(&app, false).await;
    assert_eq!(
        findings(&run),
        vec![finding(
            "stuck_pending",
            &format!("transfer:{id}"),
            "medium"
        )]
    );
    assert_eq!(run["transfers_redriven"], 1);
    // The re-driven job posts it; the next run finds nothing left to do.
    let posted = app.wait_until_terminal(&id.to_string()).await;
    assert_eq!(posted["status"], "posted");
    let after = reconcile(&app, false).await;
    assert_eq!(findings(&after), vec![]);
    assert_eq!(after["transfers_redriven"], 0);
    assert_eq!(resolved_kinds(&after), ["stuck_pending"]);
    assert_eq!(app.balance("b").await, "23.00");
}

#[tokio::test]
async fn a_stuck_transfer_whose_job_is_still_queued_is_not_re_driven() {
    let (app, _) = app_with_posted_transfer().await;
    let id = insert_aged_pending(&app, "aged").await;
    enqueue_posting_in_an_hour(&app, vec![id]).await;
    let run = reconcile(&app, false).await;
    assert_eq!(
        findings(&run),
        vec![finding(
            "stuck_pending",
            &format!("transfer:{id}"),
            "medium"
        )]
    );
    assert_eq!(run["transfers_redriven"], 0);
}

/// Inserts `count` transfers pending since `minutes` ago in one statement, all with the same
/// `created_at` (so paging must break ties by id), and returns their ids.
async fn insert_aged_pending_many(
    app: &TestApp,
    prefix: &str,
    count: usize,
    minutes: i32,
) -> Vec<uuid::Uuid> {
    sqlx::query_scalar(
        "INSERT INTO transfers (id, ledger, api_key_id, idempotency_key, request_fingerprint, \
           from_account, to_account, amount, currency, created_at, updated_at) \
         SELECT gen_random_uuid(), 'default', k.id, $1 || n, '\\x00', 'treasury', 'b', 3, \
           'USD', \
           now() - make_interval(mins => $3), now() - make_interval(mins => $3) \
         FROM generate_series(1, $2) AS n, (SELECT id FROM api_keys LIMIT 1) AS k \
         RETURNING id",
    )
    .bind(prefix)
    .bind(i32::try_from(count).expect("count fits"))
    .bind(minutes)
    .fetch_all(&app.pool)
    .await
    .expect("aged transfers")
}

fn subjects_of(run: &Value, kind: &str) -> HashSet<String> {
    run["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter(|f| f["kind"] == kind)
        .map(|f| f["subject"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_transfers_past_one_page_are_all_reported_and_none_resolved_while_stuck() {
    let (app, _) = app_with_posted_transfer().await;
    // Stuck transfers a delayed job still carries: reported, never re-driven, so they stay
    // pending for the whole test.
    let held = insert_aged_pending_many(&app, "held", 50, 11).await;
    enqueue_posting_in_an_hour(&app, held.clone()).await;
    let first = reconcile(&app, false).await;
    assert_eq!(subjects_of(&first, "stuck_pending").len(), held.len());
    assert_eq!(first["transfers_redriven"], 0);

    // Older ones, more than ten pages and more than the 10,000 the check once stopped at: a
    // check that stops early keeps the oldest and silently resolves the first run's findings.
    let older_count = ferry::reconcile::checks::PAGE_ROWS * 10 + 1;
    assert!(older_count > 10_000);
    let older = insert_aged_pending_many(&app, "older", older_count, 20).await;
    let second = reconcile(&app, false).await;
    let reported = subjects_of(&second, "stuck_pending");
    assert_eq!(reported.len(), held.len() + older_count);
    for id in held.iter().chain(&older) {
        assert!(reported.contains(&format!("transfer:{id}")), "{id} missing");
    }
    assert_eq!(second["findings_open"], held.len() + older_count);
    assert_eq!(second["findings_opened"], older_count);
    assert_eq!(second["findings_resolved"], 0);
    assert_eq!(resolved_kinds(&second), Vec::<String>::new());
    assert_eq!(second["transfers_redriven"], older_count);

    // The older transfers reach a terminal state (set here rather than awaited from the
    // workers, whose retry backoff would make the test's duration depend on machine load; the
    // status guard makes their re-driven jobs no-ops): the next run resolves exactly those,
    // page after page, and keeps the held ones open.
    // Workers are posting the re-driven jobs meanwhile: lock in id order, as posting does,
    // and try again should a deadlock still be reported.
    let mut tries = 0;
    loop {
        let ended = sqlx::query(
            "UPDATE transfers SET status = 'failed', failure_code = 'retries_exhausted', \
               failed_at = now(), updated_at = now() \
             WHERE id IN (SELECT id FROM transfers WHERE id = ANY($1) AND status = 'pending' \
                          ORDER BY id FOR UPDATE)",
        )
        .bind(&older)
        .execute(&app.pool)
        .await;
        match ended {
            Ok(_) => break,
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("40P01") && tries < 5 => {
                tries += 1;
            }
            Err(e) => panic!("end the older transfers: {e:?}"),
        }
    }
    let third = reconcile(&app, false).await;
    assert_eq!(third["findings_resolved"], older_count);
    assert_eq!(third["findings_open"], held.len());
    let still: HashSet<String> = held.iter().map(|id| format!("transfer:{id}")).collect();
    assert_eq!(subjects_of(&third, "stuck_pending"), still);
    assert_eq!(third["transfers_redriven"], 0);
}

#[tokio::test]
async fn a_finding_of_a_kind_the_run_did_not_check_stays_open() {
    let (app, _) = app_with_posted_transfer().await;
    // A finding of a kind none of this run's checks reports, as a check that did not run (or
    // another ferry version's) leaves it: nothing looked at it, so nothing may resolve it.
    let id: uuid::Uuid = sqlx::query_scalar(
        "INSERT INTO reconciliation_findings (id, kind, severity, ledger, subject, detail, \
           first_seen_run, last_seen_run) \
         SELECT gen_random_uuid(), 'not_checked_here', 'medium', 'default', 'account:a', \
           'left by another check', \
           id, id FROM reconciliation_runs LIMIT 1 \
         RETURNING id",
    )
    .fetch_one(&app.pool)
    .await
    .expect("finding");
    let run = reconcile(&app, false).await;
    assert_eq!(findings(&run), vec![]);
    assert_eq!(run["findings_resolved"], 0, "{run}");
    let full = reconcile(&app, true).await;
    assert_eq!(full["findings_resolved"], 0, "{full}");
    let resolved_at: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT resolved_at FROM reconciliation_findings WHERE id = $1")
            .bind(id)
            .fetch_one(&app.pool)
            .await
            .expect("finding row");
    assert_eq!(resolved_at, None);
}

#[tokio::test]
async fn a_finding_whose_transfer_left_the_window_is_re_checked_not_resolved() {
    let (app, id) = app_with_posted_transfer().await;
    tamper(
        &app,
        &format!(
            "UPDATE transfers SET status = 'failed', failure_code = 'insufficient_funds', \
               posted_at = NULL, failed_at = now() WHERE id = '{id}'"
        ),
    )
    .await;
    let subject = format!("transfer:{id}");
    let run = reconcile(&app, false).await;
    assert_eq!(
        findings(&run),
        vec![finding("failed_with_entries", &subject, "critical")]
    );
    // The transfer's last change is now two days before any window the next runs look at.
    tamper(
        &app,
        &format!("UPDATE transfers SET updated_at = now() - interval '2 days' WHERE id = '{id}'"),
    )
    .await;
    let outside = reconcile(&app, false).await;
    assert_eq!(
        findings(&outside),
        vec![finding("failed_with_entries", &subject, "critical")]
    );
    assert_eq!(outside["findings_resolved"], 0);
    assert_eq!(outside["findings"][0]["id"], run["findings"][0]["id"]);
    tamper(
        &app,
        &format!(
            "UPDATE transfers SET status = 'posted', failure_code = NULL, posted_at = now(), \
               failed_at = NULL, updated_at = now() - interval '2 days' WHERE id = '{id}'"
        ),
    )
    .await;
    let repaired = reconcile(&app, false).await;
    assert_eq!(findings(&repaired), vec![]);
    assert_eq!(resolved_kinds(&repaired), ["failed_with_entries"]);
}

#[tokio::test]
async fn a_killed_job_is_job_dead_and_resolves_when_cleared() {
    let (app, _) = app_with_posted_transfer().await;
    // An acknowledged job: apalis writes nothing to it any more, so the kill sticks. The ack
    // is written after the transfer posted, so wait for it.
    let started = std::time::Instant::now();
    let job_id: String = loop {
        let killed: Option<String> = sqlx::query_scalar(
            "UPDATE apalis.jobs SET status = 'Killed' WHERE id = \
               (SELECT id FROM apalis.jobs WHERE job_type = 'ferry.post_transfers' \
                AND status = 'Done' LIMIT 1) \
             RETURNING id",
        )
        .fetch_optional(&app.pool)
        .await
        .expect("kill a job");
        if let Some(id) = killed {
            break id;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the posting job was never acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let run = reconcile(&app, false).await;
    assert_eq!(
        findings(&run),
        vec![finding_in(
            "",
            "job_dead",
            &format!("job:{job_id}"),
            "medium"
        )]
    );
    sqlx::query("DELETE FROM apalis.jobs WHERE id = $1")
        .bind(&job_id)
        .execute(&app.pool)
        .await
        .expect("clear");
    let repaired = reconcile(&app, false).await;
    assert_eq!(findings(&repaired), vec![]);
    assert_eq!(resolved_kinds(&repaired), ["job_dead"]);
}

#[tokio::test]
async fn an_unbalanced_currency_is_ledger_unbalanced() {
    let (app, _) = app_with_posted_transfer().await;
    // A credit with no debit (money invented), the balance adjusted to match: the currency
    // total is wrong, and the stray entry is also an orphan.
    let ghost = uuid::Uuid::new_v4();
    let b = account_no("default", "b");
    tamper(
        &app,
        &format!(
            "INSERT INTO entries (transfer_id, account_no, side, amount, currency, balance_after) \
               VALUES ('{ghost}', {b}, 'credit', 20, 'USD', 0); \
             UPDATE accounts SET balance = balance + 20 WHERE id = 'b' AND ledger = 'default';"
        ),
    )
    .await;
    let run = reconcile(&app, false).await;
    let kinds: HashSet<String> = findings(&run).into_iter().map(|f| f.0).collect();
    assert!(kinds.contains("ledger_unbalanced"), "{run}");
    let unbalanced = findings(&run)
        .into_iter()
        .filter(|f| f.0 == "ledger_unbalanced")
        .collect::<Vec<_>>();
    assert_eq!(
        unbalanced,
        vec![finding("ledger_unbalanced", "currency:USD", "critical")]
    );
    assert_eq!(
        findings(&run),
        vec![
            finding("ledger_unbalanced", "currency:USD", "critical"),
            finding("orphan_entry", &format!("transfer:{ghost}"), "critical"),
        ]
    );
}

#[tokio::test]
async fn finished_jobs_past_retention_are_purged() {
    let (app, _) = app_with_posted_transfer().await;
    // Posting jobs only: the reconciliation runs' own jobs are acknowledged asynchronously.
    let done_posting_jobs = || async {
        let mut ids: Vec<String> = sqlx::query_scalar(
            "SELECT id::text FROM apalis.jobs WHERE status = 'Done' \
               AND job_type = 'ferry.post_transfers' ORDER BY id",
        )
        .fetch_all(&app.pool)
        .await
        .expect("done jobs");
        ids.sort();
        ids
    };
    // apalis records a finished job when its worker is next polled (20 ms after a wake-up,
    // or at the 250 ms fallback): wait for both to be recorded.
    let waiting_since = std::time::Instant::now();
    let mut before = done_posting_jobs().await;
    while before.len() < 2 && waiting_since.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        before = done_posting_jobs().await;
    }
    assert!(before.len() >= 2, "{before:?}");
    // One job two hours past its finish (retention: one hour), one just inside retention.
    let (expired, kept) = (&before[0], &before[1]);
    for (id, age) in [(expired, "2 hours"), (kept, "59 minutes")] {
        sqlx::query("UPDATE apalis.jobs SET done_at = now() - $2::interval WHERE id::text = $1")
            .bind(id)
            .bind(age)
            .execute(&app.pool)
            .await
            .expect("age a job");
    }
    let run = reconcile(&app, false).await;
    assert_eq!(run["jobs_purged"], 1);
    let after = done_posting_jobs().await;
    let expected: Vec<String> = before.iter().filter(|id| *id != expired).cloned().collect();
    assert_eq!(after, expected, "exactly the expired job is gone");
}

#[tokio::test]
async fn runs_are_listed_newest_first_and_need_the_admin_scope() {
    let (app, _) = app_with_posted_transfer().await;
    let second = reconcile(&app, false).await;
    let list = app.get("/v1/reconciliations?limit=10").await;
    assert_eq!(list.status, StatusCode::OK);
    let runs = list.body["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0]["id"], second["id"]);
    assert_eq!(runs[0]["status"], "completed");
    assert!(
        runs[0]["ledger"].is_null(),
        "a run over every ledger: {}",
        runs[0]
    );
    assert!(runs[0]["window_start"].is_string() && runs[0]["window_end"].is_string());
    let missing = app
        .get(&format!("/v1/reconciliations/{}", uuid::Uuid::new_v4()))
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.body["code"], "reconciliation_not_found");
    let writer = create_api_key(&app.pool, "transfers:write,transfers:read").await;
    let forbidden = app
        .send(
            app.client
                .get(app.url("/v1/reconciliations"))
                .bearer_auth(&writer),
        )
        .await;
    assert_eq!(forbidden.status, StatusCode::FORBIDDEN);
    let bad_window = app
        .post_json(
            "/v1/reconciliations",
            &json!({"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(bad_window.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad_window.body["code"], "invalid_body");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_schedulers_make_exactly_one_run_per_window() {
    let app = spawn_app().await;
    let every_two_seconds = |c: &mut ferry::config::Config| {
        c.roles = Roles {
            intake: false,
            worker: true,
            scheduler: true,
        };
        c.reconcile.cron = "*/2 * * * * *".into();
    };
    let _one = spawn_worker(app.database.url(), every_two_seconds).await;
    let _two = spawn_worker(app.database.url(), every_two_seconds).await;
    tokio::time::sleep(Duration::from_secs(7)).await;
    let windows: Vec<(chrono::DateTime<chrono::Utc>, i64)> = sqlx::query_as(
        "SELECT window_start, count(*) FROM reconciliation_runs WHERE trigger = 'schedule' \
         GROUP BY window_start ORDER BY window_start",
    )
    .fetch_all(&app.pool)
    .await
    .expect("runs");
    assert!(windows.len() >= 2, "{windows:?}");
    let scoped = sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM reconciliation_runs WHERE trigger = 'schedule' AND ledger IS NOT NULL",
    )
    .fetch_one(&app.pool)
    .await
    .expect("scheduled runs");
    assert_eq!(scoped, 0, "scheduled runs check every ledger");
    assert!(windows.iter().all(|(_, runs)| *runs == 1), "{windows:?}");
    for pair in windows.windows(2) {
        assert_eq!((pair[1].0 - pair[0].0).num_seconds(), 2, "{windows:?}");
    }
}

#[tokio::test]
async fn the_cli_prints_a_report_and_exits_1_on_critical_findings() {
    let (app, _) = app_with_posted_transfer().await;
    let run_cli = || async {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["reconcile", "--from", "2000-01-01T00:00:00Z"])
            .env("DATABASE_URL", app.database.url())
            .env("RUST_LOG", "warn")
            .output()
            .await
            .expect("ferry reconcile runs")
    };
    let clean = run_cli().await;
    let report = String::from_utf8_lossy(&clean.stdout).into_owned();
    assert!(clean.status.success(), "{report}");
    assert!(report.contains("no findings"), "{report}");
    tamper(
        &app,
        "UPDATE accounts SET balance = balance + 1 WHERE id = 'a' AND ledger = 'default'",
    )
    .await;
    let dirty = run_cli().await;
    let report = String::from_utf8_lossy(&dirty.stdout).into_owned();
    assert_eq!(dirty.status.code(), Some(1), "{report}");
    assert!(report.contains("CRITICAL balance_drift"), "{report}");
    assert!(report.contains("account:a"), "{report}");
    assert!(report.contains("all ledgers"), "{report}");
}
