//! API keys: created by the CLI, looked up by hash on every request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::api_key::{NewApiKey, hash_api_key};
use crate::domain::{LedgerName, Scope, Scopes};

/// The identity behind a request.
#[derive(Debug, Clone)]
pub struct ApiKeyIdentity {
    pub id: Uuid,
    pub scopes: Scopes,
    /// The one ledger the key sees and moves; `None` for admin keys, which are global.
    pub ledger: Option<LedgerName>,
}

/// Stores a new key and returns its id and the plaintext, which is never stored. Admin keys
/// are global; any other key is bound to `ledger` (`default` when none is named).
pub async fn create(
    pool: &PgPool,
    name: &str,
    scopes: &Scopes,
    ledger: Option<&LedgerName>,
) -> Result<(Uuid, String), sqlx::Error> {
    let key = NewApiKey::generate();
    let id = Uuid::now_v7();
    let ledger = if scopes.allows_admin() {
        None
    } else {
        Some(ledger.map_or(LedgerName::DEFAULT, LedgerName::as_str))
    };
    sqlx::query(
        "INSERT INTO api_keys (id, name, key_hash, scopes, ledger) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(name)
    .bind(&key.hash)
    .bind(scopes.names())
    .bind(ledger)
    .execute(pool)
    .await?;
    Ok((id, key.plaintext))
}

/// How long a looked-up key is trusted without asking the database again; a revoked key
/// stops working within this time.
pub const CACHE_TTL_MS: u64 = 10_000;
/// Most keys remembered; past this the cache is cleared (keys are few, floods are not).
pub const CACHE_ENTRIES_MAX: usize = 10_000;

type CacheEntries = HashMap<Vec<u8>, (Option<ApiKeyIdentity>, Instant)>;

/// Remembers recent look-ups (found or not) so authentication costs no query per request.
#[derive(Clone, Default)]
pub struct ApiKeyCache {
    entries: Arc<Mutex<CacheEntries>>,
}

impl ApiKeyCache {
    pub async fn find(
        &self,
        pool: &PgPool,
        presented: &str,
    ) -> Result<Option<ApiKeyIdentity>, sqlx::Error> {
        let hash = hash_api_key(presented);
        let ttl = Duration::from_millis(CACHE_TTL_MS);
        if let Some(identity) = self.entries.lock().ok().and_then(|entries| {
            entries
                .get(&hash)
                .filter(|(_, at)| at.elapsed() < ttl)
                .map(|(identity, _)| identity.clone())
        }) {
            return Ok(identity);
        }
        let identity = find_by_hash(pool, &hash).await?;
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= CACHE_ENTRIES_MAX {
                entries.clear();
            }
            entries.insert(hash, (identity.clone(), Instant::now()));
        }
        Ok(identity)
    }
}

/// An `api_keys` row as authentication reads it.
#[derive(sqlx::FromRow)]
struct ApiKeyRow {
    id: Uuid,
    scopes: Vec<String>,
    ledger: Option<String>,
}

async fn find_by_hash(pool: &PgPool, hash: &[u8]) -> Result<Option<ApiKeyIdentity>, sqlx::Error> {
    let row = sqlx::query_as::<_, ApiKeyRow>(
        "SELECT id, scopes, ledger FROM api_keys \
         WHERE key_hash = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())",
    )
    .bind(hash)
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else { return Ok(None) };
    // Unknown scope names (from a newer version) grant nothing rather than failing the request.
    let scopes = row
        .scopes
        .iter()
        .filter_map(|n| n.parse::<Scope>().ok())
        .collect();
    Ok(Some(ApiKeyIdentity {
        id: row.id,
        scopes: Scopes::new(scopes),
        ledger: row.ledger.map(LedgerName::from_trusted),
    }))
}
