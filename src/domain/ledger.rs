//! Ledgers, the unit of isolation: every account belongs to exactly one, and a ledger-bound API
//! key sees and moves only its ledger's money (README, "Ledgers and authorization").

use std::fmt;

use serde::Serialize;

/// Longest ledger name accepted.
pub const LEDGER_NAME_LEN_MAX: usize = 64;

/// A ledger name: 1–64 characters of `a-z 0-9 _ -`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct LedgerName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ledger name must be 1-{LEDGER_NAME_LEN_MAX} characters of a-z, 0-9, '_', '-'")]
pub struct LedgerNameError;

impl LedgerName {
    /// Where data from before ledgers existed lives, and the ledger admin keys act on when a
    /// request names none.
    pub const DEFAULT: &'static str = "default";

    pub fn parse(text: &str) -> Result<Self, LedgerNameError> {
        let allowed =
            |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-');
        if text.is_empty() || text.len() > LEDGER_NAME_LEN_MAX || !text.bytes().all(allowed) {
            return Err(LedgerNameError);
        }
        Ok(Self(text.to_owned()))
    }

    pub fn default_ledger() -> Self {
        Self(Self::DEFAULT.to_owned())
    }

    /// Wraps a name read back from the database, where only parsed names were ever written
    /// (the `ledgers` table checks the same alphabet).
    pub fn from_trusted(text: String) -> Self {
        Self(text)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LedgerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledger_names_accept_the_documented_alphabet_only() {
        for ok in ["default", "a", "shop_eu-2", &"x".repeat(64)] {
            assert!(LedgerName::parse(ok).is_ok(), "{ok:?}");
        }
        for bad in ["", "Default", "a b", "a.b", "ü", &"x".repeat(65), "a/b"] {
            assert_eq!(LedgerName::parse(bad), Err(LedgerNameError), "{bad:?}");
        }
    }
}
