//! `[anomaly]` in `FERRY_CONFIG`: the rules' thresholds for every ledger, and per-ledger
//! overrides (README, "Anomaly detection"). Defaults are the seed's.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rust_decimal::Decimal;
use serde::Deserialize;

use crate::domain::{AccountId, Currency, LedgerName, Rule, RuleAction};

/// Longest the Redis part of a batch's check may take before the check is skipped: checks
/// never hold back posting.
pub const REDIS_TIMEOUT_MS_DEFAULT: u64 = 50;
/// The longest window a rule may have: Redis keeps each account's window for that long.
pub const WINDOW_SECS_MAX: u64 = 86_400;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnomalySettings {
    /// `FERRY_ANOMALY_ENABLED`: when off, posting makes no Redis call and records nothing.
    pub enabled: bool,
    #[serde(rename = "redis_timeout_ms", with = "crate::serde_duration::millis")]
    pub redis_timeout: Duration,
    /// How long the windows may go unchecked (Redis down or slow) before a `medium` alert.
    #[serde(rename = "skip_alert_after_secs", with = "crate::serde_duration::secs")]
    pub skip_alert_after: Duration,
    /// The rules of every ledger without an override.
    pub velocity: WindowRule,
    pub large_amount: LargeAmountRule,
    pub failed_streak: StreakRule,
    pub duplicate_amount: WindowRule,
    /// `[anomaly.ledgers.NAME.RULE]`: a rule given here replaces that rule for that ledger.
    pub ledgers: BTreeMap<String, LedgerRules>,
}

impl Default for AnomalySettings {
    fn default() -> Self {
        let rules = RuleSettings::default();
        Self {
            enabled: true,
            redis_timeout: Duration::from_millis(REDIS_TIMEOUT_MS_DEFAULT),
            skip_alert_after: Duration::from_secs(60),
            velocity: rules.velocity,
            large_amount: rules.large_amount,
            failed_streak: rules.failed_streak,
            duplicate_amount: rules.duplicate_amount,
            ledgers: BTreeMap::new(),
        }
    }
}

/// Every rule's settings, as they apply to one ledger.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleSettings {
    pub velocity: WindowRule,
    pub large_amount: LargeAmountRule,
    pub failed_streak: StreakRule,
    pub duplicate_amount: WindowRule,
    /// Accounts of the ledger no rule judges (a treasury or settlement account that sends in
    /// bursts by design): no window, no hit, no Redis call.
    pub exempt_accounts: BTreeSet<String>,
}

impl Default for RuleSettings {
    fn default() -> Self {
        Self {
            velocity: WindowRule {
                count: 5,
                window_secs: 60,
                action: RuleAction::Flag,
            },
            large_amount: LargeAmountRule::default(),
            failed_streak: StreakRule {
                count: 3,
                action: RuleAction::Flag,
            },
            duplicate_amount: WindowRule {
                count: 3,
                window_secs: 300,
                action: RuleAction::Flag,
            },
            exempt_accounts: BTreeSet::new(),
        }
    }
}

/// Trips when `count` transfers (the one checked included) fall within `window_secs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowRule {
    pub count: u64,
    pub window_secs: u64,
    #[serde(default)]
    pub action: RuleAction,
}

impl WindowRule {
    pub fn window_ms(&self) -> i64 {
        i64::try_from(self.window_secs.saturating_mul(1000)).unwrap_or(i64::MAX)
    }
}

/// Trips when an amount is above its currency's threshold (major units, a decimal string).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LargeAmountRule {
    /// For currencies without a threshold of their own.
    pub threshold: Decimal,
    /// Per currency code, e.g. `{ JPY = "500000" }`.
    pub thresholds: BTreeMap<String, Decimal>,
    pub action: RuleAction,
}

impl Default for LargeAmountRule {
    fn default() -> Self {
        Self {
            // 5,000.00 major units.
            threshold: Decimal::new(500_000, 2),
            thresholds: BTreeMap::new(),
            action: RuleAction::Flag,
        }
    }
}

impl LargeAmountRule {
    pub fn threshold(&self, currency: &Currency) -> Decimal {
        self.thresholds
            .get(currency.code())
            .copied()
            .unwrap_or(self.threshold)
    }
}

/// Trips when an account's `count`-th consecutive transfer fails. Set to `review`, it holds
/// the account's next transfer instead: the failing one has already failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreakRule {
    pub count: u64,
    #[serde(default)]
    pub action: RuleAction,
}

/// One ledger's overrides; a rule left out keeps the `[anomaly]` setting.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LedgerRules {
    pub velocity: Option<WindowRule>,
    pub large_amount: Option<LargeAmountRule>,
    pub failed_streak: Option<StreakRule>,
    pub duplicate_amount: Option<WindowRule>,
    /// Account ids of this ledger that no rule judges.
    pub exempt_accounts: Vec<String>,
}

