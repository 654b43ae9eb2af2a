//! Retry policy, all of it: one [`RetryPolicy`] type, one instance per use, and which database
//! errors are worth another try.
//!
//! A policy's [`RetryPolicy::decide`] is pure: given how an attempt failed ([`Failure`]) and
//! which attempt it was, it returns a [`Decision`] — retry after a [`Wait`] (and whether the
//! attempt counts), or give up. Callers execute the decision; the delay's randomness is drawn
//! only when the wait is [`Wait::sample`]d.
//!
//! | instance | used by | backoff ceilings | gives up |
//! |---|---|---|---|
//! | [`RetryPolicy::SERIALIZATION`] | posting and intake transactions, in-process | 5 ms … 500 ms | after 10 tries |
//! | [`RetryPolicy::OUTAGE_WAIT`] | a posting job waiting out a database outage, in-process | 100 ms … 2 s | once the waits add up to 20 s |
//! | [`RetryPolicy::POSTING_JOB`] | `post_transfers` runs | 1 s … 5 min | after 8 counted attempts |
//! | [`RetryPolicy::POSTING_RESCHEDULE`] | writing a posting job's reschedule | 200 ms … 5 s | after 5 tries |
//! | [`RetryPolicy::ALERT_DELIVERY`] | `deliver_alert` attempts | 1 s … 5 min | after 10 attempts |
//!
//! Apart from these, apalis bounds how often one job row is run at all
//! ([`JOB_BACKEND_ATTEMPTS_MAX`], [`POSTING_JOB_ATTEMPTS_MAX`]).
//!
//! Posting (README, "Jobs, retries and crashes"):
//! - *serialization* failures (`40001`, `40P01`) re-run the whole posting transaction in-process
//!   ([`RetryPolicy::SERIALIZATION`]); once those tries are spent the run fails as transient;
//! - *unavailable*: the database cannot be reached (connection refused or lost, pool timeout,
//!   `57P01`–`57P03`, class `08`, too many connections). Not the transfers' fault: the job waits
//!   the outage out in-process ([`RetryPolicy::OUTAGE_WAIT`]) and is then rescheduled 0–5 s out,
//!   and **no attempt is counted**, so an outage of any length never fails a transfer with
//!   `retries_exhausted` (README, "When things fail");
//! - *transient* failures (lock timeout, idle-in-transaction timeout, or an error not
//!   recognised) end the job run; the transfers' attempts are counted and the job is scheduled
//!   again, until the 8th counted attempt turns them into `retries_exhausted`.
//!
//! Alert deliveries (README, "Alerts"): `408`, `429`, 5xx, timeouts and connection errors are
//! transient (a `Retry-After` is a lower bound on the wait); any other non-2xx is permanent; a
//! sink whose circuit is open is unavailable: the delivery waits the circuit out without
//! spending an attempt.
//!
//! Full jitter (`random(0, min(cap, base * 2^n))`) spreads retrying workers out; AWS's
//! measurements found it does the least total work of the common schemes. ferry supplies it
//! itself because `backon`'s built-in jitter only adds up to one extra delay on top of the
//! exponential one (README, "Jobs, retries and crashes").

use std::time::Duration;

use rand::Rng;

/// How an attempt failed, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// May succeed later: counts an attempt. `not_before` is what the other side asked for
    /// (`Retry-After`), a lower bound on the wait.
    Transient { not_before: Option<Duration> },
    /// The dependency cannot serve right now (database unreachable, sink circuit open): not
    /// the work's fault, so no attempt is counted and the limit never applies. `not_before`
    /// as above (a circuit's remaining open time).
    Unavailable { not_before: Option<Duration> },
    /// Will not succeed however often it is tried.
    Permanent,
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Try again after `wait`. `counted`: whether the failed attempt counts towards the limit
    /// (the caller records it).
    Retry { wait: Wait, counted: bool },
    /// Stop: the failure is permanent, or the attempt that failed was the last one allowed.
    GiveUp,
}

/// A randomised wait: uniform in `[0, jitter_max]` (whole milliseconds), but never shorter
/// than `at_least`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Wait {
    pub at_least: Duration,
    pub jitter_max: Duration,
}

