//! The one harness `ferry bench` and the integration tests share (ARCHITECTURE.md,
//! `src/harness.rs`): a uniquely named database on a PostgreSQL server, dropped when it goes out
//! of scope, ferry running inside the calling process on a database of one's choosing, and a
//! webhook receiver that closes every connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::app::Application;
use crate::config::Config;
use crate::db;

/// A database of its own on a server, created and migrated; dropped (`WITH (FORCE)`, so open
/// connections do not keep it) when this value is dropped, unless [`ScratchDatabase::keep`]
/// was called. Its keys in Redis go with it (see [`forget_redis_keys`]).
pub struct ScratchDatabase {
    name: String,
    url: String,
    admin: PgConnectOptions,
    kept: bool,
}

impl ScratchDatabase {
    /// Creates and migrates a database named `{prefix}_{uuid}` on the server `server_url`
    /// points at; a database named in `server_url` only serves to find the server.
    pub async fn create(server_url: &str, prefix: &str) -> anyhow::Result<Self> {
        let scratch = Self::create_empty(server_url, prefix).await?;
        let pool = db::connect(&scratch.url, 1, Duration::from_secs(30)).await?;
        let migrated = db::migrate(&pool).await;
        pool.close().await;
        migrated?;
        Ok(scratch)
    }

    /// Like [`ScratchDatabase::create`], without migrating: for tests of the migrations.
    pub async fn create_empty(server_url: &str, prefix: &str) -> anyhow::Result<Self> {
        let options: PgConnectOptions = server_url
            .parse()
            .context("parsing the database server URL")?;
        let name = format!("{prefix}_{}", Uuid::new_v4().simple());
        let scratch = Self {
            admin: options.clone().database("postgres"),
            url: options.database(&name).to_url_lossy().to_string(),
            name,
            kept: false,
        };
        // Made before the database exists: a failed migration still drops it.
        db::create_if_missing(&scratch.url).await?;
        Ok(scratch)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Leaves the database on the server instead of dropping it (to inspect it afterwards);
    /// returns its URL.
    pub fn keep(mut self) -> String {
        self.kept = true;
        std::mem::take(&mut self.url)
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        let admin = self.admin.clone();
        let statement = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        let redis_url = std::env::var("REDIS_URL")
            .unwrap_or_else(|_| crate::intake::rate_limit::RedisSettings::default().url);
        let redis_keys = crate::redis_slot::namespace_keys(&self.name);
        // Drop usually runs inside an async runtime, where blocking on another one panics; a
        // fresh thread has none.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let mut conn = PgConnection::connect_with(&admin).await?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
                    .execute(&mut conn)
                    .await?;
                conn.close().await?;
                let forgotten = tokio::time::timeout(
                    REDIS_CLEANUP_TIMEOUT,
                    forget_redis_keys(&redis_url, &redis_keys),
                )
                .await;
                if !matches!(forgotten, Ok(Ok(_))) {
                    tracing::warn!(keys = %redis_keys, "Redis keys not removed: {forgotten:?}");
                }
                anyhow::Ok(())
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(database = %self.name, "not dropped: {e:#}"),
            Err(_) => tracing::warn!(database = %self.name, "not dropped: the drop panicked"),
        }
    }
}

/// Longest a dropped database's Redis keys are looked for; they expire on their own anyway.
const REDIS_CLEANUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Removes the Redis keys matching `pattern` (a dropped database's,
/// [`crate::redis_slot::namespace_keys`]); how many there were.
///
/// They would expire by themselves, within the hour, but a benchmarking session leaves
/// millions (measured: 1.9M keys, 540 MB, after ~30 bench runs), and a Redis expiring that
/// many spent an eighth of a core on it while the next runs were measured (BENCHMARKS.md,
/// "Seventh sitting").
async fn forget_redis_keys(url: &str, pattern: &str) -> redis::RedisResult<usize> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let mut cursor: u64 = 0;
    let mut removed = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(10_000)
            .query_async(&mut conn)
            .await?;
        if !keys.is_empty() {
            removed += keys.len();
            redis::cmd("UNLINK")
                .arg(&keys)
                .query_async::<()>(&mut conn)
                .await?;
        }
        if next == 0 {
            return Ok(removed);
        }
        cursor = next;
    }
}

