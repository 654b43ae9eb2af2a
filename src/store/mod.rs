//! Intake-side persistence: API keys, ledgers, the audit trail, accounts, transfer rows with
//! their jobs, and reviewers' decisions.

pub mod accounts;
pub mod api_keys;
pub mod audit;
pub mod group_commit;
pub mod holds;
pub mod ledgers;
pub mod reversals;
pub mod reviews;
pub mod transfers;
pub mod webhook_endpoints;
