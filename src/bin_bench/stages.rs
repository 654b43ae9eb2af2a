//! Where a step's time went, as ferry itself measured it: `ferry_transfer_stage_seconds`
//! scraped from the benched ferry's `/metrics` before and after the step, the difference of
//! the two read as the step's histogram (README, "Metrics": the stages).

use std::collections::BTreeMap;

use ferry::ledger::PostingStep;
use ferry::queue::stages::Stage;
use serde::Serialize;

/// The metric's bucket counts per stage: stage → (upper bound in seconds, cumulative count);
/// and, to tell where a posting transaction's time goes, each `ferry_posting_step_seconds`
/// step's (sum, count).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StageHistograms {
    stages: BTreeMap<String, Vec<(f64, f64)>>,
    posting_steps: BTreeMap<String, (f64, f64)>,
}

/// One posting step's mean within a bench step (`gate`, `load`, …, `commit`: the laps of a
/// posting transaction, `ledger::posting`).
#[derive(Debug, Clone, Serialize)]
pub struct PostingStepMean {
    pub step: String,
    pub transactions: u64,
    pub mean_ms: f64,
}

/// One stage's percentiles within a step, in ms from the commit that wrote the job.
#[derive(Debug, Clone, Serialize)]
pub struct StageTiming {
    pub stage: String,
    pub transfers: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

const METRIC: &str = "ferry_transfer_stage_seconds_bucket{";
const POSTING_STEP_SUM: &str = "ferry_posting_step_seconds_sum{";
const POSTING_STEP_COUNT: &str = "ferry_posting_step_seconds_count{";

impl StageHistograms {
    /// Reads the stage buckets out of a Prometheus text exposition.
    pub fn parse(exposition: &str) -> Self {
        let mut stages: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        let mut posting_steps: BTreeMap<String, (f64, f64)> = BTreeMap::new();
        for line in exposition.lines() {
            for (prefix, is_sum) in [(POSTING_STEP_SUM, true), (POSTING_STEP_COUNT, false)] {
                let Some((labels, value)) = line
                    .strip_prefix(prefix)
                    .and_then(|rest| rest.split_once("} "))
                else {
                    continue;
                };
                if let (Some(step), Ok(value)) =
                    (label(labels, "step"), value.trim().parse::<f64>())
                {
                    let entry = posting_steps.entry(step).or_default();
                    if is_sum {
                        entry.0 = value;
                    } else {
                        entry.1 = value;
                    }
                }
            }
            let Some(rest) = line.strip_prefix(METRIC) else {
                continue;
            };
            let Some((labels, count)) = rest.split_once("} ") else {
                continue;
            };
            let (Some(stage), Some(le)) = (label(labels, "stage"), label(labels, "le")) else {
                continue;
            };
            let upper = if le == "+Inf" {
                f64::INFINITY
            } else {
                match le.parse() {
                    Ok(upper) => upper,
                    Err(_) => continue,
                }
            };
            if let Ok(count) = count.trim().parse::<f64>() {
                stages.entry(stage).or_default().push((upper, count));
            }
        }
        for buckets in stages.values_mut() {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
        Self {
            stages,
            posting_steps,
        }
    }

    /// Each posting step's mean over the transactions between `earlier` and `self`, in the
    /// order a transaction runs them.
    pub fn posting_steps_since(&self, earlier: &Self) -> Vec<PostingStepMean> {
        let mut means: Vec<PostingStepMean> = self
            .posting_steps
            .iter()
            .filter_map(|(step, &(sum, count))| {
                let (sum_before, count_before) =
                    earlier.posting_steps.get(step).copied().unwrap_or_default();
                let transactions = count - count_before;
                (transactions > 0.0).then(|| PostingStepMean {
                    step: step.clone(),
                    transactions: transactions as u64,
                    mean_ms: (sum - sum_before) / transactions * 1e3,
                })
            })
            .collect();
        means.sort_by_key(|m| PostingStep::ALL.iter().position(|s| s.as_str() == m.step));
        means
    }

    /// Percentiles of what was recorded between `earlier` and `self`, stages in the order
    /// they happen.
    pub fn since(&self, earlier: &Self) -> Vec<StageTiming> {
        let mut timings: Vec<StageTiming> = self
            .stages
            .iter()
            .filter_map(|(stage, buckets)| {
                let before = earlier.stages.get(stage);
                let delta: Vec<(f64, f64)> = buckets
                    .iter()
                    .map(|&(upper, count)| {
                        let was = before
                            .and_then(|b| b.iter().find(|(u, _)| *u == upper))
                            .map_or(0.0, |(_, c)| *c);
                        (upper, count - was)
                    })
                    .collect();
                let total = delta.last().map_or(0.0, |(_, c)| *c);
                (total > 0.0).then(|| StageTiming {
                    stage: stage.clone(),
                    transfers: total as u64,
                    p50_ms: quantile(&delta, 0.5) * 1e3,
                    p99_ms: quantile(&delta, 0.99) * 1e3,
                })
            })
            .collect();
        timings.sort_by_key(|t| Stage::ALL.iter().position(|s| s.as_str() == t.stage));
        timings
    }
}

/// The value of label `name` in a Prometheus label list (`a="x",b="y"`).
fn label(labels: &str, name: &str) -> Option<String> {
    labels.split(',').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key.trim() == name).then(|| value.trim_matches('"').to_owned())
    })
}

