//! ferry under test, as `ferry serve` child processes of the bench (README, "Benchmarks"):
//! the load generator is this process, ferry is another, so ferry's runtime, allocator and
//! connection pools are not shared with its own client. Both still share the machine's cores:
//! with two, pinning either to one core would halve ferry instead of isolating it.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use ferry::db;
use ferry::domain::Scopes;
use ferry::store::api_keys;

/// Longest wait for a started ferry to answer `/readyz`.
const READY_TIMEOUT_SECS: u64 = 60;
/// Longest wait for a ferry asked to stop (SIGTERM) before it is killed.
const STOP_TIMEOUT_SECS: u64 = 10;
/// Connections the bench's own pool keeps on the scratch database (for what scenarios read
/// back: counts, events' horizon, the jobs table).
const BENCH_POOL_CONNECTIONS: u32 = 4;

/// Which ferry processes a scenario runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One `ferry serve --roles intake,worker`: how most deployments start.
    IntakeAndWorker,
    /// One `--roles intake`; a worker is started later ([`BenchedFerry::start_worker`]).
    IntakeOnly,
    /// One `--roles intake` and this many `--roles worker` processes.
    IntakePlusWorkers(usize),
    /// One `ferry serve` with every role, the scheduler's purge and reconciliation included.
    Everything,
}

/// Settings of the children beyond what they inherit from the bench's environment.
#[derive(Debug, Clone, Default)]
pub struct ChildSettings {
    /// Environment variables set on every child (README, "Configuration").
    pub env: Vec<(String, String)>,
    /// A `FERRY_CONFIG` file for the children, replacing the bench's own.
    pub config_file: Option<PathBuf>,
}

impl ChildSettings {
    pub fn with_env(mut self, name: &str, value: impl Into<String>) -> Self {
        self.env.push((name.to_owned(), value.into()));
        self
    }
}

/// What most scenarios measure against: one ferry (`layout`) on a scratch database of its own,
/// seeded with the scenario's accounts. [`SeededFerry::finish`] stops ferry and drops the
/// database (or keeps it: `FERRY_BENCH_KEEP_DB`), whatever the measurement returned.
pub struct SeededFerry {
    scratch: ferry::harness::ScratchDatabase,
    pool: sqlx::PgPool,
    pub ferry: BenchedFerry,
}

impl SeededFerry {
    pub async fn start(
        config: &ferry::config::Config,
        accounts: u32,
        layout: Layout,
        settings: ChildSettings,
    ) -> anyhow::Result<Self> {
        let (scratch, pool) = super::scratch_database(&config.database.url).await?;
        let started = async {
            super::workload::seed_accounts(&pool, accounts).await?;
            BenchedFerry::start(scratch.url(), layout, settings).await
        }
        .await;
        match started {
            Ok(ferry) => Ok(Self {
                scratch,
                pool,
                ferry,
            }),
            Err(error) => {
                super::finish(scratch, pool).await;
                Err(error)
            }
        }
    }

    pub async fn finish(self) {
        self.ferry.stop().await;
        super::finish(self.scratch, self.pool).await;
    }
}

/// ferry running as child processes on a scratch database, with an admin key.
pub struct BenchedFerry {
    pub base_url: String,
    pub api_key: String,
    database_url: String,
    settings: ChildSettings,
    client: reqwest::Client,
    pool: sqlx::PgPool,
    children: Vec<Child>,
}

impl BenchedFerry {
    pub async fn start(
        database_url: &str,
        layout: Layout,
        settings: ChildSettings,
    ) -> anyhow::Result<Self> {
        let port = free_port()?;
        let (intake_roles, workers) = match layout {
            Layout::IntakeAndWorker => ("intake,worker", 0),
            Layout::IntakeOnly => ("intake", 0),
            Layout::IntakePlusWorkers(n) => ("intake", n),
            Layout::Everything => ("all", 0),
        };
        let pool = db::connect(
            database_url,
            BENCH_POOL_CONNECTIONS,
            Duration::from_secs(30),
        )
        .await?;
        let mut ferry = Self {
            base_url: format!("http://127.0.0.1:{port}"),
            api_key: String::new(),
            database_url: database_url.to_owned(),
            settings,
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(1_024)
                .build()?,
            pool,
            children: Vec::new(),
        };
        let intake = ferry.spawn(intake_roles, Some(port))?;
        ferry.children.push(intake);
        for _ in 0..workers {
            let worker = ferry.spawn("worker", None)?;
            ferry.children.push(worker);
        }
        ferry.wait_ready().await?;
        let scopes = Scopes::parse_list("admin")?;
        let (_, api_key) = api_keys::create(&ferry.pool, "bench", &scopes, None).await?;
        ferry.api_key = api_key;
        Ok(ferry)
    }