impl Wait {
    /// Full jitter up to `jitter_max`, raised to `at_least`.
    pub const fn jittered(jitter_max: Duration, at_least: Option<Duration>) -> Self {
        let at_least = match at_least {
            Some(at_least) => at_least,
            None => Duration::ZERO,
        };
        Self {
            at_least,
            jitter_max,
        }
    }

    /// Draws the delay.
    pub fn sample(self, rng: &mut impl Rng) -> Duration {
        let jitter_max_ms = u64::try_from(self.jitter_max.as_millis()).unwrap_or(u64::MAX);
        self.at_least
            .max(Duration::from_millis(rng.random_range(0..=jitter_max_ms)))
    }

    /// The longest delay [`Wait::sample`] can draw.
    pub fn max(self) -> Duration {
        self.at_least.max(self.jitter_max)
    }
}

/// A retry policy: capped exponential backoff with full jitter between counted attempts, a
/// limit on counted attempts, and how failures that count no attempt are waited out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Backoff ceiling after the first counted attempt; it doubles per attempt…
    pub base: Duration,
    /// …up to this.
    pub cap: Duration,
    /// Counted attempts allowed: the one numbered `attempts_max` that fails gives up.
    pub attempts_max: u32,
    /// Longest jittered wait after a [`Failure::Unavailable`] (raised to its `not_before`).
    pub uncounted_wait_max: Duration,
    /// In-process schedules only ([`RetryPolicy::schedule`]): stop once the waits would add up
    /// to more than this.
    pub total_wait_max: Option<Duration>,
}

impl RetryPolicy {
    /// Posting and intake transactions that lose a serialization race (`40001`, `40P01`) re-run
    /// at once, in-process: 10 tries in all.
    pub const SERIALIZATION: Self = Self {
        base: Duration::from_millis(5),
        cap: Duration::from_millis(500),
        attempts_max: 10,
        uncounted_wait_max: Duration::ZERO,
        total_wait_max: None,
    };

    /// A posting job whose database is unreachable waits in-process; the 2 s cap means it
    /// notices the database's return within 2 s. After 20 s the job is handed back to the
    /// queue ([`RetryPolicy::POSTING_JOB`], uncounted): well under the rescue bound (60 s by
    /// default), so a waiting job is not rescued from under itself.
    pub const OUTAGE_WAIT: Self = Self {
        base: Duration::from_millis(100),
        cap: Duration::from_millis(2_000),
        attempts_max: u32::MAX,
        uncounted_wait_max: Duration::ZERO,
        total_wait_max: Some(Duration::from_millis(20_000)),
    };

    /// `post_transfers` runs. Transient failures count an attempt on each transfer and the job
    /// runs again 1 s, 2 s, 4 s … 5 min (ceilings) later; the 8th counted attempt fails the
    /// transfers with `retries_exhausted`. After an outage the job runs again 0–5 s out, so the
    /// transfers post within seconds of the database's return, counting nothing.
    pub const POSTING_JOB: Self = Self {
        base: Duration::from_millis(1_000),
        cap: Duration::from_millis(5 * 60 * 1_000),
        attempts_max: 8,
        uncounted_wait_max: Duration::from_millis(5_000),
        total_wait_max: None,
    };

    /// Writing a failed posting run's outcome (counted attempts, the next job) while the
    /// database may still be unreachable: 5 tries in all. If they fail, the run fails and the
    /// job is taken back by orphan recovery or the rescuer (`queue::rescue`).
    pub const POSTING_RESCHEDULE: Self = Self {
        base: Duration::from_millis(200),
        cap: Duration::from_millis(5_000),
        attempts_max: 5,
        uncounted_wait_max: Duration::ZERO,
        total_wait_max: None,
    };

    /// `deliver_alert` attempts: 10 in all, 1 s … 5 min ceilings, never sooner than a
    /// `Retry-After`. An open circuit waits exactly its remaining open time, uncounted.
    pub const ALERT_DELIVERY: Self = Self {
        base: Duration::from_millis(1_000),
        cap: Duration::from_millis(5 * 60 * 1_000),
        attempts_max: 10,
        uncounted_wait_max: Duration::ZERO,
        total_wait_max: None,
    };

