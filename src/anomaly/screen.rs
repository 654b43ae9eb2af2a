//! Anomaly detection as the posting job runs it (README, "Anomaly detection"): before posting,
//! a job's pending transfers join their windows and are judged, one Redis round trip for the
//! batch; after posting, their outcomes extend or end their accounts' failure streaks. Neither
//! ever holds back or fails posting: Redis down or slower than its timeout, or the database
//! unable to read the batch or store its hits, skips the check and counts it in
//! `ferry_anomaly_checks_skipped_total{reason}`.

use std::collections::HashMap;
use std::sync::Arc;

use sqlx::PgPool;
use tracing::{debug, warn};
use uuid::Uuid;

use super::record;
use super::rules::{Hit, judge, judge_streak};
use super::settings::{AnomalySettings, RuleSettings};
use super::windows::{self, SkipReason};
use crate::domain::{LedgerName, TransferStatus};
use crate::redis_slot::RedisSlot;

#[derive(Clone)]
pub struct Screener {
    settings: Arc<AnomalySettings>,
    redis: RedisSlot,
    /// Prefixes every Redis key: the database's name, so that deployments (or tests) sharing
    /// one Redis never count each other's transfers.
    namespace: Arc<str>,
}

impl Screener {
    pub fn new(settings: Arc<AnomalySettings>, redis: RedisSlot, namespace: &str) -> Self {
        Self {
            settings,
            redis,
            namespace: namespace.into(),
        }
    }

    /// Judges the still-pending transfers among `transfer_ids` against the velocity,
    /// large-amount and duplicate-amount rules and stores their hits (`flag`: the transfers
    /// then post as usual).
    pub async fn before_posting(&self, pool: &PgPool, transfer_ids: &[Uuid]) {
        if let Err(reason) = self.screen(pool, transfer_ids).await {
            skipped(reason, "before posting");
        }
    }

    /// Records the outcomes of the posted or failed transfers among `transfer_ids` in their
    /// accounts' streaks, and stores the failed-streak hits.
    pub async fn after_posting(&self, pool: &PgPool, transfer_ids: &[Uuid]) {
        if let Err(reason) = self.record_outcomes(pool, transfer_ids).await {
            skipped(reason, "after posting");
        }
    }

    async fn screen(&self, pool: &PgPool, transfer_ids: &[Uuid]) -> Result<(), SkipReason> {
        if !self.settings.enabled {
            return Ok(());
        }
        let pending = record::transfers(pool, transfer_ids, &[TransferStatus::Pending])
            .await
            .map_err(database)?;
        if pending.is_empty() {
            return Ok(());
        }
        let rules = self.rules_of(pending.iter().map(|(c, _)| &c.account.ledger));
        let candidates: Vec<_> = pending
            .into_iter()
            .map(|(candidate, _)| {
                let rules = &rules[&candidate.account.ledger];
                (candidate, rules)
            })
            .collect();
        // Without the windows, the large-amount rule is still judged and its hits stored;
        // the skip is reported once they are.
        let counts = match self.redis.get().await {
            Some(mut connection) => {
                let timeout = self.settings.redis_timeout;
                windows::count(&mut connection, &self.namespace, &candidates, timeout).await
            }
            None => Err(SkipReason::Unavailable),
        };
        let hits: Vec<Hit> = candidates
            .iter()
            .enumerate()
            .flat_map(|(n, (candidate, rules))| {
                let counts = counts.as_ref().ok().map(|all| all[n]);
                judge(candidate, counts, rules)
            })
            .collect();
        store(pool, &hits).await?;
        counts.map(|_| ())
    }

    async fn record_outcomes(
        &self,
        pool: &PgPool,
        transfer_ids: &[Uuid],
    ) -> Result<(), SkipReason> {
        if !self.settings.enabled {
            return Ok(());
        }
        let mut connection = self.redis.get().await.ok_or(SkipReason::Unavailable)?;
        let terminal = [TransferStatus::Posted, TransferStatus::Failed];
        let outcomes: Vec<_> = record::transfers(pool, transfer_ids, &terminal)
            .await
            .map_err(database)?
            .into_iter()
            .map(|(candidate, status)| (candidate, status == TransferStatus::Failed))
            .collect();
        if outcomes.is_empty() {
            return Ok(());
        }
        let timeout = self.settings.redis_timeout;
        let streaks =
            windows::record_outcomes(&mut connection, &self.namespace, &outcomes, timeout).await?;
        let rules = self.rules_of(outcomes.iter().map(|(c, _)| &c.account.ledger));
        let hits: Vec<Hit> = outcomes
            .iter()
            .zip(streaks)
            .filter(|((_, failed), _)| *failed)
            .filter_map(|((candidate, _), streak)| {
                let rules = &rules[&candidate.account.ledger];
                judge_streak(candidate.transfer_id, &candidate.account, streak, rules)
            })
            .collect();
        store(pool, &hits).await
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

async fn store(pool: &PgPool, hits: &[Hit]) -> Result<(), SkipReason> {
    for rule in record::insert(pool, hits).await.map_err(database)? {
        metrics::counter!("ferry_anomalies_total", "rule" => rule.as_str()).increment(1);
    }
    Ok(())
}

fn database(error: sqlx::Error) -> SkipReason {
    warn!(%error, "anomaly check could not use the database; skipped");
    SkipReason::Database
}

fn skipped(reason: SkipReason, when: &'static str) {
    metrics::counter!("ferry_anomaly_checks_skipped_total", "reason" => reason.as_str())
        .increment(1);
    debug!(reason = reason.as_str(), when, "anomaly check skipped");
}
