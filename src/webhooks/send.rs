//! One HTTP attempt to deliver one event to one endpoint, Standard Webhooks style (the signer
//! is the alert sinks'), and how its answer is classified (README, "Events and webhooks"):
//! - 2xx: delivered;
//! - 410 Gone: the receiver says the endpoint is gone; ferry disables it;
//! - anything else — other statuses (3xx too: redirects are not followed), timeouts,
//!   connection errors — is retried with backoff. A `Retry-After` is a lower bound on the
//!   wait. Only transport errors, timeouts, 408, 429 and 5xx count against the endpoint's
//!   circuit: a 4xx means the receiver is up and answering.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::Version;
use reqwest::header::{CONNECTION, HeaderMap};

use super::connections::Reuse;
use super::ssrf::{GuardedResolver, UrlPolicy, host_ip};
use crate::alerts::deliver::{retry_after, transport_error};
use crate::alerts::payload::sign;

/// Bytes of a failed answer's body kept for the attempt's record; the rest is not read.
const ERROR_BODY_BYTES_MAX: usize = 1_024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered {
        status: u16,
    },
    Gone {
        status: u16,
    },
    Retry {
        status: Option<u16>,
        retry_after: Option<Duration>,
        error: String,
        trips_breaker: bool,
    },
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Delivered { .. } => "delivered",
            Self::Gone { .. } => "gone",
            Self::Retry { .. } => "retry",
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Delivered { status } | Self::Gone { status } => Some(*status),
            Self::Retry { status, .. } => *status,
        }
    }

    /// Whether the circuit counts this attempt as a success (`Some(true)`), a failure
    /// (`Some(false)`), or not at all (a 4xx: the receiver is up).
    pub fn breaker_outcome(&self) -> Option<bool> {
        match self {
            Self::Delivered { .. } => Some(true),
            Self::Gone { .. } => None,
            Self::Retry {
                trips_breaker: true,
                ..
            } => Some(false),
            Self::Retry { .. } => None,
        }
    }
}

/// The client deliveries use: no redirects, names resolved through the SSRF guard.
pub fn client(policy: Arc<UrlPolicy>, timeout: Duration) -> reqwest::Client {
    crate::alerts::deliver::install_crypto_provider();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(Arc::new(GuardedResolver { policy }))
        .timeout(timeout)
        .pool_max_idle_per_host(64)
        .user_agent(concat!("ferry/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

/// A delivery about to be attempted.
pub struct Message<'a> {
    pub url: &'a str,
    /// The endpoint's signing key (its `whsec_` secret, decoded).
    pub key: &'a [u8],
    /// `webhook-id`: the event's id, the same on every retry and replay.
    pub message_id: &'a str,
    pub body: &'a [u8],
}

/// One attempt's result.
pub struct Sent {
    pub outcome: Outcome,
    pub duration: Duration,
    /// What the answer said about its connection; `None` without an answer.
    pub reuse: Option<Reuse>,
}

/// Sends one message; the URL's host (an IP literal skips the resolver) is checked again.
pub async fn send(client: &reqwest::Client, policy: &UrlPolicy, message: &Message<'_>) -> Sent {
    let started = Instant::now();
    if let Err(refused) = literal_host_allowed(policy, message.url) {
        let outcome = Outcome::Retry {
            status: None,
            retry_after: None,
            error: refused,
            trips_breaker: true,
        };
        return Sent {
            outcome,
            duration: started.elapsed(),
            reuse: None,
        };
    }
    let timestamp = chrono::Utc::now().timestamp();
    let signature = sign(message.key, message.message_id, timestamp, message.body);
    let request = client
        .post(message.url)
        .header("content-type", "application/json")
        .header("webhook-id", message.message_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(message.body.to_vec());
    let (outcome, reuse) = match request.send().await {
        Ok(response) => {
            let reuse = reuse(response.version(), response.headers());
            (classify(response).await, Some(reuse))
        }
        Err(e) => {
            let outcome = Outcome::Retry {
                status: None,
                retry_after: None,
                error: transport_error(&e, "<endpoint url>"),
                trips_breaker: true,
            };
            (outcome, None)
        }
    };
    Sent {
        outcome,
        duration: started.elapsed(),
        reuse,
    }
}

/// Whether the receiver keeps the connection for the next request: HTTP/1.1 (and HTTP/2)
/// does unless it says `Connection: close`; HTTP/1.0 does only if it says
/// `Connection: keep-alive` (RFC 9112, section 9.3).
pub fn reuse(version: Version, headers: &HeaderMap) -> Reuse {
    let says = |token: &str| {
        headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    let kept = if says("close") {
        false
    } else if version <= Version::HTTP_10 {
        says("keep-alive")
    } else {
        true
    };
    if kept {
        Reuse::KeptAlive
    } else {
        Reuse::Closed
    }
}

fn literal_host_allowed(policy: &UrlPolicy, url: &str) -> Result<(), String> {
    let parsed = policy.parse(url).map_err(|e| e.to_string())?;
    let host = parsed.host_str().unwrap_or_default();
    match host_ip(host) {
        Some(ip) => policy.allows(host, ip).map_err(|e| e.to_string()),
        None => Ok(()),
    }
}

async fn classify(mut response: reqwest::Response) -> Outcome {
    let status = response.status().as_u16();
    if (200..300).contains(&status) {
        return Outcome::Delivered { status };
    }
    if status == 410 {
        return Outcome::Gone { status };
    }
    let retry_after = retry_after(response.headers());
    let mut body = Vec::new();
    while body.len() < ERROR_BODY_BYTES_MAX {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    body.truncate(ERROR_BODY_BYTES_MAX);
    let text: String = String::from_utf8_lossy(&body).chars().take(200).collect();
    Outcome::Retry {
        status: Some(status),
        retry_after,
        error: format!("HTTP {status}: {}", text.trim()),
        trips_breaker: matches!(status, 408 | 429 | 500..=599),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(connection: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(value) = connection {
            headers.insert(CONNECTION, value.parse().expect("header value"));
        }
        headers
    }

    #[test]
    fn http_1_1_keeps_the_connection_unless_it_says_close() {
        assert_eq!(reuse(Version::HTTP_11, &headers(None)), Reuse::KeptAlive);
        assert_eq!(reuse(Version::HTTP_2, &headers(None)), Reuse::KeptAlive);
        assert_eq!(
            reuse(Version::HTTP_11, &headers(Some("Close"))),
            Reuse::Closed
        );
        assert_eq!(
            reuse(Version::HTTP_11, &headers(Some("upgrade, close"))),
            Reuse::Closed
        );
    }

    #[test]
    fn http_1_0_closes_the_connection_unless_it_says_keep_alive() {
        assert_eq!(reuse(Version::HTTP_10, &headers(None)), Reuse::Closed);
        assert_eq!(reuse(Version::HTTP_09, &headers(None)), Reuse::Closed);
        assert_eq!(
            reuse(Version::HTTP_10, &headers(Some("Keep-Alive"))),
            Reuse::KeptAlive
        );
        assert_eq!(
            reuse(Version::HTTP_10, &headers(Some("keep-alive, close"))),
            Reuse::Closed
        );
    }
}
