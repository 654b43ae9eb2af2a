//! Retry policy: which database errors are worth another try, and when.
//!
//! Three kinds of trouble, each retried one way:
//! - *serialization* failures (`40001`, `40P01`) re-run the whole posting transaction in-process,
//!   up to [`SERIALIZATION_TRIES_MAX`] times, with capped exponential backoff and full jitter;
//! - *unavailable*: the database cannot be reached (connection refused or lost, pool timeout,
//!   `57P01`–`57P03`, class `08`, too many connections). Not the transfers' fault: the job waits
//!   the outage out in-process ([`outage_backoff`]) and is then rescheduled, and **no attempt is
//!   counted**, so an outage of any length never fails a transfer with `retries_exhausted`
//!   (README, "When things fail");
//! - *transient* failures (lock timeout, idle-in-transaction timeout, or an error not
//!   recognised) end the job run; the job is scheduled again with [`next_retry_delay`] and the
//!   transfers' attempts are counted, until [`JOB_ATTEMPTS_MAX`] turns them into
//!   `retries_exhausted`.
//!
//! Full jitter (`random(0, min(cap, base * 2^attempt))`) spreads retrying workers out; AWS's
//! measurements found it does the least total work of the common schemes.

use std::time::Duration;

use rand::Rng;

/// How many times one posting transaction is tried when it loses a serialization race.
pub const SERIALIZATION_TRIES_MAX: usize = 10;
/// First backoff ceiling between serialization retries.
pub const SERIALIZATION_DELAY_MS_BASE: u64 = 5;
/// Largest backoff ceiling between serialization retries.
pub const SERIALIZATION_DELAY_MS_MAX: u64 = 500;
/// Job runs a transfer gets for transient errors before it fails with `retries_exhausted`.
pub const JOB_ATTEMPTS_MAX: i32 = 8;
/// First backoff ceiling between job runs.
pub const JOB_DELAY_MS_BASE: u64 = 1_000;
/// Largest backoff ceiling between job runs.
pub const JOB_DELAY_MS_MAX: u64 = 5 * 60 * 1_000;
/// First backoff ceiling while waiting out a database outage in-process.
pub const OUTAGE_DELAY_MS_BASE: u64 = 100;
/// Largest backoff ceiling while waiting out an outage: once the database is back, a job
/// notices within this long.
pub const OUTAGE_DELAY_MS_MAX: u64 = 2_000;
/// How long one job run waits out an outage before it hands the job back to the queue. Well
/// under the rescue bound (60 s by default), so a waiting job is not rescued from under itself.
pub const OUTAGE_WAIT_MS_MAX: u64 = 20_000;
/// Largest delay of a job rescheduled after an outage: the transfers post within seconds of
/// the database's return.
pub const OUTAGE_RESCHEDULE_DELAY_MS_MAX: u64 = 5_000;

/// How an error should be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryClass {
    /// Lost a serialization race: re-run the transaction now (after a short jittered sleep).
    Serialization,
    /// The database cannot be reached: wait and try again, counting no attempt.
    Unavailable,
    /// Infrastructure trouble: give up this run, try the job again later, counting an attempt.
    Transient,
    /// Not recognised: treated as transient, but logged loudly because it may be a bug.
    Unknown,
}

/// Classifies a database error by SQLSTATE or by sqlx's transport-level variants.
pub fn classify(error: &sqlx::Error) -> RetryClass {
    if is_unavailable(error) {
        return RetryClass::Unavailable;
    }
    match error {
        sqlx::Error::Database(db) => classify_sqlstate(db.code().as_deref().unwrap_or("")),
        _ => RetryClass::Unknown,
    }
}

/// SQLSTATEs by retry class (PostgreSQL's appendix A; README, "Jobs, retries and crashes").
pub fn classify_sqlstate(code: &str) -> RetryClass {
    match code {
        "40001" | "40P01" => RetryClass::Serialization,
        c if is_unavailable_sqlstate(c) => RetryClass::Unavailable,
        // lock_timeout and idle-in-transaction timeout clear up on their own, but the database
        // itself is up: a transfer that keeps meeting them should end.
        "55P03" | "25P03" => RetryClass::Transient,
        _ => RetryClass::Unknown,
    }
}

/// Whether `error` means the database cannot serve us right now — unreachable, restarting,
/// refusing connections, or no pooled connection free in time — rather than that the request
/// was wrong. Intake answers these with `503 unavailable` (README, HTTP API) instead of `500`.
pub fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => {
            db.code().as_deref().is_some_and(is_unavailable_sqlstate)
                // FATAL or PANIC: PostgreSQL ended or refused the session itself (a database
                // closed to connections, 55000, is one), whatever the code.
                || db
                    .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                    .is_some_and(|pg| {
                        matches!(
                            pg.severity(),
                            sqlx::postgres::PgSeverity::Fatal | sqlx::postgres::PgSeverity::Panic
                        )
                    })
        }
        e => is_connection_trouble(e),
    }
}

/// Transport-level failures: no usable connection to the database.
fn is_connection_trouble(error: &sqlx::Error) -> bool {
    matches!(
        error,
        sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Protocol(_)
    )
}

