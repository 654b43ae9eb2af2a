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

/// Most `metadata.KEY=VALUE` conditions one account listing takes.
pub const METADATA_MATCHES_MAX: usize = 10;
/// Longest metadata key a condition names, in bytes.
pub const METADATA_MATCH_KEY_LEN_MAX: usize = 200;

/// What an account listing asks of metadata (README, "HTTP API": `GET /v1/accounts`): each
/// top-level key holds exactly its string value; every condition must hold. Numbers and
/// booleans are not matched by their text, so `tier=3` never matches `{"tier": 3}`: a
/// filter means one thing, and JSON containment (`@>`) can use an index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetadataMatch(std::collections::BTreeMap<String, String>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataMatchError {
    #[error("a metadata condition names a key: metadata.KEY=VALUE")]
    EmptyKey,
    #[error("a metadata key is at most {METADATA_MATCH_KEY_LEN_MAX} bytes")]
    KeyTooLong,
    #[error("metadata.{0} is given twice")]
    Repeated(String),
    #[error("at most {METADATA_MATCHES_MAX} metadata conditions")]
    TooMany,
    #[error("a metadata condition must not contain a NUL character")]
    Nul,
    #[error("a metadata condition is KEY=VALUE, not {0:?}")]
    NotAPair(String),
}

impl MetadataMatch {
    /// Adds the condition `key` = `value`.
    pub fn require(&mut self, key: &str, value: &str) -> Result<(), MetadataMatchError> {
        if key.is_empty() {
            return Err(MetadataMatchError::EmptyKey);
        }
        if key.len() > METADATA_MATCH_KEY_LEN_MAX {
            return Err(MetadataMatchError::KeyTooLong);
        }
        // PostgreSQL's jsonb cannot hold U+0000, so no stored metadata could match anyway.
        if key.contains('\0') || value.contains('\0') {
            return Err(MetadataMatchError::Nul);
        }
        if self.0.contains_key(key) {
            return Err(MetadataMatchError::Repeated(key.to_owned()));
        }
        if self.0.len() == METADATA_MATCHES_MAX {
            return Err(MetadataMatchError::TooMany);
        }
        self.0.insert(key.to_owned(), value.to_owned());
        Ok(())
    }

    /// Adds a condition written `KEY=VALUE` (the CLI's `--metadata`); the first `=` splits.
    pub fn require_pair(&mut self, pair: &str) -> Result<(), MetadataMatchError> {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| MetadataMatchError::NotAPair(pair.to_owned()))?;
        self.require(key, value)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The conditions, by key.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

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

    #[test]
    fn metadata_matches_refuse_empty_long_repeated_and_too_many_keys() {
        let mut matches = MetadataMatch::default();
        assert_eq!(matches.require("", "x"), Err(MetadataMatchError::EmptyKey));
        let long = "k".repeat(METADATA_MATCH_KEY_LEN_MAX + 1);
        assert_eq!(
            matches.require(&long, "x"),
            Err(MetadataMatchError::KeyTooLong)
        );
        assert_eq!(matches.require("a\0", "x"), Err(MetadataMatchError::Nul));
        assert_eq!(
            matches.require_pair("owner"),
            Err(MetadataMatchError::NotAPair("owner".into()))
        );
        assert_eq!(matches.require_pair("owner=ann=b"), Ok(()));
        assert_eq!(
            matches.require("owner", "bob"),
            Err(MetadataMatchError::Repeated("owner".into()))
        );
        for i in 1..METADATA_MATCHES_MAX {
            assert_eq!(matches.require(&format!("k{i}"), ""), Ok(()));
        }
        assert_eq!(
            matches.require("one-more", "x"),
            Err(MetadataMatchError::TooMany)
        );
        assert_eq!(matches.pairs().next(), Some(("k1", "")));
        assert!(matches.pairs().any(|pair| pair == ("owner", "ann=b")));
    }
}
