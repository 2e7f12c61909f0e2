//! [`Attempts`]: a [`Backoff`] with its attempt counter.

use std::time::Duration;

use crate::Backoff;

/// A [`Backoff`] plus the number of waits handed out since the last reset,
/// for a loop that retries or reconnects.
///
/// ```
/// use std::time::Duration;
/// use wd_backoff::{Attempts, Backoff};
///
/// let mut attempts = Attempts::new(
///     Backoff::new(Duration::from_millis(800), Duration::from_secs(30)).jitter(false),
/// );
/// assert_eq!(attempts.next_delay(), Duration::from_millis(800));
/// assert_eq!(attempts.next_delay(), Duration::from_millis(1600));
/// // A connection that flapped after 5 s does not start the backoff over...
/// attempts.reset_if_healthy(Duration::from_secs(5), Duration::from_secs(120));
/// assert_eq!(attempts.next_delay(), Duration::from_millis(3200));
/// // ...one that stayed up two minutes does.
/// attempts.reset_if_healthy(Duration::from_secs(120), Duration::from_secs(120));
/// assert_eq!(attempts.next_delay(), Duration::from_millis(800));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Attempts {
    backoff: Backoff,
    attempt: u32,
}

impl Attempts {
    /// Starts at attempt 0.
    pub const fn new(backoff: Backoff) -> Self {
        Attempts {
            backoff,
            attempt: 0,
        }
    }

    /// The policy.
    pub const fn backoff(&self) -> &Backoff {
        &self.backoff
    }

    /// How many waits were handed out since the start or the last reset
    /// (saturating).
    pub const fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The next wait ([`Backoff::delay`] of the current attempt), and counts
    /// it.
    pub fn next_delay(&mut self) -> Duration {
        self.next_delay_with(fastrand::f64())
    }

    /// [`Attempts::next_delay`] with the random draw given (see
    /// [`Backoff::delay_with`]). For deterministic tests.
    pub fn next_delay_with(&mut self, unit: f64) -> Duration {
        let d = self.backoff.delay_with(self.attempt, unit);
        self.attempt = self.attempt.saturating_add(1);
        d
    }

    /// Starts over at attempt 0 (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Starts over if what the last wait led to stayed healthy for at least
    /// `healthy_after` (`uptime` long); a short-lived success (a flapping
    /// connection) keeps the backoff growing. Returns whether it reset.
    pub fn reset_if_healthy(&mut self, uptime: Duration, healthy_after: Duration) -> bool {
        let healthy = uptime >= healthy_after;
        if healthy {
            self.reset();
        }
        healthy
    }
}
