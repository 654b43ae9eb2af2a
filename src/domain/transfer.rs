//! Transfers as the core sees them: validated requests, statuses and failure codes.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::account::AccountId;
use super::ledger::LedgerName;
use super::money::Amount;

/// Longest idempotency key accepted (README, "HTTP API": 1–255 visible ASCII).
pub const IDEMPOTENCY_KEY_LEN_MAX: usize = 255;
/// Longest free-text reference accepted on a transfer.
pub const REFERENCE_LEN_MAX: usize = 255;
/// How long a hold lasts when the request does not say (README, "Holds, reversals and balance
/// history"): 7 days.
pub const HOLD_EXPIRES_IN_SECS_DEFAULT: u32 = 7 * 86_400;
/// The longest a hold may last: 30 days.
pub const HOLD_EXPIRES_IN_SECS_MAX: u32 = 30 * 86_400;

/// The producer's name for one transfer; with the API key it is the transfer's identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct IdempotencyKey(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Idempotency-Key must be 1-{IDEMPOTENCY_KEY_LEN_MAX} visible ASCII characters")]
pub struct IdempotencyKeyError;

impl IdempotencyKey {
    pub fn parse(text: &str) -> Result<Self, IdempotencyKeyError> {
        let visible = |b: u8| b.is_ascii_graphic();
        if text.is_empty() || text.len() > IDEMPOTENCY_KEY_LEN_MAX || !text.bytes().all(visible) {
            return Err(IdempotencyKeyError);
        }
        Ok(Self(text.to_owned()))
    }

    pub fn from_trusted(text: String) -> Self {
        Self(text)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A transfer request that passed every check the edge can make.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTransfer {
    pub idempotency_key: IdempotencyKey,
    /// The ledger both accounts are looked up in: the API key's.
    pub ledger: LedgerName,
    pub from_account: AccountId,
    pub to_account: AccountId,
    pub amount: Amount,
    pub reference: Option<String>,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub mode: TransferMode,
}

/// What posting a transfer does: move the money now, or reserve it until captured or voided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferMode {
    Transfer,
    /// Reserve the amount on the source account for `expires_in_secs` after it is placed.
    Hold {
        expires_in_secs: HoldExpiry,
    },
}

impl TransferMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Transfer => "transfer",
            Self::Hold { .. } => "hold",
        }
    }

    pub fn hold_expires_in_secs(self) -> Option<u32> {
        match self {
            Self::Transfer => None,
            Self::Hold { expires_in_secs } => Some(expires_in_secs.secs()),
        }
    }
}

/// How long a hold lasts: 1 second to [`HOLD_EXPIRES_IN_SECS_MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldExpiry(u32);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("hold_expires_in_secs must be 1 to {HOLD_EXPIRES_IN_SECS_MAX} (30 days)")]
pub struct HoldExpiryError;

impl HoldExpiry {
    pub const DEFAULT: Self = Self(HOLD_EXPIRES_IN_SECS_DEFAULT);

    pub fn parse(secs: u64) -> Result<Self, HoldExpiryError> {
        match u32::try_from(secs) {
            Ok(secs) if (1..=HOLD_EXPIRES_IN_SECS_MAX).contains(&secs) => Ok(Self(secs)),
            _ => Err(HoldExpiryError),
        }
    }

    pub fn secs(self) -> u32 {
        self.0
    }
}

impl NewTransfer {
    /// Hash of the canonical request, so a replay with the same key can be told from reuse
    /// with another body. Canonical means parsed values (`"12.3"` and `"12.30"` are the same
    /// request) and metadata keys in sorted order (serde_json's map is a BTreeMap). The ledger
    /// counts only when it is not `default`, so requests fingerprinted before ledgers existed
    /// still replay.
    pub fn fingerprint(&self) -> Vec<u8> {
        let mut canonical = serde_json::json!({
            "from_account": self.from_account.as_str(),
            "to_account": self.to_account.as_str(),
            "amount": self.amount.value().to_string(),
            "currency": self.amount.currency().code(),
            "reference": self.reference,
            "metadata": self.metadata,
        });
        if self.ledger.as_str() != LedgerName::DEFAULT {
            canonical["ledger"] = serde_json::Value::from(self.ledger.as_str());
        }
        // Likewise only for holds, so plain transfers fingerprinted before holds still replay.
        if let Some(secs) = self.mode.hold_expires_in_secs() {
            canonical["mode"] = serde_json::Value::from("hold");
            canonical["hold_expires_in_secs"] = serde_json::Value::from(secs);
        }
        Sha256::digest(canonical.to_string().as_bytes()).to_vec()
    }
}

