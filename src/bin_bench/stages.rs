//! Where a step's time went, as ferry itself measured it: `ferry_transfer_stage_seconds`
//! scraped from the benched ferry's `/metrics` before and after the step, the difference of
//! the two read as the step's histogram (README, "Metrics": the stages).

use std::collections::BTreeMap;

use ferry::queue::stages::Stage;
use serde::Serialize;

/// The metric's bucket counts per stage: stage → (upper bound in seconds, cumulative count).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StageHistograms(BTreeMap<String, Vec<(f64, f64)>>);

/// One stage's percentiles within a step, in ms from the commit that wrote the job.
#[derive(Debug, Clone, Serialize)]
pub struct StageTiming {
    pub stage: String,
    pub transfers: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

const METRIC: &str = "ferry_transfer_stage_seconds_bucket{";

impl StageHistograms {
    /// Reads the stage buckets out of a Prometheus text exposition.
    pub fn parse(exposition: &str) -> Self {
        let mut stages: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for line in exposition.lines() {
            let Some(rest) = line.strip_prefix(METRIC) else {
                continue;
            };
            let Some((labels, count)) = rest.split_once("} ") else {
                continue;
            };
            let label = |name: &str| {
                labels.split(',').find_map(|pair| {
                    let (key, value) = pair.split_once('=')?;
                    (key.trim() == name).then(|| value.trim_matches('"').to_owned())
                })
            };
            let (Some(stage), Some(le)) = (label("stage"), label("le")) else {
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
        Self(stages)
    }

    /// Percentiles of what was recorded between `earlier` and `self`, stages in the order
    /// they happen.
    pub fn since(&self, earlier: &Self) -> Vec<StageTiming> {
        let mut timings: Vec<StageTiming> = self
            .0
            .iter()
            .filter_map(|(stage, buckets)| {
                let before = earlier.0.get(stage);
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
    fn a_quantile_beyond_the_last_bound_reads_as_that_bound() {
        let buckets = [(0.01, 1.0), (f64::INFINITY, 100.0)];
        assert!((quantile(&buckets, 0.99) - 0.01).abs() < 1e-12);
    }
}
