//! Intake-side persistence: API keys, ledgers, the audit trail, accounts, and transfer rows
//! with their jobs.

pub mod accounts;
pub mod api_keys;
pub mod audit;
pub mod group_commit;
pub mod ledgers;
pub mod transfers;
