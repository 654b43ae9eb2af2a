//! The double-entry ledger: the posting engine, its in-memory rules, hold expiry, and attempt
//! counting (retry policy itself is [`crate::retry`]).

pub mod apply;
pub mod attempts;
pub mod combiner;
pub mod expiry;
pub mod posting;

pub use posting::{PostedTransfer, PostingEngine, PostingError, PostingReport, PostingStep};
