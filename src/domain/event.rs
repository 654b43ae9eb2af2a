//! The kinds of producer events (README, "Events and webhooks"): what the `events` feed carries
//! and what a webhook endpoint subscribes to.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
pub enum EventType {
    /// A transfer moved money: its two entries are written.
    #[serde(rename = "transfer.posted")]
    TransferPosted,
    /// A transfer ended without moving money (`failure_code` says why).
    #[serde(rename = "transfer.failed")]
    TransferFailed,
    /// A `review` anomaly rule held a transfer until a reviewer decides.
    #[serde(rename = "transfer.in_review")]
    TransferInReview,
    /// A hold was placed: its amount is reserved on the source account.
    #[serde(rename = "transfer.held")]
    TransferHeld,
    /// A hold was released without moving money (on request, or on expiry).
    #[serde(rename = "transfer.voided")]
    TransferVoided,
    /// A reversal posted: its payload is the reversal, `reverses` names the original.
    #[serde(rename = "transfer.reversed")]
    TransferReversed,
    /// An anomaly rule flagged a transfer.
    #[serde(rename = "anomaly.flagged")]
    AnomalyFlagged,
    #[serde(rename = "account.frozen")]
    AccountFrozen,
    #[serde(rename = "account.closed")]
    AccountClosed,
}

impl EventType {
    pub const ALL: [EventType; 9] = [
        Self::TransferPosted,
        Self::TransferFailed,
        Self::TransferInReview,
        Self::TransferHeld,
        Self::TransferVoided,
        Self::TransferReversed,
        Self::AnomalyFlagged,
        Self::AccountFrozen,
        Self::AccountClosed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::TransferPosted => "transfer.posted",
            Self::TransferFailed => "transfer.failed",
            Self::TransferInReview => "transfer.in_review",
            Self::TransferHeld => "transfer.held",
            Self::TransferVoided => "transfer.voided",
            Self::TransferReversed => "transfer.reversed",
            Self::AnomalyFlagged => "anomaly.flagged",
            Self::AccountFrozen => "account.frozen",
            Self::AccountClosed => "account.closed",
        }
    }

    /// Parses a comma-separated list (`transfer.posted,transfer.failed`), as `?types=` takes it:
    /// every name must be known, and at least one given.
    pub fn parse_list(list: &str) -> Result<Vec<Self>, super::UnknownValue> {
        let mut types = list
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(Self::parse_known)
            .collect::<Result<Vec<_>, _>>()?;
        if types.is_empty() {
            return Err(super::UnknownValue::new("event type", list));
        }
        types.sort_unstable();
        types.dedup();
        Ok(types)
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

super::stored_as_text!(EventType, "event type", EventType::ALL);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_strictly_and_names_round_trip() {
        assert_eq!(
            EventType::parse_list("transfer.failed, transfer.posted,transfer.failed"),
            Ok(vec![EventType::TransferPosted, EventType::TransferFailed])
        );
        assert!(EventType::parse_list("transfer.posted,transfer.exploded").is_err());
        assert!(EventType::parse_list(" , ").is_err());
        for t in EventType::ALL {
            assert_eq!(EventType::parse_known(t.as_str()), Ok(t));
            assert_eq!(serde_json::to_value(t).ok(), Some(t.as_str().into()));
        }
    }
}