    /// The backoff ceiling after counted attempt number `attempt` (1-based):
    /// `min(cap, base * 2^(attempt - 1))`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(62);
        let base_ms = u64::try_from(self.base.as_millis()).unwrap_or(u64::MAX);
        let cap_ms = u64::try_from(self.cap.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(base_ms.saturating_mul(1u64 << exponent).min(cap_ms))
    }

    /// What to do after attempt number `attempt` (1-based, counting the one that just failed
    /// if it counts) failed with `failure`. Pure: no I/O, no randomness.
    pub fn decide(&self, failure: Failure, attempt: u32) -> Decision {
        match failure {
            Failure::Permanent => Decision::GiveUp,
            Failure::Unavailable { not_before } => Decision::Retry {
                wait: Wait::jittered(self.uncounted_wait_max, not_before),
                counted: false,
            },
            Failure::Transient { not_before } if attempt < self.attempts_max => Decision::Retry {
                wait: Wait::jittered(self.ceiling(attempt), not_before),
                counted: true,
            },
            Failure::Transient { .. } => Decision::GiveUp,
        }
    }

    /// This policy as an in-process schedule for `backon`: the delay before each retry after
    /// a transient failure, until [`RetryPolicy::decide`] gives up or the waits would exceed
    /// [`RetryPolicy::total_wait_max`].
    pub fn schedule(self) -> impl Iterator<Item = Duration> + Send + Sync + Unpin {
        self.schedule_sampled(|wait| wait.sample(&mut rand::rng()))
    }

    fn schedule_sampled(
        self,
        mut sample: impl FnMut(Wait) -> Duration + Send + Sync + Unpin,
    ) -> impl Iterator<Item = Duration> + Send + Sync + Unpin {
        let mut waited = Duration::ZERO;
        (1..=u32::MAX)
            .map_while(move |attempt| {
                match self.decide(Failure::Transient { not_before: None }, attempt) {
                    Decision::Retry { wait, .. } => Some(sample(wait)),
                    Decision::GiveUp => None,
                }
            })
            .take_while(move |delay| {
                waited = waited.saturating_add(*delay);
                self.total_wait_max.is_none_or(|max| waited <= max)
            })
    }
}

/// Backend-level (apalis) attempts of one job, apart from the policies above: a job's handler
/// reschedules it itself with backoff (apalis-postgres would retry at once), so this only
/// bounds a job whose handler cannot reach the database at all, which reconciliation then
/// re-drives.
pub const JOB_BACKEND_ATTEMPTS_MAX: usize = 5;
/// Backend-level attempts of a posting job. Higher: besides failed runs, orphan recovery and
/// the rescuer each count one, and a few database restarts in a row must not leave the job
/// dead (its transfers would wait for reconciliation's re-drive, minutes later). Posting is
/// idempotent, so a re-run costs a few milliseconds. Not the transfers' attempts
/// ([`RetryPolicy::POSTING_JOB`]).
pub const POSTING_JOB_ATTEMPTS_MAX: usize = 25;

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

impl RetryClass {
    /// How a posting job run that ended with this class failed. A serialization failure that
    /// reaches the job has spent its in-process tries ([`RetryPolicy::SERIALIZATION`]) and
    /// counts like any transient one; unknown errors are handled as transient.
    pub fn failure(self) -> Failure {
        match self {
            Self::Unavailable => Failure::Unavailable { not_before: None },
            Self::Serialization | Self::Transient | Self::Unknown => {
                Failure::Transient { not_before: None }
            }
        }
    }
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

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    const TRANSIENT: Failure = Failure::Transient { not_before: None };
    const UNAVAILABLE: Failure = Failure::Unavailable { not_before: None };

    /// A counted retry with full jitter up to `ceiling`.
    fn counted(ceiling: Duration) -> Decision {
        Decision::Retry {
            wait: Wait::jittered(ceiling, None),
            counted: true,
        }
    }

    /// The delays of an in-process schedule when every wait draws its longest delay.
    fn longest_schedule(policy: RetryPolicy) -> Vec<Duration> {
        policy.schedule_sampled(Wait::max).collect()
    }

