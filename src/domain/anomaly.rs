//! The anomaly rules by name and how grave a hit is (README, "Anomaly detection"): stored in
//! `anomalies` rows and shown as a transfer's `flags`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// Many transfers out of one account within a short window.
    Velocity,
    /// One transfer above the currency's threshold.
    LargeAmount,
    /// Consecutive failed transfers out of one account; a posted one resets the streak.
    FailedStreak,
    /// The same amount out of one account several times within a window.
    DuplicateAmount,
}

impl Rule {
    pub const ALL: [Rule; 4] = [
        Self::Velocity,
        Self::LargeAmount,
        Self::FailedStreak,
        Self::DuplicateAmount,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Velocity => "velocity",
            Self::LargeAmount => "large_amount",
            Self::FailedStreak => "failed_streak",
            Self::DuplicateAmount => "duplicate_amount",
        }
    }

    /// The seed's severities: bursts and failure streaks look like card testing (high); a large
    /// or repeated amount is worth a look (medium).
    pub fn severity(self) -> AnomalySeverity {
        match self {
            Self::Velocity | Self::FailedStreak => AnomalySeverity::High,
            Self::LargeAmount | Self::DuplicateAmount => AnomalySeverity::Medium,
        }
    }
}

super::stored_as_text!(Rule, "anomaly rule", Rule::ALL);

/// What a rule's hit does to its transfer.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum RuleAction {
    /// The transfer proceeds; the hit is recorded and alerted (the seed's choice: a false
    /// positive must not stop a payment).
    #[default]
    Flag,
    /// The transfer waits in `in_review` until a reviewer approves or rejects it.
    Review,
}

impl RuleAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Flag => "flag",
            Self::Review => "review",
        }
    }
}

super::stored_as_text!(
    RuleAction,
    "anomaly action",
    [RuleAction::Flag, RuleAction::Review]
);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AnomalySeverity {
    Medium,
    High,
}

impl AnomalySeverity {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Medium => "medium",
            Self::High => "high",
        }
    }
}

super::stored_as_text!(
    AnomalySeverity,
    "anomaly severity",
    [AnomalySeverity::Medium, AnomalySeverity::High]
);
