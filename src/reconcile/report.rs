//! The human-readable report `ferry reconcile` prints.

use std::fmt::Write;

use super::RunOutcome;
use super::finding::Severity;
use super::runs::RunView;

pub fn render(run: &RunView, outcome: &RunOutcome) -> String {
    let mut out = String::new();
    write_summary(&mut out, run, outcome);
    let total = outcome.observed_total();
    if total == 0 {
        let _ = writeln!(out, "\nledger is consistent: no findings");
        return out;
    }
    let _ = writeln!(out);
    write_findings(&mut out, run, outcome, total);
    out
}

/// The heading: what the run covered, checked, found, re-drove and purged.
fn write_summary(out: &mut String, run: &RunView, outcome: &RunOutcome) {
    let _ = writeln!(out, "reconciliation {}", run.id);
    let _ = writeln!(
        out,
        "  ledger      {}",
        run.ledger.as_deref().unwrap_or("all ledgers")
    );
    let _ = writeln!(
        out,
        "  window      {} .. {}",
        run.window_start, run.window_end
    );
    let _ = writeln!(
        out,
        "  checked     {} transfers, {} accounts{} in {:.2}s",
        outcome.transfers_checked,
        outcome.accounts_checked,
        if outcome.full_scan {
            " (full scan)"
        } else {
            ""
        },
        outcome.elapsed.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "  findings    {} open ({} new), {} resolved",
        outcome.changes.open, outcome.changes.opened, outcome.changes.resolved
    );
    if outcome.transfers_redriven > 0 {
        let _ = writeln!(
            out,
            "  re-driven   {} stuck transfers whose job was gone",
            outcome.transfers_redriven
        );
    }
    let _ = writeln!(
        out,
        "  purged      {} finished jobs, {} expired events",
        outcome.jobs_purged, outcome.events_purged
    );
}

/// The sampled findings, most severe first, and a pointer to the rest (`total` were seen).
fn write_findings(out: &mut String, run: &RunView, outcome: &RunOutcome, total: usize) {
    let mut observed: Vec<_> = outcome.sample.iter().collect();
    observed.sort_by_key(|o| {
        (
            std::cmp::Reverse(o.kind.severity()),
            o.kind.as_str(),
            o.ledger.clone(),
            &o.subject,
        )
    });
    for o in observed {
        let marker = match o.kind.severity() {
            Severity::Critical => "CRITICAL",
            Severity::Medium => "medium  ",
            Severity::Info => "info    ",
        };
        let _ = writeln!(
            out,
            "{marker} {:<24} {:<16} {:<48} {}",
            o.kind.as_str(),
            o.ledger.as_ref().map_or("-", |l| l.as_str()),
            o.subject,
            o.detail
        );
    }
    // The run keeps only a sample in memory; every finding is in the database.
    if total > outcome.sample.len() {
        let _ = writeln!(
            out,
            "... and {} more: GET /v1/reconciliations/{} lists them all",
            total - outcome.sample.len(),
            run.id
        );
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use uuid::Uuid;

    use super::*;
    use crate::reconcile::finding::{FindingKind, Observation};
    use crate::reconcile::findings::FindingChanges;

    fn run() -> RunView {
        let at = |hour| Utc.with_ymd_and_hms(2026, 1, 1, hour, 0, 0).unwrap();
        RunView {
            id: Uuid::nil(),
            ledger: None,
            trigger: "cli".to_owned(),
            status: "completed".to_owned(),
            window_start: at(0),
            window_end: at(1),
            full_scan: true,
            transfers_checked: 10,
            accounts_checked: 4,
            findings_open: 3,
            findings_opened: 2,
            findings_resolved: 1,
            transfers_redriven: 1,
            jobs_purged: 5,
            error: None,
            created_at: at(1),
            started_at: None,
            finished_at: None,
        }
    }

    fn outcome() -> RunOutcome {
        RunOutcome {
            ledger: None,
            transfers_checked: 10,
            accounts_checked: 4,
            full_scan: true,
            changes: FindingChanges {
                opened: 2,
                resolved: 1,
                open: 3,
            },
            observed: vec![(FindingKind::BalanceDrift, 1), (FindingKind::JobDead, 2)],
            open_by_ledger: vec![
                (FindingKind::BalanceDrift, Some("default".to_owned()), 1),
                (FindingKind::JobDead, None, 2),
            ],
            // Check order (medium first here) is not report order: critical comes first.
            sample: vec![
                Observation {
                    kind: FindingKind::JobDead,
                    ledger: None,
                    subject: "job:7".to_owned(),
                    transfer_id: None,
                    account_id: None,
                    detail: "retries exhausted".to_owned(),
                },
                Observation::about_account(
                    FindingKind::BalanceDrift,
                    crate::domain::LedgerName::default_ledger(),
                    "a".to_owned(),
                    "stored 1.00, entries sum to 0.00".to_owned(),
                ),
            ],
            transfers_redriven: 1,
            jobs_purged: 5,
            events_purged: 7,
            elapsed: std::time::Duration::from_millis(1500),
        }
    }

    const HEADING: &str = "reconciliation 00000000-0000-0000-0000-000000000000\n\
        \x20 ledger      all ledgers\n\
        \x20 window      2026-01-01 00:00:00 UTC .. 2026-01-01 01:00:00 UTC\n\
        \x20 checked     10 transfers, 4 accounts (full scan) in 1.50s\n\
        \x20 findings    3 open (2 new), 1 resolved\n\
        \x20 re-driven   1 stuck transfers whose job was gone\n\
        \x20 purged      5 finished jobs, 7 expired events\n";

    #[test]
    fn a_report_lists_sampled_findings_most_severe_first_and_points_to_the_rest() {
        let expected = format!(
            "{HEADING}\n\
             CRITICAL balance_drift            default          account:a                                        \
             stored 1.00, entries sum to 0.00\n\
             medium   job_dead                 -                job:7                                            \
             retries exhausted\n\
             ... and 1 more: GET /v1/reconciliations/00000000-0000-0000-0000-000000000000 \
             lists them all\n"
        );
        assert_eq!(render(&run(), &outcome()), expected);
    }

    #[test]
    fn a_clean_run_says_the_ledger_is_consistent() {
        let clean = RunOutcome {
            observed: vec![(FindingKind::BalanceDrift, 0)],
            sample: Vec::new(),
            ..outcome()
        };
        assert_eq!(
            render(&run(), &clean),
            format!("{HEADING}\nledger is consistent: no findings\n")
        );
    }
}
