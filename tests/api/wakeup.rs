//! Time to posted after a burst (README, "Jobs, retries and crashes": how workers wake up).
//!
//! A burst leaves thousands of job notifications behind. apalis's `with_pubsub()` took one of
//! them per worker poll, so the stream always had one ready, never registered the worker's
//! waker, and a lone transfer after the burst waited for the next heartbeat (seconds) for
//! minutes on end (BENCHMARKS.md, "Posted in milliseconds"). Now one listener per process reads
//! every notification as it comes and wakes one idle worker of its queue (`queue::wakeups`): a
//! probe after a burst posts as fast as before it.

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

/// Inserts a job of `queue`, due now, in its own transaction (apalis's trigger notifies at
/// commit).
async fn insert_job(pool: &sqlx::PgPool, queue: &str) {
    sqlx::query(
        "INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, \
           priority, metadata) \
         VALUES (apalis.generate_ulid(), $1, '\\x7b7d', 'Pending', 0, 1, now(), 0, ''::hstore)",
    )
    .bind(queue)
    .execute(pool)
    .await
    .expect("job inserted");
}

/// Whether `waiter` completes within `within`.
async fn woken(
    waiter: &mut std::pin::Pin<Box<tokio::sync::futures::OwnedNotified>>,
    within: Duration,
) -> bool {
    tokio::time::timeout(within, waiter.as_mut()).await.is_ok()
}

#[tokio::test]
async fn one_listener_wakes_one_idle_worker_of_the_jobs_queue_per_job() {
    let database = crate::helpers::test_database().await;
    let pool = sqlx::PgPool::connect(database.url()).await.expect("pool");
    let tasks = tokio_util::task::TaskTracker::new();
    let stopping = tokio_util::sync::CancellationToken::new();
    let hub = ferry::queue::wakeups::WakeupHub::start(pool.clone(), &tasks, stopping.clone());
    let queue_a = hub.notify_for("ferry.a");
    let queue_b = hub.notify_for("ferry.b");
    // The hub wakes every queue once when it starts listening (jobs nobody announced): wait
    // for that before counting wake-ups.
    let mut start_a = Box::pin(queue_a.clone().notified_owned());
    let mut start_b = Box::pin(queue_b.clone().notified_owned());
    assert!(
        woken(&mut start_a, Duration::from_secs(10)).await,
        "the hub never listened"
    );
    assert!(woken(&mut start_b, Duration::from_secs(1)).await);

    // Two idle workers of queue a, one of queue b.
    let mut first = Box::pin(queue_a.clone().notified_owned());
    let mut second = Box::pin(queue_a.clone().notified_owned());
    let mut other = Box::pin(queue_b.clone().notified_owned());
    first.as_mut().enable();
    second.as_mut().enable();
    other.as_mut().enable();

    insert_job(&pool, "ferry.a").await;
    assert!(
        woken(&mut first, Duration::from_secs(2)).await,
        "a job of queue a woke no worker of it"
    );
    assert!(
        !woken(&mut second, Duration::from_millis(300)).await,
        "one job woke both workers of its queue"
    );
    assert!(
        !woken(&mut other, Duration::from_millis(10)).await,
        "a job of queue a woke queue b's worker"
    );

    insert_job(&pool, "ferry.a").await;
    assert!(
        woken(&mut second, Duration::from_secs(2)).await,
        "the next job did not wake the worker still idle"
    );
    insert_job(&pool, "ferry.b").await;
    assert!(woken(&mut other, Duration::from_secs(2)).await);

    stopping.cancel();
    tasks.close();
    tokio::time::timeout(Duration::from_secs(5), tasks.wait())
        .await
        .expect("the hub stops when asked");
}
