//! Domain types, parsed once at the edge so the core never sees a bad value.

/// A closed set of values stored as text, read back strictly: generates `parse_known` (an
/// unknown value is an [`UnknownValue`] error, never a default) and `TryFrom<String>` (for
/// `#[sqlx(try_from = "String")]`), matching each of `$all` by its `as_str`.
macro_rules! stored_as_text {
    ($type:ty, $what:literal, $all:expr) => {
        impl $type {
            /// Parses a stored value; unknown text is an error, never a default.
            pub fn parse_known(text: &str) -> Result<Self, $crate::domain::UnknownValue> {
                $all.into_iter()
                    .find(|value| value.as_str() == text)
                    .ok_or_else(|| $crate::domain::UnknownValue::new($what, text))
            }
        }

        impl TryFrom<String> for $type {
            type Error = $crate::domain::UnknownValue;
            fn try_from(text: String) -> Result<Self, Self::Error> {
                Self::parse_known(&text)
            }
        }
    };
}
pub(crate) use stored_as_text;

pub mod account;
pub mod anomaly;
pub mod api_key;
pub mod event;
pub mod ledger;
pub mod money;
pub mod severity;
pub mod side;
pub mod transfer;

pub use account::{AccountId, AccountKey, AccountStatus, MetadataMatch, MetadataMatchError};
pub use anomaly::{AnomalySeverity, Rule, RuleAction};
pub use api_key::{ApiKeyName, KeyLifetime, Scope, Scopes};
pub use event::EventType;
pub use ledger::LedgerName;
pub use money::{Amount, Currency};
pub use severity::{Severity, UnknownValue};
pub use side::Side;
pub use transfer::{
    FailureCode, HoldExpiry, IdempotencyKey, NewTransfer, ReviewDecision, TransferMode,
    TransferStatus,
};
