//! The double-entry ledger: the posting engine (`posting`, its transaction's reads in `load`
//! and writes in `write`), its in-memory rules (`apply`), hold expiry, and attempt counting
//! (retry policy itself is [`crate::retry`]).

pub mod apply;
pub mod attempts;
pub mod combiner;
pub mod expiry;
mod load;
pub mod posting;
mod write;

pub use posting::{PostedTransfer, PostingEngine, PostingError, PostingReport, PostingStep};
