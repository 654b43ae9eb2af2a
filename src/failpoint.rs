//! Crash points for fault-injection tests.
//!
//! `FERRY_FAILPOINT=crash_before_commit|crash_after_commit` makes the process abort at that
//! point of the posting transaction, the way a killed worker would. Unset in production; the
//! check is one comparison.

use std::str::FromStr;

/// `failpoint = "…"` in the settings file reads the same names as the variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum Failpoint {
    #[default]
    None,
    /// Abort after the posting transaction wrote everything, before COMMIT.
    CrashBeforeCommit,
    /// Abort after COMMIT, before the job is acknowledged.
    CrashAfterCommit,
}

impl Failpoint {
    /// Aborts the process if `at` is the configured failpoint.
    pub fn hit(self, at: Failpoint) {
        if self != Failpoint::None && self == at {
            eprintln!("ferry: failpoint {at:?} reached; aborting");
            std::process::abort();
        }
    }
}

impl FromStr for Failpoint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "" | "none" => Ok(Self::None),
            "crash_before_commit" => Ok(Self::CrashBeforeCommit),
            "crash_after_commit" => Ok(Self::CrashAfterCommit),
            other => Err(format!("unknown failpoint {other:?}")),
        }
    }
}

impl TryFrom<String> for Failpoint {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}
