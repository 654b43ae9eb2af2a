//! API keys: created by the CLI, looked up by hash on every request.

use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::domain::api_key::{NewApiKey, hash_api_key};
use crate::domain::{Scope, Scopes};

/// The identity behind a request.
#[derive(Debug, Clone)]
pub struct ApiKeyIdentity {
    pub id: Uuid,
    pub scopes: Scopes,
}

/// Stores a new key and returns its id and the plaintext, which is never stored.
pub async fn create(
    pool: &PgPool,
    name: &str,
    scopes: &Scopes,
) -> Result<(Uuid, String), sqlx::Error> {
    let key = NewApiKey::generate();
    let id = Uuid::now_v7();
    sqlx::query("INSERT INTO api_keys (id, name, key_hash, scopes) VALUES ($1, $2, $3, $4)")
        .bind(id)
        .bind(name)
        .bind(&key.hash)
        .bind(scopes.names())
        .execute(pool)
        .await?;
    Ok((id, key.plaintext))
}

/// Finds the live key matching what a client presented.
pub async fn find(pool: &PgPool, presented: &str) -> Result<Option<ApiKeyIdentity>, sqlx::Error> {
    let row =
        sqlx::query("SELECT id, scopes FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL")
            .bind(hash_api_key(presented))
            .fetch_optional(pool)
            .await?;
    let Some(row) = row else { return Ok(None) };
    let names: Vec<String> = row.try_get("scopes")?;
    // Unknown scope names (from a newer version) grant nothing rather than failing the request.
    let scopes = names
        .iter()
        .filter_map(|n| n.parse::<Scope>().ok())
        .collect();
    Ok(Some(ApiKeyIdentity {
        id: row.try_get("id")?,
        scopes: Scopes::new(scopes),
    }))
}