    #[test]
    fn posting_jobs_back_off_from_one_second_and_give_up_at_the_eighth_counted_attempt() {
        let policy = RetryPolicy::POSTING_JOB;
        let ceilings_s = [1, 2, 4, 8, 16, 32, 64];
        for (attempt, ceiling_s) in (1..).zip(ceilings_s) {
            assert_eq!(
                policy.decide(TRANSIENT, attempt),
                counted(Duration::from_secs(ceiling_s)),
                "attempt {attempt}"
            );
        }
        for attempt in [8, 9, 100, u32::MAX] {
            assert_eq!(
                policy.decide(TRANSIENT, attempt),
                Decision::GiveUp,
                "{attempt}"
            );
        }
        // The ceiling stops doubling at 5 min.
        assert_eq!(policy.ceiling(9), Duration::from_secs(256));
        for attempt in [10, 40, u32::MAX] {
            assert_eq!(
                policy.ceiling(attempt),
                Duration::from_secs(300),
                "{attempt}"
            );
        }
    }

    #[test]
    fn an_outage_never_counts_an_attempt_and_never_gives_up() {
        let uncounted = Decision::Retry {
            wait: Wait::jittered(ms(5_000), None),
            counted: false,
        };
        for attempt in [0, 1, 7, 8, 9, 1_000, u32::MAX] {
            assert_eq!(
                RetryPolicy::POSTING_JOB.decide(UNAVAILABLE, attempt),
                uncounted,
                "attempt {attempt}"
            );
        }
    }

    #[test]
    fn only_an_unreachable_database_goes_uncounted_in_a_posting_job() {
        let policy = RetryPolicy::POSTING_JOB;
        for class in [
            RetryClass::Serialization,
            RetryClass::Transient,
            RetryClass::Unknown,
        ] {
            assert_eq!(
                policy.decide(class.failure(), 1),
                counted(ms(1_000)),
                "{class:?}"
            );
            assert_eq!(
                policy.decide(class.failure(), 8),
                Decision::GiveUp,
                "{class:?}"
            );
        }
        assert!(matches!(
            policy.decide(RetryClass::Unavailable.failure(), 8),
            Decision::Retry { counted: false, .. }
        ));
    }

    #[test]
    fn a_posting_job_rescheduled_after_an_outage_runs_within_five_seconds() {
        let Decision::Retry { wait, .. } = RetryPolicy::POSTING_JOB.decide(UNAVAILABLE, 1) else {
            panic!("an outage gave up");
        };
        let mut rng = StdRng::seed_from_u64(5);
        let delays: Vec<Duration> = (0..2_000).map(|_| wait.sample(&mut rng)).collect();
        assert!(delays.iter().all(|d| *d <= ms(5_000)));
        assert!(delays.iter().any(|d| *d < ms(250)));
        assert!(delays.iter().any(|d| *d > ms(4_750)));
    }

    #[test]
    fn serialization_failures_get_ten_tries_five_to_five_hundred_milliseconds_apart() {
        let policy = RetryPolicy::SERIALIZATION;
        let ceilings = [5, 10, 20, 40, 80, 160, 320, 500, 500].map(ms);
        assert_eq!(longest_schedule(policy), ceilings);
        assert_eq!(policy.decide(TRANSIENT, 10), Decision::GiveUp);
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..200 {
            let delays: Vec<Duration> = policy
                .schedule_sampled(|wait| wait.sample(&mut rng))
                .collect();
            assert_eq!(delays.len(), 9);
            assert!(delays.iter().zip(ceilings).all(|(d, max)| *d <= max));
        }
        assert_eq!(policy.schedule().count(), 9);
    }

    #[test]
    fn an_outage_is_waited_out_in_process_for_at_most_twenty_seconds() {
        let policy = RetryPolicy::OUTAGE_WAIT;
        // Longest delays: 0.1 s, 0.2 s, … 1.6 s, then 2 s while the total stays within 20 s.
        let mut longest = [100, 200, 400, 800, 1_600].map(ms).to_vec();
        longest.extend([ms(2_000); 8]);
        assert_eq!(longest_schedule(policy), longest);
        assert_eq!(longest.iter().sum::<Duration>(), ms(19_100));
        // Bounded by time, not by tries: short delays are never cut off by a count.
        assert_eq!(
            policy.schedule_sampled(|_| ms(1)).take(10_000).count(),
            10_000
        );
        for _ in 0..50 {
            let delays: Vec<Duration> = policy.schedule().collect();
            assert!(delays.iter().sum::<Duration>() <= ms(20_000));
            // Enough tries that a database back within the window is noticed.
            assert!(delays.len() >= 13, "{}", delays.len());
            assert!(delays.iter().all(|d| *d <= ms(2_000)));
        }
    }

