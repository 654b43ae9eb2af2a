//! Building and running ferry: database, HTTP intake and job workers in one process, by role.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use apalis::prelude::Monitor;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::alerts::Alerting;
use crate::anomaly::screen::Screener;
use crate::config::Config;
use crate::console;
use crate::intake::rate_limit::RateLimiter;
use crate::intake::{self, AppState};
use crate::jobs::deliver_alert::AlertJobContext;
use crate::jobs::reconcile::{ReconcileJobContext, SchedulerContext};
use crate::jobs::{self, post_transfers::PostingJobContext};
use crate::ledger::PostingEngine;
use crate::ledger::combiner::PostingCombiner;
use crate::queue::wakeups::WakeupHub;
use crate::reconcile::schedule::parse_schedule;
use crate::redis_slot::RedisSlot;
use crate::store::api_keys::ApiKeyCache;
use crate::store::group_commit::{GroupCommitter, GroupPacing};
use crate::store::holds;
use crate::webhooks::Dispatcher;
use crate::{db, telemetry};

/// Longest a circuit-breaker read or write waits on Redis before the process uses its own
/// state for the call.
const WEBHOOK_REDIS_TIMEOUT_MS: u64 = 100;

/// How often histogram buffers are folded so memory stays flat between scrapes.
const METRICS_UPKEEP_INTERVAL_MS: u64 = 5_000;

/// `[shutdown]`: how long stopping may take (README, "Configuration").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownSettings {
    /// Time given to in-flight requests and jobs on SIGTERM, then again to background tasks.
    #[serde(rename = "grace_ms", with = "crate::serde_duration::millis")]
    pub grace: Duration,
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        Self {
            // Requests and posting jobs take milliseconds; a job cut off is re-run by orphan
            // recovery (posting is idempotent), so a longer wait buys little.
            grace: Duration::from_secs(10),
        }
    }
}

pub struct Application {
    config: Config,
    pool: PgPool,
    listener: Option<TcpListener>,
    rate_limiter: RateLimiter,
    /// The posting workers' Redis for anomaly windows (unconnected when detection is off).
    anomaly_redis: RedisSlot,
    /// The webhook dispatcher's Redis for endpoint circuits (worker role).
    webhook_redis: RedisSlot,
    schedule: cron::Schedule,
    /// Every background task of the process (group committers, the poster, the rescuer, the
    /// Redis connector, metrics upkeep), awaited at shutdown.
    tasks: TaskTracker,
    /// Cancelled when the process stops: the one stop signal every part listens to.
    stopping: CancellationToken,
}

