//! Reconciliation: re-checks the ledger's invariants from the database, records findings,
//! re-drives stuck transfers and purges finished jobs. Runs every five minutes (scheduler
//! role), on demand (`POST /v1/reconciliations`), or in the foreground (`ferry reconcile`).
//! A run checks every ledger, or one (`"ledger"`, `--ledger`); every finding names its ledger.

pub mod checks;
pub mod finding;
pub mod findings;
pub mod holds;
pub mod repair;
pub mod report;
pub mod runs;
pub mod schedule;
pub mod window;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde::Deserialize;
use sqlx::PgPool;
use tracing::{info, warn};
use uuid::Uuid;

use crate::alerts::payload::Action;
use crate::alerts::{Alerting, finding_event, outbox};
use crate::domain::LedgerName;
use crate::queue::table::{self, Retention};
use checks::{TransferScope, Waiting};
use finding::{FindingKind, Observation, Severity};
use findings::FindingChanges;

/// Windows are widened backwards by this much, so a transfer committed just after a run's
/// snapshot but stamped inside its window is seen by the next run. Findings are deduplicated,
/// so the overlap costs nothing but a little scanning.
pub const WINDOW_OVERLAP_SECS: i64 = 60;
/// Steps a run reports to its progress display.
pub const STEPS: u64 = 8;

/// `[reconcile]`: when runs happen and what they judge (README, "Configuration").
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReconcileSettings {
    /// Cron expression of scheduled runs, seconds first ([`schedule::parse_schedule`]).
    pub cron: String,
    /// A pending transfer older than this is `stuck_pending`.
    #[serde(rename = "stuck_pending_secs", with = "crate::serde_duration::secs")]
    pub stuck_after: Duration,
    /// A transfer held for review longer than this is `stale_review`.
    #[serde(rename = "stale_review_secs", with = "crate::serde_duration::secs")]
    pub stale_review_after: Duration,
    /// A posting job locked longer than this is not live: the rescuer takes it back, and
    /// re-drive does not wait for it. Not a setting of its own: the configuration copies the
    /// queue's `rescue_after`, so the rescuer and re-drive agree.
    #[serde(skip)]
    pub job_rescue_after: Duration,
    /// A full rescan of the ledger (rebuilding the incremental sums) at least this often.
    #[serde(rename = "full_scan_every_secs", with = "crate::serde_duration::secs")]
    pub full_scan_every: Duration,
    pub retention: Retention,
}

impl Default for ReconcileSettings {
    fn default() -> Self {
        Self {
            cron: schedule::RECONCILE_CRON_DEFAULT.to_owned(),
            // README, "Reconciliation": 10 min.
            stuck_after: Duration::from_secs(600),
            // README, "Anomaly detection": reviews older than a day.
            stale_review_after: Duration::from_secs(86_400),
            job_rescue_after: crate::queue::rescue::RESCUE_AFTER_DEFAULT,
            full_scan_every: Duration::from_secs(24 * 3_600),
            retention: Retention::default(),
        }
    }
}

