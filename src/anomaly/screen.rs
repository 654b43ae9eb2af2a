//! Anomaly detection as the posting job runs it (README, "Anomaly detection"): once a batch
//! is posted, its transfers — as posting read them, in posting order — join their windows and
//! their accounts' failure streaks in one Redis round trip, are judged, and their hits stored,
//! each first hit of a kind on an account raising an alert. It never holds back or fails
//! posting: Redis down or slower than its timeout skips the window rules (the large-amount
//! rule, which needs no window, is still judged), a database that cannot store the hits skips
//! those, and each skip is counted in `ferry_anomaly_checks_skipped_total{reason}`; windows
//! unchecked for longer than `skip_alert_after_secs` raise a `medium` alert, resolved once
//! they are checked again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::json;
use sqlx::PgPool;
use tracing::{debug, warn};

use super::record;
use super::rules::{AnomalySeverity, Candidate, Hit, Rule, judge, judge_streak};
use super::settings::{AnomalySettings, RuleSettings};
use super::windows::{self, SkipReason};
use crate::alerts::config::AlertConfig;
use crate::alerts::outbox::{self, OutboxError};
use crate::alerts::payload::{Action, AlertEvent};
use crate::domain::{LedgerName, Severity};
use crate::redis_slot::RedisSlot;

/// How long after an alerted large-amount or failed-streak hit further hits of that kind on
/// the account join the same incident (the window rules use their own window).
pub const INCIDENT_QUIET_SECS: u64 = 300;

#[derive(Clone)]
pub struct Screener {
    settings: Arc<AnomalySettings>,
    redis: RedisSlot,
    /// Prefixes every Redis key: the database's name, so that deployments (or tests) sharing
    /// one Redis never count each other's transfers.
    namespace: Arc<str>,
    alerts: Arc<AlertConfig>,
    /// Since when this process's checks have skipped the windows, and whether that was alerted.
    skipping: Arc<Mutex<Skipping>>,
}

#[derive(Debug, Default)]
struct Skipping {
    since: Option<Instant>,
    alerted: bool,
}

impl Screener {
    pub fn new(
        settings: Arc<AnomalySettings>,
        redis: RedisSlot,
        namespace: &str,
        alerts: Arc<AlertConfig>,
    ) -> Self {
        Self {
            settings,
            redis,
            namespace: namespace.into(),
            alerts,
            skipping: Arc::default(),
        }
    }

    /// Judges transfers just posted (`true`: failed), in posting order, and stores their hits.
    pub async fn judge(&self, pool: &PgPool, transfers: &[(Candidate, bool)]) {
        if !self.settings.enabled || transfers.is_empty() {
            return;
        }
        let rules = self.rules_of(transfers.iter().map(|(c, _)| &c.account.ledger));
        let judged: Vec<(&Candidate, bool, &RuleSettings)> = transfers
            .iter()
            .map(|(candidate, failed)| (candidate, *failed, &rules[&candidate.account.ledger]))
            .collect();
        let counted = match self.redis.get().await {
            Some(mut connection) => {
                let timeout = self.settings.redis_timeout;
                windows::count(&mut connection, &self.namespace, &judged, timeout).await
            }
            None => Err(SkipReason::Unavailable),
        };
        let mut hits: Vec<Hit> = Vec::new();
        for (n, (candidate, failed, rules)) in judged.iter().enumerate() {
            let counted = counted.as_ref().ok().map(|all| all[n]);
            hits.extend(judge(candidate, counted.map(|c| c.windows), rules));
            if let Some(counted) = counted.filter(|_| *failed) {
                let account = &candidate.account;
                hits.extend(judge_streak(
                    candidate.transfer_id,
                    account,
                    counted.streak,
                    rules,
                ));
            }
        }
        let windows_checked = counted.is_ok();
        if let Err(reason) = counted {
            skipped(reason);
        }
        if let Err(error) = self.store(pool, &hits, &rules).await {
            warn!(%error, hits = hits.len(), "anomaly hits could not be stored; skipped");
            skipped(SkipReason::Database);
        }
        self.watch_skips(pool, windows_checked).await;
    }