impl Application {
    /// Creates and migrates the database, connects, and binds the HTTP port (port 0 picks a
    /// free one, as tests do).
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        crate::alerts::deliver::install_crypto_provider();
        let database = &config.database;
        db::create_if_missing(&database.url).await?;
        let pool = db::connect(
            &database.url,
            database.pool_connections_max,
            database.acquire_timeout,
        )
        .await?;
        db::migrate(&pool).await?;
        let listener = if config.roles.intake {
            let listener = TcpListener::bind(config.http.addr)
                .await
                .with_context(|| format!("binding HTTP address {}", config.http.addr))?;
            Some(listener)
        } else {
            None
        };
        let tasks = TaskTracker::new();
        let stopping = CancellationToken::new();
        let rate_limiter =
            RateLimiter::start(&config.redis.url, config.rate_limit, &tasks, &stopping)
                .await
                .context("REDIS_URL is not a valid Redis URL")?;
        let redis = |needed: bool, timeout_ms: u64, user: &'static str| {
            let (url, tasks, stopping) = (&config.redis.url, &tasks, &stopping);
            async move {
                if !needed {
                    return Ok(RedisSlot::default());
                }
                RedisSlot::connect(url, timeout_ms, user, tasks, stopping)
                    .await
                    .context("REDIS_URL is not a valid Redis URL")
            }
        };
        // Only posting workers judge transfers, and only when detection is on.
        let anomaly_timeout_ms =
            u64::try_from(config.anomaly.redis_timeout.as_millis()).unwrap_or(u64::MAX);
        let anomaly_redis = redis(
            config.roles.worker && config.anomaly.enabled,
            anomaly_timeout_ms,
            "anomaly detection",
        )
        .await?;
        let webhook_redis = redis(
            config.roles.worker,
            WEBHOOK_REDIS_TIMEOUT_MS,
            "webhook circuits",
        )
        .await?;
        let schedule = parse_schedule(&config.reconcile.cron)
            .map_err(|e| anyhow::anyhow!("FERRY_RECONCILE_CRON: {e}"))?;
        Ok(Self {
            config,
            pool,
            listener,
            rate_limiter,
            anomaly_redis,
            webhook_redis,
            schedule,
            tasks,
            stopping,
        })
    }

    /// The bound HTTP port, if this process runs the intake.
    pub fn port(&self) -> Option<u16> {
        self.listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|a| a.port())
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Runs every role until `shutdown` resolves or a part stops on its own; says which.
    pub async fn run_until_stopped(
        mut self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let metrics = telemetry::metrics_handle();
        self.start_metrics_upkeep(&metrics);
        let mut http = self.start_intake(metrics);
        if self.config.roles.worker {
            self.tasks.spawn(crate::queue::rescue::run_rescuer(
                self.pool.clone(),
                self.config.workers.queue.rescue_after,
                self.stopping.clone(),
            ));
            self.tasks.spawn(crate::queue::vacuum::run(
                self.pool.clone(),
                self.stopping.clone(),
            ));
        }
        if self.config.roles.worker {
            self.tasks.spawn(crate::ledger::expiry::run(
                self.pool.clone(),
                self.stopping.clone(),
            ));
            let dispatcher = Dispatcher::new(
                self.pool.clone(),
                self.config.webhooks.clone(),
                self.webhook_redis.clone(),
                &db::database_name(&self.config.database.url),
                self.config.alerts.clone(),
            );
            self.tasks
                .spawn(dispatcher.run(self.tasks.clone(), self.stopping.clone()));
        }
        let mut workers = self.start_workers();
        let (outcome, finished) = tokio::select! {
            () = shutdown => { info!("shutdown requested"); (Ok(()), None) }
            r = join_opt(&mut http) => (r.context("intake stopped"), Some("intake")),
            r = join_opt(&mut workers) => (r.context("workers stopped"), Some("workers")),
        };
        self.stop([("intake", http), ("workers", workers)], finished)
            .await;
        outcome
    }

    /// Folds histogram buffers now and then so memory stays flat between scrapes.
    fn start_metrics_upkeep(&self, metrics: &PrometheusHandle) {
        let upkeep = metrics.clone();
        let stopping = self.stopping.clone();
        self.tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(METRICS_UPKEEP_INTERVAL_MS));
            loop {
                tokio::select! {
                    _ = tick.tick() => upkeep.run_upkeep(),
                    () = stopping.cancelled() => return,
                }
            }
        });
    }

    /// Serves the HTTP API, if this process runs the intake role.
    fn start_intake(&mut self, metrics: PrometheusHandle) -> Option<RolePart> {
        let listener = self.listener.take()?;
        let intake = &self.config.intake;
        let pacing = GroupPacing::new(intake.committers, intake.db_timeout, intake.group_linger);
        let state = AppState {
            pool: self.pool.clone(),
            metrics,
            intake: GroupCommitter::for_transfers(self.pool.clone(), pacing, &self.tasks),
            settlements: GroupCommitter::start(
                self.pool.clone(),
                pacing,
                &self.tasks,
                |pool, requests| Box::pin(async move { holds::settle(&pool, &requests).await }),
            ),
            rate_limiter: self.rate_limiter.clone(),
            api_keys: ApiKeyCache::default(),
            db_timeout: self.config.intake.db_timeout,
            webhook_urls: Arc::new(self.config.webhooks.url_policy()),
        };
        let http = self.config.http;
        // The console's overview is sampled once per interval by this process, however many
        // pages are open (README, "Operator console").
        let overview = console::overview::Overview::default();
        let refresh = self.config.intake.console_refresh;
        self.tasks.spawn(
            overview
                .clone()
                .run(self.pool.clone(), refresh, self.stopping.clone()),
        );
        let pages = console::router(console::ConsoleState {
            app: state.clone(),
            overview,
            refresh,
        });
        let router = intake::router(state, http.request_timeout, pages);
        let stopped = self.stopping.clone().cancelled_owned();
        info!(addr = ?listener.local_addr().ok(), "intake listening");
        Some(tokio::spawn(async move {
            intake::serve::serve(listener, router, http, stopped).await;
            Ok(())
        }))
    }

    /// Runs the job workers and the cron, if this process has the worker or scheduler role.
    fn start_workers(&self) -> Option<RolePart> {
        let roles = self.config.roles;
        if !(roles.worker || roles.scheduler) {
            return None;
        }
        let monitor = self.build_monitor();
        let stopped = self.stopping.clone().cancelled_owned();
        info!(
            worker = roles.worker,
            scheduler = roles.scheduler,
            posting_workers = self.config.workers.posting_workers,
            "workers starting"
        );
        Some(tokio::spawn(async move {
            monitor
                .run_with_signal(async move {
                    stopped.await;
                    Ok(())
                })
                .await
                .context("job workers failed")
        }))
    }

    /// Stops every part: the roles get the grace period for in-flight requests and jobs (a
    /// job cut off here is re-run by orphan recovery, and posting is idempotent), then the
    /// background tasks, then the pool.
    async fn stop(self, parts: [(&str, Option<RolePart>); 2], finished: Option<&str>) {
        self.stopping.cancel();
        let grace = self.config.shutdown.grace;
        for (part, task) in parts {
            if let (Some(task), false) = (task, finished == Some(part))
                && tokio::time::timeout(grace, task).await.is_err()
            {
                warn!(part, "did not stop within the grace period");
            }
        }
        // Committers and the poster end once intake and workers dropped their handles; the
        // rest watch `stopping`.
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            warn!(
                tasks = self.tasks.len(),
                "background tasks did not stop within the grace period"
            );
        }
        self.pool.close().await;
    }
}

