//! Request bodies for each sink kind, and Standard Webhooks signatures.

use base64::Engine;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::Sha256;
use uuid::Uuid;

use crate::domain::{Severity, stored_as_text};

/// PagerDuty caps `payload.summary` at 1024 characters.
pub const PAGERDUTY_SUMMARY_CHARS_MAX: usize = 1024;
/// Slack section text is capped at 3000 characters; header at 150.
const SLACK_SECTION_CHARS_MAX: usize = 3000;
const SLACK_HEADER_CHARS_MAX: usize = 150;
/// Where PagerDuty and receivers say the event came from.
pub const SOURCE: &str = "ferry";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Trigger,
    Resolve,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trigger => "trigger",
            Self::Resolve => "resolve",
        }
    }
}

stored_as_text!(Action, "action", [Action::Trigger, Action::Resolve]);

/// One alert as every sink renders it. Read back from `alerts` strictly: an unknown stored
/// action or severity is an error.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AlertEvent {
    pub id: Uuid,
    pub dedup_key: String,
    #[sqlx(try_from = "String")]
    pub action: Action,
    /// e.g. `reconciliation.balance_drift`, `transfer.retries_exhausted`.
    pub event_type: String,
    #[sqlx(try_from = "String")]
    pub severity: Severity,
    /// One line saying what is wrong.
    pub summary: String,
    pub details: Value,
    pub created_at: DateTime<Utc>,
}

fn truncate(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max_chars.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

fn headline(event: &AlertEvent) -> String {
    match event.action {
        Action::Trigger => format!("[{}] {}", event.severity.as_str(), event.summary),
        Action::Resolve => format!("[resolved] {}", event.summary),
    }
}

/// Slack incoming webhook: `text` (the notification fallback) plus blocks.
pub fn slack(event: &AlertEvent) -> Value {
    let emoji = match (event.action, event.severity) {
        (Action::Resolve, _) => ":white_check_mark:",
        (_, Severity::Critical) => ":rotating_light:",
        (_, Severity::Medium) => ":warning:",
        (_, Severity::Info) => ":information_source:",
    };
    let text = format!("{emoji} {}", headline(event));
    let details = serde_json::to_string_pretty(&event.details).unwrap_or_default();
    json!({
        "text": truncate(&text, SLACK_SECTION_CHARS_MAX),
        "blocks": [
            {"type": "header", "text": {"type": "plain_text",
                "text": truncate(&format!("ferry: {}", event.event_type), SLACK_HEADER_CHARS_MAX)}},
            {"type": "section", "text": {"type": "mrkdwn",
                "text": truncate(&text, SLACK_SECTION_CHARS_MAX)}},
            {"type": "section", "text": {"type": "mrkdwn",
                "text": truncate(&format!("```{details}```"), SLACK_SECTION_CHARS_MAX)}},
            {"type": "context", "elements": [{"type": "mrkdwn",
                "text": format!("dedup key `{}` · {}", event.dedup_key, event.created_at.to_rfc3339())}]},
        ],
    })
}

/// PagerDuty Events API v2. Resolve events need only the key, action and dedup key.
pub fn pagerduty(event: &AlertEvent, routing_key: &str) -> Value {
    match event.action {
        Action::Resolve => json!({
            "routing_key": routing_key,
            "event_action": "resolve",
            "dedup_key": event.dedup_key,
        }),
        Action::Trigger => json!({
            "routing_key": routing_key,
            "event_action": "trigger",
            "dedup_key": event.dedup_key,
            "payload": {
                "summary": truncate(&headline(event), PAGERDUTY_SUMMARY_CHARS_MAX),
                "source": SOURCE,
                "severity": pagerduty_severity(event.severity),
                "timestamp": event.created_at.to_rfc3339(),
                "component": "ledger",
                "class": event.event_type,
                "custom_details": event.details,
            },
        }),
    }
}

fn pagerduty_severity(severity: Severity) -> &'static str {
    match severity {
        Severity::Critical => "critical",
        Severity::Medium => "warning",
        Severity::Info => "info",
    }
}

