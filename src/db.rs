//! Connecting to PostgreSQL, creating the database if missing, and migrating it.

use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sqlx::{PgPool, Postgres};

/// `[database]`: where PostgreSQL is and how many connections a process holds (README,
/// "Configuration").
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `DATABASE_URL`; the database is created if missing, then migrated.
    pub url: String,
    /// Pool size per process.
    pub pool_connections_max: u32,
    /// Wait for a pooled connection (workers; intake is bounded by its own, shorter timeout).
    #[serde(rename = "acquire_timeout_ms", with = "crate::serde_duration::millis")]
    pub acquire_timeout: Duration,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: "postgres://postgres@localhost:5432/ferry".to_owned(),
            // Room for the default posting workers and the poster (the pool rule in
            // config.rs), with most connections left to intake.
            pool_connections_max: 16,
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

/// Creates the database named in `url` if it does not exist yet.
pub async fn create_if_missing(url: &str) -> anyhow::Result<()> {
    if !Postgres::database_exists(url)
        .await
        .context("checking whether the database exists")?
    {
        Postgres::create_database(url)
            .await
            .context("creating the database")?;
        tracing::info!("created database");
    }
    Ok(())
}

/// The database `url` names (PostgreSQL's default, the user's name, when it names none); empty
/// if the URL does not parse, which connecting reports anyway.
pub fn database_name(url: &str) -> String {
    url.parse::<sqlx::postgres::PgConnectOptions>()
        .map(|options| {
            options
                .get_database()
                .unwrap_or(options.get_username())
                .to_owned()
        })
        .unwrap_or_default()
}

pub async fn connect(
    url: &str,
    connections_max: u32,
    acquire_timeout: Duration,
) -> anyhow::Result<PgPool> {
    let options = without_tls_on_loopback(url.parse().context("parsing the database URL")?);
    // Over a Unix socket there is no Nagle to turn off.
    let tcp_port = options.get_socket().is_none().then(|| options.get_port());
    PgPoolOptions::new()
        .max_connections(connections_max)
        .min_connections(1)
        .acquire_timeout(acquire_timeout)
        .after_connect(move |_conn, _meta| {
            Box::pin(async move {
                if let Some(port) = tcp_port {
                    nodelay::set_on_connections_to(port);
                }
                Ok(())
            })
        })
        .connect_with(options)
        .await
        .context("connecting to PostgreSQL")
}

/// No TLS to a server on this machine unless the URL (or `PGSSLMODE`) requires it.
///
/// sqlx's default, `sslmode=prefer`, uses TLS whenever the server offers it and verifies
/// nothing, so over loopback it encrypts bytes that never leave the kernel and authenticates no
/// one. It cost 6.5 % of PostgreSQL's CPU and ~8 % of ferry's under load (BENCHMARKS.md, issue
/// 26, "Eighth sitting"). `prefer` and `allow` promise TLS only if it is there, so going
/// without keeps their word; `require`, `verify-ca` and `verify-full` are obeyed whatever the
/// host, and a remote host keeps what the URL says.
fn without_tls_on_loopback(options: PgConnectOptions) -> PgConnectOptions {
    let required = matches!(
        options.get_ssl_mode(),
        PgSslMode::Require | PgSslMode::VerifyCa | PgSslMode::VerifyFull
    );
    if required || !is_loopback(options.get_host()) {
        return options;
    }
    options.ssl_mode(PgSslMode::Disable)
}

/// `localhost`, or an address of the loopback network (127.0.0.0/8, ::1).
fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|address| address.is_loopback())
}

/// Nagle's algorithm off on the database connections.
///
/// sqlx 0.9.0 stopped setting `TCP_NODELAY` (launchbadge/sqlx#4335; the fix, #4336, is merged
/// but not released). Without it a statement whose message spans several TCP segments — a
/// posting batch's arrays, an intake group's rows — waits for the server's delayed ACK before
/// its last segment leaves: 30–40 ms per statement, measured on loopback (BENCHMARKS.md). sqlx
/// has no socket hook, so after each new connection this walks the process's descriptors and
/// sets the option on TCP sockets whose peer is the database port (setting it twice is
/// harmless). Linux only; elsewhere a no-op. Delete once sqlx sets it again.
mod nodelay {
    #[cfg(target_os = "linux")]
    pub fn set_on_connections_to(port: u16) {
        use std::os::fd::{BorrowedFd, RawFd};

        let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
            return;
        };
        for entry in entries.flatten() {
            let Some(fd) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<RawFd>().ok())
            else {
                continue;
            };
            // Only sockets: the link reads `socket:[inode]`.
            let is_socket = std::fs::read_link(entry.path())
                .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
            if !is_socket {
                continue;
            }
            // SAFETY: the descriptor was open a moment ago and is only borrowed for two
            // syscalls. If another thread closed it and the number was reused, the calls
            // fail (not a socket) or reach another socket, which the port check filters.
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
            let socket = socket2::SockRef::from(&fd);
            let to_database = socket
                .peer_addr()
                .ok()
                .and_then(|addr| addr.as_socket())
                .is_some_and(|addr| addr.port() == port);
            if to_database
                && socket.tcp_nodelay().is_ok_and(|on| !on)
                && let Err(error) = socket.set_tcp_nodelay(true)
            {
                tracing::warn!(%error, "could not set TCP_NODELAY on a database connection");
            }
        }
    }

    #[cfg(not(target_os = "linux"))]
    pub fn set_on_connections_to(_port: u16) {}
}

/// Runs apalis's schema (its own migration table, in schema `apalis`) and then ferry's.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query("CREATE EXTENSION IF NOT EXISTS hstore")
        .execute(pool)
        .await
        .context("creating the hstore extension apalis needs")?;
    apalis_postgres::PostgresStorage::setup(pool)
        .await
        .context("migrating the apalis job schema")?;
    sqlx::migrate!("./migrations")
        .run(pool)
        .await
        .context("migrating the ferry schema")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(url: &str) -> String {
        let options = without_tls_on_loopback(url.parse().expect("a valid URL"));
        format!("{:?}", options.get_ssl_mode())
    }

    #[test]
    fn loopback_without_an_sslmode_connects_without_tls() {
        for url in [
            "postgres://postgres@127.0.0.1:5432/ferry",
            "postgres://postgres@localhost/ferry",
            "postgres://postgres@[::1]:5432/ferry",
            "postgres://postgres@127.0.0.2/ferry?application_name=ferry",
            "postgres://postgres@127.0.0.1/ferry?sslmode=prefer",
        ] {
            assert_eq!(mode(url), "Disable", "{url}");
        }
    }

    #[test]
    fn a_url_that_requires_tls_or_a_remote_host_keeps_it() {
        assert_eq!(
            mode("postgres://postgres@127.0.0.1/ferry?sslmode=require"),
            "Require"
        );
        assert_eq!(
            mode("postgres://postgres@localhost/ferry?application_name=x&sslmode=verify-full"),
            "VerifyFull"
        );
        assert_eq!(mode("postgres://postgres@db.internal:5432/ferry"), "Prefer");
        assert_eq!(mode("postgres://postgres@10.0.0.5/ferry"), "Prefer");
    }
}
