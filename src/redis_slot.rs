//! A Redis connection made in the background and shared by clones: ferry's Redis users (the
//! rate limiter, anomaly detection) keep only what may be lost there, so none of them waits
//! for Redis to come up — until it answers, they count the miss and carry on (README,
//! "Configuration").

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::RwLock;
use tracing::warn;

/// How often a missing Redis connection is tried again.
pub const REDIS_RECONNECT_MS: u64 = 5_000;
/// Longest one connection attempt may take.
pub const CONNECT_TIMEOUT_MS: u64 = 1_000;

/// The pattern of every key a deployment keeps in Redis under `namespace` (its database's
/// name, `db::database_name`): anomaly windows and webhook breakers are named
/// `ferry:<namespace>:…`, so deployments sharing a Redis keep apart.
pub fn namespace_keys(namespace: &str) -> String {
    format!("ferry:{namespace}:*")
}

/// The connection, once made; `None` until then. Cheap to clone.
#[derive(Clone, Default)]
pub struct RedisSlot {
    connection: Arc<RwLock<Option<ConnectionManager>>>,
}

impl RedisSlot {
    /// Connects to `redis_url`: a first attempt here (at most [`CONNECT_TIMEOUT_MS`], so a
    /// Redis that is up is used from the first request on), then, if that failed, on a task of
    /// `tasks` that retries every [`REDIS_RECONNECT_MS`] and gives up when `stopping` is
    /// cancelled. Each command on the connection times out after `response_timeout_ms`;
    /// `user` names who waits, in logs.
    pub async fn connect(
        redis_url: &str,
        response_timeout_ms: u64,
        user: &'static str,
        tasks: &tokio_util::task::TaskTracker,
        stopping: &tokio_util::sync::CancellationToken,
    ) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(redis_url)?;
        let slot = Self::default();
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(CONNECT_TIMEOUT_MS)))
            .set_response_timeout(Some(Duration::from_millis(response_timeout_ms)));
        if let Ok(manager) =
            ConnectionManager::new_with_config(client.clone(), config.clone()).await
        {
            *slot.connection.write().await = Some(manager);
            return Ok(slot);
        }
        let connection = slot.connection.clone();
        let connect = async move {
            loop {
                match ConnectionManager::new_with_config(client.clone(), config.clone()).await {
                    Ok(manager) => {
                        *connection.write().await = Some(manager);
                        return;
                    }
                    Err(e) => warn!(error = %e, user, "Redis unavailable; retrying"),
                }
                tokio::time::sleep(Duration::from_millis(REDIS_RECONNECT_MS)).await;
            }
        };
        let stopping = stopping.clone();
        tasks.spawn(async move {
            tokio::select! {
                () = connect => {}
                () = stopping.cancelled() => {}
            }
        });
        Ok(slot)
    }

    /// The connection, if made (it reconnects by itself after that).
    pub async fn get(&self) -> Option<ConnectionManager> {
        self.connection.read().await.clone()
    }
}