impl Application {
    /// The apalis monitor with this process's workers (worker role) and cron (scheduler role).
    fn build_monitor(&self) -> Monitor {
        // The cause is logged here, once per restart; the pause, the new name and the
        // `ferry_worker_restarts_total` count come from the worker's slot (jobs/mod.rs).
        let mut monitor = Monitor::new().should_restart(|worker, error| {
            warn!(worker = worker.name(), restarts = worker.restarts(), %error, "worker stopped; restarting");
            true
        });
        if self.config.roles.worker {
            let alerting = Alerting::new(self.config.alerts.clone());
            let engine = PostingEngine::new(self.pool.clone(), self.config.failpoint);
            let posting = PostingJobContext {
                poster: PostingCombiner::start(engine, &self.tasks),
                pool: self.pool.clone(),
                alerting: alerting.clone(),
                screener: Screener::new(
                    Arc::new(self.config.anomaly.clone()),
                    self.anomaly_redis.clone(),
                    &db::database_name(&self.config.database.url),
                    self.config.alerts.clone(),
                ),
            };
            let reconciling = ReconcileJobContext {
                pool: self.pool.clone(),
                settings: self.config.reconcile.clone(),
                alerting: alerting.clone(),
            };
            let delivering = AlertJobContext {
                pool: self.pool.clone(),
                alerting,
            };
            let wakeups = WakeupHub::start(self.pool.clone(), &self.tasks, self.stopping.clone());
            monitor = jobs::register_workers(
                monitor,
                &self.pool,
                &self.config.workers,
                posting,
                reconciling,
                delivering,
                &wakeups,
            );
        }
        if self.config.roles.scheduler {
            let scheduler = SchedulerContext {
                pool: self.pool.clone(),
                schedule: self.schedule.clone(),
            };
            monitor = jobs::register_scheduler(monitor, scheduler);
        }
        monitor
    }
}

/// A role's task (intake or workers): ends with why it stopped.
type RolePart = tokio::task::JoinHandle<anyhow::Result<()>>;

/// Waits for an optional task; a role this process does not run never finishes.
async fn join_opt(task: &mut Option<RolePart>) -> anyhow::Result<()> {
    match task {
        Some(task) => task.await.context("task panicked")?,
        None => std::future::pending().await,
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
