//! Posting outcomes: each transfer succeeds or fails on its own with a business code.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use ferry::failpoint::Failpoint;
use ferry::retry::RetryClass;

/// Counted attempts before `retries_exhausted` (README, "Jobs, retries and crashes"): the
/// promise, written out, so a change to the policy shows up here.
const JOB_ATTEMPTS_MAX: i32 = 8;

use crate::helpers::{TestApp, spawn_app, spawn_intake_only_app, transfer};
use crate::invariants::assert_ledger_invariants;

#[tokio::test]
async fn business_failures_are_outcomes_with_codes_and_no_entries() {
    let app = spawn_app().await;
    app.create_account("treasury", "USD", true).await;
    app.create_account("poor", "USD", false).await;
    app.create_account("euro", "EUR", false).await;
    app.create_account("b", "USD", false).await;
    let cases = [
        ("k1", transfer("poor", "b", "1.00"), "insufficient_funds"),
        (
            "k2",
            transfer("treasury", "nobody", "1.00"),
            "account_not_found",
        ),
        ("k3", transfer("nobody", "b", "1.00"), "account_not_found"),
        (
            "k4",
            transfer("treasury", "euro", "1.00"),
            "currency_mismatch",
        ),
        (
            "k5",
            json!({"from_account": "treasury", "to_account": "b", "amount": "1.00",
                   "currency": "EUR"}),
            "currency_mismatch",
        ),
    ];
    for (key, body, code) in &cases {
        let reply = app.post_transfer(key, body).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{key}");
        let done = app
            .wait_until_terminal(reply.body["id"].as_str().expect("id"))
            .await;
        assert_eq!(done["status"], "failed", "{key}");
        assert_eq!(done["failure_code"], *code, "{key}");
        assert!(done["failed_at"].is_string());
    }
    assert_eq!(app.count("SELECT count(*) FROM entries").await, 0);
    assert_ledger_invariants(&app.pool).await;
}