/// ferry started by [`spawn_in_process`]; stops when [`RunningFerry::stop`] is called or the
/// value is dropped.
pub struct RunningFerry {
    /// The bound HTTP port, if the configuration has the intake role.
    pub port: Option<u16>,
    /// ferry's own connection pool.
    pub pool: PgPool,
    stop: Option<oneshot::Sender<()>>,
}

impl RunningFerry {
    /// Asks ferry to stop (as SIGTERM does) without waiting for it.
    pub fn stop(mut self) {
        self.signal_stop();
    }

    fn signal_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Drop for RunningFerry {
    fn drop(&mut self) {
        self.signal_stop();
    }
}

/// Builds ferry from `config` (creating and migrating its database if missing, binding
/// `config.http.addr` — port 0 picks a free one) and runs its roles on this runtime.
pub async fn spawn_in_process(config: Config) -> anyhow::Result<RunningFerry> {
    let app = Application::build(config).await?;
    let port = app.port();
    let pool = app.pool().clone();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    Ok(RunningFerry {
        port,
        pool,
        stop: Some(stop),
    })
}

/// Python's `socketserver.TCPServer.request_queue_size`: the listen backlog of
/// `http.server`, the smallest in common use.
pub const PYTHON_LISTEN_BACKLOG: u32 = 5;

/// Bytes of a request's head a [`ClosingReceiver`] reads at most; webhooks' are far smaller.
const REQUEST_HEAD_BYTES_MAX: usize = 64 * 1024;

/// A webhook receiver that closes the connection after each answer, as Python's `http.server`
/// with HTTP/1.0 does (README, "Events and webhooks": receivers that close connections): it
/// listens on loopback with Python's backlog of 5, reads one request, waits `answer_after`,
/// answers `HTTP/1.0 204`, closes, and then calls `answered(webhook_id, body)`.
pub struct ClosingReceiver {
    pub addr: SocketAddr,
}

impl ClosingReceiver {
    pub fn start<F>(answer_after: Duration, answered: F) -> std::io::Result<Self>
    where
        F: Fn(&str, &[u8]) + Send + Sync + 'static,
    {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let listener = socket.listen(PYTHON_LISTEN_BACKLOG)?;
        let addr = listener.local_addr()?;
        let answered = Arc::new(answered);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let answered = answered.clone();
                tokio::spawn(async move {
                    if let Some((id, body)) = answer_once(stream, answer_after).await {
                        answered(&id, &body);
                    }
                });
            }
        });
        Ok(Self { addr })
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }
}

/// Reads one request, answers `HTTP/1.0 204` after `answer_after` and closes; the request's
/// `webhook-id` and body, if it was answered.
async fn answer_once(
    mut stream: tokio::net::TcpStream,
    answer_after: Duration,
) -> Option<(String, Vec<u8>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut request = Vec::new();
    let mut buffer = [0_u8; 4_096];
    let head_len = loop {
        if let Some(at) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if request.len() > REQUEST_HEAD_BYTES_MAX {
            return None;
        }
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => request.extend_from_slice(&buffer[..n]),
        }
    };
    let head = String::from_utf8_lossy(&request[..head_len]).to_ascii_lowercase();
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(|v| v.trim().to_owned())
    };
    let body_len: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let id = header("webhook-id").unwrap_or_default();
    while request.len() < head_len + body_len {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => request.extend_from_slice(&buffer[..n]),
        }
    }
    tokio::time::sleep(answer_after).await;
    let answer = b"HTTP/1.0 204 No Content\r\nServer: closing\r\n\r\n";
    stream.write_all(answer).await.ok()?;
    stream.shutdown().await.ok()?;
    let body = request.split_off(head_len);
    Some((id, body))
}
