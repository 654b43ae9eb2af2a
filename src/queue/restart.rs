//! Restarting workers: a new name each time, after a growing pause.
//!
//! apalis restarts a worker whose backend failed (a poll that met `57P01` during a PostgreSQL
//! restart, a heartbeat during an outage). Two things go wrong with a plain restart:
//! - under the **same name** the new worker heartbeats for the old one, so the jobs the old one
//!   had fetched (`Running`, `lock_by` = that name) never look orphaned and are never run
//!   again. Each restart therefore registers under a new name ([`super::worker_name`] with the
//!   restart count); the old name falls silent and apalis's orphan recovery takes its jobs
//!   back after `heartbeat × missed heartbeats` (20 s by default).
//! - restarted **at once**, a worker that fails at once spins (72,772 restarts in 7 s were
//!   seen when two workers shared a name). Each restart waits an exponentially growing,
//!   jittered pause ([`RestartBackoff`]), capped at 15 s; a worker that ran a minute without
//!   failing starts again from the shortest pause. The cap is also the longest a worker can
//!   still be pausing once the database is back, so it is kept well inside the 60 s in which
//!   every acknowledged transfer must be terminal after an outage.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::Rng;

/// Pause before the first restart of a streak (equal jitter: half fixed, half random).
pub const RESTART_DELAY_MS_BASE: u64 = 500;
/// Longest pause between restarts.
pub const RESTART_DELAY_MS_MAX: u64 = 15_000;
/// A worker that ran this long before failing starts a new streak.
pub const RESTART_STREAK_RESET_SECS: u64 = 60;

/// The restart pauses of one worker slot.
#[derive(Debug)]
pub struct RestartBackoff {
    state: Mutex<Streak>,
}

#[derive(Debug)]
struct Streak {
    /// Restarts in a row, each after a run shorter than the reset bound.
    failures: u32,
    started_at: Instant,
}

impl Default for RestartBackoff {
    fn default() -> Self {
        Self {
            state: Mutex::new(Streak {
                failures: 0,
                started_at: Instant::now(),
            }),
        }
    }
}

impl RestartBackoff {
    /// Called as the worker is restarted: how long to wait before it starts again.
    pub fn next_delay(&self, rng: &mut impl Rng) -> Duration {
        let now = Instant::now();
        // A poisoned lock only means another restart panicked mid-update; the data is two
        // plain fields and still usable.
        let mut streak = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if now.duration_since(streak.started_at) >= Duration::from_secs(RESTART_STREAK_RESET_SECS) {
            streak.failures = 0;
        }
        let delay = equal_jitter_delay(streak.failures, rng);
        streak.failures = streak.failures.saturating_add(1);
        streak.started_at = now + delay;
        delay
    }
}

/// `ceiling / 2 + random(0, ceiling / 2)` with `ceiling = min(max, base × 2^failures)`: never
/// shorter than half the ceiling, so no streak of unlucky draws turns back into a spin.
fn equal_jitter_delay(failures: u32, rng: &mut impl Rng) -> Duration {
    let ceiling_ms = RESTART_DELAY_MS_BASE
        .saturating_mul(1u64.checked_shl(failures.min(62)).unwrap_or(u64::MAX))
        .min(RESTART_DELAY_MS_MAX);
    let half = ceiling_ms / 2;
    Duration::from_millis(half + rng.random_range(0..=ceiling_ms - half))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn restarts_in_a_row_wait_longer_each_time_up_to_fifteen_seconds() {
        let backoff = RestartBackoff::default();
        let mut rng = StdRng::seed_from_u64(5);
        let delays: Vec<Duration> = (0..12).map(|_| backoff.next_delay(&mut rng)).collect();
        let expected_ceilings_ms = [500, 1_000, 2_000, 4_000, 8_000, 15_000, 15_000, 15_000];
        for (delay, ceiling) in delays.iter().zip(expected_ceilings_ms) {
            let ceiling = Duration::from_millis(ceiling);
            assert!(*delay <= ceiling && *delay >= ceiling / 2, "{delay:?}");
        }
        assert!(
            delays[8..]
                .iter()
                .all(|d| *d >= Duration::from_millis(7_500) && *d <= Duration::from_secs(15))
        );
        // Twelve restarts in a row take a minute or more, not microseconds.
        assert!(delays.iter().sum::<Duration>() > Duration::from_secs(60));
    }

    #[test]
    fn a_worker_that_ran_a_minute_starts_a_new_streak() {
        let backoff = RestartBackoff::default();
        let mut rng = StdRng::seed_from_u64(9);
        for _ in 0..6 {
            backoff.next_delay(&mut rng);
        }
        // Pretend the last restart was followed by a long healthy run.
        backoff.state.lock().expect("not poisoned").started_at =
            Instant::now() - Duration::from_secs(RESTART_STREAK_RESET_SECS + 1);
        assert!(backoff.next_delay(&mut rng) <= Duration::from_millis(RESTART_DELAY_MS_BASE));
    }
}