impl RuleSettings {
    /// What a hit of `rule` does to its transfer.
    pub fn action(&self, rule: Rule) -> RuleAction {
        match rule {
            Rule::Velocity => self.velocity.action,
            Rule::LargeAmount => self.large_amount.action,
            Rule::FailedStreak => self.failed_streak.action,
            Rule::DuplicateAmount => self.duplicate_amount.action,
        }
    }

    /// Whether transfers out of `account` are judged at all.
    pub fn judges(&self, account: &AccountId) -> bool {
        !self.exempt_accounts.contains(account.as_str())
    }

    /// Whether any rule holds transfers for review: only then are they judged before posting.
    pub fn reviews(&self) -> bool {
        Rule::ALL
            .into_iter()
            .any(|rule| self.action(rule) == RuleAction::Review)
    }
}

impl AnomalySettings {
    /// Whether any ledger's rules hold transfers for review.
    pub fn reviews_anywhere(&self) -> bool {
        self.enabled
            && (self.defaults().reviews()
                || self.ledgers.keys().any(|name| {
                    self.rules_for(&LedgerName::from_trusted(name.clone()))
                        .reviews()
                }))
    }

    /// The rules of every ledger without an override.
    fn defaults(&self) -> RuleSettings {
        RuleSettings {
            velocity: self.velocity,
            large_amount: self.large_amount.clone(),
            failed_streak: self.failed_streak,
            duplicate_amount: self.duplicate_amount,
            exempt_accounts: BTreeSet::new(),
        }
    }

    /// The rules that apply to `ledger`.
    pub fn rules_for(&self, ledger: &LedgerName) -> RuleSettings {
        let own = self.ledgers.get(ledger.as_str());
        RuleSettings {
            velocity: own.and_then(|o| o.velocity).unwrap_or(self.velocity),
            large_amount: own
                .and_then(|o| o.large_amount.clone())
                .unwrap_or_else(|| self.large_amount.clone()),
            failed_streak: own
                .and_then(|o| o.failed_streak)
                .unwrap_or(self.failed_streak),
            duplicate_amount: own
                .and_then(|o| o.duplicate_amount)
                .unwrap_or(self.duplicate_amount),
            exempt_accounts: own
                .map(|o| o.exempt_accounts.iter().cloned().collect())
                .unwrap_or_default(),
        }
    }

    /// The first setting that cannot work, named by its key in `FERRY_CONFIG`.
    pub fn validate(&self) -> Result<(), String> {
        if self.redis_timeout.is_zero() {
            return Err("anomaly.redis_timeout_ms must be at least 1".into());
        }
        if self.skip_alert_after.is_zero() {
            return Err("anomaly.skip_alert_after_secs must be at least 1".into());
        }
        validate_rules("anomaly", &self.defaults())?;
        for (name, own) in &self.ledgers {
            let prefix = format!("anomaly.ledgers.{name}");
            LedgerName::parse(name).map_err(|e| format!("{prefix}: {e}"))?;
            let rules = self.rules_for(&LedgerName::from_trusted(name.clone()));
            if own == &LedgerRules::default() {
                return Err(format!("{prefix} overrides no rule"));
            }
            for account in &own.exempt_accounts {
                AccountId::parse(account)
                    .map_err(|e| format!("{prefix}.exempt_accounts: {account:?}: {e}"))?;
            }
            validate_rules(&prefix, &rules)?;
        }
        Ok(())
    }
}

