//! Intake-side persistence: API keys, accounts, and transfer rows with their jobs.

pub mod accounts;
pub mod api_keys;
pub mod group_commit;
pub mod transfers;