/// SQLSTATEs that mean the server cannot serve this session: admin/crash shutdown, cannot
/// connect now, too many connections, and class 08 (connection exceptions).
fn is_unavailable_sqlstate(code: &str) -> bool {
    matches!(code, "57P01" | "57P02" | "57P03" | "53300") || code.starts_with("08")
}

/// Full-jitter delay before retry number `attempt` (0-based): uniform in
/// `[0, min(max, base * 2^attempt)]`.
pub fn full_jitter_delay(attempt: u32, base_ms: u64, max_ms: u64, rng: &mut impl Rng) -> Duration {
    let ceiling_ms = base_ms
        .saturating_mul(1u64.checked_shl(attempt.min(62)).unwrap_or(u64::MAX))
        .min(max_ms);
    Duration::from_millis(rng.random_range(0..=ceiling_ms))
}

/// Delay before the job runs again after its `attempt`-th transient failure (1-based):
/// ceilings 1 s, 2 s, 4 s, … capped at 5 min.
pub fn next_retry_delay(attempt: i32, rng: &mut impl Rng) -> Duration {
    let exponent = u32::try_from(attempt.saturating_sub(1)).unwrap_or(0);
    full_jitter_delay(exponent, JOB_DELAY_MS_BASE, JOB_DELAY_MS_MAX, rng)
}

/// The in-process schedule while the database is unreachable: full-jitter delays from
/// [`OUTAGE_DELAY_MS_BASE`] up to [`OUTAGE_DELAY_MS_MAX`], ending once they add up to
/// [`OUTAGE_WAIT_MS_MAX`].
pub fn outage_backoff() -> impl Iterator<Item = Duration> + Send + Sync + Unpin {
    let mut waited = Duration::ZERO;
    (0..u32::MAX)
        .map(|attempt| {
            full_jitter_delay(
                attempt,
                OUTAGE_DELAY_MS_BASE,
                OUTAGE_DELAY_MS_MAX,
                &mut rand::rng(),
            )
        })
        .take_while(move |delay| {
            waited += *delay;
            waited <= Duration::from_millis(OUTAGE_WAIT_MS_MAX)
        })
}

/// Delay of a job rescheduled after an outage.
pub fn outage_reschedule_delay(rng: &mut impl Rng) -> Duration {
    Duration::from_millis(rng.random_range(0..=OUTAGE_RESCHEDULE_DELAY_MS_MAX))
}

