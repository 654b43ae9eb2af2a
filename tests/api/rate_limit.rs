//! Per-key rate limits live in Redis; a Redis outage lets traffic through.

use std::time::Duration;

use ferry::intake::rate_limit::RateLimit;
use reqwest::StatusCode;

use crate::helpers::{create_api_key, spawn_app_with, transfer};

#[tokio::test]
async fn a_key_over_its_limit_gets_429_with_retry_after_and_other_keys_do_not() {
    let app = spawn_app_with(|c| {
        c.rate_limit = RateLimit {
            per_sec: 1,
            burst: 5,
        }
    })
    .await;
    let mut limited = None;
    for _ in 0..50 {
        let reply = app.get("/v1/accounts/x").await;
        if reply.status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(reply);
            break;
        }
        assert_eq!(reply.status, StatusCode::NOT_FOUND);
    }
    let limited = limited.expect("the limit was never enforced");
    assert_eq!(limited.body["code"], "rate_limited");
    let retry_after: u64 = limited.headers["retry-after"]
        .to_str()
        .ok()
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in seconds");
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    let other = create_api_key(&app.pool, "accounts:read").await;
    let reply = app
        .send(
            app.client
                .get(app.url("/v1/accounts/x"))
                .bearer_auth(&other),
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::NOT_FOUND,
        "other keys have their own budget"
    );
}

#[tokio::test]
async fn transfers_flow_while_redis_is_unreachable() {
    let app = spawn_app_with(|c| {
        // Nothing listens on port 1: every Redis call fails.
        c.redis.url = "redis://127.0.0.1:1".into();
        c.rate_limit = RateLimit {
            per_sec: 1,
            burst: 1,
        };
    })
    .await;
    app.create_account("t", "USD", true).await;
    app.create_account("b", "USD", false).await;
    for n in 0..10 {
        let reply = app
            .post_transfer(&format!("k{n}"), &transfer("t", "b", "1.00"))
            .await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    }
    app.run_until_idle(Duration::from_secs(20)).await;
    assert_eq!(app.balance("b").await, "10.00");
}
