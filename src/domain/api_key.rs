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
    /// Approve or reject transfers held for review (README, "Anomaly detection").
    TransfersReview,
    /// Register, list, delete and replay webhook endpoints (README, "Events and webhooks").
    WebhooksWrite,
    AccountsWrite,
    AccountsRead,
    /// Sign in to the operator console and read every page (README, "Operator console"). A
    /// viewer's only scope, and global like `admin`.
    ConsoleRead,
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 8] = [
        Scope::TransfersWrite,
        Scope::TransfersRead,
        Scope::TransfersReview,
        Scope::WebhooksWrite,
        Scope::AccountsWrite,
        Scope::AccountsRead,
        Scope::ConsoleRead,
        Scope::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::TransfersWrite => "transfers:write",
            Self::TransfersRead => "transfers:read",
            Self::TransfersReview => "transfers:review",
            Self::WebhooksWrite => "webhooks:write",
            Self::AccountsWrite => "accounts:write",
            Self::AccountsRead => "accounts:read",
            Self::ConsoleRead => "console:read",
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
    "unknown scope {0:?}; scopes are transfers:write, transfers:read, transfers:review, webhooks:write, accounts:write, accounts:read, console:read, admin"
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

    /// Keys bound to no ledger: admin keys, and console viewers (`console:read`), who see
    /// every ledger and can change none.
    pub fn is_global(&self) -> bool {
        self.0
            .iter()
            .any(|s| matches!(s, Scope::Admin | Scope::ConsoleRead))
    }

    /// `console:read` may not share a key with another scope: a viewer key is global, and no
    /// ledger-bound power may ride along on a global key.
    pub fn viewer_combined(&self) -> bool {
        self.0.contains(&Scope::ConsoleRead) && self.0.len() > 1
    }

    pub fn names(&self) -> Vec<String> {
        self.0.iter().map(|s| s.as_str().to_owned()).collect()
    }
}

/// Prefix that makes a leaked key easy to recognise (and to grep for in secret scanners).
pub const API_KEY_PREFIX: &str = "ferry_";

/// A freshly minted key: shown once, stored only as its SHA-256. Keys carry 256 random bits, so
/// a fast hash is enough; a slow password hash would only add latency to every request.
/// `Debug` shows neither the key nor its hash (README, "Ledgers and authorization": secrets
/// never reach a log).
pub struct NewApiKey {
    pub plaintext: String,
    pub hash: Vec<u8>,
}

impl fmt::Debug for NewApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewApiKey")
            .field("plaintext", &REDACTED)
            .field("hash", &REDACTED)
            .finish()
    }
}

/// What `Debug` shows in place of a secret.
pub const REDACTED: &str = "[redacted]";

/// Longest key name (the `api_keys.name` CHECK counts characters).
pub const API_KEY_NAME_LEN_MAX: usize = 200;

/// A key's name, for people: 1–200 characters, no control characters (so it prints on one
/// line in `ferry api-key list`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key name must be 1-{API_KEY_NAME_LEN_MAX} characters, none of them a control character")]
pub struct ApiKeyNameError;

impl ApiKeyName {
    pub fn parse(text: &str) -> Result<Self, ApiKeyNameError> {
        let len = text.chars().count();
        if len == 0 || len > API_KEY_NAME_LEN_MAX || text.chars().any(char::is_control) {
            return Err(ApiKeyNameError);
        }
        Ok(Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Longest lifetime a key can be given: ten years (3650 days).
pub const KEY_LIFETIME_SECS_MAX: i64 = 3650 * 86_400;

/// How long a new key lives: 1 s to [`KEY_LIFETIME_SECS_MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyLifetime(i64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyLifetimeError {
    #[error(
        "a key's lifetime must be between 1 second and {KEY_LIFETIME_SECS_MAX} seconds (3650 days)"
    )]
    OutOfRange,
    #[error(
        "invalid duration {0:?}: write a whole number followed by s, m, h or d (e.g. 30d, 12h, 90m)"
    )]
    Malformed(String),
}

impl KeyLifetime {
    pub fn from_secs(secs: i64) -> Result<Self, KeyLifetimeError> {
        if (1..=KEY_LIFETIME_SECS_MAX).contains(&secs) {
            Ok(Self(secs))
        } else {
            Err(KeyLifetimeError::OutOfRange)
        }
    }

    /// Parses the CLI form `30d`, `12h`, `90m`, `45s`.
    pub fn parse(text: &str) -> Result<Self, KeyLifetimeError> {
        let malformed = || KeyLifetimeError::Malformed(text.to_owned());
        let unit_at = text.len().checked_sub(1).ok_or_else(malformed)?;
        let (number, unit) = (text.get(..unit_at), text.get(unit_at..));
        let unit_secs: i64 = match unit {
            Some("s") => 1,
            Some("m") => 60,
            Some("h") => 3600,
            Some("d") => 86_400,
            _ => return Err(malformed()),
        };
        let number = number.filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        let count: i64 = number
            .ok_or_else(malformed)?
            .parse()
            .map_err(|_| KeyLifetimeError::OutOfRange)?;
        Self::from_secs(
            count
                .checked_mul(unit_secs)
                .ok_or(KeyLifetimeError::OutOfRange)?,
        )
    }

    pub fn secs(self) -> i64 {
        self.0
    }
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
    fn debug_never_shows_a_key() {
        let key = NewApiKey::generate();
        let shown = format!("{key:?}");
        assert!(!shown.contains(&key.plaintext), "{shown}");
        assert!(shown.contains(REDACTED), "{shown}");
    }

    #[test]
    fn key_names_are_one_line_and_at_most_200_characters() {
        for ok in ["a", "ci deploy", "ü", &"é".repeat(200)] {
            assert!(ApiKeyName::parse(ok).is_ok(), "{ok:?}");
        }
        for bad in ["", "a\nb", "tab\t", "\u{7f}", "\u{85}", &"x".repeat(201)] {
            assert_eq!(ApiKeyName::parse(bad), Err(ApiKeyNameError), "{bad:?}");
        }
    }

    #[test]
    fn lifetimes_parse_with_a_unit_and_stay_in_range() {
        for (text, secs) in [
            ("45s", 45),
            ("90m", 5400),
            ("12h", 43_200),
            ("30d", 2_592_000),
        ] {
            assert_eq!(
                KeyLifetime::parse(text).map(KeyLifetime::secs),
                Ok(secs),
                "{text}"
            );
        }
        assert_eq!(
            KeyLifetime::parse("3650d").map(KeyLifetime::secs),
            Ok(KEY_LIFETIME_SECS_MAX)
        );
        for out in [
            "0d",
            "0s",
            "3651d",
            "99999999999999999999d",
            "9223372036854775807d",
        ] {
            assert_eq!(
                KeyLifetime::parse(out),
                Err(KeyLifetimeError::OutOfRange),
                "{out}"
            );
        }
        for bad in [
            "", "d", "30", "30 d", "-1d", "+1d", "1.5h", "30w", "1e3s", "１d",
        ] {
            assert!(
                matches!(KeyLifetime::parse(bad), Err(KeyLifetimeError::Malformed(_))),
                "{bad:?}"
            );
        }
        assert!(KeyLifetime::from_secs(0).is_err());
        assert!(KeyLifetime::from_secs(-5).is_err());
        assert!(KeyLifetime::from_secs(KEY_LIFETIME_SECS_MAX + 1).is_err());
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
