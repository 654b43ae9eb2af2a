//! API keys (README, "Ledgers and authorization"): created and revoked by the CLI or an admin
//! key, each act recorded in the audit trail in its own transaction; looked up by hash, through
//! a short cache, on every request.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::audit::{self, Actor, AuditAction};
use super::ledgers;
use crate::domain::api_key::{ApiKeyNameError, NewApiKey, REDACTED, hash_api_key};
use crate::domain::{ApiKeyName, KeyLifetime, LedgerName, Scope, Scopes};

/// The identity behind a request.
#[derive(Debug, Clone)]
pub struct ApiKeyIdentity {
    pub id: Uuid,
    pub scopes: Scopes,
    /// The one ledger the key sees and moves; `None` for admin keys, which are global.
    pub ledger: Option<LedgerName>,
}

impl ApiKeyIdentity {
    /// The identity of an `api_keys` row as stored. Unknown scope names (from a newer version)
    /// grant nothing rather than failing the request.
    pub fn from_stored(id: Uuid, scopes: &[String], ledger: Option<String>) -> Self {
        let scopes = scopes
            .iter()
            .filter_map(|n| n.parse::<Scope>().ok())
            .collect();
        Self {
            id,
            scopes: Scopes::new(scopes),
            ledger: ledger.map(LedgerName::from_trusted),
        }
    }
}

/// A key to create.
#[derive(Debug, Clone)]
pub struct KeySpec {
    pub name: ApiKeyName,
    pub scopes: Scopes,
    /// The ledger a non-admin key is bound to (`default` when `None`); must be `None` for an
    /// admin key, which is global.
    pub ledger: Option<LedgerName>,
    /// `None`: the key never expires.
    pub lifetime: Option<KeyLifetime>,
}

/// What to do when a key names a ledger that does not exist: the CLI creates it, the API
/// refuses (README, "Ledgers and authorization").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingLedger {
    Create,
    Refuse,
}

#[derive(Debug, thiserror::Error)]
pub enum CreateKeyError {
    #[error("admin and console:read keys are global: they cannot be bound to a ledger")]
    AdminWithLedger,
    #[error("console:read is a viewer key's only scope: it cannot be combined with others")]
    ViewerCombined,
    #[error("ledger {0} does not exist")]
    LedgerNotFound(LedgerName),
    #[error(transparent)]
    InvalidName(#[from] ApiKeyNameError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum RevokeKeyError {
    #[error("API key {0} not found")]
    NotFound(Uuid),
    #[error("API key {} is already revoked", .0.id)]
    AlreadyRevoked(Box<ApiKeyView>),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// An API key as listed: never its secret or its hash.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[schema(as = ApiKey)]
pub struct ApiKeyView {
    pub id: Uuid,
    pub name: String,
    /// The ledger the key is bound to; `null` for an admin key, which is global.
    pub ledger: Option<String>,
    pub scopes: Vec<String>,
    pub created_at: DateTime<Utc>,
    /// After this instant the key is refused; `null`: never.
    pub expires_at: Option<DateTime<Utc>>,
    /// When the key last authenticated a request, to within a minute; `null`: never used.
    pub last_used_at: Option<DateTime<Utc>>,
    /// When the key was revoked; `null` while it is not.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A key just created: its row and its secret, which exists nowhere else (only its SHA-256 is
/// stored). `Debug` does not show the secret.
pub struct CreatedKey {
    pub key: ApiKeyView,
    pub plaintext: String,
}

impl fmt::Debug for CreatedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreatedKey")
            .field("key", &self.key)
            .field("plaintext", &REDACTED)
            .finish()
    }
}

const VIEW_COLUMNS: &str =
    "id, name, ledger, scopes, created_at, expires_at, last_used_at, revoked_at";

/// Creates a key and its `api_key.created` event (and, with [`MissingLedger::Create`], its
/// ledger and `ledger.created`) in one transaction.
pub async fn issue(
    pool: &PgPool,
    spec: &KeySpec,
    missing: MissingLedger,
    actor: &Actor,
) -> Result<CreatedKey, CreateKeyError> {
    if spec.scopes.viewer_combined() {
        return Err(CreateKeyError::ViewerCombined);
    }
    let ledger = match (spec.scopes.is_global(), &spec.ledger) {
        (true, Some(_)) => return Err(CreateKeyError::AdminWithLedger),
        (true, None) => None,
        (false, named) => Some(named.clone().unwrap_or_else(LedgerName::default_ledger)),
    };
    let mut tx = pool.begin().await?;
    if let (Some(ledger), MissingLedger::Create) = (&ledger, missing) {
        ledgers::ensure(&mut tx, ledger, actor).await?;
    }
    let secret = NewApiKey::generate();
    let key = insert(&mut tx, spec, ledger.as_ref(), &secret.hash)
        .await
        .map_err(|e| match (&ledger, is_foreign_key_violation(&e)) {
            (Some(ledger), true) => CreateKeyError::LedgerNotFound(ledger.clone()),
            _ => CreateKeyError::Database(e),
        })?;
    let event = actor.event(
        AuditAction::ApiKeyCreated,
        ledger.as_ref(),
        audit::target::api_key(key.id),
        serde_json::json!({
            "name": key.name,
            "scopes": key.scopes,
            "expires_at": key.expires_at,
        }),
    );
    audit::record(&mut *tx, &event).await?;
    tx.commit().await?;
    Ok(CreatedKey {
        key,
        plaintext: secret.plaintext,
    })
}

async fn insert(
    conn: &mut PgConnection,
    spec: &KeySpec,
    ledger: Option<&LedgerName>,
    hash: &[u8],
) -> Result<ApiKeyView, sqlx::Error> {
    // The expiry is computed by the database clock, the one the lookup compares it with.
    sqlx::query_as::<_, ApiKeyView>(sqlx::AssertSqlSafe(format!(
        "INSERT INTO api_keys (id, name, key_hash, scopes, ledger, expires_at) \
         VALUES ($1, $2, $3, $4, $5, now() + $6 * interval '1 second') \
         RETURNING {VIEW_COLUMNS}"
    )))
    .bind(Uuid::now_v7())
    .bind(spec.name.as_str())
    .bind(hash)
    .bind(spec.scopes.names())
    .bind(ledger.map(LedgerName::as_str))
    .bind(spec.lifetime.map(|l| l.secs() as f64))
    .fetch_one(conn)
    .await
}

fn is_foreign_key_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|code| code == "23503")
}

