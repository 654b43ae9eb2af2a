//! `deliver_alert`: one attempt to deliver one alert to one sink, rescheduled with backoff.
//!
//! 2xx: delivered. 429: again no sooner than `Retry-After`. 408, 5xx, timeouts, connection
//! errors: again after exponential backoff with full jitter (1 s … 5 min ceilings), 10
//! attempts in all. Other statuses: permanent, recorded and logged as errors. While a sink's
//! circuit is open, deliveries wait without spending attempts. The numbers are
//! [`RetryPolicy::ALERT_DELIVERY`]'s (README, "Alerts"); this handler executes its decisions.
//! The delivery id is the `webhook-id`, the same on every attempt.

use std::time::{Duration, Instant};

use apalis::prelude::{BoxDynError, Data};
use tracing::{error, info, warn};
use uuid::Uuid;

use crate::alerts::breaker::{Permit, Transition};
use crate::alerts::config::Sink;
use crate::alerts::deliver::{self, AttemptOutcome};
use crate::alerts::outbox;
use crate::alerts::payload::Action;
use crate::alerts::{Alerting, circuit_event};
use crate::queue::payloads::DeliverAlert;
use crate::queue::{self, ALERTS_QUEUE};
use crate::retry::{Decision, Failure, RetryPolicy};

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
    match ctx.alerting.breakers.permit(&sink.name, Instant::now()) {
        Permit::Rejected { retry_in } => {
            wait_for_circuit(&ctx, job.delivery_id, &delivery, sink, retry_in).await
        }
        _ => attempt(&ctx, job.delivery_id, &delivery, sink).await,
    }
}

/// The sink's circuit is open: the delivery waits it out. An open circuit is the sink's
/// trouble, not this delivery's, so no attempt is spent.
async fn wait_for_circuit(
    ctx: &AlertJobContext,
    delivery_id: Uuid,
    delivery: &outbox::PendingDelivery,
    sink: &Sink,
    retry_in: Duration,
) -> Result<(), BoxDynError> {
    let open = Failure::Unavailable {
        not_before: Some(retry_in),
    };
    match RetryPolicy::ALERT_DELIVERY.decide(open, attempt_number(delivery.attempts + 1)) {
        Decision::Retry { wait, .. } => {
            // Drawn before any await: the thread-local RNG must not be held across one.
            let delay = wait.sample(&mut rand::rng());
            let mut tx = ctx.pool.begin().await?;
            schedule(&mut tx, delivery_id, delay).await?;
            tx.commit().await?;
        }
        // Not what ALERT_DELIVERY decides today (an open circuit never gives up), but this
        // handler executes whatever the policy decides.
        Decision::GiveUp => {
            error!(sink = %sink.name, attempts = delivery.attempts, "alert delivery given up while the circuit is open");
            let mut conn = ctx.pool.acquire().await?;
            let error = Some("sink circuit open");
            update(
                &mut conn,
                delivery_id,
                "failed",
                delivery.attempts,
                None,
                error,
            )
            .await?;
        }
    }
    Ok(())
}

/// One attempt: send, record it, then deliver / retry / give up as the policy decides, and
/// raise an alert if the attempt changed the sink's circuit — all in one transaction.
async fn attempt(
    ctx: &AlertJobContext,
    delivery_id: Uuid,
    delivery: &outbox::PendingDelivery,
    sink: &Sink,
) -> Result<(), BoxDynError> {
    let attempt = delivery.attempts + 1;
    let message_id = format!("msg_{}", delivery_id.simple());
    let (outcome, latency) =
        deliver::send(&ctx.alerting.client, sink, &delivery.event, &message_id).await;
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
    .bind(delivery_id)
    .bind(attempt)
    .bind(outcome.status().map(i32::from))
    .bind(i32::try_from(latency.as_millis()).unwrap_or(i32::MAX))
    .bind(outcome.label())
    .bind(outcome.error())
    .execute(&mut *tx)
    .await?;
    apply_decision(&mut tx, delivery_id, sink, attempt, &outcome).await?;
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

/// Marks the delivery delivered, rescheduled or failed, as the policy decides for `outcome`.
async fn apply_decision(
    conn: &mut sqlx::PgConnection,
    delivery_id: Uuid,
    sink: &Sink,
    attempt: i32,
    outcome: &AttemptOutcome,
) -> Result<(), BoxDynError> {
    let status = outcome.status().map(i32::from);
    let decision = outcome
        .failure()
        .map(|failure| RetryPolicy::ALERT_DELIVERY.decide(failure, attempt_number(attempt)));
    let error = outcome.error().unwrap_or_default();
    match decision {
        None => update(conn, delivery_id, "delivered", attempt, status, None).await?,
        Some(Decision::Retry { wait, .. }) => {
            let delay = wait.sample(&mut rand::rng());
            warn!(sink = %sink.name, %error, attempt, ?delay, "alert delivery will be retried");
            update(conn, delivery_id, "pending", attempt, status, Some(error)).await?;
            schedule(conn, delivery_id, delay).await?;
        }
        // Refused (non-retryable status) or out of attempts.
        Some(Decision::GiveUp) => {
            error!(sink = %sink.name, %error, attempt, "alert delivery failed for good");
            update(conn, delivery_id, "failed", attempt, status, Some(error)).await?;
        }
    }
    Ok(())
}

/// The policy numbers attempts from 1; stored attempts are never negative (a CHECK).
fn attempt_number(attempt: i32) -> u32 {
    u32::try_from(attempt).unwrap_or(0)
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
