//! ferry's database connections themselves.

use std::time::{Duration, Instant};

use crate::helpers::server_url;

/// sqlx 0.9.0 leaves Nagle's algorithm on; `db::connect` turns it off. With it on, a statement
/// whose message spans several TCP segments waits for PostgreSQL's delayed ACK (≥ 40 ms on
/// Linux) — what made every posting statement 30–40 ms slower than the server's own time.
#[tokio::test]
async fn a_large_statement_over_tcp_does_not_wait_for_a_delayed_ack() {
    let url = format!("{}/postgres", server_url());
    assert!(
        url.contains("127.0.0.1"),
        "this test needs a TCP database URL"
    );
    let pool = ferry::db::connect(&url, 1, Duration::from_secs(10))
        .await
        .expect("connect");
    let payload = "x".repeat(256 * 1024);
    let mut round_trips_ms = Vec::new();
    for _ in 0..9 {
        let started = Instant::now();
        let length: i32 = sqlx::query_scalar("SELECT length($1)")
            .bind(&payload)
            .fetch_one(&pool)
            .await
            .expect("query");
        assert_eq!(length as usize, payload.len());
        round_trips_ms.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    round_trips_ms.sort_by(f64::total_cmp);
    let median_ms = round_trips_ms[round_trips_ms.len() / 2];
    assert!(
        median_ms < 20.0,
        "a 256 KiB statement took {median_ms:.1} ms (median of {round_trips_ms:?}): \
         TCP_NODELAY is off"
    );
}

/// The migration that gave accounts their numbers rewrote `entries` in place: every existing
/// entry must keep its account — the one of its own ledger, where two ledgers share an id — and
/// the reconciliation sums start again from zero.
#[tokio::test]
async fn existing_entries_keep_their_accounts_through_the_account_number_migration() {
    const NUMBERS: i64 = 20261130000004;
    let scratch = ferry::harness::ScratchDatabase::create_empty(&server_url(), "ferry_migration")
        .await
        .expect("database");
    let pool = ferry::db::connect(scratch.url(), 1, Duration::from_secs(10))
        .await
        .expect("connect");
    let all = sqlx::migrate!("./migrations");
    let mut before = sqlx::migrate!("./migrations");
    before.migrations = before
        .migrations
        .iter()
        .filter(|m| m.version < NUMBERS)
        .cloned()
        .collect::<Vec<_>>()
        .into();
    sqlx::raw_sql("CREATE EXTENSION IF NOT EXISTS hstore")
        .execute(&pool)
        .await
        .expect("hstore");
    apalis_postgres::PostgresStorage::setup(&pool)
        .await
        .expect("apalis schema");
    before.run(&pool).await.expect("migrations before numbers");
    // Two ledgers with the same account ids; one posted transfer in each, the other way round.
    sqlx::raw_sql(
        "INSERT INTO ledgers (name) VALUES ('two'); \
         INSERT INTO accounts (ledger, id, currency, allow_overdraft) VALUES \
           ('default', 'a', 'USD', true), ('default', 'b', 'USD', false), \
           ('two', 'a', 'USD', false), ('two', 'b', 'USD', true); \
         INSERT INTO api_keys (id, name, key_hash, scopes) \
           VALUES ('00000000-0000-0000-0000-000000000001', 'admin', '\\x00', '{admin}'); \
         INSERT INTO transfers (id, ledger, api_key_id, idempotency_key, request_fingerprint, \
           from_account, to_account, amount, currency, status, attempts, posted_at) VALUES \
           ('00000000-0000-0000-0000-00000000000a', 'default', \
            '00000000-0000-0000-0000-000000000001', 'one', '\\x00', 'a', 'b', 3, 'USD', \
            'posted', 1, now()), \
           ('00000000-0000-0000-0000-00000000000b', 'two', \
            '00000000-0000-0000-0000-000000000001', 'two', '\\x00', 'b', 'a', 5, 'USD', \
            'posted', 1, now()); \
         INSERT INTO entries (transfer_id, ledger, account_id, side, amount, currency) VALUES \
           ('00000000-0000-0000-0000-00000000000a', 'default', 'a', 'debit', -3, 'USD'), \
           ('00000000-0000-0000-0000-00000000000a', 'default', 'b', 'credit', 3, 'USD'), \
           ('00000000-0000-0000-0000-00000000000b', 'two', 'b', 'debit', -5, 'USD'), \
           ('00000000-0000-0000-0000-00000000000b', 'two', 'a', 'credit', 5, 'USD'); \
         UPDATE reconciliation_state SET entries_through_id = 4;",
    )
    .execute(&pool)
    .await
    .expect("data from before account numbers");
    all.run(&pool).await.expect("the account number migration");
    let entries: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT ledger, account_id, side, amount::text FROM ledger_entries ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .expect("entries");
    let expected = [
        ("default", "a", "debit", "-3"),
        ("default", "b", "credit", "3"),
        ("two", "b", "debit", "-5"),
        ("two", "a", "credit", "5"),
    ]
    .map(|(l, a, s, m)| (l.to_owned(), a.to_owned(), s.to_owned(), m.to_owned()));
    assert_eq!(entries, expected);
    let watermark: i64 = sqlx::query_scalar("SELECT entries_through_id FROM reconciliation_state")
        .fetch_one(&pool)
        .await
        .expect("state");
    assert_eq!(watermark, 0, "the sums are rebuilt from the first entry");
    pool.close().await;
}