/// Stores a new key as an operator would (no expiry; a missing ledger is an error) and returns
/// its id and the plaintext. Admin keys are global; any other key is bound to `ledger`
/// (`default` when none is named).
pub async fn create(
    pool: &PgPool,
    name: &str,
    scopes: &Scopes,
    ledger: Option<&LedgerName>,
) -> Result<(Uuid, String), CreateKeyError> {
    let spec = KeySpec {
        name: ApiKeyName::parse(name)?,
        scopes: scopes.clone(),
        ledger: ledger.filter(|_| !scopes.is_global()).cloned(),
        lifetime: None,
    };
    let created = issue(pool, &spec, MissingLedger::Refuse, &Actor::operator()).await?;
    Ok((created.key.id, created.plaintext))
}

/// Keys newest first (ids are UUIDv7), revoked and expired ones included, before `cursor`.
pub async fn list(
    pool: &PgPool,
    limit: i64,
    cursor: Option<Uuid>,
) -> Result<Vec<ApiKeyView>, sqlx::Error> {
    sqlx::query_as::<_, ApiKeyView>(sqlx::AssertSqlSafe(format!(
        "SELECT {VIEW_COLUMNS} FROM api_keys WHERE $1::uuid IS NULL OR id < $1 \
         ORDER BY id DESC LIMIT $2"
    )))
    .bind(cursor)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Revokes key `id` and records `api_key.revoked`, in one transaction. Every process refuses
/// the key within [`REVOCATION_BOUND_MS`]; call [`ApiKeyCache::forget`] for this one at once.
pub async fn revoke(pool: &PgPool, id: Uuid, actor: &Actor) -> Result<ApiKeyView, RevokeKeyError> {
    let mut tx = pool.begin().await?;
    let revoked = sqlx::query_as::<_, ApiKeyView>(sqlx::AssertSqlSafe(format!(
        "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL \
         RETURNING {VIEW_COLUMNS}"
    )))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(key) = revoked else {
        let existing = sqlx::query_as::<_, ApiKeyView>(sqlx::AssertSqlSafe(format!(
            "SELECT {VIEW_COLUMNS} FROM api_keys WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        return Err(match existing {
            Some(key) => RevokeKeyError::AlreadyRevoked(Box::new(key)),
            None => RevokeKeyError::NotFound(id),
        });
    };
    let ledger = key.ledger.clone().map(LedgerName::from_trusted);
    let event = actor.event(
        AuditAction::ApiKeyRevoked,
        ledger.as_ref(),
        audit::target::api_key(key.id),
        serde_json::json!({ "name": key.name }),
    );
    audit::record(&mut *tx, &event).await?;
    tx.commit().await?;
    Ok(key)
}

/// The promise (README, "Ledgers and authorization"): a revoked or expired key is refused by
/// every process within this time.
pub const REVOCATION_BOUND_MS: u64 = 10_000;
/// How long a looked-up key is trusted without asking the database again: half the promise,
/// leaving the other half as margin for the look-up itself and a busy process.
pub const CACHE_TTL_MS: u64 = REVOCATION_BOUND_MS / 2;
const _: () = assert!(CACHE_TTL_MS * 2 <= REVOCATION_BOUND_MS);
/// Most keys remembered; past this the cache is cleared (keys are few, floods are not).
pub const CACHE_ENTRIES_MAX: usize = 10_000;

/// A look-up as remembered: what was found (or not), the key's expiry, and when.
struct Cached {
    identity: Option<ApiKeyIdentity>,
    expires_at: Option<DateTime<Utc>>,
    fetched: Instant,
}

/// Remembers recent look-ups (found or not) so authentication costs no query per request.
#[derive(Clone, Default)]
pub struct ApiKeyCache {
    entries: Arc<Mutex<HashMap<Vec<u8>, Cached>>>,
}

impl ApiKeyCache {
    pub async fn find(
        &self,
        pool: &PgPool,
        presented: &str,
    ) -> Result<Option<ApiKeyIdentity>, sqlx::Error> {
        let hash = hash_api_key(presented);
        let ttl = Duration::from_millis(CACHE_TTL_MS);
        let hit = self.entries.lock().ok().and_then(|entries| {
            let cached = entries.get(&hash).filter(|c| c.fetched.elapsed() < ttl)?;
            // The expiry is checked on every hit: an expired key is refused at once.
            let expired = cached.expires_at.is_some_and(|at| at <= Utc::now());
            Some(if expired {
                None
            } else {
                cached.identity.clone()
            })
        });
        if let Some(identity) = hit {
            return Ok(identity);
        }
        let found = find_by_hash(pool, &hash).await?;
        let (identity, expires_at) = found.map_or((None, None), |(identity, expires_at)| {
            (Some(identity), expires_at)
        });
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= CACHE_ENTRIES_MAX {
                entries.clear();
            }
            entries.insert(
                hash,
                Cached {
                    identity: identity.clone(),
                    expires_at,
                    fetched: Instant::now(),
                },
            );
        }
        Ok(identity)
    }

    /// Drops what is remembered of key `id`, so this process refuses it from now on.
    pub fn forget(&self, id: Uuid) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.retain(|_, c| c.identity.as_ref().is_none_or(|i| i.id != id));
        }
    }
}

