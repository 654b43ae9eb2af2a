//! The transfers every scenario moves: generated once from a seed, so the baseline and ferry
//! move exactly the same money between exactly the same accounts.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::PgPool;

/// The account every hot-scenario transfer debits (`acct1`).
pub const HOT_ACCOUNT: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Both sides chosen uniformly.
    Uniform,
    /// Every transfer debits [`HOT_ACCOUNT`].
    Hot,
}

#[derive(Debug, Clone)]
pub struct PlannedTransfer {
    pub key: String,
    pub from: String,
    pub to: String,
    /// Cents, shown as "x.yy" on the wire.
    pub cents: u32,
}

impl PlannedTransfer {
    pub fn amount(&self) -> String {
        format!("{}.{:02}", self.cents / 100, self.cents % 100)
    }
}

/// An endless, deterministic stream of transfers: two planners with the same seed hand out
/// the same transfers in the same order, however they are sliced, so a baseline and ferry
/// move the same money even when each run's length is set by how long it takes.
pub struct Planner {
    seed: u64,
    shape: Shape,
    accounts: u32,
    rng: StdRng,
    next: u64,
}

impl Planner {
    pub fn new(shape: Shape, accounts: u32, seed: u64) -> Self {
        Self {
            seed,
            shape,
            accounts,
            rng: StdRng::seed_from_u64(seed),
            next: 0,
        }
    }

    /// The next `transfers` transfers, from where the last call stopped, keyed
    /// `bench-{seed}-{n}`: planners with different seeds can share a database.
    pub fn take(&mut self, transfers: u64) -> Vec<PlannedTransfer> {
        (0..transfers).map(|_| self.one()).collect()
    }

    fn one(&mut self) -> PlannedTransfer {
        let accounts = self.accounts;
        let from = match self.shape {
            Shape::Uniform => self.rng.random_range(1..=accounts),
            Shape::Hot => HOT_ACCOUNT,
        };
        let mut to = self.rng.random_range(1..=accounts);
        if to == from {
            to = if from == accounts { 1 } else { from + 1 };
        }
        let n = self.next;
        self.next += 1;
        PlannedTransfer {
            key: format!("bench-{}-{n}", self.seed),
            from: format!("acct{from}"),
            to: format!("acct{to}"),
            cents: self.rng.random_range(1..=10_000),
        }
    }
}

/// Creates `accounts` USD accounts named `acct1..`; all may overdraw, so no transfer fails for
/// funds and every failure counted is a contention failure.
pub async fn seed_accounts(pool: &PgPool, accounts: u32) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO accounts (ledger, id, currency, allow_overdraft) \
         SELECT 'default', 'acct' || n, 'USD', true FROM generate_series(1, $1) n",
    )
    .bind(i64::from(accounts))
    .execute(pool)
    .await?;
    sqlx::query("ANALYZE accounts").execute(pool).await?;
    Ok(())
}

/// Percentile `p` (0–100) of sorted latencies in milliseconds.
pub fn percentile(sorted_ms: &[f64], p: f64) -> Option<f64> {
    if sorted_ms.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * (sorted_ms.len() - 1) as f64).round() as usize;
    sorted_ms.get(rank.min(sorted_ms.len() - 1)).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_are_deterministic_and_never_self_transfers() {
        let a = Planner::new(Shape::Uniform, 10, 7).take(1000);
        let b = Planner::new(Shape::Uniform, 10, 7).take(1000);
        assert_eq!(
            a.iter().map(|t| &t.to).collect::<Vec<_>>(),
            b.iter().map(|t| &t.to).collect::<Vec<_>>()
        );
        assert!(a.iter().all(|t| t.from != t.to && t.cents > 0));
        assert!(
            Planner::new(Shape::Hot, 10, 1)
                .take(100)
                .iter()
                .all(|t| t.from == format!("acct{HOT_ACCOUNT}"))
        );
    }

    #[test]
    fn a_planner_hands_out_the_same_stream_however_it_is_sliced() {
        let whole = Planner::new(Shape::Uniform, 50, 3).take(30);
        let mut sliced = Planner::new(Shape::Uniform, 50, 3);
        let mut parts = sliced.take(7);
        parts.extend(sliced.take(23));
        let keys = |v: &[PlannedTransfer]| {
            v.iter()
                .map(|t| (t.key.clone(), t.from.clone(), t.to.clone(), t.cents))
                .collect::<Vec<_>>()
        };
        assert_eq!(keys(&whole), keys(&parts));
        assert_eq!(parts[29].key, "bench-3-29");
    }

    #[test]
    fn percentiles_pick_from_the_sorted_list() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(51.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&[], 50.0), None);
    }
}