/// Where a transfer is in its life. `posted`, `failed` and `voided` are terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TransferStatus {
    Pending,
    /// Held by an anomaly rule set to `review`: not posted, nothing reserved, until approved
    /// (back to `pending`) or rejected (`failed`, `rejected_in_review`).
    InReview,
    /// A hold, placed: its amount is reserved on the source account until it is captured
    /// (`posted`), voided or expires (`voided`).
    Held,
    Posted,
    Failed,
    /// A hold released without moving money: voided on request or on expiry.
    Voided,
}

impl TransferStatus {
    pub const ALL: [TransferStatus; 6] = [
        Self::Pending,
        Self::InReview,
        Self::Held,
        Self::Posted,
        Self::Failed,
        Self::Voided,
    ];

    /// SQL saying that `column` is this status, spelled as `NOT IN` every other status (the
    /// same under the table's CHECK). Statements that look transfers up by key use it: with
    /// `status = '…'` the planner may choose the partial index of that status and scan every
    /// transfer in it per looked-up row (measured on posting and on capture claims: O(backlog)
    /// instead of a primary-key probe each; BENCHMARKS.md). Built from [`Self::ALL`], so a new
    /// status cannot be forgotten.
    pub fn sql_is(self, column: &str) -> String {
        let others: Vec<String> = Self::ALL
            .into_iter()
            .filter(|status| *status != self)
            .map(|status| format!("'{}'", status.as_str()))
            .collect();
        format!("{column} NOT IN ({})", others.join(", "))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::InReview => "in_review",
            Self::Held => "held",
            Self::Posted => "posted",
            Self::Failed => "failed",
            Self::Voided => "voided",
        }
    }
}

impl FromStr for TransferStatus {
    type Err = UnknownCode;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownCode(s.to_owned()))
    }
}

impl TryFrom<String> for TransferStatus {
    type Error = UnknownCode;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

/// A reviewer's decision on a transfer held for review.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReviewDecision {
    /// Back to `pending`, then posted as usual.
    Approved,
    /// `failed`, `rejected_in_review`.
    Rejected,
}

impl ReviewDecision {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Approved => "approved",
            Self::Rejected => "rejected",
        }
    }
}

super::stored_as_text!(
    ReviewDecision,
    "review decision",
    [ReviewDecision::Approved, ReviewDecision::Rejected]
);

/// Why a transfer failed. Business outcomes, seen through `GET /v1/transfers/{id}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailureCode {
    InsufficientFunds,
    AccountNotFound,
    CurrencyMismatch,
    /// An account of the transfer is frozen (it may be unfrozen; the transfer stays failed).
    AccountFrozen,
    AccountClosed,
    RetriesExhausted,
    /// Held for review by an anomaly rule, and rejected by a reviewer.
    RejectedInReview,
}

impl FailureCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InsufficientFunds => "insufficient_funds",
            Self::AccountNotFound => "account_not_found",
            Self::CurrencyMismatch => "currency_mismatch",
            Self::AccountFrozen => "account_frozen",
            Self::AccountClosed => "account_closed",
            Self::RetriesExhausted => "retries_exhausted",
            Self::RejectedInReview => "rejected_in_review",
        }
    }
}

