//! API keys and their scopes.

use std::fmt;
use std::str::FromStr;

use rand::RngCore;
use sha2::{Digest, Sha256};

/// What a key may do. `admin` implies every other scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    TransfersWrite,
    TransfersRead,
    AccountsWrite,
    AccountsRead,
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 5] = [
        Scope::TransfersWrite,
        Scope::TransfersRead,
        Scope::AccountsWrite,
        Scope::AccountsRead,
        Scope::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::TransfersWrite => "transfers:write",
            Self::TransfersRead => "transfers:read",
            Self::AccountsWrite => "accounts:write",
            Self::AccountsRead => "accounts:read",
            Self::Admin => "admin",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown scope {0:?}; scopes are transfers:write, transfers:read, accounts:write, accounts:read, admin"
)]
pub struct UnknownScope(pub String);

impl FromStr for Scope {
    type Err = UnknownScope;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|scope| scope.as_str() == s)
            .ok_or_else(|| UnknownScope(s.to_owned()))
    }
}

/// The set of scopes a key holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scopes(Vec<Scope>);

impl Scopes {
    pub fn new(mut scopes: Vec<Scope>) -> Self {
        scopes.sort_by_key(|s| s.as_str());
        scopes.dedup();
        Self(scopes)
    }

    /// Parses the CLI form `transfers:write,accounts:read`.
    pub fn parse_list(list: &str) -> Result<Self, UnknownScope> {
        let scopes = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(Scope::from_str)
            .collect::<Result<Vec<_>, _>>()?;
        if scopes.is_empty() {
            return Err(UnknownScope(list.to_owned()));
        }
        Ok(Self::new(scopes))
    }

    pub fn allows(&self, needed: Scope) -> bool {
        self.0.iter().any(|s| *s == needed || *s == Scope::Admin)
    }

    /// Admin keys are global: they are bound to no ledger.
    pub fn allows_admin(&self) -> bool {
        self.0.contains(&Scope::Admin)
    }

    pub fn names(&self) -> Vec<String> {
        self.0.iter().map(|s| s.as_str().to_owned()).collect()
    }
}

/// Prefix that makes a leaked key easy to recognise (and to grep for in secret scanners).
pub const API_KEY_PREFIX: &str = "ferry_";

/// A freshly minted key: shown once, stored only as its SHA-256. Keys carry 256 random bits, so
/// a fast hash is enough; a slow password hash would only add latency to every request.
pub struct NewApiKey {
    pub plaintext: String,
    pub hash: Vec<u8>,
}

impl NewApiKey {
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let plaintext = format!("{API_KEY_PREFIX}{hex}");
        let hash = hash_api_key(&plaintext);
        Self { plaintext, hash }
    }
}

pub fn hash_api_key(presented: &str) -> Vec<u8> {
    Sha256::digest(presented.as_bytes()).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_from_a_comma_list_and_admin_allows_all() {
        let scopes = Scopes::parse_list("transfers:write, accounts:read").expect("valid");
        assert!(scopes.allows(Scope::TransfersWrite));
        assert!(!scopes.allows(Scope::TransfersRead));
        let admin = Scopes::parse_list("admin").expect("valid");
        assert!(Scope::ALL.iter().all(|s| admin.allows(*s)));
    }

    #[test]
    fn unknown_or_empty_scopes_are_refused() {
        assert!(Scopes::parse_list("transfers:delete").is_err());
        assert!(Scopes::parse_list("").is_err());
        assert!(Scopes::parse_list(" , ").is_err());
    }

    #[test]
    fn generated_keys_are_distinct_and_hash_to_what_is_stored() {
        let a = NewApiKey::generate();
        let b = NewApiKey::generate();
        assert_ne!(a.plaintext, b.plaintext);
        assert!(a.plaintext.starts_with(API_KEY_PREFIX));
        assert_eq!(hash_api_key(&a.plaintext), a.hash);
    }
}
