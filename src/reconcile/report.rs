//! The human-readable report `ferry reconcile` prints.

use std::fmt::Write;

use super::RunOutcome;
use super::finding::Severity;
use super::runs::RunView;

pub fn render(run: &RunView, outcome: &RunOutcome) -> String {
    let mut out = String::new();
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
    let _ = writeln!(out, "  purged      {} finished jobs", outcome.jobs_purged);
    let total = outcome.observed_total();
    if total == 0 {
        let _ = writeln!(out, "\nledger is consistent: no findings");
        return out;
    }
    let mut observed: Vec<_> = outcome.sample.iter().collect();
    observed.sort_by_key(|o| {
        (
            std::cmp::Reverse(o.kind.severity()),
            o.kind.as_str(),
            o.ledger.clone(),
            &o.subject,
        )
    });
    let _ = writeln!(out);
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
    out
}