/// Generic webhook body: `{type, timestamp, data}`.
pub fn webhook(event: &AlertEvent) -> Value {
    json!({
        "type": event.event_type,
        "timestamp": event.created_at.to_rfc3339(),
        "data": {
            "id": event.id,
            "action": event.action.as_str(),
            "dedup_key": event.dedup_key,
            "severity": event.severity.as_str(),
            "summary": event.summary,
            "details": event.details,
        },
    })
}

/// Standard Webhooks signature: `v1,` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")).
pub fn sign(key: &[u8], message_id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mac) => mac,
        // HMAC accepts keys of any length; this branch cannot be taken.
        Err(_) => return String::new(),
    };
    mac.update(message_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    format!("v1,{signature}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::config::decode_webhook_secret;

    #[test]
    fn the_standard_webhooks_test_vector_signs_as_published() {
        let key = decode_webhook_secret("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").expect("key");
        let signature = sign(
            &key,
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            1_649_367_553,
            br#"{"email":"test@example.com","username":"test_user"}"#,
        );
        assert_eq!(signature, "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=");
    }

    fn event(action: Action) -> AlertEvent {
        AlertEvent {
            id: Uuid::nil(),
            dedup_key: "ferry:finding:balance_drift:account:a".into(),
            action,
            event_type: "reconciliation.balance_drift".into(),
            severity: Severity::Critical,
            summary: "x".repeat(5000),
            details: json!({"account_id": "a"}),
            created_at: DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default(),
        }
    }

    #[test]
    fn pagerduty_triggers_carry_a_bounded_summary_and_resolves_only_the_key() {
        let trigger = pagerduty(&event(Action::Trigger), "rk");
        let summary = trigger["payload"]["summary"].as_str().unwrap_or_default();
        assert_eq!(summary.chars().count(), PAGERDUTY_SUMMARY_CHARS_MAX);
        assert_eq!(trigger["payload"]["severity"], "critical");
        assert_eq!(trigger["payload"]["source"], "ferry");
        assert_eq!(trigger["payload"]["custom_details"]["account_id"], "a");
        let resolve = pagerduty(&event(Action::Resolve), "rk");
        assert_eq!(resolve["event_action"], "resolve");
        assert_eq!(resolve["dedup_key"], trigger["dedup_key"]);
        assert!(resolve.get("payload").is_none());
    }

    #[test]
    fn slack_messages_have_text_and_blocks_within_limits() {
        let body = slack(&event(Action::Trigger));
        let text = body["text"].as_str().expect("text");
        assert!(text.contains("[critical]"), "{text}");
        assert!(text.chars().count() <= SLACK_SECTION_CHARS_MAX);
        // Header, the notification line, the details, and a context line (README, "Alerts").
        let blocks = body["blocks"].as_array().expect("blocks");
        let kinds: Vec<&str> = blocks.iter().filter_map(|b| b["type"].as_str()).collect();
        assert_eq!(kinds, ["header", "section", "section", "context"], "{body}");
        let header = blocks[0]["text"]["text"].as_str().expect("header text");
        assert_eq!(header, "ferry: reconciliation.balance_drift");
        assert!(header.chars().count() <= SLACK_HEADER_CHARS_MAX);
        // The 5000-character summary is cut to Slack's section limit, not dropped.
        let line = blocks[1]["text"]["text"].as_str().expect("section text");
        assert!(line.contains("[critical]"), "{line}");
        assert_eq!(line.chars().count(), SLACK_SECTION_CHARS_MAX);
        let details = blocks[2]["text"]["text"].as_str().expect("details text");
        assert!(details.contains("account_id"), "{details}");
        assert!(details.chars().count() <= SLACK_SECTION_CHARS_MAX);
        let context = blocks[3]["elements"][0]["text"].as_str().expect("context");
        assert!(
            context.contains("ferry:finding:balance_drift:account:a"),
            "{context}"
        );
    }
}
