//! The overview: accepted, posted and failed per second, backlog and time to posted over the
//! last hour. One sampler per intake process queries the database once per refresh interval
//! and keeps the last hour in memory; pages read that memory, so ten open tabs cost what one
//! does, and a page view costs no query at all (README, "Operator console").

use std::collections::VecDeque;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::response::Response;
use chrono::{DateTime, Utc};
use maud::html;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::ConsoleState;
use super::FlashQuery;
use super::chart::{Series, line_chart};
use super::layout::{self, status, table, trusted};
use super::session::Viewer;
use crate::queue::table::{JobCount, job_counts};

/// How much history the charts show.
pub const HISTORY_SECS: i64 = 3_600;
/// The shortest span the charts show.
const CHART_SPAN_MIN_SECS: f64 = 300.0;
/// Rows are counted in windows ending this long ago: a transaction stamps `created_at` and
/// `posted_at` when it starts, and may commit a little later.
const COMMIT_LAG_MS: i64 = 2_000;

/// One refresh interval's figures.
#[derive(Debug, Clone)]
pub struct Sample {
    /// End of the window counted.
    pub at: DateTime<Utc>,
    pub accepted_per_sec: f64,
    pub posted_per_sec: f64,
    pub failed_per_sec: f64,
    /// Transfers pending at sampling time.
    pub backlog: i64,
    /// Time to posted of the transfers posted in the window (plain transfers, not holds).
    pub ttp_p50_ms: Option<f64>,
    pub ttp_p99_ms: Option<f64>,
}

/// What the overview shows, as of the last sample.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub samples: VecDeque<Sample>,
    pub jobs: Vec<JobCount>,
    pub in_review: i64,
    pub open_findings: i64,
    /// Age of the oldest pending transfer: what a `stuck_pending` page is about.
    pub oldest_pending_secs: Option<f64>,
    /// The transfers changed last, as of the sample.
    pub recent: Vec<RecentTransfer>,
    /// How long the last sample's queries took, all of them.
    pub sample_ms: f64,
    /// Samples taken since the process started (each one ran the queries once).
    pub samples_taken: u64,
    /// Why the last sample failed, if it did (the previous figures stay).
    pub last_error: Option<String>,
}

/// A transfer as the overview lists it: the ones changed last (accepted, posted, failed…).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RecentTransfer {
    pub id: uuid::Uuid,
    pub ledger: String,
    pub status: String,
    pub amount: String,
    pub currency: String,
    pub changed_at: DateTime<Utc>,
}

/// Transfers the overview lists, newest first.
const RECENT_TRANSFERS: i64 = 10;

/// The sampler's latest [`Snapshot`], shared with every page.
#[derive(Clone, Default)]
pub struct Overview {
    snapshot: Arc<RwLock<Snapshot>>,
}

impl Overview {
    pub fn snapshot(&self) -> Snapshot {
        self.snapshot.read().map(|s| s.clone()).unwrap_or_default()
    }

    /// Samples every `refresh` until `stopping`.
    pub async fn run(self, pool: PgPool, refresh: Duration, stopping: CancellationToken) {
        let mut window_end: Option<DateTime<Utc>> = None;
        let mut ticker = tokio::time::interval(refresh);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stopping.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let started = Instant::now();
            let outcome = tokio::time::timeout(refresh, sample(&pool, window_end)).await;
            let Ok(mut guard) = self.snapshot.write() else {
                return;
            };
            match outcome {
                Ok(Ok(Sampled {
                    sample,
                    jobs,
                    in_review,
                    open_findings,
                    oldest_pending_secs,
                    recent,
                })) => {
                    window_end = Some(sample.at);
                    guard.samples.push_back(sample);
                    let oldest = Utc::now() - chrono::Duration::seconds(HISTORY_SECS);
                    while guard.samples.front().is_some_and(|s| s.at < oldest) {
                        guard.samples.pop_front();
                    }
                    guard.jobs = jobs;
                    guard.in_review = in_review;
                    guard.open_findings = open_findings;
                    guard.recent = recent;
                    guard.oldest_pending_secs = oldest_pending_secs;
                    guard.sample_ms = started.elapsed().as_secs_f64() * 1_000.0;
                    guard.samples_taken += 1;
                    guard.last_error = None;
                }
                Ok(Err(e)) => guard.last_error = Some(e.to_string()),
                Err(_) => guard.last_error = Some("sampling timed out".into()),
            }
        }
    }
}

/// What one sample read.
pub struct Sampled {
    pub sample: Sample,
    pub jobs: Vec<JobCount>,
    pub in_review: i64,
    pub open_findings: i64,
    pub oldest_pending_secs: Option<f64>,
    pub recent: Vec<RecentTransfer>,
}

