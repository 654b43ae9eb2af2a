//! One HTTP attempt to one sink, classified for retry (README, "Alerts"):
//! 2xx delivered; 429 retried no sooner than `Retry-After`; 408, 5xx, timeouts and connection
//! errors retried with backoff; other statuses (3xx included: redirects are not followed)
//! are permanent — recorded and surfaced, never retried. How long to wait and when to stop
//! is [`crate::retry::RetryPolicy::ALERT_DELIVERY`]'s decision.

use std::time::{Duration, Instant};

use secrecy::ExposeSecret;

use super::config::{Sink, SinkKind};
use super::payload::{self, AlertEvent};
use crate::retry::Failure;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    Delivered {
        status: u16,
    },
    Retry {
        status: Option<u16>,
        /// What the receiver asked for (`Retry-After`), if anything.
        after: Option<Duration>,
        error: String,
        /// Transport failure or 5xx: counts against the sink's circuit.
        trips_breaker: bool,
    },
    Permanent {
        status: u16,
        error: String,
    },
}

impl AttemptOutcome {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Delivered { .. } => "delivered",
            Self::Retry { .. } => "retry",
            Self::Permanent { .. } => "permanent",
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Delivered { status } | Self::Permanent { status, .. } => Some(*status),
            Self::Retry { status, .. } => *status,
        }
    }

    pub fn error(&self) -> Option<&str> {
        match self {
            Self::Delivered { .. } => None,
            Self::Retry { error, .. } | Self::Permanent { error, .. } => Some(error),
        }
    }

    /// How the attempt failed, for the retry policy; `None` if it was delivered.
    pub fn failure(&self) -> Option<Failure> {
        match self {
            Self::Delivered { .. } => None,
            Self::Retry { after, .. } => Some(Failure::Transient { not_before: *after }),
            Self::Permanent { .. } => Some(Failure::Permanent),
        }
    }
}

/// The HTTP client alerts use: no redirects, rustls with the ring provider.
pub fn http_client() -> reqwest::Client {
    install_crypto_provider();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("ferry/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

/// Makes ring rustls's process-wide crypto provider (reqwest is built without one, to avoid
/// compiling a second TLS stack). Idempotent: the first install wins.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Sends `event` to `sink` once. `message_id` is the delivery's stable id (`webhook-id`).
pub async fn send(
    client: &reqwest::Client,
    sink: &Sink,
    event: &AlertEvent,
    message_id: &str,
) -> (AttemptOutcome, Duration) {
    let started = Instant::now();
    let request = client.post(sink.url.expose_secret()).timeout(sink.timeout);
    let request = match &sink.kind {
        SinkKind::Slack => request.json(&payload::slack(event)),
        SinkKind::PagerDuty { routing_key } => {
            request.json(&payload::pagerduty(event, routing_key.expose_secret()))
        }
        SinkKind::Webhook { key } => {
            let body = payload::webhook(event).to_string().into_bytes();
            let timestamp = chrono::Utc::now().timestamp();
            let signature = payload::sign(key.expose_secret(), message_id, timestamp, &body);
            request
                .header("content-type", "application/json")
                .header("webhook-id", message_id)
                .header("webhook-timestamp", timestamp.to_string())
                .header("webhook-signature", signature)
                .body(body)
        }
    };
    let outcome = match request.send().await {
        Ok(response) => classify(response).await,
        Err(e) => AttemptOutcome::Retry {
            status: None,
            after: None,
            error: transport_error(&e, "<sink url>"),
            trips_breaker: true,
        },
    };
    (outcome, started.elapsed())
}

async fn classify(response: reqwest::Response) -> AttemptOutcome {
    let status = response.status().as_u16();
    let retry_after = retry_after(response.headers());
    if (200..300).contains(&status) {
        return AttemptOutcome::Delivered { status };
    }
    let body: String = response
        .text()
        .await
        .unwrap_or_default()
        .chars()
        .take(200)
        .collect();
    let error = format!("HTTP {status}: {}", body.trim());
    match status {
        429 => AttemptOutcome::Retry {
            status: Some(status),
            after: retry_after,
            error,
            trips_breaker: false,
        },
        408 | 500..=599 => AttemptOutcome::Retry {
            status: Some(status),
            after: retry_after,
            error,
            trips_breaker: status >= 500,
        },
        _ => AttemptOutcome::Permanent { status, error },
    }
}

/// A `Retry-After` in seconds (the HTTP-date form is not honoured: receivers send seconds).
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// Describes a transport failure, with its causes, without the URL (which may be a
/// credential): it reads `url_stands_for` instead. Webhook deliveries describe theirs the same
/// way.
pub fn transport_error(e: &reqwest::Error, url_stands_for: &str) -> String {
    if e.is_timeout() {
        return "timed out".into();
    }
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text.replace(url.as_str(), url_stands_for);
    }
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    if e.is_connect() {
        format!("connection failed: {text}")
    } else {
        format!("request failed: {text}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_outcomes_are_transient_and_carry_retry_after() {
        let after = Some(Duration::from_secs(30));
        let retry = AttemptOutcome::Retry {
            status: Some(429),
            after,
            error: "HTTP 429".into(),
            trips_breaker: false,
        };
        assert_eq!(
            retry.failure(),
            Some(Failure::Transient { not_before: after })
        );
        let refused = AttemptOutcome::Permanent {
            status: 404,
            error: "HTTP 404".into(),
        };
        assert_eq!(refused.failure(), Some(Failure::Permanent));
        assert_eq!(AttemptOutcome::Delivered { status: 204 }.failure(), None);
    }
}
