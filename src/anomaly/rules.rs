//! The four rules and what a hit says (README, "Anomaly detection"). Pure: the counts come from
//! the Redis windows ([`super::windows`]), the thresholds from the ledger's settings.

use rust_decimal::Decimal;
use uuid::Uuid;

use super::settings::RuleSettings;
use crate::domain::{AccountKey, Currency};
pub use crate::domain::{AnomalySeverity, Rule, RuleAction};

/// A transfer about to be posted, or just posted or failed, as the rules see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub transfer_id: Uuid,
    /// The source account: every rule is about money leaving it.
    pub account: AccountKey,
    pub amount: Decimal,
    pub currency: Currency,
    /// When the transfer was accepted (ms since the epoch): windows are measured in
    /// acceptance time, so a check that runs late counts what a prompt one would have.
    pub accepted_at_ms: i64,
}

/// What the windows counted for one candidate, itself included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowCounts {
    /// Transfers out of the account within the velocity window.
    pub transfers: u64,
    /// Transfers of the same amount out of the account within the duplicate window.
    pub same_amount: u64,
}

/// One rule tripped by one transfer, with the numbers that tripped it.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub transfer_id: Uuid,
    pub account: AccountKey,
    pub rule: Rule,
    /// The rule's action in the transfer's ledger; a transfer already posted was only flagged.
    pub action: RuleAction,
    pub detail: serde_json::Value,
}

/// The hits of the rules every transfer is judged by: velocity, large amount, duplicate
/// amount (failed ones also by [`judge_streak`]). Without `counts` (Redis did not answer) only
/// the large-amount rule, which needs no window, is judged.
pub fn judge(
    candidate: &Candidate,
    counts: Option<WindowCounts>,
    rules: &RuleSettings,
) -> Vec<Hit> {
    let mut hits = Vec::new();
    let mut hit = |rule: Rule, detail: serde_json::Value| {
        hits.push(Hit {
            transfer_id: candidate.transfer_id,
            account: candidate.account.clone(),
            rule,
            action: rules.action(rule),
            detail,
        });
    };
    let velocity = &rules.velocity;
    if let Some(counts) = counts.filter(|c| c.transfers >= velocity.count) {
        hit(Rule::Velocity, velocity_detail(counts.transfers, rules));
    }
    let threshold = rules.large_amount.threshold(&candidate.currency);
    if candidate.amount > threshold {
        hit(
            Rule::LargeAmount,
            serde_json::json!({
                "amount": candidate.amount.to_string(),
                "currency": candidate.currency.code(),
                "threshold": threshold.to_string(),
            }),
        );
    }
    let duplicate = &rules.duplicate_amount;
    if let Some(counts) = counts.filter(|c| c.same_amount >= duplicate.count) {
        hit(
            Rule::DuplicateAmount,
            duplicate_detail(candidate, counts.same_amount, rules),
        );
    }
    hits
}

/// The hits of transfers judged before `candidate` but accepted after it, that it brought to
/// exactly a window rule's count (`late_velocity`, `late_same_amount`: their ids, from the
/// windows). They are out of `candidate`'s account, and of its amount for the second rule.
pub fn judge_late(
    candidate: &Candidate,
    late_velocity: &[Uuid],
    late_same_amount: &[Uuid],
    rules: &RuleSettings,
) -> Vec<Hit> {
    let hit = |transfer_id: Uuid, rule: Rule, detail: serde_json::Value| Hit {
        transfer_id,
        account: candidate.account.clone(),
        rule,
        action: rules.action(rule),
        detail,
    };
    let velocity = late_velocity.iter().map(|id| {
        let detail = velocity_detail(rules.velocity.count, rules);
        hit(*id, Rule::Velocity, detail)
    });
    let duplicate = late_same_amount.iter().map(|id| {
        let detail = duplicate_detail(candidate, rules.duplicate_amount.count, rules);
        hit(*id, Rule::DuplicateAmount, detail)
    });
    velocity.chain(duplicate).collect()
}

