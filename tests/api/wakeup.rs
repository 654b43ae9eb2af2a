//! Time to posted after a burst (README, "Jobs, retries and crashes": how workers wake up).
//!
//! A burst leaves thousands of job notifications behind. apalis's `with_pubsub()` took one of
//! them per worker poll, so the stream always had one ready, never registered the worker's
//! waker, and a lone transfer after the burst waited for the next heartbeat (seconds) for
//! minutes on end (BENCHMARKS.md, "Posted in milliseconds"). Workers now drain every waiting
//! notification at once (`queue::wakeups`): a probe after a burst posts as fast as before it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::helpers::{TestApp, spawn_app_with, transfer};

/// What a producer's user waits for: `202`, then `posted` (read from the table every 2 ms).
async fn time_to_posted(app: &TestApp, key: &str) -> Duration {
    let reply = app
        .post_transfer(key, &transfer("treasury", "probe", "0.01"))
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    let accepted = Instant::now();
    let id: uuid::Uuid = reply.body["id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .expect("transfer id");
    loop {
        let status: String = sqlx::query_scalar("SELECT status::text FROM transfers WHERE id = $1")
            .bind(id)
            .fetch_one(&app.pool)
            .await
            .expect("transfer status");
        if status != "pending" {
            assert_eq!(status, "posted");
            return accepted.elapsed();
        }
        assert!(
            accepted.elapsed() < Duration::from_secs(30),
            "the probe never posted"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Median of `probes` probe transfers, 100 ms apart.
async fn median_time_to_posted(app: &TestApp, tag: &str, probes: usize) -> Duration {
    let mut times = Vec::with_capacity(probes);
    for i in 0..probes {
        times.push(time_to_posted(app, &format!("{tag}-{i}")).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("{tag}: {times:?}");
    times.sort();
    times[probes / 2]
}

#[tokio::test]
async fn after_a_burst_a_single_transfer_posts_within_100_ms() {
    // The production heartbeat (5 s): a stalled wake-up path shows as seconds, not the test
    // configuration's 1 s.
    let app = Arc::new(
        spawn_app_with(|config| {
            config.workers.queue.heartbeat = Duration::from_secs(5);
        })
        .await,
    );
    app.create_account("treasury", "USD", true).await;
    app.create_account("probe", "USD", false).await;
    const PAYEES: usize = 50;
    for i in 0..PAYEES {
        app.create_account(&format!("payee-{i}"), "USD", false)
            .await;
    }
    let before = median_time_to_posted(&app, "before", 5).await;

    // The burst: 4 producers, one transfer per request, as fast as intake takes them, while
    // posting is held at its gate, as when posting falls behind intake: every worker slot busy,
    // job notifications arriving faster than workers poll.
    const PRODUCERS: usize = 4;
    const REQUESTS_EACH: usize = 600;
    let mut gate = app.pool.begin().await.expect("begin");
    sqlx::query("LOCK TABLE ledger_posting_gate IN EXCLUSIVE MODE")
        .execute(&mut *gate)
        .await
        .expect("gate held");
    let started = Instant::now();
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|producer| {
            let app = app.clone();
            tokio::spawn(async move {
                for i in 0..REQUESTS_EACH {
                    let payee = format!("payee-{}", (producer + i) % PAYEES);
                    let reply = app
                        .post_transfer(
                            &format!("burst-{producer}-{i}"),
                            &transfer("treasury", &payee, "1.00"),
                        )
                        .await;
                    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
                }
            })
        })
        .collect();
    for producer in producers {
        producer.await.expect("producer");
    }
    let held = started.elapsed();
    gate.commit().await.expect("gate released");
    app.run_until_idle(Duration::from_secs(120)).await;
    let jobs = app
        .count("SELECT count(*) FROM apalis.jobs WHERE job_type = 'ferry.post_transfers'")
        .await;
    eprintln!(
        "burst of {} accepted in {held:?} (posting held), posted in {:?} by {jobs} jobs",
        PRODUCERS * REQUESTS_EACH,
        started.elapsed()
    );

    let after = median_time_to_posted(&app, "after", 7).await;
    assert!(
        after <= Duration::from_millis(100),
        "after a burst, a single transfer took {after:?} to post (median; before the burst: \
         {before:?})"
    );
}
