//! The command line: `serve`, `migrate`, `api-key create|list|revoke`, `ledger create|list`,
//! `account list`, `reconcile`, `bench`, `alerts test`, `events tail`.

use clap::{Parser, Subcommand};

use crate::config::Roles;

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
        /// Comma-separated roles: intake, worker, scheduler, all. Overrides `FERRY_ROLES` and
        /// `roles` in the FERRY_CONFIG file (default: all).
        #[arg(long)]
        roles: Option<Roles>,
    },
    /// Create the database if missing and apply migrations, then exit.
    Migrate,
    /// Manage API keys.
    #[command(subcommand)]
    ApiKey(ApiKeyCommand),
    /// Manage ledgers.
    #[command(subcommand)]
    Ledger(LedgerCommand),
    /// Look at accounts.
    #[command(subcommand)]
    Account(AccountCommand),
    /// Run one reconciliation now, in the foreground; exits 1 if it finds anything critical.
    Reconcile(ReconcileArgs),
    /// Measure scenarios against throwaway databases on DATABASE_URL's server.
    Bench(BenchArgs),
    /// Alert sinks (configured in the file named by FERRY_CONFIG).
    #[command(subcommand)]
    Alerts(AlertsCommand),
    /// Producer events (README, "Events and webhooks").
    #[command(subcommand)]
    Events(EventsCommand),
}

