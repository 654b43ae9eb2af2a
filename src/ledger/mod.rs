//! The double-entry ledger: the posting engine, its in-memory rules, and retry policy.

pub mod apply;
pub mod attempts;
pub mod combiner;
pub mod posting;
pub mod retry;

pub use posting::{PostingEngine, PostingError, PostingReport};