/// The `q` quantile of cumulative buckets, interpolated linearly within its bucket (as
/// Prometheus's `histogram_quantile`); a quantile in the `+Inf` bucket is the last finite
/// bound.
fn quantile(buckets: &[(f64, f64)], q: f64) -> f64 {
    let total = buckets.last().map_or(0.0, |(_, c)| *c);
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(upper, count) in buckets {
        if count >= rank {
            if upper.is_infinite() {
                return lower.0;
            }
            let within = count - lower.1;
            let fraction = if within > 0.0 {
                (rank - lower.1) / within
            } else {
                1.0
            };
            return lower.0 + (upper - lower.0) * fraction;
        }
        lower = (upper, count);
    }
    lower.0
}

/// The benched ferry's stage histograms now; empty if `/metrics` cannot be read.
pub async fn scrape(client: &reqwest::Client, base_url: &str) -> StageHistograms {
    let text = async {
        client
            .get(format!("{base_url}/metrics"))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await
    };
    text.await
        .map(|text| StageHistograms::parse(&text))
        .unwrap_or_default()
}

/// `fetched 3/12 · posting_started …` (p50/p99 ms), or `-` when nothing was recorded.
pub fn summary(timings: &[StageTiming]) -> String {
    if timings.is_empty() {
        return "-".to_owned();
    }
    timings
        .iter()
        .map(|t| format!("{} {:.0}/{:.0}", t.stage, t.p50_ms, t.p99_ms))
        .collect::<Vec<_>>()
        .join(" · ")
}

/// `gate 0.4 · load 0.3 · …` (mean ms per transaction), or `-` when nothing was posted.
pub fn posting_summary(means: &[PostingStepMean]) -> String {
    if means.is_empty() {
        return "-".to_owned();
    }
    let total: f64 = means.iter().map(|m| m.mean_ms).sum();
    let transactions = means.iter().map(|m| m.transactions).max().unwrap_or(0);
    let steps: Vec<String> = means
        .iter()
        .map(|m| format!("{} {:.2}", m.step, m.mean_ms))
        .collect();
    format!(
        "{transactions} transactions, {total:.2} ms each: {}",
        steps.join(" · ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "\
# TYPE ferry_transfer_stage_seconds histogram
ferry_transfer_stage_seconds_bucket{stage=\"fetched\",le=\"0.01\"} 10
ferry_transfer_stage_seconds_bucket{stage=\"fetched\",le=\"0.02\"} 10
ferry_transfer_stage_seconds_bucket{stage=\"fetched\",le=\"+Inf\"} 10
";
    const AFTER: &str = "\
ferry_transfer_stage_seconds_bucket{stage=\"fetched\",le=\"0.01\"} 60
ferry_transfer_stage_seconds_bucket{stage=\"fetched\",le=\"0.02\"} 109
ferry_transfer_stage_seconds_bucket{stage=\"fetched\",le=\"+Inf\"} 110
ferry_transfer_stage_seconds_bucket{stage=\"handled\",le=\"0.01\"} 0
ferry_transfer_stage_seconds_bucket{stage=\"handled\",le=\"0.02\"} 100
ferry_transfer_stage_seconds_bucket{stage=\"handled\",le=\"+Inf\"} 100
ferry_transfer_stage_seconds_count{stage=\"handled\"} 100
";

    #[test]
    fn a_steps_stages_are_the_difference_of_two_scrapes() {
        let timings = StageHistograms::parse(AFTER).since(&StageHistograms::parse(BEFORE));
        assert_eq!(timings.len(), 2);
        let fetched = &timings[0];
        assert_eq!(
            (fetched.stage.as_str(), fetched.transfers),
            ("fetched", 100)
        );
        // 50 of the step's 100 fall at or below 10 ms: the median is the bucket's bound.
        assert!((fetched.p50_ms - 10.0).abs() < 1e-9, "{}", fetched.p50_ms);
        // The 99th is the 49th of the 49 between 10 and 20 ms.
        assert!((fetched.p99_ms - 20.0).abs() < 1e-9, "{}", fetched.p99_ms);
        let handled = &timings[1];
        assert_eq!(handled.stage, "handled");
        assert!((handled.p50_ms - 15.0).abs() < 1e-9, "{}", handled.p50_ms);
    }

    #[test]
    fn posting_steps_are_mean_ms_per_transaction_within_the_step_in_run_order() {
        let before = "\
ferry_posting_step_seconds_sum{step=\"commit\"} 1.0
ferry_posting_step_seconds_count{step=\"commit\"} 100
";
        let after = "\
ferry_posting_step_seconds_sum{step=\"commit\"} 1.5
ferry_posting_step_seconds_count{step=\"commit\"} 200
ferry_posting_step_seconds_sum{step=\"gate\"} 0.02
ferry_posting_step_seconds_count{step=\"gate\"} 10
ferry_posting_step_seconds_sum{step=\"idle\"} 9
ferry_posting_step_seconds_count{step=\"idle\"} 0
";
        let means =
            StageHistograms::parse(after).posting_steps_since(&StageHistograms::parse(before));
        let read: Vec<(&str, u64, f64)> = means
            .iter()
            .map(|m| {
                (
                    m.step.as_str(),
                    m.transactions,
                    (m.mean_ms * 1e6).round() / 1e6,
                )
            })
            .collect();
        // 100 more commits took 0.5 s: 5 ms each; gate comes first, as a transaction runs.
        assert_eq!(read, [("gate", 10, 2.0), ("commit", 100, 5.0)]);
        assert_eq!(
            posting_summary(&means),
            "100 transactions, 7.00 ms each: gate 2.00 · commit 5.00"
        );
    }

    #[test]
    fn a_quantile_beyond_the_last_bound_reads_as_that_bound() {
        let buckets = [(0.01, 1.0), (f64::INFINITY, 100.0)];
        assert!((quantile(&buckets, 0.99) - 0.01).abs() < 1e-12);
    }
}
