//! Reconciliation windows: the time range a scheduled tick covers.

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

/// A half-open time range `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Window {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a window must end after it starts ({start} .. {end})")]
pub struct EmptyWindow {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl Window {
    pub fn new(start: DateTime<Utc>, end: DateTime<Utc>) -> Result<Self, EmptyWindow> {
        if end <= start {
            return Err(EmptyWindow { start, end });
        }
        Ok(Self { start, end })
    }
}

/// The window a tick at `tick` closes: from the schedule's previous fire time to `tick`.
/// Falls back to `fallback` before `tick` if the schedule fires less than once a year.
pub fn window_closed_by(
    schedule: &cron::Schedule,
    tick: DateTime<Utc>,
    fallback: Duration,
) -> Window {
    for lookback in [
        Duration::hours(1),
        Duration::days(2),
        Duration::days(40),
        Duration::days(400),
    ] {
        let previous = schedule
            .after(&(tick - lookback))
            .take_while(|t| *t < tick)
            .last();
        if let Some(start) = previous {
            return Window { start, end: tick };
        }
    }
    Window {
        start: tick - fallback,
        end: tick,
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use chrono::TimeZone;

    use super::*;

    fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 21, h, m, s)
            .single()
            .expect("valid time")
    }

    #[test]
    fn a_five_minute_tick_closes_the_five_minutes_before_it() {
        let schedule = cron::Schedule::from_str("0 */5 * * * *").expect("cron");
        let window = window_closed_by(&schedule, at(10, 5, 0), Duration::minutes(5));
        assert_eq!(
            window,
            Window {
                start: at(10, 0, 0),
                end: at(10, 5, 0)
            }
        );
    }

    #[test]
    fn a_daily_tick_closes_the_day_before_it() {
        let schedule = cron::Schedule::from_str("0 30 2 * * *").expect("cron");
        let tick = at(2, 30, 0);
        let window = window_closed_by(&schedule, tick, Duration::minutes(5));
        assert_eq!(window.start, tick - Duration::days(1));
    }

    #[test]
    fn windows_must_not_be_empty() {
        assert!(Window::new(at(1, 0, 0), at(1, 0, 0)).is_err());
        assert!(Window::new(at(1, 0, 1), at(1, 0, 0)).is_err());
        assert!(Window::new(at(1, 0, 0), at(1, 0, 1)).is_ok());
    }
}