fn velocity_detail(transfers: u64, rules: &RuleSettings) -> serde_json::Value {
    serde_json::json!({
        "transfers": transfers,
        "threshold": rules.velocity.count,
        "window_secs": rules.velocity.window_secs,
    })
}

fn duplicate_detail(
    candidate: &Candidate,
    transfers: u64,
    rules: &RuleSettings,
) -> serde_json::Value {
    serde_json::json!({
        "amount": candidate.amount.to_string(),
        "currency": candidate.currency.code(),
        "transfers": transfers,
        "threshold": rules.duplicate_amount.count,
        "window_secs": rules.duplicate_amount.window_secs,
    })
}

/// The failed-streak hit of a transfer whose account has failed `streak` times in a row (with
/// it, for a failed transfer; before it, for one judged for review), if that reaches the
/// rule's count.
pub fn judge_streak(
    transfer_id: Uuid,
    account: &AccountKey,
    streak: u64,
    rules: &RuleSettings,
) -> Option<Hit> {
    let rule = &rules.failed_streak;
    (streak >= rule.count).then(|| Hit {
        transfer_id,
        account: account.clone(),
        rule: Rule::FailedStreak,
        action: rule.action,
        detail: serde_json::json!({"consecutive_failures": streak, "threshold": rule.count}),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AccountId, LedgerName};

    fn candidate(amount: &str) -> Candidate {
        Candidate {
            transfer_id: Uuid::nil(),
            account: AccountKey::new(
                LedgerName::default_ledger(),
                AccountId::from_trusted("a".into()),
            ),
            amount: amount.parse().expect("decimal"),
            currency: Currency::parse("USD").expect("USD"),
            accepted_at_ms: 0,
        }
    }

    fn rules_hit(amount: &str, transfers: u64, same_amount: u64) -> Vec<Rule> {
        let counts = WindowCounts {
            transfers,
            same_amount,
        };
        judge(&candidate(amount), Some(counts), &RuleSettings::default())
            .into_iter()
            .map(|h| h.rule)
            .collect()
    }

    #[test]
    fn each_rule_trips_at_its_threshold_and_not_below() {
        assert_eq!(rules_hit("1.00", 4, 2), []);
        assert_eq!(rules_hit("1.00", 5, 2), [Rule::Velocity]);
        assert_eq!(rules_hit("1.00", 4, 3), [Rule::DuplicateAmount]);
        // Above the threshold, not at it.
        assert_eq!(rules_hit("5000.00", 1, 1), []);
        assert_eq!(rules_hit("5000.01", 1, 1), [Rule::LargeAmount]);
        assert_eq!(
            rules_hit("9000", 6, 3),
            [Rule::Velocity, Rule::LargeAmount, Rule::DuplicateAmount]
        );
    }

    #[test]
    fn without_windows_only_the_large_amount_rule_is_judged() {
        let large = judge(&candidate("9000"), None, &RuleSettings::default());
        assert_eq!(
            large.iter().map(|h| h.rule).collect::<Vec<_>>(),
            [Rule::LargeAmount]
        );
        assert_eq!(judge(&candidate("1"), None, &RuleSettings::default()), []);
    }

    #[test]
    fn a_streak_trips_at_its_count() {
        let account = candidate("1").account;
        let rules = RuleSettings::default();
        assert_eq!(judge_streak(Uuid::nil(), &account, 2, &rules), None);
        let hit = judge_streak(Uuid::nil(), &account, 3, &rules).expect("hit");
        assert_eq!(hit.rule, Rule::FailedStreak);
        assert_eq!(hit.detail["consecutive_failures"], 3);
    }

    #[test]
    fn rules_read_back_strictly() {
        for rule in Rule::ALL {
            assert_eq!(Rule::parse_known(rule.as_str()), Ok(rule));
            assert_eq!(
                serde_json::to_value(rule).expect("json"),
                serde_json::Value::String(rule.as_str().to_owned())
            );
        }
        assert!(Rule::parse_known("speed").is_err());
    }
}
