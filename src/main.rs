//! `ferry`: parse the command line, build, run, and report which part stopped and why.

// `ferry bench` is the binary's, not the library's (ARCHITECTURE.md, `src/bin_bench/`).
#[path = "bin_bench/mod.rs"]
mod bench;

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use ferry::app::{Application, shutdown_signal};
use ferry::cli::{
    AlertsCommand, ApiKeyCommand, BarProgress, BenchArgs, Cli, Command, ReconcileArgs,
};
use ferry::config::Config;
use ferry::domain::Scopes;
use ferry::reconcile::runs::{self, Trigger};
use ferry::reconcile::window::Window;
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
            connect_migrated(&config).await?;
            println!("database migrated");
            Ok(())
        }
        Command::Reconcile(args) => reconcile(&config, args).await,
        Command::Bench(args) => run_bench(&config, args).await,
        Command::Alerts(AlertsCommand::Test) => alerts_test(&config).await,
        Command::ApiKey(ApiKeyCommand::Create { name, scopes }) => {
            let scopes = Scopes::parse_list(&scopes)?;
            let pool = connect_migrated(&config).await?;
            let (id, key) = store::api_keys::create(&pool, &name, &scopes, None)
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

/// `ferry reconcile`: one run in the foreground, a report, and exit 1 on critical findings.
async fn reconcile(config: &Config, args: ReconcileArgs) -> anyhow::Result<()> {
    let to = args.to.unwrap_or_else(chrono::Utc::now);
    let from = args.from.unwrap_or(to - chrono::Duration::minutes(5));
    let window = Window::new(from, to)?;
    let pool = connect_migrated(config).await?;
    let mut conn = pool.acquire().await?;
    let run = runs::create(
        &mut conn,
        Trigger::Cli,
        window,
        args.full,
        args.ledger.as_ref(),
    )
    .await?
    .context("creating the run")?;
    drop(conn);
    let progress = BarProgress::new(ferry::reconcile::STEPS);
    let alerting = ferry::alerts::Alerting::new(config.alerts.clone());
    let outcome =
        ferry::reconcile::execute(&pool, run.id, &config.reconcile, &alerting, &progress).await;
    progress.finish();
    let outcome = outcome?.context("the run was already finished")?;
    print!("{}", ferry::reconcile::report::render(&run, &outcome));
    if outcome.has_critical() {
        std::process::exit(1);
    }
    Ok(())
}

async fn connect_migrated(config: &Config) -> anyhow::Result<sqlx::PgPool> {
    db::create_if_missing(&config.database_url).await?;
    let pool = db::connect(&config.database_url, 4, config.db_acquire_timeout()).await?;
    db::migrate(&pool).await?;
    Ok(pool)
}

/// `ferry bench`: run scenarios, print the table, write JSON rows if asked.
async fn run_bench(config: &Config, args: BenchArgs) -> anyhow::Result<()> {
    let rows = bench::run(
        config,
        &args.scenario,
        args.transfers,
        args.accounts,
        args.soak_secs,
    )
    .await?;
    bench::print_table(&rows);
    if let Some(path) = args.json {
        std::fs::write(&path, serde_json::to_string_pretty(&rows)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// `ferry alerts test`: a test alert through every sink, sent now (not queued), then its
/// resolve so no incident stays open.
async fn alerts_test(config: &Config) -> anyhow::Result<()> {
    use ferry::alerts::deliver::{AttemptOutcome, send};
    use ferry::alerts::payload::Action;
    let alerting = ferry::alerts::Alerting::new(config.alerts.clone());
    anyhow::ensure!(
        !alerting.config.sinks.is_empty(),
        "no alert sinks configured (set FERRY_CONFIG to a TOML file with [[alerts.sinks]])"
    );
    let mut refused = 0;
    for sink in &alerting.config.sinks {
        let mut line = format!("{:<24} {:<10}", sink.name, sink.kind.as_str());
        for action in [Action::Trigger, Action::Resolve] {
            let event = ferry::alerts::outbox::event(
                "ferry:test".into(),
                action,
                "ferry.test".into(),
                ferry::domain::Severity::Info,
                "test alert from `ferry alerts test`".into(),
                serde_json::json!({"test": true}),
            );
            let message_id = format!("msg_{}", event.id.simple());
            let (outcome, latency) = send(&alerting.client, sink, &event, &message_id).await;
            line.push_str(&format!(
                "  {} {} ({} ms)",
                action.as_str(),
                match &outcome {
                    AttemptOutcome::Delivered { status } => format!("delivered HTTP {status}"),
                    AttemptOutcome::Retry { error, .. } => format!("failed, retryable: {error}"),
                    AttemptOutcome::Permanent { error, .. } => format!("REFUSED: {error}"),
                },
                latency.as_millis()
            ));
            if matches!(outcome, AttemptOutcome::Permanent { .. }) {
                refused += 1;
                break;
            }
        }
        println!("{line}");
    }
    anyhow::ensure!(refused == 0, "{refused} sink(s) refused the test alert");
    Ok(())
}