/// The in-process schedule for serialization retries, as a `backon` backoff: an iterator of
/// delays, one per retry after the first try.
pub fn serialization_backoff() -> impl Iterator<Item = Duration> + Send + Sync + Unpin {
    (0..SERIALIZATION_TRIES_MAX - 1).map(|attempt| {
        let attempt = u32::try_from(attempt).unwrap_or(u32::MAX);
        full_jitter_delay(
            attempt,
            SERIALIZATION_DELAY_MS_BASE,
            SERIALIZATION_DELAY_MS_MAX,
            &mut rand::rng(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn serialization_and_deadlock_are_retried_in_process() {
        assert_eq!(classify_sqlstate("40001"), RetryClass::Serialization);
        assert_eq!(classify_sqlstate("40P01"), RetryClass::Serialization);
    }

    #[test]
    fn connection_and_shutdown_errors_mean_unavailable() {
        for code in ["57P01", "57P03", "08006", "08001", "53300"] {
            assert_eq!(classify_sqlstate(code), RetryClass::Unavailable, "{code}");
        }
        assert!(is_unavailable(&sqlx::Error::PoolTimedOut));
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(is_unavailable(&sqlx::Error::Io(refused)));
    }

    #[test]
    fn lock_and_idle_timeouts_are_transient_and_counted() {
        for code in ["55P03", "25P03"] {
            assert_eq!(classify_sqlstate(code), RetryClass::Transient, "{code}");
        }
    }

    #[test]
    fn an_outage_is_waited_out_for_at_most_twenty_seconds() {
        for _ in 0..50 {
            let delays: Vec<Duration> = outage_backoff().collect();
            let total: Duration = delays.iter().sum();
            assert!(
                total <= Duration::from_millis(OUTAGE_WAIT_MS_MAX),
                "{total:?}"
            );
            // Enough tries that a database back within the window is noticed.
            assert!(delays.len() >= 10, "{}", delays.len());
            assert!(
                delays
                    .iter()
                    .all(|d| *d <= Duration::from_millis(OUTAGE_DELAY_MS_MAX))
            );
        }
    }

    #[test]
    fn connection_errors_mean_unavailable_and_request_errors_do_not() {
        for e in [
            sqlx::Error::PoolTimedOut,
            sqlx::Error::PoolClosed,
            sqlx::Error::WorkerCrashed,
            sqlx::Error::Protocol("unexpected message".into()),
            sqlx::Error::Io(std::io::ErrorKind::ConnectionRefused.into()),
        ] {
            assert!(is_unavailable(&e), "{e}");
        }
        for code in ["57P01", "57P02", "57P03", "53300", "08006", "08001"] {
            assert!(is_unavailable_sqlstate(code), "{code}");
        }
        // Transient, but the database is up: not "unavailable".
        for code in ["55P03", "25P03", "40001", "23505", "42P01"] {
            assert!(!is_unavailable_sqlstate(code), "{code}");
        }
        assert!(!is_unavailable(&sqlx::Error::RowNotFound));
    }

    #[test]
    fn constraint_violations_and_unknown_codes_are_not_silently_retried() {
        assert_eq!(classify_sqlstate("23505"), RetryClass::Unknown);
        assert_eq!(classify_sqlstate("42P01"), RetryClass::Unknown);
        assert_eq!(classify(&sqlx::Error::RowNotFound), RetryClass::Unknown);
    }

    #[test]
    fn full_jitter_stays_under_a_doubling_capped_ceiling() {
        let mut rng = StdRng::seed_from_u64(7);
        for attempt in 0..80u32 {
            let ceiling = (5u64 << attempt.min(40)).min(500);
            for _ in 0..50 {
                let delay = full_jitter_delay(attempt, 5, 500, &mut rng);
                assert!(
                    delay <= Duration::from_millis(ceiling),
                    "{attempt}: {delay:?}"
                );
            }
        }
    }

    #[test]
    fn full_jitter_uses_the_whole_range() {
        let mut rng = StdRng::seed_from_u64(11);
        let delays: Vec<_> = (0..2000)
            .map(|_| full_jitter_delay(3, 100, 10_000, &mut rng))
            .collect();
        assert!(delays.iter().any(|d| *d < Duration::from_millis(80)));
        assert!(delays.iter().any(|d| *d > Duration::from_millis(720)));
    }

    /// Over `draws` draws of `delay`, asserts every delay is within `[0, ceiling]` and the
    /// draws spread over the whole range: some in the lowest and some in the highest tenth,
    /// with a mean near half the ceiling (full jitter, not "no delay" or "always the ceiling").
    fn assert_full_jitter(what: &str, ceiling: Duration, mut delay: impl FnMut() -> Duration) {
        let draws = 2_000u32;
        let delays: Vec<Duration> = (0..draws).map(|_| delay()).collect();
        assert!(
            delays.iter().all(|d| *d <= ceiling),
            "{what}: a delay above the {ceiling:?} ceiling"
        );
        assert!(
            delays.iter().any(|d| *d >= ceiling.mul_f64(0.9)),
            "{what}: no delay near the {ceiling:?} ceiling (max {:?})",
            delays.iter().max()
        );
        assert!(
            delays.iter().any(|d| *d <= ceiling.mul_f64(0.1)),
            "{what}: no delay in the lowest tenth of {ceiling:?}"
        );
        let mean = delays.iter().sum::<Duration>() / draws;
        assert!(
            mean >= ceiling.mul_f64(0.4) && mean <= ceiling.mul_f64(0.6),
            "{what}: mean {mean:?} is not about half of {ceiling:?}"
        );
    }

    #[test]
    fn job_retries_back_off_from_one_second_to_five_minutes() {
        let mut rng = StdRng::seed_from_u64(3);
        // The ceiling doubles per failed attempt from 1 s (README, "Jobs, retries and crashes")
        // until the 5 min cap, which then holds.
        let ceilings_s = [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300];
        for (attempt, ceiling_s) in (1..).zip(ceilings_s) {
            assert_full_jitter(
                &format!("job attempt {attempt}"),
                Duration::from_secs(ceiling_s),
                || next_retry_delay(attempt, &mut rng),
            );
        }
        assert_full_jitter("job attempt 40", Duration::from_secs(300), || {
            next_retry_delay(40, &mut rng)
        });
        assert_full_jitter("job attempt i32::MAX", Duration::from_secs(300), || {
            next_retry_delay(i32::MAX, &mut rng)
        });
    }

    /// The schedule `PostingEngine::post` hands to backon: one delay per retry, so ten tries in
    /// all (README, "Jobs, retries and crashes"), ceilings 5 ms doubling to the 500 ms cap.
    /// That the engine really tries ten times and then gives up is
    /// `posting::a_serialization_failure_that_never_clears_is_tried_ten_times_then_given_up`
    /// (tests/api).
    #[test]
    fn the_serialization_schedule_allows_ten_tries_in_all() {
        let ceilings_ms = [5, 10, 20, 40, 80, 160, 320, 500, 500];
        let schedules: Vec<Vec<Duration>> = (0..2_000)
            .map(|_| serialization_backoff().collect())
            .collect();
        for schedule in &schedules {
            // Nine delays: nine retries after the first try.
            assert_eq!(schedule.len() + 1, 10, "{schedule:?}");
        }
        for (retry, ceiling_ms) in ceilings_ms.into_iter().enumerate() {
            let mut draws = schedules.iter().map(|s| s[retry]);
            assert_full_jitter(
                &format!("serialization retry {retry}"),
                Duration::from_millis(ceiling_ms),
                || draws.next().unwrap_or_default(),
            );
        }
    }
}