    /// Stores `hits` and raises an alert for each that opens an incident, in one transaction.
    async fn store(
        &self,
        pool: &PgPool,
        hits: &[Hit],
        rules: &HashMap<LedgerName, RuleSettings>,
    ) -> Result<(), OutboxError> {
        if hits.is_empty() {
            return Ok(());
        }
        let incident_secs = |hit: &Hit| {
            let rules = &rules[&hit.account.ledger];
            match hit.rule {
                Rule::Velocity => rules.velocity.window_secs,
                Rule::DuplicateAmount => rules.duplicate_amount.window_secs,
                Rule::LargeAmount | Rule::FailedStreak => INCIDENT_QUIET_SECS,
            }
        };
        let mut tx = pool.begin().await?;
        let stored = record::store(&mut tx, hits, incident_secs).await?;
        for stored in stored.iter().filter(|s| s.opens_incident) {
            outbox::raise(&mut tx, &self.alerts, &hit_event(&stored.hit), None).await?;
        }
        tx.commit().await?;
        for stored in &stored {
            metrics::counter!("ferry_anomalies_total", "rule" => stored.hit.rule.as_str())
                .increment(1);
        }
        Ok(())
    }

    /// Raises a `medium` alert once the windows have gone unchecked for longer than
    /// `skip_alert_after`, and resolves it at the first check after that.
    async fn watch_skips(&self, pool: &PgPool, windows_checked: bool) {
        let action = {
            let Ok(mut skipping) = self.skipping.lock() else {
                return;
            };
            match (windows_checked, skipping.since) {
                (true, _) => {
                    let was_alerted = skipping.alerted;
                    *skipping = Skipping::default();
                    was_alerted.then_some(Action::Resolve)
                }
                (false, None) => {
                    skipping.since = Some(Instant::now());
                    None
                }
                (false, Some(since)) => {
                    let due =
                        !skipping.alerted && since.elapsed() >= self.settings.skip_alert_after;
                    skipping.alerted |= due;
                    due.then_some(Action::Trigger)
                }
            }
        };
        if let Some(action) = action {
            let event = skip_event(
                action,
                &self.namespace,
                self.settings.skip_alert_after.as_secs(),
            );
            let raised = async {
                let mut conn = pool.acquire().await?;
                outbox::raise(&mut conn, &self.alerts, &event, None).await
            };
            if let Err(error) = raised.await {
                warn!(%error, "the alert about skipped anomaly checks could not be raised");
            }
        }
    }

    /// The rules of each ledger named, resolved once per batch.
    fn rules_of<'a>(
        &self,
        ledgers: impl Iterator<Item = &'a LedgerName>,
    ) -> HashMap<LedgerName, RuleSettings> {
        let mut rules = HashMap::new();
        for ledger in ledgers {
            if !rules.contains_key(ledger) {
                rules.insert(ledger.clone(), self.settings.rules_for(ledger));
            }
        }
        rules
    }
}

/// The alert of a hit that opens an incident: `anomaly.<rule>`, critical for the high-severity
/// rules, medium for the others.
fn hit_event(hit: &Hit) -> AlertEvent {
    let severity = match hit.rule.severity() {
        AnomalySeverity::High => Severity::Critical,
        AnomalySeverity::Medium => Severity::Medium,
    };
    let (rule, account) = (hit.rule.as_str(), &hit.account);
    outbox::event(
        format!("ferry:anomaly:{rule}:{account}:{}", hit.transfer_id),
        Action::Trigger,
        format!("anomaly.{rule}"),
        severity,
        format!("{rule} on account {account}: {}", hit.detail),
        json!({
            "rule": rule,
            "ledger": account.ledger.as_str(),
            "account_id": account.id.as_str(),
            "transfer_id": hit.transfer_id,
            "detail": hit.detail,
        }),
    )
}

fn skip_event(action: Action, namespace: &str, after_secs: u64) -> AlertEvent {
    let summary = match action {
        Action::Trigger => format!(
            "anomaly checks have skipped their Redis windows for over {after_secs} s: \
             velocity, duplicate-amount and failed-streak rules are not judged"
        ),
        Action::Resolve => "anomaly checks reach their Redis windows again".to_owned(),
    };
    outbox::event(
        format!("ferry:anomaly:windows_skipped:{namespace}"),
        action,
        "anomaly.windows_skipped".into(),
        Severity::Medium,
        summary,
        json!({"after_secs": after_secs}),
    )
}

fn skipped(reason: SkipReason) {
    metrics::counter!("ferry_anomaly_checks_skipped_total", "reason" => reason.as_str())
        .increment(1);
    debug!(reason = reason.as_str(), "anomaly windows skipped");
}