#[tokio::test]
async fn a_batch_posts_in_order_and_fails_only_what_cannot_post() {
    let app = spawn_app().await;
    app.create_account("treasury", "USD", true).await;
    app.create_account("a", "USD", false).await;
    app.create_account("b", "USD", false).await;
    let item = |key: &str, from: &str, to: &str, amount: &str| {
        json!({"idempotency_key": key, "from_account": from, "to_account": to,
               "amount": amount, "currency": "USD"})
    };
    let reply = app
        .post_json(
            "/v1/transfers/batch",
            &json!({"transfers": [
                item("1", "treasury", "a", "10.00"),
                item("2", "a", "b", "6.00"),
                item("3", "a", "b", "6.00"),
                item("4", "a", "b", "4.00"),
            ]}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    app.run_until_idle(Duration::from_secs(20)).await;
    let statuses: Vec<String> = sqlx::query_scalar(
        "SELECT status || coalesce(':' || failure_code, '') FROM transfers \
         ORDER BY idempotency_key",
    )
    .fetch_all(&app.pool)
    .await
    .expect("statuses");
    assert_eq!(
        statuses,
        ["posted", "posted", "failed:insufficient_funds", "posted"]
    );
    assert_eq!(app.balance("a").await, "0.00");
    assert_eq!(app.balance("b").await, "10.00");
    assert_ledger_invariants(&app.pool).await;
}

#[tokio::test]
async fn a_redelivered_job_posts_nothing_twice() {
    let app = spawn_app().await;
    app.create_account("treasury", "USD", true).await;
    app.create_account("b", "USD", false).await;
    let reply = app
        .post_transfer("k", &transfer("treasury", "b", "3.00"))
        .await;
    app.wait_until_terminal(reply.body["id"].as_str().expect("id"))
        .await;
    // apalis delivers at least once: push the very same job again, as a redelivery would.
    let id = uuid::Uuid::parse_str(reply.body["id"].as_str().expect("id")).expect("uuid");
    let mut conn = app.pool.acquire().await.expect("conn");
    ferry::queue::enqueue(
        &mut conn,
        ferry::queue::POST_TRANSFERS_QUEUE,
        &ferry::queue::payloads::PostTransfers {
            transfer_ids: vec![id],
        },
        None,
    )
    .await
    .expect("enqueue");
    let started = std::time::Instant::now();
    while app
        .count("SELECT count(*) FROM apalis.jobs WHERE status <> 'Done'")
        .await
        > 0
    {
        assert!(started.elapsed() < Duration::from_secs(20), "job not run");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(app.count("SELECT count(*) FROM entries").await, 2);
    assert_eq!(app.balance("b").await, "3.00");
    let again = app.get(&format!("/v1/transfers/{id}")).await;
    assert_eq!(again.body["attempts"], 1);
}

#[tokio::test]
async fn a_serialization_failure_is_retried_and_the_transfer_posts_once() {
    let app = spawn_app().await;
    app.create_account("treasury", "USD", true).await;
    app.create_account("b", "USD", false).await;
    // Fail the first two posting transactions with a real 40001 raised by PostgreSQL.
    sqlx::raw_sql(
        "CREATE SEQUENCE fail_budget; \
         CREATE FUNCTION fail_twice() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN IF nextval('fail_budget') <= 2 THEN \
           RAISE EXCEPTION 'injected' USING ERRCODE = '40001'; END IF; RETURN NEW; END $$; \
         CREATE TRIGGER fail_twice BEFORE INSERT ON entries \
           FOR EACH STATEMENT EXECUTE FUNCTION fail_twice();",
    )
    .execute(&app.pool)
    .await
    .expect("install fault");
    let reply = app
        .post_transfer("k", &transfer("treasury", "b", "2.00"))
        .await;
    let done = app
        .wait_until_terminal(reply.body["id"].as_str().expect("id"))
        .await;
    assert_eq!(done["status"], "posted");
    // Retried in-process: one job run, one attempt.
    assert_eq!(done["attempts"], 1);
    assert_eq!(app.count("SELECT count(*) FROM entries").await, 2);
    assert_eq!(app.balance("b").await, "2.00");
}

/// An app without workers (the test drives the posting engine itself) and one pending
/// transfer of 2.00 from `treasury` to `b`.
async fn one_pending_transfer() -> (TestApp, uuid::Uuid) {
    let app = spawn_intake_only_app().await;
    app.create_account("treasury", "USD", true).await;
    app.create_account("b", "USD", false).await;
    let reply = app
        .post_transfer("k", &transfer("treasury", "b", "2.00"))
        .await;
    let id = uuid::Uuid::parse_str(reply.body["id"].as_str().expect("id")).expect("uuid");
    (app, id)
}

#[tokio::test]
async fn a_serialization_failure_that_never_clears_is_tried_ten_times_then_given_up() {
    let (app, id) = one_pending_transfer().await;
    // Every posting transaction meets a real 40001; a sequence (not rolled back) counts them.
    sqlx::raw_sql(
        "CREATE SEQUENCE posting_tries; \
         CREATE FUNCTION fail_always() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN PERFORM nextval('posting_tries'); \
           RAISE EXCEPTION 'injected' USING ERRCODE = '40001'; END $$; \
         CREATE TRIGGER fail_always BEFORE INSERT ON entries \
           FOR EACH STATEMENT EXECUTE FUNCTION fail_always();",
    )
    .execute(&app.pool)
    .await
    .expect("install fault");
    let engine = ferry::ledger::PostingEngine::new(app.pool.clone(), Failpoint::None);
    let error = engine
        .post(&[id])
        .await
        .expect_err("a serialization failure that never clears ends the run");
    assert_eq!(error.retry_class(), RetryClass::Serialization, "{error}");
    let tries: i64 = sqlx::query_scalar("SELECT last_value FROM posting_tries")
        .fetch_one(&app.pool)
        .await
        .expect("tries");
    // "up to 10 tries" (README, "Jobs, retries and crashes"): not one fewer, not one more.
    assert_eq!(tries, 10, "posting transactions tried");
    // Given up without a trace: the job's handler counts the attempt and reschedules.
    let (status, attempts): (String, i32) =
        sqlx::query_as("SELECT status, attempts FROM transfers")
            .fetch_one(&app.pool)
            .await
            .expect("transfer");
    assert_eq!((status.as_str(), attempts), ("pending", 0));
    assert_eq!(app.count("SELECT count(*) FROM entries").await, 0);
}

#[tokio::test]
async fn a_balance_the_database_stores_differently_from_posting_stops_posting_as_an_invariant() {
    let (app, id) = one_pending_transfer().await;
    // A writer behind ferry's back: every balance update stores one cent more than asked.
    sqlx::raw_sql(
        "CREATE FUNCTION skim() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN NEW.balance := NEW.balance + 0.01; RETURN NEW; END $$; \
         CREATE TRIGGER skim BEFORE UPDATE OF balance ON accounts \
           FOR EACH ROW WHEN (NEW.id = 'b') EXECUTE FUNCTION skim();",
    )
    .execute(&app.pool)
    .await
    .expect("install the skim");
    let engine = ferry::ledger::PostingEngine::new(app.pool.clone(), Failpoint::None);
    let error = engine
        .post(&[id])
        .await
        .expect_err("a stored balance other than the computed one ends the run");
    assert!(
        matches!(&error, ferry::ledger::PostingError::Invariant(m)
            if m.contains("account default/b") && m.contains("posting computed")),
        "{error:?}"
    );
    let (status, entries, balance): (String, i64, rust_decimal::Decimal) = sqlx::query_as(
        "SELECT status, (SELECT count(*) FROM entries), \
           (SELECT balance FROM accounts WHERE id = 'b') FROM transfers",
    )
    .fetch_one(&app.pool)
    .await
    .expect("transfer");
    assert_eq!(
        (status.as_str(), entries, balance.to_string().as_str()),
        ("pending", 0, "0"),
        "rolled back whole"
    );
    sqlx::raw_sql("DROP TRIGGER skim ON accounts")
        .execute(&app.pool)
        .await
        .expect("remove the skim");
    let report = engine.post(&[id]).await.expect("posts once removed");
    assert_eq!(report.posted, 1);
    assert_ledger_invariants(&app.pool).await;
}

#[tokio::test]
async fn a_stored_currency_this_version_does_not_know_stops_posting_as_an_invariant() {
    let (app, id) = one_pending_transfer().await;
    let engine = ferry::ledger::PostingEngine::new(app.pool.clone(), Failpoint::None);
    // Written behind ferry's back: the column is char(3) with no CHECK. Read back, each is
    // refused, never taken for some default currency.
    for (corrupt, restore) in [
        (
            "UPDATE transfers SET currency = 'ZZZ'",
            "UPDATE transfers SET currency = 'USD'",
        ),
        (
            "UPDATE accounts SET currency = 'ZZZ' WHERE id = 'b'",
            "UPDATE accounts SET currency = 'USD' WHERE id = 'b'",
        ),
    ] {
        sqlx::query(corrupt)
            .execute(&app.pool)
            .await
            .expect("corrupt");
        let error = engine
            .post(&[id])
            .await
            .expect_err("an unknown stored currency ends the run");
        assert!(
            matches!(&error, ferry::ledger::PostingError::Invariant(m)
                if m.contains("stored currency is invalid")),
            "{corrupt}: {error:?}"
        );
        let (status, entries): (String, i64) =
            sqlx::query_as("SELECT status, (SELECT count(*) FROM entries) FROM transfers")
                .fetch_one(&app.pool)
                .await
                .expect("transfer");
        assert_eq!((status.as_str(), entries), ("pending", 0), "{corrupt}");
        sqlx::query(restore)
            .execute(&app.pool)
            .await
            .expect("restore");
    }
    let report = engine.post(&[id]).await.expect("posts once restored");
    assert_eq!(report.posted, 1);
    assert_ledger_invariants(&app.pool).await;
}

/// An app whose every posting run raises `sqlstate` (trigger `fail_posting` on entries,
/// counting the runs in the sequence `posting_runs`), and the id of one transfer accepted
/// under it.
async fn one_transfer_with_every_posting_failing(sqlstate: &str) -> (TestApp, String) {
    let app = spawn_app().await;
    app.create_account("treasury", "USD", true).await;
    app.create_account("b", "USD", false).await;
    let fault = format!(
        "CREATE SEQUENCE posting_runs; \
         CREATE FUNCTION fail_posting() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN PERFORM nextval('posting_runs'); \
           RAISE EXCEPTION 'injected' USING ERRCODE = '{sqlstate}'; END $$; \
         CREATE TRIGGER fail_posting BEFORE INSERT ON entries \
           FOR EACH STATEMENT EXECUTE FUNCTION fail_posting();"
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(fault))
        .execute(&app.pool)
        .await
        .expect("install fault");
    let reply = app
        .post_transfer("k", &transfer("treasury", "b", "2.00"))
        .await;
    let id = reply.body["id"].as_str().expect("id").to_owned();
    (app, id)
}

#[tokio::test]
async fn a_database_outage_counts_no_attempt_and_posting_resumes_when_it_ends() {
    // Every posting run fails as if the server were shutting down (57P01: unavailable).
    let (app, id) = one_transfer_with_every_posting_failing("57P01").await;
    // Several in-process tries fail meanwhile (100 ms … 2 s apart).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (status, attempts): (String, i32) =
        sqlx::query_as("SELECT status, attempts FROM transfers")
            .fetch_one(&app.pool)
            .await
            .expect("transfer");
    assert_eq!((status.as_str(), attempts), ("pending", 0));
    sqlx::raw_sql("DROP TRIGGER fail_posting ON entries")
        .execute(&app.pool)
        .await
        .expect("end outage");
    let done = app.wait_until_terminal(&id).await;
    assert_eq!(done["status"], "posted", "{done}");
    // The try that succeeded is the only one counted.
    assert_eq!(done["attempts"], 1);
    assert_ledger_invariants(&app.pool).await;
}

#[tokio::test]
async fn a_transient_failure_reschedules_with_attempts_counted_until_retries_exhausted() {
    // Every posting run fails on a lock timeout (55P03: transient, counted).
    let (app, id) = one_transfer_with_every_posting_failing("55P03").await;
    let started = std::time::Instant::now();
    let mut delays = Vec::new();
    for attempt in 1..JOB_ATTEMPTS_MAX {
        // Run number `attempt` fails; the schedule is left alone until it has been read.
        let failed = wait_for_attempts(&app, attempt, started).await;
        assert_eq!(failed.attempts, attempt, "one attempt counted per run");
        assert!(
            failed.last_error.contains("injected"),
            "{}",
            failed.last_error
        );
        // Exactly one job was scheduled by the failed run, delayed by the backoff: full
        // jitter under a ceiling of 1 s doubling per attempt, plus apalis's rounding up to a
        // whole second (src/queue/mod.rs) and some slack.
        assert_eq!(failed.jobs_scheduled_after, 1, "attempt {attempt}");
        let ceiling = Duration::from_secs(1 << (attempt - 1)) + Duration::from_millis(1_500);
        assert!(
            failed.delay <= ceiling,
            "attempt {attempt}: rescheduled {:?} out, over {ceiling:?}",
            failed.delay
        );
        if failed.delay >= Duration::from_secs(2) {
            // Far enough out that it cannot have started yet: it waits, and no run happened
            // beyond the ones counted.
            assert_eq!(
                failed.pending_in_future, 1,
                "attempt {attempt}: not waiting"
            );
            assert_eq!(
                failed.runs,
                i64::from(attempt),
                "runs after attempt {attempt}"
            );
        }
        delays.push(failed.delay);
        run_scheduled_jobs_now(&app).await;
    }
    // Full jitter could pick a short delay every time only with probability ~2^-15; a job
    // rescheduled without delay never gets here.
    assert!(
        delays.iter().any(|d| *d >= Duration::from_secs(2)),
        "no reschedule delayed by 2 s or more: {delays:?}"
    );
    let exhausted = wait_for_attempts(&app, JOB_ATTEMPTS_MAX, started).await;
    assert_eq!(exhausted.attempts, JOB_ATTEMPTS_MAX);
    assert_eq!(exhausted.runs, i64::from(JOB_ATTEMPTS_MAX), "runs in all");
    assert_eq!(
        exhausted.jobs_scheduled_after, 0,
        "rescheduled after the last"
    );
    let reply = app.get(&format!("/v1/transfers/{id}")).await;
    assert_eq!(reply.body["status"], "failed");
    assert_eq!(reply.body["failure_code"], "retries_exhausted");
    assert_eq!(reply.body["attempts"], JOB_ATTEMPTS_MAX);
    assert_eq!(app.count("SELECT count(*) FROM entries").await, 0);
    assert_ledger_invariants(&app.pool).await;
    // The failure raised an alert, once.
    let alerts: Vec<(String, String)> = sqlx::query_as("SELECT event_type, dedup_key FROM alerts")
        .fetch_all(&app.pool)
        .await
        .expect("alerts");
    assert_eq!(
        alerts,
        vec![(
            "transfer.retries_exhausted".to_owned(),
            format!("ferry:transfer:{id}:retries_exhausted")
        )]
    );
}

/// The one transfer's state right after a failed posting run, and the posting jobs around it.
struct FailedRun {
    attempts: i32,
    last_error: String,
    /// Posting runs so far (the `posting_runs` sequence).
    runs: i64,
    /// Posting jobs due after the failed run's transaction (the job it scheduled).
    jobs_scheduled_after: i64,
    /// How far after the failed run the latest posting job is due.
    delay: Duration,
    /// Posting jobs still pending and due in the future.
    pending_in_future: i64,
}

/// Waits until the transfer has `attempts` attempts counted, and reads it and the jobs in one
/// statement.
async fn wait_for_attempts(app: &TestApp, attempts: i32, started: std::time::Instant) -> FailedRun {
    loop {
        let row: (i32, Option<String>, i64, i64, f64, i64) = sqlx::query_as(
            "SELECT t.attempts, t.last_error, \
               (SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM posting_runs), \
               (SELECT count(*) FROM apalis.jobs j WHERE j.job_type = $1 \
                  AND j.run_at > t.updated_at), \
               (SELECT coalesce(extract(epoch FROM max(j.run_at) - t.updated_at), 0)::float8 \
                  FROM apalis.jobs j WHERE j.job_type = $1), \
               (SELECT count(*) FROM apalis.jobs j WHERE j.job_type = $1 \
                  AND j.status = 'Pending' AND j.run_at > now()) \
             FROM transfers t",
        )
        .bind(ferry::queue::POST_TRANSFERS_QUEUE)
        .fetch_one(&app.pool)
        .await
        .expect("failed run");
        if row.0 >= attempts {
            return FailedRun {
                attempts: row.0,
                last_error: row.1.unwrap_or_default(),
                runs: row.2,
                jobs_scheduled_after: row.3,
                delay: Duration::from_secs_f64(row.4.max(0.0)),
                pending_in_future: row.5,
            };
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "attempt {attempts} never counted (at {})",
            row.0
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Collapses the retry backoff of scheduled jobs so a test need not wait for it.
async fn run_scheduled_jobs_now(app: &crate::helpers::TestApp) {
    sqlx::query("UPDATE apalis.jobs SET run_at = now() WHERE status = 'Pending'")
        .execute(&app.pool)
        .await
        .expect("reschedule");
}

#[tokio::test]
async fn the_database_refuses_to_move_a_terminal_transfer_or_edit_an_entry() {
    let app = spawn_app().await;
    app.create_account("treasury", "USD", true).await;
    app.create_account("b", "USD", false).await;
    let reply = app
        .post_transfer("k", &transfer("treasury", "b", "1.00"))
        .await;
    app.wait_until_terminal(reply.body["id"].as_str().expect("id"))
        .await;
    let reopen = sqlx::query(
        "UPDATE transfers SET status = 'failed', failure_code = 'insufficient_funds', \
           posted_at = NULL, failed_at = now()",
    )
    .execute(&app.pool)
    .await;
    assert!(reopen.is_err(), "a posted transfer became failed");
    let edit = sqlx::query("UPDATE entries SET amount = amount * 2")
        .execute(&app.pool)
        .await;
    assert!(edit.is_err(), "an entry was edited");
    let delete = sqlx::query("DELETE FROM entries").execute(&app.pool).await;
    assert!(delete.is_err(), "an entry was deleted");
    // What entries refer to must exist, and stays.
    for (sql, what) in [
        (
            "WITH fresh AS ( \
               INSERT INTO transfers (id, api_key_id, idempotency_key, request_fingerprint, \
                 from_account, to_account, amount, currency, ledger) \
               SELECT gen_random_uuid(), api_key_id, 'fresh', '\\x00', 'treasury', 'b', 1, \
                 'USD', 'default' FROM transfers LIMIT 1 RETURNING id) \
             INSERT INTO entries (transfer_id, account_no, side, amount, currency, balance_after) \
             SELECT id, -1, 'credit', 1, 'USD', 1 FROM fresh",
            "an entry on an unknown account",
        ),
        (
            "INSERT INTO entries (transfer_id, account_no, side, amount, currency, balance_after) \
             SELECT gen_random_uuid(), no, 'credit', 1, 'USD', 1 FROM accounts \
             WHERE ledger = 'default' AND id = 'b'",
            "an entry of an unknown transfer",
        ),
        (
            // Account `b` exists in both ledgers; the transfer is in `default`.
            "INSERT INTO ledgers (name) VALUES ('other'); \
             INSERT INTO accounts (ledger, id, currency) VALUES ('other', 'b', 'USD'); \
             INSERT INTO entries (transfer_id, account_no, side, amount, currency, balance_after) \
             SELECT t.id, a.no, 'credit', 1, 'USD', 1 FROM transfers t, accounts a \
             WHERE a.ledger = 'other' AND a.id = 'b' LIMIT 1",
            "an entry in another ledger than its transfer",
        ),
        ("DELETE FROM transfers", "a transfer deleted"),
        ("DELETE FROM accounts WHERE id = 'b'", "an account deleted"),
        (
            "UPDATE accounts SET id = 'c' WHERE id = 'b'",
            "an account re-keyed",
        ),
        (
            "UPDATE accounts SET no = DEFAULT WHERE id = 'b'",
            "an account renumbered",
        ),
        (
            "INSERT INTO ledgers (name) VALUES ('moved'); \
             UPDATE accounts SET ledger = 'moved' WHERE id = 'b'",
            "an account moved to another ledger",
        ),
        ("DELETE FROM ledgers", "a ledger deleted"),
        (
            "TRUNCATE transfers, entries, accounts",
            "the ledger truncated",
        ),
    ] {
        let refused = sqlx::raw_sql(sql).execute(&app.pool).await;
        assert!(refused.is_err(), "{what} was allowed");
    }
    let dangling = sqlx::query(
        "INSERT INTO entries (transfer_id, account_no, side, amount, currency, balance_after) \
         SELECT gen_random_uuid(), no, 'credit', 1, 'USD', 1 FROM accounts \
         WHERE ledger = 'default' AND id = 'b'",
    )
    .execute(&app.pool)
    .await
    .expect_err("an entry of an unknown transfer");
    let code = dangling
        .as_database_error()
        .and_then(|e| e.code())
        .map(|c| c.into_owned());
    assert_eq!(code.as_deref(), Some("23503"), "{dangling}");
    let overdraw = sqlx::query("UPDATE accounts SET balance = -1 WHERE id = 'b'")
        .execute(&app.pool)
        .await;
    assert!(
        overdraw.is_err(),
        "an account without overdraft went negative"
    );
    assert_ledger_invariants(&app.pool).await;
}
