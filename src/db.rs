//! Connecting to PostgreSQL, creating the database if missing, and migrating it.

use std::time::Duration;

use anyhow::Context;
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Postgres};

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

pub async fn connect(
    url: &str,
    connections_max: u32,
    acquire_timeout: Duration,
) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(connections_max)
        .min_connections(1)
        .acquire_timeout(acquire_timeout)
        .connect(url)
        .await
        .context("connecting to PostgreSQL")
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
