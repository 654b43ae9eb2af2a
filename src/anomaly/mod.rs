//! Anomaly detection (README, "Anomaly detection"): four rules on the source account of each
//! transfer — velocity, large amount, failed streak, duplicate amount — with their windows in
//! Redis, checked by the posting job around posting and never holding it back. Every hit is
//! an `anomalies` row, listed by `GET /v1/anomalies` and shown as the transfer's `flags`.
//!
//! - [`rules`]: the rules themselves, pure.
//! - [`settings`]: `[anomaly]` thresholds, per ledger.
//! - [`windows`]: the Redis scripts (sliding windows, streaks).
//! - [`screen`]: what the posting job calls before and after posting.
//! - [`review`]: the transfers a `review` rule holds in `in_review`.
//! - [`record`]: the `anomalies` rows.

pub mod record;
pub mod review;
pub mod rules;
pub mod screen;
pub mod settings;
pub mod windows;