    fn spawn(&self, roles: &str, port: Option<u16>) -> anyhow::Result<Child> {
        let mut command = Command::new(server_binary()?);
        command
            .args(["serve", "--roles", roles])
            .env("DATABASE_URL", &self.database_url)
            .env(
                "FERRY_HTTP_ADDR",
                format!("127.0.0.1:{}", port.unwrap_or(0)),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true);
        for (name, value) in &self.settings.env {
            command.env(name, value);
        }
        if let Some(file) = &self.settings.config_file {
            command.env("FERRY_CONFIG", file);
        }
        Ok(command.spawn()?)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(READY_TIMEOUT_SECS);
        let url = format!("{}/readyz", self.base_url);
        loop {
            for child in &mut self.children {
                if let Some(status) = child.try_wait()? {
                    anyhow::bail!("ferry exited before it was ready ({status}; its log is above)");
                }
            }
            if let Ok(response) = self.client.get(&url).send().await
                && response.status().is_success()
            {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "ferry did not become ready within {READY_TIMEOUT_SECS}s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts one more `--roles worker` process on the same database (for
    /// [`Layout::IntakeOnly`]: drain what intake alone accepted); it runs until stopped.
    pub fn start_worker(&self) -> anyhow::Result<Child> {
        self.spawn("worker", None)
    }

    /// The client the scenarios send with (connections kept for every client at once).
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// The scratch database, for what a scenario reads back.
    pub fn pool(&self) -> &sqlx::PgPool {
        &self.pool
    }

    /// The ferry processes' ids, in start order (those still running).
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().filter_map(Child::id).collect()
    }

    /// Resident memory of every ferry process, in KiB (Linux), in start order.
    pub fn rss_kib(&self) -> Vec<Option<u64>> {
        self.children
            .iter()
            .map(|child| child.id().and_then(rss_kib_of))
            .collect()
    }

    /// Asks every process to stop (SIGTERM, as an orchestrator does) and waits; kills what
    /// is still running after [`STOP_TIMEOUT_SECS`].
    pub async fn stop(mut self) {
        for child in &self.children {
            signal_stop(child).await;
        }
        for child in &mut self.children {
            wait_or_kill(child).await;
        }
        self.pool.close().await;
    }

    /// Whether any transfer is still `pending`. `EXISTS`, not a count: the drain below asks
    /// every 10 ms while posting works off a backlog of tens of thousands, and counting them
    /// took 4.5 ms of the database's CPU per question (`pg_stat_statements`, a `uniform` run:
    /// 2.7 s of the run's ~15 s), time the benched ferry lost and its baseline did not.
    pub async fn any_pending(&self) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM transfers WHERE status = 'pending')")
            .fetch_one(&self.pool)
            .await
    }

    /// Waits until no transfer is `pending`.
    pub async fn drain(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while self.any_pending().await? {
            anyhow::ensure!(Instant::now() < deadline, "transfers still pending");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    pub async fn failed_for_contention(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT count(*) FROM transfers WHERE failure_code = 'retries_exhausted'",
        )
        .fetch_one(&self.pool)
        .await
    }
}

/// The binary the benched processes run: this one, or `FERRY_BENCH_SERVER` — another build
/// (the commit before a change, say) driven by this build's load and measured by its
/// harness, so that a comparison differs only in the server (README, "Benchmarks").
fn server_binary() -> anyhow::Result<std::path::PathBuf> {
    match std::env::var_os("FERRY_BENCH_SERVER") {
        Some(path) => Ok(path.into()),
        None => Ok(std::env::current_exe()?),
    }
}

/// Stops one child process as [`BenchedFerry::stop`] does.
pub async fn stop_child(mut child: Child) {
    signal_stop(&child).await;
    wait_or_kill(&mut child).await;
}

async fn signal_stop(child: &Child) {
    if let Some(pid) = child.id() {
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
    }
}

async fn wait_or_kill(child: &mut Child) {
    let stopped = tokio::time::timeout(Duration::from_secs(STOP_TIMEOUT_SECS), child.wait()).await;
    if stopped.is_err() {
        let _ = child.kill().await;
    }
}

/// A port nothing listens on now (bound and released; the child binds it next).
fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Resident memory of process `pid` in KiB, from `/proc` (Linux).
pub fn rss_kib_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