impl FromStr for FailureCode {
    type Err = UnknownCode;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "insufficient_funds" => Ok(Self::InsufficientFunds),
            "account_not_found" => Ok(Self::AccountNotFound),
            "currency_mismatch" => Ok(Self::CurrencyMismatch),
            "account_frozen" => Ok(Self::AccountFrozen),
            "account_closed" => Ok(Self::AccountClosed),
            "retries_exhausted" => Ok(Self::RetriesExhausted),
            "rejected_in_review" => Ok(Self::RejectedInReview),
            other => Err(UnknownCode(other.to_owned())),
        }
    }
}

impl TryFrom<String> for FailureCode {
    type Error = UnknownCode;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown code {0:?} in the database")]
pub struct UnknownCode(pub String);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::money::Currency;

    #[test]
    fn idempotency_keys_are_visible_ascii_up_to_255() {
        assert!(IdempotencyKey::parse("order-42/attempt:1").is_ok());
        assert!(IdempotencyKey::parse(&"k".repeat(255)).is_ok());
        for bad in ["", " ", "a b", "tab\t", "é", &"k".repeat(256)] {
            assert_eq!(
                IdempotencyKey::parse(bad),
                Err(IdempotencyKeyError),
                "{bad:?}"
            );
        }
    }

    fn transfer(amount: &str) -> NewTransfer {
        let usd = Currency::parse("USD").expect("USD");
        NewTransfer {
            idempotency_key: IdempotencyKey::parse("k").expect("key"),
            ledger: LedgerName::default_ledger(),
            from_account: AccountId::parse("a").expect("a"),
            to_account: AccountId::parse("b").expect("b"),
            amount: Amount::parse(amount, usd).expect("amount"),
            reference: None,
            metadata: serde_json::Map::new(),
            mode: TransferMode::Transfer,
        }
    }

    #[test]
    fn the_fingerprint_of_a_plain_transfer_ignores_holds_and_a_hold_counts_its_expiry() {
        let plain = transfer("1.00");
        let mut hold = transfer("1.00");
        hold.mode = TransferMode::Hold {
            expires_in_secs: HoldExpiry::DEFAULT,
        };
        assert_ne!(plain.fingerprint(), hold.fingerprint());
        let mut shorter = hold.clone();
        shorter.mode = TransferMode::Hold {
            expires_in_secs: HoldExpiry::parse(60).expect("60 s"),
        };
        assert_ne!(hold.fingerprint(), shorter.fingerprint());
        for bad in [0, u64::from(HOLD_EXPIRES_IN_SECS_MAX) + 1, u64::MAX] {
            assert_eq!(HoldExpiry::parse(bad), Err(HoldExpiryError), "{bad}");
        }
    }

    #[test]
    fn the_fingerprint_ignores_how_an_amount_was_written_but_not_its_value() {
        assert_eq!(
            transfer("12.3").fingerprint(),
            transfer("12.30").fingerprint()
        );
        assert_ne!(
            transfer("12.30").fingerprint(),
            transfer("12.31").fingerprint()
        );
    }

    #[test]
    fn the_fingerprint_tells_ledgers_apart() {
        let mut elsewhere = transfer("12.30");
        elsewhere.ledger = LedgerName::parse("shop").expect("ledger");
        assert_ne!(transfer("12.30").fingerprint(), elsewhere.fingerprint());
    }

    #[test]
    fn a_status_is_spelled_as_not_in_every_other() {
        assert_eq!(
            TransferStatus::Held.sql_is("t.status"),
            "t.status NOT IN ('pending', 'in_review', 'posted', 'failed', 'voided')"
        );
    }

    #[test]
    fn codes_round_trip_through_their_names() {
        for status in TransferStatus::ALL {
            assert_eq!(status.as_str().parse::<TransferStatus>(), Ok(status));
        }
        for code in [
            FailureCode::InsufficientFunds,
            FailureCode::AccountNotFound,
            FailureCode::CurrencyMismatch,
            FailureCode::AccountFrozen,
            FailureCode::AccountClosed,
            FailureCode::RetriesExhausted,
        ] {
            assert_eq!(code.as_str().parse::<FailureCode>(), Ok(code));
        }
    }
}
