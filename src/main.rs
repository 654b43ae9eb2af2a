//! `ferry`: parse the command line, build, run, and report which part stopped and why.

// `ferry bench` is the binary's, not the library's (ARCHITECTURE.md, `src/bin_bench/`).
#[path = "bin_bench/mod.rs"]
mod bench;

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use ferry::app::{Application, shutdown_signal};
use ferry::cli::{
    AccountCommand, AccountListArgs, AlertsCommand, ApiKeyCommand, BarProgress, BenchArgs, Cli,
    Command, EventsCommand, LedgerCommand, ReconcileArgs, TailArgs,
};
use ferry::config::Config;
use ferry::domain::{AccountId, ApiKeyName, KeyLifetime, LedgerName, MetadataMatch, Scopes};
use ferry::reconcile::runs::{self, Trigger};
use ferry::reconcile::window::Window;
use ferry::store::accounts::{self, AccountFilter};
use ferry::store::api_keys::{self, KeySpec, MissingLedger, RevokeKeyError};
use ferry::store::audit::{self, Actor, AuditAction};
use ferry::store::ledgers::{self, CreateLedgerError};
use ferry::{db, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init_logging(cli.command.default_log_level());
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    // `serve --roles` is the one setting on the command line; it joins the rest before the
    // settings are validated, once.
    let roles = match &cli.command {
        Command::Serve { roles } => *roles,
        _ => None,
    };
    let config = Config::load(roles)?;
    match cli.command {
        Command::Serve { .. } => {
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
        Command::ApiKey(command) => api_key(&config, command).await,
        Command::Ledger(command) => ledger(&config, command).await,
        Command::Account(AccountCommand::List(args)) => list_accounts(&config, args).await,
        Command::Events(EventsCommand::Tail(args)) => events_tail(args).await,
    }
}

/// `ferry events tail`: a follower of `GET /v1/events`, as a producer would write one. Reading
/// on from `next_after` never skips an event (README, "Events and webhooks").
async fn events_tail(args: TailArgs) -> anyhow::Result<()> {
    ferry::alerts::deliver::install_crypto_provider();
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()?;
    let mut after = args.after;
    let base = args.url.trim_end_matches('/');
    loop {
        let mut url = reqwest::Url::parse(&format!("{base}/v1/events"))
            .context("FERRY_API_URL is not a URL")?;
        url.query_pairs_mut()
            .append_pair("after", &after.to_string())
            .append_pair("limit", "1000");
        if let Some(types) = &args.types {
            url.query_pairs_mut().append_pair("types", types);
        }
        if let Some(ledger) = &args.ledger {
            url.query_pairs_mut().append_pair("ledger", ledger);
        }
        let response = client
            .get(url)
            .bearer_auth(&args.api_key)
            .send()
            .await
            .context("reading the event feed")?;
        let status = response.status();
        let page: serde_json::Value = response.json().await.context("reading the event feed")?;
        if !status.is_success() {
            anyhow::bail!("the event feed answered {status}: {}", page["detail"]);
        }
        let events = page["events"].as_array().cloned().unwrap_or_default();
        for event in &events {
            if args.json {
                println!("{event}");
            } else {
                println!(
                    "{}\t{}\t{}\t{}",
                    event["seq"],
                    event["type"].as_str().unwrap_or("?"),
                    event["created_at"].as_str().unwrap_or("?"),
                    event["data"]["id"]
                );
            }
        }
        after = page["next_after"].as_i64().unwrap_or(after);
        if events.is_empty() {
            if args.once {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(args.poll_ms)).await;
        }
    }
}

/// `ferry api-key create|list|revoke`: acts of an operator on the host, recorded in the audit
/// trail with no actor key (README, "Ledgers and authorization").
async fn api_key(config: &Config, command: ApiKeyCommand) -> anyhow::Result<()> {
    match command {
        ApiKeyCommand::Create {
            name,
            scopes,
            ledger,
            expires_in,
        } => {
            let spec = KeySpec {
                name: ApiKeyName::parse(&name).context("--name")?,
                scopes: Scopes::parse_list(&scopes).context("--scopes")?,
                ledger: ledger
                    .as_deref()
                    .map(LedgerName::parse)
                    .transpose()
                    .context("--ledger")?,
                lifetime: expires_in
                    .as_deref()
                    .map(KeyLifetime::parse)
                    .transpose()
                    .context("--expires-in")?,
            };
            create_api_key(config, spec).await
        }
        ApiKeyCommand::List => list_api_keys(config).await,
        ApiKeyCommand::Revoke { id } => revoke_api_key(config, &id).await,
    }
}

async fn create_api_key(config: &Config, spec: KeySpec) -> anyhow::Result<()> {
    anyhow::ensure!(
        !(spec.scopes.is_global() && spec.ledger.is_some()),
        "--ledger: admin and console:read keys are global; they cannot be bound to a ledger"
    );
    anyhow::ensure!(
        !spec.scopes.viewer_combined(),
        "--scopes: console:read is a viewer key's only scope; it cannot be combined with others"
    );
    let pool = connect_migrated(config).await?;
    // The CLI creates the key's ledger if it is missing; the API does not.
    let created = api_keys::issue(&pool, &spec, MissingLedger::Create, &Actor::operator())
        .await
        .context("storing the API key")?;
    let key = &created.key;
    println!(
        "created API key {} ({}) with scopes {}, {}, {}",
        key.id,
        key.name,
        key.scopes.join(","),
        key.ledger
            .as_deref()
            .map_or_else(|| "global".to_owned(), |l| format!("ledger {l}")),
        key.expires_at.map_or_else(
            || "never expires".to_owned(),
            |at| format!("expires {}", time(at))
        ),
    );
    println!("store it now; it cannot be shown again:");
    println!("{}", created.plaintext);
    Ok(())
}

async fn list_api_keys(config: &Config) -> anyhow::Result<()> {
    let pool = connect_migrated(config).await?;
    let mut rows = vec![
        [
            "ID",
            "NAME",
            "LEDGER",
            "SCOPES",
            "CREATED",
            "EXPIRES",
            "LAST USED",
            "REVOKED",
        ]
        .map(str::to_owned),
    ];
    let mut cursor = None;
    loop {
        let page = api_keys::list(&pool, 1000, cursor).await?;
        for key in &page {
            let at = |t: Option<chrono::DateTime<chrono::Utc>>, none: &str| {
                t.map_or_else(|| none.to_owned(), time)
            };
            rows.push([
                key.id.to_string(),
                key.name.clone(),
                key.ledger.clone().unwrap_or_else(|| "(global)".to_owned()),
                key.scopes.join(","),
                time(key.created_at),
                at(key.expires_at, "never"),
                at(key.last_used_at, "never"),
                at(key.revoked_at, "-"),
            ]);
        }
        match page.last() {
            Some(last) if page.len() == 1000 => cursor = Some(last.id),
            _ => break,
        }
    }
    print_table(&rows);
    Ok(())
}

async fn revoke_api_key(config: &Config, id: &str) -> anyhow::Result<()> {
    let id = uuid::Uuid::parse_str(id)
        .map_err(|_| anyhow::anyhow!("{id:?} is not an API key id (see `ferry api-key list`)"))?;
    let pool = connect_migrated(config).await?;
    match api_keys::revoke(&pool, id, &Actor::operator()).await {
        Ok(key) => {
            println!(
                "revoked API key {} ({}); every ferry process refuses it within {} s",
                key.id,
                key.name,
                api_keys::REVOCATION_BOUND_MS / 1000
            );
            Ok(())
        }
        Err(RevokeKeyError::NotFound(id)) => {
            anyhow::bail!("no API key {id} (see `ferry api-key list`)")
        }
        Err(RevokeKeyError::AlreadyRevoked(key)) => anyhow::bail!(
            "API key {} ({}) was already revoked{}",
            key.id,
            key.name,
            key.revoked_at
                .map(|at| format!(" at {}", time(at)))
                .unwrap_or_default()
        ),
        Err(e) => Err(anyhow::Error::new(e).context("revoking the API key")),
    }
}

/// `ferry ledger create|list`.
async fn ledger(config: &Config, command: LedgerCommand) -> anyhow::Result<()> {
    match command {
        LedgerCommand::Create { name } => {
            let name = LedgerName::parse(&name).context("ledger name")?;
            let pool = connect_migrated(config).await?;
            match ledgers::create(&pool, &name, &Actor::operator()).await {
                Ok(ledger) => {
                    println!("created ledger {}", ledger.name);
                    Ok(())
                }
                Err(CreateLedgerError::Exists(name)) => {
                    anyhow::bail!("ledger {name} already exists")
                }
                Err(e) => Err(anyhow::Error::new(e).context("creating the ledger")),
            }
        }
        LedgerCommand::List => {
            let pool = connect_migrated(config).await?;
            let mut rows = vec![["NAME", "CREATED"].map(str::to_owned)];
            let mut after: Option<LedgerName> = None;
            loop {
                let page = ledgers::list(&pool, 1000, after.as_ref()).await?;
                for ledger in &page {
                    rows.push([ledger.name.clone(), time(ledger.created_at)]);
                }
                match page.last() {
                    Some(last) if page.len() == 1000 => {
                        after = Some(LedgerName::from_trusted(last.name.clone()));
                    }
                    _ => break,
                }
            }
            print_table(&rows);
            Ok(())
        }
    }
}

/// `ferry account list`: the rows `GET /v1/accounts` pages through, read from the database by
/// the same query, every page.
async fn list_accounts(config: &Config, args: AccountListArgs) -> anyhow::Result<()> {
    let mut metadata = MetadataMatch::default();
    for pair in &args.metadata {
        metadata.require_pair(pair).context("--metadata")?;
    }
    let mut filter = AccountFilter {
        ledger: args.ledger,
        status: args.status,
        currency: args.currency,
        metadata,
        created_after: args.created_after,
        after: None,
    };
    let pool = connect_migrated(config).await?;
    let mut rows = vec![
        [
            "ID",
            "STATUS",
            "CURRENCY",
            "BALANCE",
            "AVAILABLE",
            "CREATED",
            "METADATA",
        ]
        .map(str::to_owned),
    ];
    loop {
        let page = accounts::list(&pool, &filter, CLI_PAGE_LEN).await?;
        for account in &page {
            rows.push([
                account.id.clone(),
                account.status.clone(),
                account.currency.clone(),
                account.balance.clone(),
                account.available.clone(),
                time(account.created_at),
                account.metadata.to_string(),
            ]);
        }
        match page.last() {
            Some(last) if page.len() as i64 == CLI_PAGE_LEN => {
                filter.after = Some(AccountId::from_trusted(last.id.clone()));
            }
            _ => break,
        }
    }
    print_table(&rows);
    Ok(())
}

/// Rows per query when a CLI command reads a whole listing.
const CLI_PAGE_LEN: i64 = 1000;

/// A time as the CLI prints it: RFC 3339, UTC, whole seconds.
fn time(at: chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Rows as left-aligned columns two spaces apart; the first row is the header.
fn print_table<const N: usize>(rows: &[[String; N]]) {
    let mut widths = [0; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}

/// `ferry reconcile`: one run in the foreground, a report, and exit 1 on critical findings.
async fn reconcile(config: &Config, args: ReconcileArgs) -> anyhow::Result<()> {
    let to = args.to.unwrap_or_else(chrono::Utc::now);
    let from = args.from.unwrap_or(to - chrono::Duration::minutes(5));
    let window = Window::new(from, to)?;
    let pool = connect_migrated(config).await?;
    // The run and its audit event commit together.
    let mut tx = pool.begin().await?;
    let run = runs::create(
        &mut tx,
        Trigger::Cli,
        window,
        args.full,
        args.ledger.as_ref(),
    )
    .await?
    .context("creating the run")?;
    let started = Actor::operator().event(
        AuditAction::ReconciliationStarted,
        args.ledger.as_ref(),
        audit::target::reconciliation(run.id),
        serde_json::json!({"from": from, "to": to, "full": args.full}),
    );
    audit::record(&mut *tx, &started).await?;
    tx.commit().await?;
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
    let database = &config.database;
    db::create_if_missing(&database.url).await?;
    let pool = db::connect(&database.url, 4, database.acquire_timeout).await?;
    db::migrate(&pool).await?;
    Ok(pool)
}

/// `ferry bench`: run scenarios, print the table, write JSON rows if asked.
async fn run_bench(config: &Config, args: BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.reps > 0, "--reps must be at least 1");
    anyhow::ensure!(
        args.rate > 0.0 && args.step_secs > 0.0,
        "--rate and --step-secs must be above zero"
    );
    let options = bench::Options {
        transfers: args.transfers,
        accounts: args.accounts,
        reps: args.reps,
        warmup_secs: args.warmup_secs,
        measure_secs: args.measure_secs,
        step_secs: args.step_secs,
        quiet_timeout_secs: args.quiet_timeout_secs,
        rate_per_sec: args.rate,
        ledger_entries: args.ledger_entries,
        history_entries: args.history_entries,
        soak_secs: args.soak_secs,
        soak_job_retention_secs: args.soak_job_retention_secs,
        plot: args.plot,
    };
    let report = bench::run(config, &args.scenario, &options).await?;
    if !report.rows.is_empty() {
        bench::print_table(&report.rows);
    }
    if let Some(path) = args.json {
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)
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
