//! `ferry`: parse the command line, build, run, and report which part stopped and why.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use ferry::app::{Application, shutdown_signal};
use ferry::cli::{ApiKeyCommand, Cli, Command};
use ferry::config::Config;
use ferry::domain::Scopes;
use ferry::{db, store, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    telemetry::init_logging();
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut config = Config::from_env()?;
    match cli.command {
        Command::Serve { roles } => {
            config.roles = roles
                .parse()
                .map_err(|e: String| anyhow::anyhow!("--roles: {e}"))?;
            config.validate()?;
            let app = Application::build(config).await?;
            app.run_until_stopped(shutdown_signal()).await
        }
        Command::Migrate => {
            db::create_if_missing(&config.database_url).await?;
            let pool = db::connect(&config.database_url, 2, config.db_acquire_timeout()).await?;
            db::migrate(&pool).await?;
            println!("database migrated");
            Ok(())
        }
        Command::ApiKey(ApiKeyCommand::Create { name, scopes }) => {
            let scopes = Scopes::parse_list(&scopes)?;
            db::create_if_missing(&config.database_url).await?;
            let pool = db::connect(&config.database_url, 2, config.db_acquire_timeout()).await?;
            db::migrate(&pool).await?;
            let (id, key) = store::api_keys::create(&pool, &name, &scopes)
                .await
                .context("storing the API key")?;
            println!(
                "created API key {id} ({name}) with scopes {}",
                scopes.names().join(",")
            );
            println!("store it now; it cannot be shown again:");
            println!("{key}");
            Ok(())
        }
    }
}
