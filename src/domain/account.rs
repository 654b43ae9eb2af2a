//! Ledger accounts as the core sees them.

use std::fmt;

use serde::Serialize;

/// Longest account id accepted; ids are keys in every entry row, so keep them short.
pub const ACCOUNT_ID_LEN_MAX: usize = 64;

/// An account id: 1–64 characters of `A-Z a-z 0-9 _ - . :`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct AccountId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "account id must be 1-{ACCOUNT_ID_LEN_MAX} characters of letters, digits, '_', '-', '.', ':'"
)]
pub struct AccountIdError;

impl AccountId {
    pub fn parse(text: &str) -> Result<Self, AccountIdError> {
        let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':');
        if text.is_empty() || text.len() > ACCOUNT_ID_LEN_MAX || !text.bytes().all(allowed) {
            return Err(AccountIdError);
        }
        Ok(Self(text.to_owned()))
    }

    /// A fresh id for an account created without one.
    pub fn generate() -> Self {
        Self(format!("acc_{}", uuid::Uuid::now_v7().simple()))
    }

    /// Wraps an id read back from the database, where only parsed ids were ever written.
    pub fn from_trusted(text: String) -> Self {
        Self(text)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An account's full identity: ids are unique only within a ledger.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountKey {
    pub ledger: super::LedgerName,
    pub id: AccountId,
}

impl AccountKey {
    pub fn new(ledger: super::LedgerName, id: AccountId) -> Self {
        Self { ledger, id }
    }
}

impl fmt::Display for AccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.ledger, self.id)
    }
}

/// Whether an account may move money (README, "Ledgers and authorization"). A frozen account
/// can be unfrozen; a closed one stays closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountStatus {
    Active,
    Frozen,
    Closed,
}

impl AccountStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Frozen => "frozen",
            Self::Closed => "closed",
        }
    }
}

super::stored_as_text!(
    AccountStatus,
    "account status",
    [
        AccountStatus::Active,
        AccountStatus::Frozen,
        AccountStatus::Closed
    ]
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_stored_account_status_is_an_error() {
        assert_eq!(
            AccountStatus::try_from("frozen".to_owned()),
            Ok(AccountStatus::Frozen)
        );
        assert!(AccountStatus::try_from("paused".to_owned()).is_err());
    }

    #[test]
    fn account_ids_accept_the_documented_alphabet() {
        for ok in ["a", "acc_1", "user:42.wallet-USD", &"x".repeat(64)] {
            assert!(AccountId::parse(ok).is_ok(), "{ok:?}");
        }
    }

    #[test]
    fn account_ids_refuse_empty_long_and_odd_characters() {
        for bad in ["", &"x".repeat(65), "a b", "a/b", "é", "a\n", "a'b"] {
            assert_eq!(AccountId::parse(bad), Err(AccountIdError), "{bad:?}");
        }
    }

    #[test]
    fn generated_ids_parse() {
        let id = AccountId::generate();
        assert_eq!(AccountId::parse(id.as_str()), Ok(id));
    }
}