/// The overview's queries, each on an index: transfers created and updated in the window
/// (`transfers_by_created_at`, `transfers_by_updated_at`), pending and in review (their
/// partial indexes), open findings, and jobs (a table purged to its retention).
pub async fn sample(
    pool: &PgPool,
    previous_end: Option<DateTime<Utc>>,
) -> Result<Sampled, sqlx::Error> {
    let end: DateTime<Utc> = sqlx::query_scalar("SELECT now() - make_interval(secs => $1)")
        .bind(COMMIT_LAG_MS as f64 / 1_000.0)
        .fetch_one(pool)
        .await?;
    // The first window after start is one refresh long; later ones join up with the last.
    let start = previous_end.unwrap_or(end - chrono::Duration::seconds(5));
    sample_window(pool, start, end).await
}

/// [`sample`] of the window `(start, end]` (the bench measures it on a seeded ledger's last
/// seconds).
pub async fn sample_window(
    pool: &PgPool,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<Sampled, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let window_secs = (end - start).num_milliseconds().max(1) as f64 / 1_000.0;
    // One index range scan on `transfers_by_updated_at`: a row created in the window has
    // `updated_at` ≥ its `created_at`, so every row counted is among those changed since the
    // window's start (`created_at` has no index: intake pays for every index). Planned with
    // the window's own bounds each time (not a prepared generic plan, which would guess a
    // third of the table and scan it all).
    let (accepted, posted, failed, p50, p99): (i64, i64, i64, Option<f64>, Option<f64>) =
        sqlx::query_as(
            "SELECT count(*) FILTER (WHERE created_at > $1 AND created_at <= $2), \
               count(*) FILTER (WHERE posted_at > $1 AND posted_at <= $2), \
               count(*) FILTER (WHERE failed_at > $1 AND failed_at <= $2), \
               percentile_cont(0.5) WITHIN GROUP (ORDER BY \
                 extract(epoch FROM posted_at - created_at) * 1000) \
                 FILTER (WHERE posted_at > $1 AND posted_at <= $2 AND mode = 'transfer'), \
               percentile_cont(0.99) WITHIN GROUP (ORDER BY \
                 extract(epoch FROM posted_at - created_at) * 1000) \
                 FILTER (WHERE posted_at > $1 AND posted_at <= $2 AND mode = 'transfer') \
             FROM transfers WHERE updated_at > $1",
        )
        .bind(start)
        .bind(end)
        .persistent(false)
        .fetch_one(&mut *conn)
        .await?;
    let (backlog, in_review, open_findings, oldest_pending_secs): (i64, i64, i64, Option<f64>) =
        sqlx::query_as(
            "SELECT (SELECT count(*) FROM transfers WHERE status = 'pending'), \
               (SELECT count(*) FROM transfers WHERE status = 'in_review'), \
               (SELECT count(*) FROM reconciliation_findings WHERE resolved_run IS NULL), \
               (SELECT extract(epoch FROM now() - min(created_at))::float8 FROM transfers \
                  WHERE status = 'pending')",
        )
        .fetch_one(&mut *conn)
        .await?;
    let jobs = job_counts(&mut conn).await?;
    let recent = sqlx::query_as(
        "SELECT id, ledger, status, amount::text AS amount, trim(currency) AS currency, \
           updated_at AS changed_at FROM transfers ORDER BY updated_at DESC LIMIT $1",
    )
    .bind(RECENT_TRANSFERS)
    .fetch_all(&mut *conn)
    .await?;
    let sample = Sample {
        at: end,
        accepted_per_sec: accepted as f64 / window_secs,
        posted_per_sec: posted as f64 / window_secs,
        failed_per_sec: failed as f64 / window_secs,
        backlog,
        ttp_p50_ms: p50,
        ttp_p99_ms: p99,
    };
    Ok(Sampled {
        sample,
        jobs,
        in_review,
        open_findings,
        oldest_pending_secs,
        recent,
    })
}