    #[test]
    fn writing_a_reschedule_gets_five_tries() {
        let longest = [200, 400, 800, 1_600].map(ms);
        assert_eq!(longest_schedule(RetryPolicy::POSTING_RESCHEDULE), longest);
    }

    #[test]
    fn alert_deliveries_back_off_from_one_second_and_give_up_at_the_tenth_attempt() {
        let policy = RetryPolicy::ALERT_DELIVERY;
        let ceilings_s = [1, 2, 4, 8, 16, 32, 64, 128, 256];
        for (attempt, ceiling_s) in (1..).zip(ceilings_s) {
            assert_eq!(
                policy.decide(TRANSIENT, attempt),
                counted(Duration::from_secs(ceiling_s)),
                "attempt {attempt}"
            );
        }
        for attempt in [10, 11, u32::MAX] {
            assert_eq!(
                policy.decide(TRANSIENT, attempt),
                Decision::GiveUp,
                "{attempt}"
            );
        }
        assert_eq!(policy.ceiling(10), Duration::from_secs(300));
    }

    #[test]
    fn a_permanent_refusal_is_never_retried() {
        for attempt in [0, 1, 5] {
            assert_eq!(
                RetryPolicy::ALERT_DELIVERY.decide(Failure::Permanent, attempt),
                Decision::GiveUp
            );
        }
    }

    #[test]
    fn retry_after_is_a_lower_bound_on_an_alert_retry() {
        let policy = RetryPolicy::ALERT_DELIVERY;
        let mut rng = StdRng::seed_from_u64(13);
        // Longer than the backoff: exactly Retry-After.
        let asked = Failure::Transient {
            not_before: Some(Duration::from_secs(600)),
        };
        let Decision::Retry { wait, counted } = policy.decide(asked, 1) else {
            panic!("gave up");
        };
        assert!(counted);
        assert_eq!(
            wait,
            Wait::jittered(ms(1_000), Some(Duration::from_secs(600)))
        );
        assert!((0..100).all(|_| wait.sample(&mut rng) == Duration::from_secs(600)));
        // Shorter than the backoff ceiling: somewhere between the two.
        let asked = Failure::Transient {
            not_before: Some(ms(3_000)),
        };
        let Decision::Retry { wait, .. } = policy.decide(asked, 4) else {
            panic!("gave up");
        };
        let delays: Vec<Duration> = (0..2_000).map(|_| wait.sample(&mut rng)).collect();
        assert!(delays.iter().all(|d| (ms(3_000)..=ms(8_000)).contains(d)));
        assert!(delays.contains(&ms(3_000)));
        assert!(delays.iter().any(|d| *d > ms(7_500)));
        // Retry-After does not extend the attempt limit.
        assert_eq!(policy.decide(asked, 10), Decision::GiveUp);
    }

    #[test]
    fn an_open_circuit_waits_exactly_its_remaining_time_without_spending_an_attempt() {
        let retry_in = ms(12_345);
        let open = Failure::Unavailable {
            not_before: Some(retry_in),
        };
        let mut rng = StdRng::seed_from_u64(17);
        for attempt in [0, 9, 10, u32::MAX] {
            let decision = RetryPolicy::ALERT_DELIVERY.decide(open, attempt);
            let Decision::Retry { wait, counted } = decision else {
                panic!("an open circuit gave up at {attempt}");
            };
            assert!(!counted);
            assert!((0..100).all(|_| wait.sample(&mut rng) == retry_in));
        }
    }

    #[test]
    fn full_jitter_uses_the_whole_range_and_never_exceeds_it() {
        let mut rng = StdRng::seed_from_u64(11);
        let wait = Wait::jittered(ms(800), None);
        let delays: Vec<Duration> = (0..2_000).map(|_| wait.sample(&mut rng)).collect();
        assert!(delays.iter().all(|d| *d <= ms(800)));
        assert!(delays.iter().any(|d| *d < ms(80)));
        assert!(delays.iter().any(|d| *d > ms(720)));
        assert_eq!(Wait::default().sample(&mut rng), Duration::ZERO);
    }
}
