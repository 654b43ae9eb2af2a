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
