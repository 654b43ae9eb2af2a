//! The command line: `serve`, `migrate`, `api-key create`.

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "ferry",
    version,
    about = "Moves money as durable background jobs"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP intake and the posting workers (creates and migrates the database).
    Serve {
        /// Comma-separated roles: intake, worker, all.
        #[arg(long, env = "FERRY_ROLES", default_value = "all")]
        roles: String,
    },
    /// Create the database if missing and apply migrations, then exit.
    Migrate,
    /// Manage API keys.
    #[command(subcommand)]
    ApiKey(ApiKeyCommand),
}

#[derive(Debug, Subcommand)]
pub enum ApiKeyCommand {
    /// Create a key; the key is printed once, on the last line.
    Create {
        #[arg(long)]
        name: String,
        /// Comma-separated: transfers:write, transfers:read, accounts:write, accounts:read, admin.
        #[arg(long)]
        scopes: String,
    },
}
