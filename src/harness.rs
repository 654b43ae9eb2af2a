//! The one harness `ferry bench` and the integration tests share (ARCHITECTURE.md,
//! `src/harness.rs`): a uniquely named database on a PostgreSQL server, dropped when it goes out
//! of scope, and ferry running inside the calling process on a database of one's choosing.

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
/// was called.
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
