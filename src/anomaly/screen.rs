//! Anomaly detection as the posting job runs it (README, "Anomaly detection"): once a batch
//! is posted, its transfers — as posting read them, in posting order — join their windows and
//! their accounts' failure streaks in one Redis round trip, are judged, and their hits stored.
//! It never holds back or fails posting: Redis down or slower than its timeout skips the
//! window rules (the large-amount rule, which needs no window, is still judged), a database
//! that cannot store the hits skips those, and each skip is counted in
//! `ferry_anomaly_checks_skipped_total{reason}`.

use std::collections::HashMap;
use std::sync::Arc;

use sqlx::PgPool;
use tracing::{debug, warn};

use super::record;
use super::rules::{Candidate, Hit, judge, judge_streak};
use super::settings::{AnomalySettings, RuleSettings};
use super::windows::{self, SkipReason};
use crate::domain::LedgerName;
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
        if let Err(reason) = counted {
            skipped(reason);
        }
        if let Err(error) = store(pool, &hits).await {
            warn!(%error, hits = hits.len(), "anomaly hits could not be stored; skipped");
            skipped(SkipReason::Database);
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

async fn store(pool: &PgPool, hits: &[Hit]) -> Result<(), sqlx::Error> {
    for rule in record::insert(pool, hits).await? {
        metrics::counter!("ferry_anomalies_total", "rule" => rule.as_str()).increment(1);
    }
    Ok(())
}

fn skipped(reason: SkipReason) {
    metrics::counter!("ferry_anomaly_checks_skipped_total", "reason" => reason.as_str())
        .increment(1);
    debug!(reason = reason.as_str(), "anomaly windows skipped");
}
