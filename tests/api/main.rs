//! ferry's integration tests: real PostgreSQL, real HTTP, one database per test.

mod helpers;
mod invariants;

mod accounts;
mod alerts;
mod anomalies;
mod architecture;
mod audit;
mod auth;
mod bank;
mod bench;
mod config;
mod console;
mod crash;
mod database;
mod events;
mod faults;
mod holds;
mod http;
mod idempotency;
mod keys;
mod ledgers;
mod openapi;
mod outage;
mod posting;
mod queue_upkeep;
mod rate_limit;
mod reconciliation;
mod reconciliation_ledgers;
mod reviews;
mod validation;
mod wakeup;
mod webhooks;