/// An `api_keys` row as authentication reads it.
#[derive(sqlx::FromRow)]
struct ApiKeyRow {
    id: Uuid,
    scopes: Vec<String>,
    ledger: Option<String>,
    expires_at: Option<DateTime<Utc>>,
}

/// Only keys neither revoked nor expired are found. The same statement records the use in
/// `last_used_at`, at most once a minute per key: it runs on a cache miss only, and the
/// conditional UPDATE writes nothing when the column is recent.
const FIND_AND_TOUCH: &str = "\
    WITH found AS ( \
        SELECT id, scopes, ledger, expires_at FROM api_keys \
        WHERE key_hash = $1 AND revoked_at IS NULL \
          AND (expires_at IS NULL OR expires_at > now()) \
    ), touched AS ( \
        UPDATE api_keys k SET last_used_at = now() FROM found \
        WHERE k.id = found.id \
          AND (k.last_used_at IS NULL OR k.last_used_at < now() - interval '1 minute') \
    ) \
    SELECT id, scopes, ledger, expires_at FROM found";

async fn find_by_hash(
    pool: &PgPool,
    hash: &[u8],
) -> Result<Option<(ApiKeyIdentity, Option<DateTime<Utc>>)>, sqlx::Error> {
    let row = sqlx::query_as::<_, ApiKeyRow>(FIND_AND_TOUCH)
        .bind(hash)
        .fetch_optional(pool)
        .await?;
    let Some(row) = row else { return Ok(None) };
    let identity = ApiKeyIdentity::from_stored(row.id, &row.scopes, row.ledger);
    Ok(Some((identity, row.expires_at)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_of_a_created_key_hides_the_secret() {
        let created = CreatedKey {
            key: ApiKeyView {
                id: Uuid::now_v7(),
                name: "ci".into(),
                ledger: None,
                scopes: vec!["admin".into()],
                created_at: Utc::now(),
                expires_at: None,
                last_used_at: None,
                revoked_at: None,
            },
            plaintext: NewApiKey::generate().plaintext,
        };
        let shown = format!("{created:?}");
        assert!(!shown.contains(&created.plaintext), "{shown}");
        assert!(shown.contains(REDACTED), "{shown}");
    }
}
