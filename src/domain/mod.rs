//! Domain types, parsed once at the edge so the core never sees a bad value.

pub mod account;
pub mod api_key;
pub mod money;
pub mod severity;
pub mod side;
pub mod transfer;

pub use account::AccountId;
pub use api_key::{Scope, Scopes};
pub use money::{Amount, Currency};
pub use severity::{Severity, UnknownValue};
pub use side::Side;
pub use transfer::{FailureCode, IdempotencyKey, NewTransfer, TransferStatus};