/// `GET /console`.
pub async fn page(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    Query(flash): Query<FlashQuery>,
) -> Response {
    let flash = flash.outcome(&state, &viewer).await;
    let snapshot = state.overview.snapshot();
    let latest = snapshot.samples.back();
    let now = Utc::now();
    let ago = |s: &Sample| (now - s.at).num_milliseconds() as f64 / 1_000.0;
    let series_of = |pick: fn(&Sample) -> f64| -> Vec<(f64, f64)> {
        snapshot.samples.iter().map(|s| (ago(s), pick(s))).collect()
    };
    // The last hour, or what this process has seen of it (at least 5 minutes), so the charts
    // are readable soon after a start.
    let seen_secs = snapshot.samples.front().map_or(0.0, ago);
    let span = seen_secs.clamp(CHART_SPAN_MIN_SECS, HISTORY_SECS as f64);
    let throughput = line_chart(
        "accepted, posted and failed per second",
        "transfers/s",
        span,
        1.0,
        &[
            Series {
                label: "accepted",
                points: series_of(|s| s.accepted_per_sec),
            },
            Series {
                label: "posted",
                points: series_of(|s| s.posted_per_sec),
            },
            Series {
                label: "failed",
                points: series_of(|s| s.failed_per_sec),
            },
        ],
    );
    let backlog = line_chart(
        "backlog",
        "pending transfers",
        span,
        1.0,
        &[Series {
            label: "pending",
            points: series_of(|s| s.backlog as f64),
        }],
    );
    let latency = line_chart(
        "time to posted",
        "ms",
        span,
        10.0,
        &[
            Series {
                label: "p50",
                points: series_of(|s| s.ttp_p50_ms.unwrap_or(f64::NAN)),
            },
            Series {
                label: "p99",
                points: series_of(|s| s.ttp_p99_ms.unwrap_or(f64::NAN)),
            },
        ],
    );
    let dead: i64 = snapshot
        .jobs
        .iter()
        .filter(|j| j.status == "Dead" || j.status == "Killed")
        .map(|j| j.jobs)
        .sum();
    let fmt_ms = |ms: Option<f64>| ms.map_or_else(|| "—".to_owned(), |ms| format!("{ms:.0} ms"));
    let refresh_ms = state.refresh.as_millis();
    let body = html! {
        div.cards data-refresh-ms=(refresh_ms) id="overview" {
            div.card { span.label { "Accepted/s" } span.figure id="accepted" { (format!("{:.1}", latest.map_or(0.0, |s| s.accepted_per_sec))) } }
            div.card { span.label { "Posted/s" } span.figure id="posted" { (format!("{:.1}", latest.map_or(0.0, |s| s.posted_per_sec))) } }
            div.card { span.label { "Failed/s" } span.figure id="failed" { (format!("{:.1}", latest.map_or(0.0, |s| s.failed_per_sec))) } }
            div.card { span.label { "Backlog" } span.figure id="backlog" { (latest.map_or(0, |s| s.backlog)) } }
            div.card { span.label { "Time to posted p50 / p99" } span.figure id="ttp" { (fmt_ms(latest.and_then(|s| s.ttp_p50_ms))) " / " (fmt_ms(latest.and_then(|s| s.ttp_p99_ms))) } }
            div.card { span.label { "Oldest pending" } span.figure id="oldest-pending" { (snapshot.oldest_pending_secs.map_or_else(|| "—".to_owned(), |s| format!("{s:.0} s"))) } }
            div.card { span.label { "In review" } span.figure { a href="/console/reviews" { (snapshot.in_review) } } }
            div.card { span.label { "Open findings" } span.figure { a href="/console/reconciliation" { (snapshot.open_findings) } } }
            div.card { span.label { "Dead jobs" } span.figure { a href="/console/queue" { (dead) } } }
        }
        section.charts {
            figure { figcaption { "Transfers per second " span.legend { span.series-0 { "accepted" } span.series-1 { "posted" } span.series-2 { "failed" } } } (trusted(throughput)) }
            figure { figcaption { "Backlog (pending transfers)" } (trusted(backlog)) }
            figure { figcaption { "Time to posted " span.legend { span.series-0 { "p50" } span.series-1 { "p99" } } } (trusted(latency)) }
        }
        h2 { "Latest activity" }
        (table(&["transfer", "ledger", "amount", "status", "changed"], snapshot.recent.iter().map(|t| html! {
            tr data-transfer=(t.id) {
                td { a href={ "/console/transfers/" (t.id) } { (layout::short_id(&t.id.to_string())) } }
                td { (t.ledger) }
                td.num { (t.amount) " " (t.currency) }
                td { (status(&t.status)) }
                td { (layout::time(t.changed_at)) }
            }
        }).collect(), "No transfers yet."))
        h2 { "Jobs by queue and state" }
        (table(&["queue", "state", "jobs"], snapshot.jobs.iter().map(|j| html! {
            tr { td { code { (j.queue) } } td { (status(&j.status)) } td.num { (j.jobs) } }
        }).collect(), "No jobs."))
        p.muted.small {
            "Sampled every " (refresh_ms) " ms by this process, whatever the number of open pages; "
            (snapshot.samples_taken) " samples, the last took " (format!("{:.1}", snapshot.sample_ms)) " ms."
            @if let Some(e) = &snapshot.last_error { " Last sample failed: " (e) }
        }
    };
    layout::page(&viewer, "Overview", "/console", flash.as_deref(), body)
}