fn validate_rules(prefix: &str, rules: &RuleSettings) -> Result<(), String> {
    for (name, rule) in [
        ("velocity", rules.velocity),
        ("duplicate_amount", rules.duplicate_amount),
    ] {
        // One transfer alone is no pattern: a count of 1 would flag every transfer.
        if rule.count < 2 {
            return Err(format!("{prefix}.{name}.count must be at least 2"));
        }
        if !(1..=WINDOW_SECS_MAX).contains(&rule.window_secs) {
            return Err(format!(
                "{prefix}.{name}.window_secs must be between 1 and {WINDOW_SECS_MAX}"
            ));
        }
    }
    if rules.failed_streak.count < 1 {
        return Err(format!("{prefix}.failed_streak.count must be at least 1"));
    }
    let large = &rules.large_amount;
    if large.threshold <= Decimal::ZERO {
        return Err(format!(
            "{prefix}.large_amount.threshold must be above zero"
        ));
    }
    for (code, threshold) in &large.thresholds {
        Currency::parse(code)
            .map_err(|e| format!("{prefix}.large_amount.thresholds.{code}: {e}"))?;
        if *threshold <= Decimal::ZERO {
            return Err(format!(
                "{prefix}.large_amount.thresholds.{code} must be above zero"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> AnomalySettings {
        toml::from_str(toml_text).expect("settings")
    }

    #[test]
    fn the_defaults_are_the_seeds_and_valid() {
        let settings = AnomalySettings::default();
        assert_eq!(settings.validate(), Ok(()));
        let rules = settings.rules_for(&LedgerName::default_ledger());
        assert_eq!((rules.velocity.count, rules.velocity.window_secs), (5, 60));
        assert_eq!(rules.failed_streak.count, 3);
        assert_eq!(
            (
                rules.duplicate_amount.count,
                rules.duplicate_amount.window_secs
            ),
            (3, 300)
        );
        let usd = Currency::parse("USD").expect("USD");
        assert_eq!(rules.large_amount.threshold(&usd).to_string(), "5000.00");
    }

    #[test]
    fn a_ledger_overrides_only_the_rules_it_names() {
        let settings = parse(
            "[velocity]\ncount = 7\nwindow_secs = 30\n\
             [large_amount]\nthresholds = { JPY = \"500000\" }\n\
             [ledgers.shop.velocity]\ncount = 10\nwindow_secs = 5\n",
        );
        assert_eq!(settings.validate(), Ok(()));
        let shop = settings.rules_for(&LedgerName::parse("shop").expect("name"));
        assert_eq!((shop.velocity.count, shop.velocity.window_secs), (10, 5));
        let other = settings.rules_for(&LedgerName::parse("other").expect("name"));
        assert_eq!((other.velocity.count, other.velocity.window_secs), (7, 30));
        let jpy = Currency::parse("JPY").expect("JPY");
        assert_eq!(shop.large_amount.threshold(&jpy).to_string(), "500000");
        assert_eq!(
            shop.duplicate_amount,
            RuleSettings::default().duplicate_amount
        );
    }

    #[test]
    fn rules_flag_unless_set_to_review_and_review_is_found_per_ledger() {
        let settings = parse("");
        assert!(!settings.reviews_anywhere());
        let settings =
            parse("[ledgers.shop.large_amount]\nthreshold = \"100\"\naction = \"review\"");
        assert!(settings.reviews_anywhere());
        let shop = settings.rules_for(&LedgerName::parse("shop").expect("name"));
        assert_eq!(shop.action(Rule::LargeAmount), RuleAction::Review);
        assert_eq!(shop.action(Rule::Velocity), RuleAction::Flag);
        assert!(!settings.rules_for(&LedgerName::default_ledger()).reviews());
        let off =
            parse("enabled = false\n[velocity]\ncount = 5\nwindow_secs = 60\naction = \"review\"");
        assert!(!off.reviews_anywhere());
        assert!(
            toml::from_str::<AnomalySettings>(
                "[velocity]\ncount = 5\nwindow_secs = 60\naction = \"block\""
            )
            .is_err()
        );
    }

    #[test]
    fn each_bad_setting_is_named_by_its_key() {
        for (text, message) in [
            (
                "redis_timeout_ms = 0",
                "anomaly.redis_timeout_ms must be at least 1",
            ),
            (
                "skip_alert_after_secs = 0",
                "anomaly.skip_alert_after_secs must be at least 1",
            ),
            (
                "[velocity]\ncount = 1\nwindow_secs = 60",
                "anomaly.velocity.count must be at least 2",
            ),
            (
                "[duplicate_amount]\ncount = 3\nwindow_secs = 0",
                "anomaly.duplicate_amount.window_secs must be between 1 and 86400",
            ),
            (
                "[failed_streak]\ncount = 0",
                "anomaly.failed_streak.count must be at least 1",
            ),
            (
                "[large_amount]\nthreshold = \"0\"",
                "anomaly.large_amount.threshold must be above zero",
            ),
            (
                "[large_amount]\nthresholds = { XYZ = \"10\" }",
                "anomaly.large_amount.thresholds.XYZ",
            ),
            (
                "[ledgers.shop.velocity]\ncount = 1\nwindow_secs = 5",
                "anomaly.ledgers.shop.velocity.count must be at least 2",
            ),
            (
                "[ledgers.Shop.failed_streak]\ncount = 2",
                "anomaly.ledgers.Shop",
            ),
            ("[ledgers.shop]", "anomaly.ledgers.shop overrides no rule"),
            (
                "[ledgers.shop]\nexempt_accounts = [\"has space\"]",
                "anomaly.ledgers.shop.exempt_accounts: \"has space\"",
            ),
        ] {
            let error = parse(text).validate().expect_err(text);
            assert!(error.starts_with(message), "{text}: {error}");
        }
    }
}
