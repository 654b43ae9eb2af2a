//! `Duration` settings in the `FERRY_CONFIG` file: whole numbers whose unit is in the key's
//! name (`request_timeout_ms = 15000`, `stuck_pending_secs = 600`), the same numbers the
//! environment variables take (README, "Configuration"). Used as `#[serde(with = "…")]` on
//! each section's fields, so the Rust field is a `Duration` and the file keeps the unit.

/// A whole number of milliseconds.
pub mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        u64::deserialize(deserializer).map(Duration::from_millis)
    }
}

/// A whole number of seconds.
pub mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        u64::deserialize(deserializer).map(Duration::from_secs)
    }
}
