//! Anomaly detection as the posting job runs it (README, "Anomaly detection"): once a batch
//! is posted, its transfers — as posting read them, in posting order — join their windows and
//! their accounts' failure streaks in one Redis round trip, are judged, and their hits stored,
//! each first hit of a kind on an account raising an alert. It never holds back or fails
//! posting: Redis down or slower than its timeout skips the window rules (the large-amount
//! rule, which needs no window, is still judged), a database that cannot store the hits skips
//! those, and each skip is counted in `ferry_anomaly_checks_skipped_total{reason}`; windows
//! unchecked for longer than `skip_alert_after_secs` raise a `medium` alert, resolved once
//! they are checked again.
//!
//! Where a ledger sets a rule to `review`, its transfers are also judged *before* posting
//! ([`Screener::hold_for_review`]): those a review rule trips move to `in_review` with their
//! hits, in one transaction, and posting passes them by. That costs the batch one more Redis
//! round trip, bounded by the same timeout; a skipped check holds nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::json;
use sqlx::PgPool;
use tracing::{debug, warn};
use uuid::Uuid;

use super::rules::{
    AnomalySeverity, Candidate, Hit, Rule, RuleAction, judge, judge_late, judge_streak,
};
use super::settings::{AnomalySettings, RuleSettings};
use super::windows::{self, Counted, SkipReason, StreakStep};
use super::{record, review};
use crate::alerts::config::AlertConfig;
use crate::alerts::outbox::{self, OutboxError};
use crate::alerts::payload::{Action, AlertEvent};
use crate::domain::{LedgerName, Severity};
use crate::redis_slot::RedisSlot;

/// How long after the last large-amount or failed-streak hit on an account further hits of
/// that kind join the same anomaly (the window rules use their own window).
pub const INCIDENT_QUIET_SECS: u64 = 300;

