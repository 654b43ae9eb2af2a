//! A circuit breaker per sink: after too many transport or 5xx failures the sink is left
//! alone for a while, then one probe decides whether it is back. Business answers (4xx,
//! including 429) never trip it: the receiver is up, it just said no.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::config::BreakerSettings;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Closed: call the sink.
    Allowed,
    /// Half-open: this call is the one probe.
    Probe,
    /// Open: do not call before `retry_in` has passed.
    Rejected { retry_in: Duration },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Opened,
    Closed,
}

#[derive(Debug)]
enum State {
    Closed { outcomes: VecDeque<bool> },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

/// Breakers of every sink of this process.
#[derive(Debug)]
pub struct Breakers {
    settings: BreakerSettings,
    states: Mutex<HashMap<String, State>>,
}

impl Breakers {
    pub fn new(settings: BreakerSettings) -> Self {
        Self {
            settings,
            states: Mutex::new(HashMap::new()),
        }
    }

    pub fn permit(&self, sink: &str, now: Instant) -> Permit {
        let Ok(mut states) = self.states.lock() else {
            return Permit::Allowed;
        };
        let state = states.entry(sink.to_owned()).or_insert_with(closed);
        match state {
            State::Closed { .. } => Permit::Allowed,
            State::Open { until } if now < *until => Permit::Rejected {
                retry_in: *until - now,
            },
            State::Open { .. } => {
                *state = State::HalfOpen { probing: true };
                Permit::Probe
            }
            State::HalfOpen { probing: true } => Permit::Rejected {
                retry_in: self.settings.open,
            },
            State::HalfOpen { probing } => {
                *probing = true;
                Permit::Probe
            }
        }
    }

    /// Records a call's result: `failed` for transport errors and 5xx only.
    pub fn record(&self, sink: &str, failed: bool, now: Instant) -> Option<Transition> {
        let Ok(mut states) = self.states.lock() else {
            return None;
        };
        let open_for = self.settings.open;
        let state = states.entry(sink.to_owned()).or_insert_with(closed);
        match state {
            State::HalfOpen { .. } if failed => {
                *state = State::Open {
                    until: now + open_for,
                };
                None
            }
            State::HalfOpen { .. } => {
                *state = closed();
                Some(Transition::Closed)
            }
            State::Open { .. } => None,
            State::Closed { outcomes } => {
                outcomes.push_back(failed);
                while outcomes.len() > self.settings.window {
                    outcomes.pop_front();
                }
                let failures = outcomes.iter().filter(|f| **f).count();
                let tripped = outcomes.len() >= self.settings.min_calls
                    && failures as f64 >= self.settings.failure_ratio * outcomes.len() as f64;
                if tripped {
                    *state = State::Open {
                        until: now + open_for,
                    };
                    return Some(Transition::Opened);
                }
                None
            }
        }
    }
}

fn closed() -> State {
    State::Closed {
        outcomes: VecDeque::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breakers() -> Breakers {
        Breakers::new(BreakerSettings {
            window: 4,
            min_calls: 2,
            failure_ratio: 0.5,
            open: Duration::from_secs(1),
        })
    }

    #[test]
    fn failures_open_the_circuit_and_a_good_probe_closes_it() {
        let b = breakers();
        let t0 = Instant::now();
        assert_eq!(b.permit("s", t0), Permit::Allowed);
        assert_eq!(b.record("s", true, t0), None);
        assert_eq!(b.record("s", true, t0), Some(Transition::Opened));
        assert!(matches!(b.permit("s", t0), Permit::Rejected { .. }));
        let later = t0 + Duration::from_millis(1_001);
        assert_eq!(b.permit("s", later), Permit::Probe);
        assert!(
            matches!(b.permit("s", later), Permit::Rejected { .. }),
            "one probe at a time"
        );
        assert_eq!(b.record("s", false, later), Some(Transition::Closed));
        assert_eq!(b.permit("s", later), Permit::Allowed);
    }

    #[test]
    fn a_failed_probe_reopens_and_successes_keep_it_closed() {
        let b = breakers();
        let t0 = Instant::now();
        b.record("s", true, t0);
        b.record("s", true, t0);
        let later = t0 + Duration::from_millis(1_001);
        assert_eq!(b.permit("s", later), Permit::Probe);
        assert_eq!(b.record("s", true, later), None);
        assert!(matches!(b.permit("s", later), Permit::Rejected { .. }));
        let other = breakers();
        for _ in 0..10 {
            assert_eq!(other.record("s", false, t0), None);
        }
        assert_eq!(
            other.record("s", true, t0),
            None,
            "1 failure in 4 is under 50%"
        );
    }
}