impl Command {
    /// The log level when `RUST_LOG` does not say: `serve` runs for days and its logs are how
    /// an operator follows it; every other command prints its result, and only warnings and
    /// errors belong beside it (sqlx logs PostgreSQL's notices at INFO, e.g. "relation
    /// already exists, skipping" from each migration's `IF NOT EXISTS`).
    pub fn default_log_level(&self) -> tracing::Level {
        match self {
            Self::Serve { .. } => tracing::Level::INFO,
            _ => tracing::Level::WARN,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum AccountCommand {
    /// List a ledger's accounts by id (README, HTTP API: `GET /v1/accounts`), read from the
    /// database: id, status, currency, balance, available, created, metadata.
    List(AccountListArgs),
}

#[derive(Debug, clap::Args)]
pub struct AccountListArgs {
    /// The ledger to list.
    #[arg(long, value_parser = parse_ledger, default_value = "default")]
    pub ledger: crate::domain::LedgerName,
    /// Only accounts with this status: active, frozen or closed.
    #[arg(long, value_parser = parse_account_status)]
    pub status: Option<crate::domain::AccountStatus>,
    /// Only accounts in this currency (ISO 4217, e.g. USD).
    #[arg(long, value_parser = parse_currency)]
    pub currency: Option<crate::domain::Currency>,
    /// Only accounts whose metadata has the top-level key KEY holding the string VALUE;
    /// repeat for more conditions (all must hold).
    #[arg(long, value_name = "KEY=VALUE")]
    pub metadata: Vec<String>,
    /// Only accounts created after this RFC 3339 instant.
    #[arg(long)]
    pub created_after: Option<chrono::DateTime<chrono::Utc>>,
}

fn parse_account_status(text: &str) -> Result<crate::domain::AccountStatus, String> {
    crate::domain::AccountStatus::parse_known(text)
        .map_err(|_| format!("{text:?} is not a status: active, frozen or closed"))
}

fn parse_currency(text: &str) -> Result<crate::domain::Currency, String> {
    crate::domain::Currency::parse(text).map_err(|e| e.to_string())
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Follow a ledger's event feed through the HTTP API and print one line per event
    /// (`seq`, type, time, the resource's id), or the events as JSON lines. Runs until stopped.
    Tail(TailArgs),
}

#[derive(Debug, clap::Args)]
pub struct TailArgs {
    /// ferry's HTTP address.
    #[arg(long, env = "FERRY_API_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// An API key with `transfers:read`.
    #[arg(long, env = "FERRY_API_KEY", hide_env_values = true)]
    pub api_key: String,
    /// Start after this `seq` (0: from the oldest event kept).
    #[arg(long, default_value_t = 0)]
    pub after: i64,
    /// Comma-separated event types (default: all).
    #[arg(long)]
    pub types: Option<String>,
    /// For an admin key: the ledger to follow (default `default`).
    #[arg(long)]
    pub ledger: Option<String>,
    /// How long to wait before asking again when there is nothing new.
    #[arg(long, default_value_t = 500)]
    pub poll_ms: u64,
    /// Print each event as one line of JSON.
    #[arg(long)]
    pub json: bool,
    /// Stop once caught up instead of following.
    #[arg(long)]
    pub once: bool,
}

#[derive(Debug, Subcommand)]
pub enum AlertsCommand {
    /// Send one test alert (and its resolve) through every sink and print each outcome;
    /// exits non-zero if any sink refuses it permanently.
    Test,
}

/// Accounts of the bench's uniform and hot scenarios (the "100k accounts").
pub const BENCH_ACCOUNTS_DEFAULT: u32 = 100_000;

/// Arguments of `ferry bench` (the scenarios live beside `main.rs`, in `src/bin_bench/`;
/// README, "Benchmarks").
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Throughput scenarios (repeated, each with what it is compared with): baseline-uniform,
    /// uniform, hold-capture, hold-capture-single, uniform-anomaly-off, uniform-review,
    /// uniform-webhook, baseline-hot, hot, intake, intake-while-posting,
    /// intake-while-posting-anomaly-off — one, or several separated by commas, run
    /// interleaved (`uniform,hot`). Measured once: balance-at, webhook-lag,
    /// webhook-lag-close (its receiver closes each connection), reconcile.
    /// `all` runs those. By name only: latency, steady, growth, scale-out, soak, console.
    #[arg(long, default_value = "all")]
    pub scenario: String,
    /// The least transfers a measured run moves (for reconcile: the ledger size; for
    /// webhook-lag(-close): how many it sends).
    #[arg(long, default_value_t = 20_000)]
    pub transfers: u64,
    /// Runs of each throughput scenario, interleaved with the others'.
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Warm-up before each measured run, on the same database and processes.
    #[arg(long, default_value_t = 3.0)]
    pub warmup_secs: f64,
    /// The least a measured run lasts: its size is set from the warm-up's rate.
    #[arg(long, default_value_t = 10.0)]
    pub measure_secs: f64,
    /// latency and steady: how long each step of offered load lasts (also growth's
    /// time-to-posted step).
    #[arg(long, default_value_t = 10.0)]
    pub step_secs: f64,
    /// latency and growth: the longest wait, before a step, for probe transfers to post
    /// within 100 ms again (the wait is reported).
    #[arg(long, default_value_t = 30.0)]
    pub quiet_timeout_secs: f64,
    /// growth, soak and steady: the offered rate of single requests whose time to posted is
    /// measured.
    #[arg(long, default_value_t = 1_000.0)]
    pub rate: f64,
    /// growth: entries of the large ledger.
    #[arg(long, default_value_t = 10_000_000)]
    pub ledger_entries: u64,
    /// Entries on the account `balance-at` reads.
    #[arg(long, default_value_t = 1_000_000)]
    pub history_entries: i64,
    /// How long the soak scenario runs.
    #[arg(long, default_value_t = 1_800)]
    pub soak_secs: u64,
    /// soak: how long finished jobs are kept before the scheduler purges them (the soak is
    /// shorter than the default hour, so purging would not show).
    #[arg(long, default_value_t = 300)]
    pub soak_job_retention_secs: u64,
    /// Accounts of the uniform and hot scenarios.
    #[arg(long, default_value_t = BENCH_ACCOUNTS_DEFAULT)]
    pub accounts: u32,
    /// latency: draw latency against offered load into this SVG file.
    #[arg(long)]
    pub plot: Option<std::path::PathBuf>,
    /// Also write the tables as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum ApiKeyCommand {
    /// Create a key; the key is printed once, on the last line. Recorded in the audit trail.
    Create {
        #[arg(long)]
        name: String,
        /// Comma-separated: transfers:write, transfers:read, transfers:review, webhooks:write,
        /// accounts:write, accounts:read, admin.
        #[arg(long)]
        scopes: String,
        /// The ledger the key is bound to, created if missing (default: `default`). Admin
        /// keys are global and take no ledger.
        #[arg(long)]
        ledger: Option<String>,
        /// Lifetime: a whole number and a unit, s, m, h or d (30d, 12h, 90m); default: never
        /// expires.
        #[arg(long)]
        expires_in: Option<String>,
    },
    /// List keys (never their secrets): id, name, ledger, scopes, created, expires, last used,
    /// revoked.
    List,
    /// Revoke a key: every ferry process refuses it within 10 s. Recorded in the audit trail.
    Revoke {
        /// The key's id (from `ferry api-key list`).
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum LedgerCommand {
    /// Create a ledger (an existing name is an error). Recorded in the audit trail.
    Create {
        /// 1-64 characters of a-z, 0-9, '_', '-'.
        name: String,
    },
    /// List ledgers by name.
    List,
}

/// Arguments of `ferry reconcile`.
#[derive(Debug, clap::Args)]
pub struct ReconcileArgs {
    /// Window start (RFC 3339); default: `--to` minus five minutes.
    #[arg(long)]
    pub from: Option<chrono::DateTime<chrono::Utc>>,
    /// Window end (RFC 3339); default: now.
    #[arg(long)]
    pub to: Option<chrono::DateTime<chrono::Utc>>,
    /// Rebuild the incremental balance sums from the whole ledger.
    #[arg(long)]
    pub full: bool,
    /// Check this ledger only; default: every ledger.
    #[arg(long, value_parser = parse_ledger)]
    pub ledger: Option<crate::domain::LedgerName>,
}

fn parse_ledger(text: &str) -> Result<crate::domain::LedgerName, String> {
    crate::domain::LedgerName::parse(text).map_err(|e| e.to_string())
}

/// A progress bar on a terminal, nothing otherwise.
pub struct BarProgress(indicatif::ProgressBar);

impl BarProgress {
    pub fn new(steps: u64) -> Self {
        let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            indicatif::ProgressBar::new(steps)
        } else {
            indicatif::ProgressBar::hidden()
        };
        if let Ok(style) =
            indicatif::ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} {msg}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        Self(bar)
    }

    pub fn finish(&self) {
        self.0.finish_and_clear();
    }
}

impl crate::reconcile::Progress for BarProgress {
    fn step(&self, name: &'static str) {
        self.0.set_message(name);
        self.0.inc(1);
    }
}
