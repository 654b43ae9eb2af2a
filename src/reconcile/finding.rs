//! What reconciliation can find, and how bad each kind is (README, "Reconciliation").

use serde::Serialize;
use uuid::Uuid;

pub use crate::domain::Severity;
use crate::domain::{LedgerName, stored_as_text};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// Posted, but its entries are missing or do not match it.
    PostedWithoutEntries,
    /// Failed, pending, held or voided, yet entries exist.
    FailedWithEntries,
    /// More than one debit or credit for one transfer.
    DoublePosted,
    /// An account's balance differs from the sum of its entries.
    BalanceDrift,
    /// A currency's entries do not sum to zero.
    LedgerUnbalanced,
    /// Entries whose transfer does not exist.
    OrphanEntry,
    /// Pending for longer than the threshold.
    StuckPending,
    /// Held for review (`in_review`) for longer than the threshold: not stuck, but waiting on
    /// a person who may not know.
    StaleReview,
    /// A job apalis gave up on (exhausted or killed).
    JobDead,
    /// An account's `pending_debits` or `pending_credits` differ from its open holds.
    HoldDrift,
    /// A hold still `held` more than 5 minutes past its expiry.
    ExpiredHold,
    /// A transfer's reversals (not failed) take back more than it moved, or disagree with its
    /// `reversed_amount`.
    OverReversed,
}

impl FindingKind {
    pub const ALL: [FindingKind; 12] = [
        Self::PostedWithoutEntries,
        Self::FailedWithEntries,
        Self::DoublePosted,
        Self::BalanceDrift,
        Self::LedgerUnbalanced,
        Self::OrphanEntry,
        Self::StuckPending,
        Self::StaleReview,
        Self::JobDead,
        Self::HoldDrift,
        Self::ExpiredHold,
        Self::OverReversed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::PostedWithoutEntries => "posted_without_entries",
            Self::FailedWithEntries => "failed_with_entries",
            Self::DoublePosted => "double_posted",
            Self::BalanceDrift => "balance_drift",
            Self::LedgerUnbalanced => "ledger_unbalanced",
            Self::OrphanEntry => "orphan_entry",
            Self::StuckPending => "stuck_pending",
            Self::StaleReview => "stale_review",
            Self::JobDead => "job_dead",
            Self::HoldDrift => "hold_drift",
            Self::ExpiredHold => "expired_hold",
            Self::OverReversed => "over_reversed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == text)
    }

    pub fn severity(self) -> Severity {
        match self {
            Self::StuckPending | Self::StaleReview | Self::JobDead | Self::ExpiredHold => {
                Severity::Medium
            }
            _ => Severity::Critical,
        }
    }
}

/// One problem seen by one run. `ledger` and `subject` identify it across runs (`subject`:
/// `transfer:<id>`, `account:<id>`, `currency:<code>`, `job:<id>`), so a problem still present
/// stays one finding, and `account:cash` in two ledgers is two.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub kind: FindingKind,
    /// The ledger the problem is in; `None` only for problems of no one ledger (`job_dead`).
    pub ledger: Option<LedgerName>,
    pub subject: String,
    pub transfer_id: Option<Uuid>,
    pub account_id: Option<String>,
    pub detail: String,
}

impl Observation {
    pub fn about_transfer(
        kind: FindingKind,
        ledger: impl Into<Option<LedgerName>>,
        transfer_id: Uuid,
        detail: String,
    ) -> Self {
        Self {
            kind,
            ledger: ledger.into(),
            subject: format!("transfer:{transfer_id}"),
            transfer_id: Some(transfer_id),
            account_id: None,
            detail,
        }
    }

    pub fn about_account(
        kind: FindingKind,
        ledger: LedgerName,
        account_id: String,
        detail: String,
    ) -> Self {
        Self {
            kind,
            ledger: Some(ledger),
            subject: format!("account:{account_id}"),
            transfer_id: None,
            account_id: Some(account_id),
            detail,
        }
    }
}

stored_as_text!(FindingKind, "finding kind", FindingKind::ALL);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_and_carry_the_design_severities() {
        for kind in FindingKind::ALL {
            assert_eq!(FindingKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(FindingKind::StuckPending.severity(), Severity::Medium);
        assert_eq!(FindingKind::JobDead.severity(), Severity::Medium);
        assert_eq!(FindingKind::StaleReview.severity(), Severity::Medium);
        assert_eq!(FindingKind::BalanceDrift.severity(), Severity::Critical);
        assert_eq!(FindingKind::OrphanEntry.severity(), Severity::Critical);
    }
}