/// Receives progress from a run (the CLI draws a bar; jobs ignore it).
pub trait Progress: Send + Sync {
    fn step(&self, name: &'static str);
}

pub struct NoProgress;

impl Progress for NoProgress {
    fn step(&self, _: &'static str) {}
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("reconciliation run {0} does not exist")]
    UnknownRun(Uuid),
    #[error("database error during reconciliation")]
    Database(#[from] sqlx::Error),
    #[error("could not re-drive stuck transfers")]
    Redrive(#[from] crate::queue::EnqueueError),
    #[error("could not raise alerts")]
    Alert(#[from] crate::alerts::outbox::OutboxError),
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct RunOutcome {
    /// The one ledger the run checked; `None`: every ledger.
    pub ledger: Option<LedgerName>,
    pub transfers_checked: i64,
    pub accounts_checked: i64,
    pub full_scan: bool,
    pub changes: FindingChanges,
    /// How many findings the run saw, per kind (every kind, zeros included).
    pub observed: Vec<(FindingKind, usize)>,
    /// Open findings per (kind, ledger) after the run, zeros for what it resolved.
    pub open_by_ledger: Vec<(FindingKind, Option<String>, usize)>,
    /// The first [`REPORT_SAMPLE_MAX`] observations, in check order (critical checks first).
    pub sample: Vec<Observation>,
    pub transfers_redriven: usize,
    pub jobs_purged: u64,
    /// Producer events past their retention, deleted by this run.
    pub events_purged: u64,
    pub elapsed: Duration,
}

impl RunOutcome {
    pub fn has_critical(&self) -> bool {
        self.observed
            .iter()
            .any(|&(kind, n)| n > 0 && kind.severity() == Severity::Critical)
    }

    /// How many findings the run saw.
    pub fn observed_total(&self) -> usize {
        self.observed.iter().map(|(_, n)| n).sum()
    }
}

/// Executes run `run_id` (created by [`runs::create`]) and records its outcome. A run that
/// already finished (a redelivered job) is left as it is.
pub async fn execute(
    pool: &PgPool,
    run_id: Uuid,
    settings: &ReconcileSettings,
    alerting: &Alerting,
    progress: &dyn Progress,
) -> Result<Option<RunOutcome>, ReconcileError> {
    let row: Option<StartedRun> = sqlx::query_as(
        "UPDATE reconciliation_runs SET started_at = now() \
         WHERE id = $1 AND status = 'running' RETURNING window_start, window_end, full_scan",
    )
    .bind(run_id)
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else {
        let exists = runs::get(pool, run_id).await?.is_some();
        return if exists {
            Ok(None)
        } else {
            Err(ReconcileError::UnknownRun(run_id))
        };
    };
    let window = window::Window {
        start: row.window_start,
        end: row.window_end,
    };
    match check_and_record(
        pool,
        run_id,
        window,
        row.full_scan,
        settings,
        alerting,
        progress,
    )
    .await
    {
        Ok(outcome) => {
            finish(pool, run_id, &outcome).await?;
            info!(
                %run_id,
                transfers = outcome.transfers_checked,
                open = outcome.changes.open,
                opened = outcome.changes.opened,
                resolved = outcome.changes.resolved,
                elapsed_ms = outcome.elapsed.as_millis() as u64,
                "reconciliation completed"
            );
            Ok(Some(outcome))
        }
        Err(e) => {
            warn!(%run_id, error = %e, "reconciliation failed");
            sqlx::query(
                "UPDATE reconciliation_runs SET status = 'failed', error = $2, \
                 finished_at = now() WHERE id = $1",
            )
            .bind(run_id)
            .bind(format!("{e:#}"))
            .execute(pool)
            .await?;
            Err(e)
        }
    }
}

/// A run as [`execute`] starts it: what it covers.
#[derive(sqlx::FromRow)]
struct StartedRun {
    window_start: chrono::DateTime<Utc>,
    window_end: chrono::DateTime<Utc>,
    full_scan: bool,
}

async fn check_and_record(
    pool: &PgPool,
    run_id: Uuid,
    window: window::Window,
    full_requested: bool,
    settings: &ReconcileSettings,
    alerting: &Alerting,
    progress: &dyn Progress,
) -> Result<RunOutcome, ReconcileError> {
    let started = Instant::now();
    let (mut tx, state) = begin_snapshot(pool, settings).await?;
    let ledger = runs::ledger_of(&mut tx, run_id).await?;
    // The daily full scan is due for the sums of every ledger: only a run over every ledger
    // does it (and records it); a run over one ledger rescans it only when asked to.
    let full = full_requested || (ledger.is_none() && state.full_due);
    let mut outcome = RunOutcome {
        ledger: ledger.clone(),
        full_scan: full,
        ..RunOutcome::default()
    };
    let mut recorder = Recorder::new(run_id, ledger.clone(), alerting);
    check_ledger(
        &mut tx,
        &mut recorder,
        &mut outcome,
        window,
        state.entries_through_id,
        progress,
    )
    .await?;
    progress.step("stuck transfers");
    outcome.transfers_redriven = check_stuck(&mut tx, &mut recorder, settings).await?;
    progress.step("dead jobs");
    // Dead jobs and purging concern the queue, not one ledger: runs over every ledger do them.
    if ledger.is_none() {
        check_dead_jobs(&mut tx, &mut recorder).await?;
    }
    progress.step("recording findings");
    recorder.resolve(&mut tx).await?;
    outcome.open_by_ledger = findings::open_by_ledger(&mut tx, run_id).await?;
    outcome.observed = findings::per_kind(&outcome.open_by_ledger);
    outcome.changes = recorder.changes;
    outcome.changes.open = outcome.observed.iter().map(|(_, n)| n).sum();
    outcome.sample = recorder.sample;
    tx.commit().await?;

    progress.step("purging finished jobs");
    if ledger.is_none() {
        let mut conn = pool.acquire().await?;
        outcome.jobs_purged = table::purge_finished(&mut conn, settings.retention).await?;
        outcome.events_purged = crate::events::purge(&mut conn, settings.retention.events).await?;
    }
    outcome.elapsed = started.elapsed();
    metrics::histogram!("ferry_reconciliation_seconds").record(outcome.elapsed.as_secs_f64());
    Ok(outcome)
}

/// Where the previous run left the incremental sums, and whether a full scan is due.
#[derive(sqlx::FromRow)]
struct ReconcileState {
    entries_through_id: i64,
    full_due: bool,
}

/// Opens the run's one snapshot and reads the reconciliation state in it.
async fn begin_snapshot(
    pool: &PgPool,
    settings: &ReconcileSettings,
) -> Result<(sqlx::Transaction<'static, sqlx::Postgres>, ReconcileState), ReconcileError> {
    // One consistent snapshot for every check. The state lock comes first, before the
    // snapshot is fixed, so runs take turns and each sees the sums its predecessor wrote.
    let mut tx = pool
        .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .await?;
    // Large windows aggregate a million transfers: give the hash tables room in memory
    // instead of spilling to disk (4 MB is PostgreSQL's default). Random reads on SSD cost
    // about what sequential ones do; with the default cost model the planner hashes the whole
    // entries table even for a 10k window (measured: 0.9 s instead of 0.06 s on 2M entries).
    // A run shares the machine with posting: one backend, no parallel workers (the orphan
    // check's parallel hash over every transfer took three processes on two cores), no JIT
    // (PostgreSQL compiled 30-44 functions for each of these statements; not measured apart),
    // and each paged statement planned for its own bounds rather than a generic plan that
    // cannot see a page's LIMIT.
    sqlx::raw_sql(
        "SET LOCAL lock_timeout = '120s'; \
         SET LOCAL work_mem = '256MB'; \
         SET LOCAL random_page_cost = 1.1; \
         SET LOCAL max_parallel_workers_per_gather = 0; \
         SET LOCAL jit = off; \
         SET LOCAL plan_cache_mode = force_custom_plan; \
         LOCK TABLE reconciliation_state IN EXCLUSIVE MODE",
    )
    .execute(&mut *tx)
    .await?;
    let state: ReconcileState = sqlx::query_as(
        "SELECT entries_through_id, \
           coalesce(last_full_scan_at < now() - make_interval(secs => $1), true) AS full_due \
         FROM reconciliation_state",
    )
    .bind(settings.full_scan_every.as_secs_f64())
    .fetch_one(&mut *tx)
    .await?;
    Ok((tx, state))
}

/// The money checks over the run's ledger (or every ledger): transfers against their entries
/// in the window (plus the subjects of open findings), orphan entries, balances and
/// (ledger, currency) totals; then, in a run over every ledger, moves the incremental sums
/// forward.
///
/// A run over one ledger leaves `reconciliation_state` as it is. The watermark
/// `entries_through_id` is one for all ledgers, and the orphan check of the next run over
/// every ledger starts from it; moving it after checking one ledger would skip the other
/// ledgers' new entries. So such a run checks its ledger's entries after the watermark
/// without folding them (`checks::balances`), and a full scan of one ledger rebuilds only that
/// ledger's sums, up to the unchanged watermark (ARCHITECTURE.md, `src/reconcile/`).
async fn check_ledger(
    tx: &mut sqlx::PgConnection,
    recorder: &mut Recorder<'_>,
    outcome: &mut RunOutcome,
    window: window::Window,
    through_id: i64,
    progress: &dyn Progress,
) -> Result<(), ReconcileError> {
    let full = outcome.full_scan;
    let ledger = outcome.ledger.clone();
    let ledger = ledger.as_ref();
    progress.step("open findings");
    let recheck = findings::open_transfer_subjects(tx, &RECHECKED_KINDS, ledger).await?;
    progress.step("transfers and their entries");
    let mut scope = Some(TransferScope::Recheck {
        ids: &recheck,
        from: window.start - chrono::Duration::seconds(WINDOW_OVERLAP_SECS),
        to: window.end,
    });
    checks::join_by_index_probes(tx, true).await?;
    while let Some(this) = scope {
        let page = checks::transfers(tx, ledger, this).await?;
        recorder.record(tx, page.observations).await?;
        outcome.transfers_checked += page.checked;
        scope = this.following(page.next);
    }
    checks::join_by_index_probes(tx, false).await?;
    recorder.checked(&TRANSFER_KINDS);
    progress.step("orphan entries");
    let orphans_after = if full { 0 } else { through_id };
    let found = checks::orphan_entries(tx, ledger, orphans_after, &recheck).await?;
    recorder.record(tx, found).await?;
    recorder.checked(&[FindingKind::OrphanEntry]);
    drop(recheck);
    progress.step("balances and currency totals");
    let balances = checks::balances(tx, ledger, through_id, full).await?;
    recorder.record(tx, balances.observations).await?;
    recorder.checked(&[FindingKind::BalanceDrift, FindingKind::LedgerUnbalanced]);
    outcome.accounts_checked = balances.accounts_checked;
    progress.step("holds and reversals");
    let found = holds::hold_drift(tx, ledger).await?;
    recorder.record(tx, found).await?;
    recorder.checked(&[FindingKind::HoldDrift]);
    let found = holds::over_reversed(tx, ledger).await?;
    recorder.record(tx, found).await?;
    recorder.checked(&[FindingKind::OverReversed]);
    if ledger.is_some() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE reconciliation_state SET entries_through_id = $1, \
           last_full_scan_at = CASE WHEN $2 THEN now() ELSE last_full_scan_at END",
    )
    .bind(balances.entries_through_id)
    .bind(full)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Every transfer of the run's ledger (or of every ledger) pending past the threshold, page by
/// page, re-driving those no live job carries; then every one in review past its threshold
/// (nothing to re-drive: it waits for a reviewer); then every hold held 5 minutes past its
/// expiry (re-driven too). Returns how many were re-driven.
async fn check_stuck(
    tx: &mut sqlx::PgConnection,
    recorder: &mut Recorder<'_>,
    settings: &ReconcileSettings,
) -> Result<usize, ReconcileError> {
    let mut redriven = 0;
    for (which, threshold) in [
        (Waiting::Pending, settings.stuck_after),
        (Waiting::InReview, settings.stale_review_after),
        (Waiting::ExpiredHold, EXPIRED_HOLD_GRACE),
    ] {
        let older_than = Utc::now() - chrono::Duration::from_std(threshold).unwrap_or_default();
        let mut after = None;
        loop {
            let ledger = recorder.ledger.as_ref();
            let page = checks::waiting(tx, which, ledger, older_than, after).await?;
            // A transfer in review waits for a person: nothing to re-drive. A hold past its
            // expiry whose claimed void lost its job is re-driven like a pending transfer.
            if which != Waiting::InReview {
                let stuck_ids: Vec<Uuid> = page
                    .observations
                    .iter()
                    .filter_map(|o| o.transfer_id)
                    .collect();
                redriven += repair::redrive(tx, &stuck_ids, settings.job_rescue_after).await?;
            }
            recorder.record(tx, page.observations).await?;
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
    }
    recorder.checked(&[
        FindingKind::StuckPending,
        FindingKind::StaleReview,
        FindingKind::ExpiredHold,
    ]);
    Ok(redriven)
}

/// Every job apalis gave up on, page by page.
async fn check_dead_jobs(
    tx: &mut sqlx::PgConnection,
    recorder: &mut Recorder<'_>,
) -> Result<(), ReconcileError> {
    let mut after: Option<String> = None;
    loop {
        let page = checks::dead_jobs(tx, after.as_deref()).await?;
        recorder.record(tx, page.observations).await?;
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    recorder.checked(&[FindingKind::JobDead]);
    Ok(())
}

/// Which kinds each check reports. A run resolves findings only of the kinds whose check ran
/// to completion in it (README, Reconciliation: resolved only when checked and gone).
const TRANSFER_KINDS: [FindingKind; 3] = [
    FindingKind::PostedWithoutEntries,
    FindingKind::FailedWithEntries,
    FindingKind::DoublePosted,
];
/// The kinds whose checks are windowed (transfers changed in the window, entries added since
/// the last run) and therefore re-check the subjects of their open findings: that is what lets
/// a windowed check resolve a finding whose transfer is outside its window.
const RECHECKED_KINDS: [FindingKind; 4] = [
    FindingKind::PostedWithoutEntries,
    FindingKind::FailedWithEntries,
    FindingKind::DoublePosted,
    FindingKind::OrphanEntry,
];
/// A hold still `held` this long after it expired is `expired_hold`: expiry voids within a
/// minute (README, "Holds, reversals and balance history").
pub const EXPIRED_HOLD_GRACE: std::time::Duration = std::time::Duration::from_secs(300);
/// At most this many observations are kept for the CLI report; the rest are in the database
/// (`GET /v1/reconciliations/{id}`).
pub const REPORT_SAMPLE_MAX: usize = 200;

/// Records a run's findings page by page as the checks produce them, raises their alerts in
/// the run's transaction, and remembers which kinds were checked so that only those resolve,
/// and only in the ledger the run checked.
struct Recorder<'a> {
    run_id: Uuid,
    /// The one ledger the run checks; `None`: every ledger.
    ledger: Option<LedgerName>,
    alerting: &'a Alerting,
    changes: FindingChanges,
    sample: Vec<Observation>,
    checked: Vec<FindingKind>,
}

impl<'a> Recorder<'a> {
    fn new(run_id: Uuid, ledger: Option<LedgerName>, alerting: &'a Alerting) -> Self {
        Self {
            run_id,
            ledger,
            alerting,
            changes: FindingChanges::default(),
            sample: Vec::new(),
            checked: Vec::new(),
        }
    }

    async fn record(
        &mut self,
        conn: &mut sqlx::PgConnection,
        observed: Vec<Observation>,
    ) -> Result<(), ReconcileError> {
        let observed = deduplicate(observed);
        for page in observed.chunks(checks::PAGE_ROWS) {
            let opened = findings::record_page(conn, self.run_id, page).await?;
            self.changes.opened += opened.len();
            raise_alerts(conn, self.alerting, Action::Trigger, &opened).await?;
        }
        let room = REPORT_SAMPLE_MAX.saturating_sub(self.sample.len());
        self.sample.extend(observed.into_iter().take(room));
        Ok(())
    }

    /// Marks `kinds` as checked: call it only after every page of their check was recorded.
    fn checked(&mut self, kinds: &[FindingKind]) {
        self.checked.extend_from_slice(kinds);
    }

    /// Resolves open findings of the checked kinds in the checked ledger(s) this run did not
    /// see, page by page.
    async fn resolve(&mut self, conn: &mut sqlx::PgConnection) -> Result<(), ReconcileError> {
        loop {
            let resolved =
                findings::resolve_unseen(conn, self.run_id, &self.checked, self.ledger.as_ref())
                    .await?;
            self.changes.resolved += resolved.len();
            raise_alerts(conn, self.alerting, Action::Resolve, &resolved).await?;
            if resolved.len() < checks::PAGE_ROWS {
                return Ok(());
            }
        }
    }
}

/// Opened findings trigger alerts and resolved ones resolve them, in the run's transaction:
/// a finding still open is not alerted again.
async fn raise_alerts(
    conn: &mut sqlx::PgConnection,
    alerting: &Alerting,
    action: Action,
    changed: &[findings::ChangedFinding],
) -> Result<(), ReconcileError> {
    for finding in changed {
        let event = finding_event(
            action,
            finding.kind.as_str(),
            finding.ledger.as_deref(),
            &finding.subject,
            finding.severity,
            &finding.detail,
        );
        outbox::raise(conn, &alerting.config, &event, None).await?;
    }
    Ok(())
}

/// One observation per (kind, ledger, subject): a finding is one row however it was reached,
/// and one upsert statement may not touch a row twice.
fn deduplicate(observed: Vec<Observation>) -> Vec<Observation> {
    let mut seen = HashSet::new();
    observed
        .into_iter()
        .filter(|o| seen.insert((o.kind, o.ledger.clone(), o.subject.clone())))
        .collect()
}

async fn finish(pool: &PgPool, run_id: Uuid, outcome: &RunOutcome) -> Result<(), sqlx::Error> {
    // The gauges count every ledger's findings: a run over one ledger saw only some of them.
    // Findings of no one ledger (`job_dead`) have an empty `ledger` label.
    if outcome.ledger.is_none() {
        for (kind, ledger, open) in &outcome.open_by_ledger {
            metrics::gauge!(
                "ferry_reconciliation_open_findings",
                "kind" => kind.as_str(),
                "ledger" => ledger.clone().unwrap_or_default()
            )
            .set(*open as f64);
        }
    }
    sqlx::query(
        "UPDATE reconciliation_runs SET status = 'completed', finished_at = now(), \
           full_scan = $2, transfers_checked = $3, accounts_checked = $4, findings_open = $5, \
           findings_opened = $6, findings_resolved = $7, transfers_redriven = $8, \
           jobs_purged = $9 \
         WHERE id = $1",
    )
    .bind(run_id)
    .bind(outcome.full_scan)
    .bind(outcome.transfers_checked)
    .bind(outcome.accounts_checked)
    .bind(i32::try_from(outcome.changes.open).unwrap_or(i32::MAX))
    .bind(i32::try_from(outcome.changes.opened).unwrap_or(i32::MAX))
    .bind(i32::try_from(outcome.changes.resolved).unwrap_or(i32::MAX))
    .bind(i32::try_from(outcome.transfers_redriven).unwrap_or(i32::MAX))
    .bind(i64::try_from(outcome.jobs_purged).unwrap_or(i64::MAX))
    .execute(pool)
    .await?;
    Ok(())
}
