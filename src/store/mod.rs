//! Intake-side persistence: API keys, ledgers, the audit trail, accounts, transfer rows with
//! their jobs, and reviewers' decisions; and the upkeep of the tables that churn (`vacuum`).

pub mod accounts;
pub mod api_keys;
pub mod audit;
pub mod group_commit;
pub mod holds;
pub mod ledgers;
pub mod reversals;
pub mod reviews;
pub mod transfers;
pub mod vacuum;
pub mod webhook_endpoints;
