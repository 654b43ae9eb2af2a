//! Alerting: Slack, PagerDuty Events v2 and signed Standard Webhooks, delivered durably as
//! jobs, with per-sink circuit breakers.
//!
//! Sources raise alerts inside their own transactions ([`outbox::raise`]): reconciliation
//! findings opened (trigger) and resolved (resolve), transfers failing with
//! `retries_exhausted`, and a sink's circuit opening (told to the other sinks).

pub mod breaker;
pub mod config;
pub mod deliver;
pub mod outbox;
pub mod payload;

use std::sync::Arc;

use serde_json::json;

use crate::domain::{LedgerName, Severity};
use breaker::Breakers;
use config::AlertConfig;
use payload::{Action, AlertEvent};

/// What raising and delivering alerts needs; cheap to clone.
#[derive(Clone)]
pub struct Alerting {
    pub config: Arc<AlertConfig>,
    pub breakers: Arc<Breakers>,
    pub client: reqwest::Client,
}

impl Alerting {
    pub fn new(config: Arc<AlertConfig>) -> Self {
        let breakers = Arc::new(Breakers::new(config.breaker));
        Self {
            config,
            breakers,
            client: deliver::http_client(),
        }
    }
}

/// A reconciliation finding opened (`Trigger`) or resolved (`Resolve`); both carry the same
/// dedup key, so PagerDuty resolves the incident the trigger opened.
///
/// The dedup key names the finding's ledger, so `account:cash` drifting in two ledgers is two
/// incidents: `ferry:finding:<kind>:<ledger>/<subject>`. Findings of `default` and findings
/// about no one ledger keep `ferry:finding:<kind>:<subject>`, the key they had before ledgers
/// existed, so an incident opened then still resolves. (Unambiguous: a subject starts with
/// `transfer:`, `account:`, `currency:` or `job:`, and a ledger name holds no `:` or `/`.)
pub fn finding_event(
    action: Action,
    kind: &str,
    ledger: Option<&str>,
    subject: &str,
    severity: Severity,
    detail: &str,
) -> AlertEvent {
    let (dedup_key, place) = match ledger {
        Some(ledger) if ledger != LedgerName::DEFAULT => (
            format!("ferry:finding:{kind}:{ledger}/{subject}"),
            format!("{subject} in ledger {ledger}"),
        ),
        Some(ledger) => (
            format!("ferry:finding:{kind}:{subject}"),
            format!("{subject} in ledger {ledger}"),
        ),
        None => (
            format!("ferry:finding:{kind}:{subject}"),
            subject.to_owned(),
        ),
    };
    let summary = match action {
        Action::Trigger => format!("{kind} on {place}: {detail}"),
        Action::Resolve => format!("{kind} on {place} is resolved"),
    };
    outbox::event(
        dedup_key,
        action,
        format!("reconciliation.{kind}"),
        severity,
        summary,
        json!({"kind": kind, "ledger": ledger, "subject": subject, "detail": detail}),
    )
}

/// A transfer that failed because its retries ran out.
pub fn retries_exhausted_event(transfer_id: uuid::Uuid, last_error: &str) -> AlertEvent {
    outbox::event(
        format!("ferry:transfer:{transfer_id}:retries_exhausted"),
        Action::Trigger,
        "transfer.retries_exhausted".into(),
        Severity::Critical,
        format!("transfer {transfer_id} failed with retries_exhausted: {last_error}"),
        json!({"transfer_id": transfer_id, "last_error": last_error}),
    )
}

/// A sink's circuit opened (`Trigger`) or closed again (`Resolve`).
pub fn circuit_event(action: Action, sink: &str, last_error: &str) -> AlertEvent {
    let summary = match action {
        Action::Trigger => {
            format!("alert sink {sink} is failing; its circuit is open: {last_error}")
        }
        Action::Resolve => format!("alert sink {sink} recovered; its circuit is closed"),
    };
    outbox::event(
        format!("ferry:sink:{sink}:circuit"),
        action,
        "alerts.sink_circuit".into(),
        Severity::Critical,
        summary,
        json!({"sink": sink, "last_error": last_error}),
    )
}
