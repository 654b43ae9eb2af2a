//! ferry moves money between ledger accounts as durable background jobs.
//!
//! # Layout
//! Data flows one way: HTTP → transfer row + job → posting → ledger.
//! - [`intake`]: the HTTP API; parses requests into [`domain`] types at the edge.
//! - [`store`]: intake's persistence; commits transfer rows together with their job.
//! - [`queue`]: the durable apalis-on-PostgreSQL queue: names, settings, transactional enqueue.
//! - [`jobs`] (top-level `jobs/`): the job catalogue, one module per job kind, and the one place
//!   that registers workers.
//! - [`ledger`]: the posting engine (SERIALIZABLE, batched), its pure rules, attempt counting.
//! - [`retry`]: the one retry policy type, its instances (posting jobs, alert deliveries,
//!   in-process schedules) and the classification of database errors.
//! - [`domain`]: `Amount`, `Currency`, `AccountId`, `IdempotencyKey`, `TransferStatus`, scopes.
//! - [`app`], [`config`], [`db`], [`telemetry`], [`cli`]: start-up and operations; [`config`]
//!   merges the settings sections each module owns ([`serde_duration`] reads their durations).
//! - [`failpoint`]: crash points for fault-injection tests.
//! - [`harness`]: scratch databases and ferry run in-process, for `ferry bench` and the tests.

pub mod alerts;
pub mod anomaly;
pub mod app;
pub mod cli;
pub mod config;
pub mod console;
pub mod db;
pub mod domain;
pub mod events;
pub mod failpoint;
pub mod harness;
pub mod intake;
#[path = "../jobs/mod.rs"]
pub mod jobs;
pub mod ledger;
pub mod queue;
pub mod reconcile;
pub mod redis_slot;
pub mod retry;
pub mod serde_duration;
pub mod store;
pub mod telemetry;
pub mod webhooks;
