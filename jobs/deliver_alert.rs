//! `deliver_alert`: one attempt to deliver one alert to one sink, rescheduled with backoff.
//!
//! 2xx: delivered. 429: again no sooner than `Retry-After`. 5xx, timeouts, connection errors:
//! again after exponential backoff with full jitter (1 s … 5 min), up to
//! [`DELIVERY_ATTEMPTS_MAX`] attempts. Other 4xx: permanent, recorded and logged as errors.
//! While a sink's circuit is open, deliveries wait without spending attempts. The delivery
//! id is the `webhook-id`, the same on every attempt.

use std::time::{Duration, Instant};

use apalis::prelude::{BoxDynError, Data};
use tracing::{error, info, warn};
use uuid::Uuid;

use crate::alerts::breaker::{Permit, Transition};
use crate::alerts::deliver::{self, AttemptOutcome};
use crate::alerts::outbox::{self, DeliverAlert};
use crate::alerts::payload::Action;
use crate::alerts::{Alerting, circuit_event};
use crate::queue::{self, ALERTS_QUEUE};
use crate::retry::full_jitter_delay;

/// Attempts before a delivery is given up as failed.
pub const DELIVERY_ATTEMPTS_MAX: i32 = 10;
pub const DELIVERY_DELAY_MS_BASE: u64 = 1_000;
pub const DELIVERY_DELAY_MS_MAX: u64 = 5 * 60 * 1_000;

#[derive(Clone)]
pub struct AlertJobContext {
    pub pool: sqlx::PgPool,
    pub alerting: Alerting,
}

pub async fn handle(job: DeliverAlert, ctx: Data<AlertJobContext>) -> Result<(), BoxDynError> {
    let Some(delivery) = outbox::load_delivery(&ctx.pool, job.delivery_id).await? else {
        return Ok(());
    };
    if delivery.status != "pending" {
        return Ok(());
    }
    let Some(sink) = ctx.alerting.config.sink(&delivery.sink) else {
        finish(
            &ctx,
            job.delivery_id,
            "failed",
            None,
            Some("sink is no longer configured"),
        )
        .await?;
        return Ok(());
    };
    if let Permit::Rejected { retry_in } = ctx.alerting.breakers.permit(&sink.name, Instant::now())
    {
        let mut tx = ctx.pool.begin().await?;
        schedule(&mut tx, job.delivery_id, retry_in).await?;
        tx.commit().await?;
        return Ok(());
    }
    let message_id = format!("msg_{}", job.delivery_id.simple());
    let (outcome, latency) =
        deliver::send(&ctx.alerting.client, sink, &delivery.event, &message_id).await;
    let attempt = delivery.attempts + 1;
    let failed = matches!(
        outcome,
        AttemptOutcome::Retry {
            trips_breaker: true,
            ..
        }
    );
    let transition = ctx
        .alerting
        .breakers
        .record(&sink.name, failed, Instant::now());
    metrics::counter!("ferry_alert_attempts_total", "sink" => sink.name.clone(),
        "outcome" => outcome.label())
    .increment(1);
    let mut tx = ctx.pool.begin().await?;
    sqlx::query(
        "INSERT INTO alert_attempts (delivery_id, attempt, status_code, latency_ms, outcome, error) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(job.delivery_id)
    .bind(attempt)
    .bind(outcome.status().map(i32::from))
    .bind(i32::try_from(latency.as_millis()).unwrap_or(i32::MAX))
    .bind(outcome.label())
    .bind(outcome.error())
    .execute(&mut *tx)
    .await?;
    let status = outcome.status().map(i32::from);
    match &outcome {
        AttemptOutcome::Delivered { .. } => {
            update(&mut tx, job.delivery_id, "delivered", attempt, status, None).await?;
        }
        AttemptOutcome::Retry { after, error, .. } if attempt < DELIVERY_ATTEMPTS_MAX => {
            let exponent = u32::try_from(attempt - 1).unwrap_or(0);
            let backoff = full_jitter_delay(
                exponent,
                DELIVERY_DELAY_MS_BASE,
                DELIVERY_DELAY_MS_MAX,
                &mut rand::rng(),
            );
            let delay = after.map_or(backoff, |after| after.max(backoff));
            warn!(sink = %sink.name, %error, attempt, ?delay, "alert delivery will be retried");
            update(
                &mut tx,
                job.delivery_id,
                "pending",
                attempt,
                status,
                Some(error),
            )
            .await?;
            schedule(&mut tx, job.delivery_id, delay).await?;
        }
        // Refused (non-retryable status) or out of attempts.
        AttemptOutcome::Permanent { error, .. } | AttemptOutcome::Retry { error, .. } => {
            error!(sink = %sink.name, %error, attempt, "alert delivery failed for good");
            update(
                &mut tx,
                job.delivery_id,
                "failed",
                attempt,
                status,
                Some(error),
            )
            .await?;
        }
    }
    if let Some(transition) = transition {
        let action = match transition {
            Transition::Opened => Action::Trigger,
            Transition::Closed => Action::Resolve,
        };
        info!(sink = %sink.name, ?transition, "alert sink circuit changed");
        let event = circuit_event(action, &sink.name, outcome.error().unwrap_or(""));
        outbox::raise(&mut tx, &ctx.alerting.config, &event, Some(&sink.name)).await?;
    }
    tx.commit().await?;
    Ok(())
}

async fn update(
    conn: &mut sqlx::PgConnection,
    delivery_id: Uuid,
    status: &str,
    attempts: i32,
    last_status: Option<i32>,
    last_error: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE alert_deliveries SET status = $2, attempts = $3, last_status = $4, \
           last_error = $5, updated_at = now(), \
           delivered_at = CASE WHEN $2 = 'delivered' THEN now() END, \
           next_attempt_at = CASE WHEN $2 = 'pending' THEN next_attempt_at END \
         WHERE id = $1",
    )
    .bind(delivery_id)
    .bind(status)
    .bind(attempts)
    .bind(last_status)
    .bind(last_error)
    .execute(conn)
    .await?;
    Ok(())
}

async fn schedule(
    conn: &mut sqlx::PgConnection,
    delivery_id: Uuid,
    delay: Duration,
) -> Result<(), BoxDynError> {
    sqlx::query(
        "UPDATE alert_deliveries SET next_attempt_at = now() + make_interval(secs => $2) \
         WHERE id = $1",
    )
    .bind(delivery_id)
    .bind(delay.as_secs_f64())
    .execute(&mut *conn)
    .await?;
    queue::enqueue(
        conn,
        ALERTS_QUEUE,
        &DeliverAlert { delivery_id },
        Some(delay),
    )
    .await?;
    Ok(())
}

async fn finish(
    ctx: &AlertJobContext,
    delivery_id: Uuid,
    status: &str,
    last_status: Option<i32>,
    last_error: Option<&str>,
) -> Result<(), sqlx::Error> {
    let mut conn = ctx.pool.acquire().await?;
    update(&mut conn, delivery_id, status, 0, last_status, last_error).await
}