#[derive(Clone)]
pub struct Screener {
    settings: Arc<AnomalySettings>,
    redis: RedisSlot,
    /// Prefixes every Redis key: the database's name, so that deployments (or tests) sharing
    /// one Redis never count each other's transfers.
    namespace: Arc<str>,
    alerts: Arc<AlertConfig>,
    /// Whether any ledger sets a rule to `review` (decided once: settings do not change).
    reviews: bool,
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
            reviews: settings.reviews_anywhere(),
            settings,
            redis,
            namespace: namespace.into(),
            alerts,
            skipping: Arc::default(),
        }
    }

    /// Judges transfers just posted (`true`: failed), in posting order, and stores their hits.
    /// They have proceeded, so every hit is a flag; a transfer judged again (in a redelivered
    /// job) keeps the hits stored the first time. Transfers of ledgers with a review rule were
    /// judged before posting ([`Self::hold_for_review`]): only their streak is left to judge.
    pub async fn judge(&self, pool: &PgPool, transfers: &[(Candidate, bool)]) {
        if !self.settings.enabled || transfers.is_empty() {
            return;
        }
        let rules = self.rules_of(transfers.iter().map(|(c, _)| &c.account.ledger));
        let judged: Vec<(&Candidate, StreakStep, &RuleSettings)> = transfers
            .iter()
            .filter(|(c, _)| rules[&c.account.ledger].judges(&c.account.id))
            .map(|(candidate, failed)| {
                let step = if *failed {
                    StreakStep::Failed
                } else {
                    StreakStep::Posted
                };
                (candidate, step, &rules[&candidate.account.ledger])
            })
            .collect();
        let windows_of: Vec<(&Candidate, StreakStep, Option<&RuleSettings>)> = judged
            .iter()
            .map(|(c, step, rules)| (*c, *step, (!rules.reviews()).then_some(*rules)))
            .collect();
        let counted = self.count(&windows_of).await;
        let mut hits: Vec<Hit> = Vec::new();
        for (n, ((candidate, step, rules), (_, _, windows))) in
            judged.iter().zip(&windows_of).enumerate()
        {
            let counted = counted.as_ref().ok().map(|all| &all[n]);
            if windows.is_some() {
                hits.extend(judge(candidate, counted.map(|c| c.windows), rules));
            }
            if let Some(counted) = counted {
                let (velocity, same_amount) = (&counted.late_velocity, &counted.late_same_amount);
                hits.extend(judge_late(candidate, velocity, same_amount, rules));
            }
            // A streak set to `review` holds the account's next transfer, judged before posting.
            let flags_streak = rules.failed_streak.action == RuleAction::Flag;
            if let Some(counted) = counted.filter(|_| *step == StreakStep::Failed && flags_streak) {
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
        self.record(pool, hits, &[], &rules).await;
        self.watch_skips(pool, windows_checked).await;
    }

    /// Whether any ledger holds transfers for review: if not, [`Self::hold_for_review`] is a
    /// no-op and posting pays nothing for it.
    pub fn reviews(&self) -> bool {
        self.reviews
    }

    /// Judges, before they are posted, the transfers of `transfer_ids` still pending and never
    /// reviewed whose ledger sets a rule to `review`, stores their hits, and moves those a
    /// review rule trips to `in_review`, in one transaction. (Their windows are counted here,
    /// once: after posting only their streak is.) Like [`Self::judge`], it never fails
    /// posting: whatever goes wrong holds nothing and is counted as a skip.
    pub async fn hold_for_review(&self, pool: &PgPool, transfer_ids: &[Uuid]) {
        if !self.reviews() {
            return;
        }
        let candidates = match review::unreviewed(pool, transfer_ids).await {
            Ok(candidates) => candidates,
            Err(error) => {
                warn!(%error, "transfers could not be judged for review; none held");
                skipped(SkipReason::Database);
                return;
            }
        };
        let rules = self.rules_of(candidates.iter().map(|c| &c.account.ledger));
        let judged: Vec<(&Candidate, &RuleSettings)> = candidates
            .iter()
            .map(|c| (c, &rules[&c.account.ledger]))
            .filter(|(c, rules)| rules.reviews() && rules.judges(&c.account.id))
            .collect();
        if judged.is_empty() {
            return;
        }
        let windows_of: Vec<(&Candidate, StreakStep, Option<&RuleSettings>)> = judged
            .iter()
            .map(|(c, rules)| (*c, StreakStep::Read, Some(*rules)))
            .collect();
        let counted = self.count(&windows_of).await;
        let mut hits: Vec<Hit> = Vec::new();
        let mut held_ids: Vec<Uuid> = Vec::new();
        for (n, (candidate, rules)) in judged.iter().enumerate() {
            let counted: Option<&Counted> = counted.as_ref().ok().map(|all| &all[n]);
            let mut own = judge(candidate, counted.map(|c| c.windows), rules);
            let reviews_streak = rules.failed_streak.action == RuleAction::Review;
            if let Some(counted) = counted.filter(|_| reviews_streak) {
                let account = &candidate.account;
                own.extend(judge_streak(
                    candidate.transfer_id,
                    account,
                    counted.streak,
                    rules,
                ));
            }
            if own.iter().any(|hit| hit.action == RuleAction::Review) {
                held_ids.push(candidate.transfer_id);
            }
            hits.extend(own);
            // Transfers judged before this one that it brings to a rule's count: judged,
            // so not held now (they may be posted already) — flagged.
            if let Some(counted) = counted {
                let (velocity, same_amount) = (&counted.late_velocity, &counted.late_same_amount);
                hits.extend(judge_late(candidate, velocity, same_amount, rules));
            }
        }
        let windows_checked = counted.is_ok();
        if let Err(reason) = counted {
            skipped(reason);
        }
        let held = self.record(pool, hits, &held_ids, &rules).await;
        metrics::counter!("ferry_reviews_total", "decision" => "requested").increment(held as u64);
        self.watch_skips(pool, windows_checked).await;
    }

    /// Moves the transfers of `held_ids` still pending to `in_review` and stores `hits`, each
    /// opening or joining its incident, an incident opened now raising an alert and an
    /// `anomaly.flagged` event, all in one transaction; a hit whose transfer was not held (it
    /// proceeds, or was posted meanwhile) is a flag. Returns how many were held. A database
    /// that cannot do it holds nothing and stores nothing: counted as a skip.
    async fn record(
        &self,
        pool: &PgPool,
        mut hits: Vec<Hit>,
        held_ids: &[Uuid],
        rules: &HashMap<LedgerName, RuleSettings>,
    ) -> usize {
        if hits.is_empty() {
            return 0;
        }
        let recorded = async {
            let mut tx = pool.begin().await?;
            // Locks in one order for every writer: incidents, then the event lock (the
            // posting gate), then transfer rows — posting takes the last two in that order
            // (README, "Events and webhooks").
            record::lock_incidents(&mut tx, &hits).await?;
            let holds = !held_ids.is_empty();
            if holds {
                crate::events::lock_sequence(&mut tx).await?;
            }
            let held = review::hold(&mut tx, held_ids).await?;
            for hit in &mut hits {
                if !held.contains(&hit.transfer_id) {
                    hit.action = RuleAction::Flag;
                }
            }
            let stored = self.store(&mut tx, &hits, rules).await?;
            let opened: Vec<i64> = stored
                .iter()
                .filter(|s| s.opens_incident)
                .map(|s| s.anomaly_id)
                .collect();
            // Hits that join an open incident write no event: most batches of a busy account
            // never wait for the gate.
            if !holds && !opened.is_empty() {
                crate::events::lock_sequence(&mut tx).await?;
            }
            record::record_events(&mut tx, &opened).await?;
            let held_now: Vec<Uuid> = held.iter().copied().collect();
            crate::events::transfer::record_changes(&mut tx, &held_now).await?;
            tx.commit().await?;
            Ok::<_, OutboxError>((held.len(), stored))
        };
        match recorded.await {
            Ok((held, stored)) => {
                for stored in stored {
                    let rule = stored.hit.rule.as_str();
                    metrics::counter!("ferry_anomaly_hits_total", "rule" => rule).increment(1);
                    if stored.opens_incident {
                        metrics::counter!("ferry_anomalies_total", "rule" => rule).increment(1);
                    }
                }
                held
            }
            Err(error) => {
                warn!(%error, hits = hits.len(), "anomaly hits could not be stored; skipped");
                skipped(SkipReason::Database);
                0
            }
        }
    }

    /// Runs the window script over `judged`, bounded by the timeout.
    async fn count(
        &self,
        judged: &[(&Candidate, StreakStep, Option<&RuleSettings>)],
    ) -> Result<Vec<Counted>, SkipReason> {
        match self.redis.get().await {
            Some(mut connection) => {
                let timeout = self.settings.redis_timeout;
                windows::count(&mut connection, &self.namespace, judged, timeout).await
            }
            None => Err(SkipReason::Unavailable),
        }
    }

    /// Stores `hits` in `tx` and raises an alert for each incident opened now; returns the
    /// hits stored (not stored before), with their incidents.
    async fn store(
        &self,
        tx: &mut sqlx::PgConnection,
        hits: &[Hit],
        rules: &HashMap<LedgerName, RuleSettings>,
    ) -> Result<Vec<record::Stored>, OutboxError> {
        if hits.is_empty() {
            return Ok(Vec::new());
        }
        let window_secs = |hit: &Hit| {
            let rules = &rules[&hit.account.ledger];
            match hit.rule {
                Rule::Velocity => rules.velocity.window_secs,
                Rule::DuplicateAmount => rules.duplicate_amount.window_secs,
                Rule::LargeAmount | Rule::FailedStreak => INCIDENT_QUIET_SECS,
            }
        };
        let stored = record::store(&mut *tx, hits, window_secs).await?;
        for stored in stored.iter().filter(|s| s.opens_incident) {
            let event = hit_event(&stored.hit, stored.anomaly_id);
            outbox::raise(&mut *tx, &self.alerts, &event, None).await?;
        }
        Ok(stored)
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

/// The alert of a hit that opens incident `anomaly_id`: `anomaly.<rule>`, critical for the
/// high-severity rules, medium for the others.
fn hit_event(hit: &Hit, anomaly_id: i64) -> AlertEvent {
    let severity = match hit.rule.severity() {
        AnomalySeverity::High => Severity::Critical,
        AnomalySeverity::Medium => Severity::Medium,
    };
    let (rule, account) = (hit.rule.as_str(), &hit.account);
    let held = match hit.action {
        RuleAction::Flag => "",
        RuleAction::Review => " (transfer held for review)",
    };
    outbox::event(
        // One incident, one alert: the dedup key is the anomaly's.
        format!("ferry:anomaly:{rule}:{account}:{anomaly_id}"),
        Action::Trigger,
        format!("anomaly.{rule}"),
        severity,
        format!("{rule} on account {account}: {}{held}", hit.detail),
        json!({
            "rule": rule,
            "action": hit.action.as_str(),
            "ledger": account.ledger.as_str(),
            "account_id": account.id.as_str(),
            "anomaly_id": anomaly_id,
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
