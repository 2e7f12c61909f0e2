//! The one backoff policy of the `wd` workspace: capped exponential delays
//! with jitter.
//!
//! Everything in `wd` that waits before trying again (the libvirt listener's
//! reconnect, a notifier's retry, the spool's re-offer, the bus's reconnect)
//! describes its waits with a [`Backoff`], so there is one set of rules, one
//! validation and one place to fix them:
//!
//! - the wait before attempt `n` (counted from 0) is `initial * factor^n`,
//!   capped at `max`; the arithmetic saturates, so a huge `n` or `factor`
//!   gives `max`, never a panic or an overflow;
//! - with jitter on, each wait is drawn uniformly from `[d / 2, d]`, where `d`
//!   is that capped value ("equal jitter"), so a wait is **never above
//!   `max`**, never below half of `d`, and many processes that failed
//!   together do not retry in lockstep;
//! - [`Backoff::check`] bounds a configured policy and names the config key
//!   in its error.
//!
//! Use [`Backoff::delay`] where the attempt number is at hand,
//! [`Attempts`] where a loop needs to count them (and start over after a
//! healthy stretch, like kube-runtime's watcher backoff), and
//! [`Backoff::builder`] for `backon`'s combinators
//! (`Retryable::retry`).
//!
//! ```
//! use std::time::Duration;
//! use wd_backoff::Backoff;
//!
//! let backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
//! backoff.check("spool.retry").unwrap();
//! assert_eq!(backoff.base_delay(0), Duration::from_millis(500));
//! assert_eq!(backoff.base_delay(3), Duration::from_secs(4));
//! assert_eq!(backoff.base_delay(1000), Duration::from_secs(30));
//! let d = backoff.delay(3); // jittered
//! assert!(d >= Duration::from_secs(2) && d <= Duration::from_secs(4));
//! ```
//!
//! This crate sits beside `wd-policy` at the bottom of the workspace: it
//! depends only on `backon`, `fastrand` and `thiserror` (and `serde` behind
//! the `serde` feature), and must never depend on another `wd` crate.
#![forbid(unsafe_code)]

mod attempts;
mod error;
#[cfg(feature = "serde")]
mod serde_impl;

use std::time::Duration;

use backon::ExponentialBuilder;

pub use attempts::Attempts;
pub use error::{Error, Result};

/// The longest `max` delay [`Backoff::check`] accepts: one day. A longer
/// wait is a configuration mistake (a unit mix-up), not a policy.
pub const MAX_DELAY_LIMIT: Duration = Duration::from_secs(24 * 60 * 60);

/// A capped exponential backoff policy with optional jitter.
///
/// A plain value: cheap to copy, no state. See the crate docs for the exact
/// schedule; [`Attempts`] adds the attempt counter.
///
/// With the `serde` feature it deserializes from
/// `{ initial_secs, max_secs, factor = 2, jitter = true }` (delays in
/// seconds, fractions allowed); call [`Backoff::check`] on the result.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(try_from = "serde_impl::Raw"))]
pub struct Backoff {
    /// The first wait (attempt 0), before jitter.
    pub initial: Duration,
    /// The longest wait, jitter included.
    pub max: Duration,
    /// Each wait is the previous one times this (at least 1).
    pub factor: f32,
    /// Whether each wait is drawn from `[d / 2, d]` rather than being `d`.
    pub jitter: bool,
}

impl Backoff {
    /// From `initial` doubling up to `max`, with jitter.
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            factor: 2.0,
            jitter: true,
        }
    }

    /// Sets [`Backoff::factor`].
    #[must_use]
    pub const fn factor(mut self, factor: f32) -> Self {
        self.factor = factor;
        self
    }

    /// Sets [`Backoff::jitter`].
    #[must_use]
    pub const fn jitter(mut self, on: bool) -> Self {
        self.jitter = on;
        self
    }

    /// The wait before attempt `attempt` (counted from 0), before jitter:
    /// `initial * factor^attempt`, capped at `max`.
    ///
    /// Saturating: never panics, whatever the values (an unchecked factor
    /// below 1 or NaN counts as 1; an `initial` above `max` gives `max`).
    pub fn base_delay(&self, attempt: u32) -> Duration {
        let max = self.max;
        let initial = self.initial.min(max);
        if initial.is_zero() {
            return Duration::ZERO;
        }
        let factor = self.sane_factor();
        // `attempt` as i32 saturates; factor^huge is infinite, handled below.
        let exponent = i32::try_from(attempt).unwrap_or(i32::MAX);
        let nanos = initial.as_nanos() as f64 * factor.powi(exponent);
        if nanos.is_finite() && nanos < max.as_nanos() as f64 {
            // `as u64` saturates; `min` keeps a rounding error under `max`.
            Duration::from_nanos(nanos.round() as u64).min(max)
        } else {
            max
        }
    }

    /// The wait before attempt `attempt` (counted from 0): [`base_delay`]
    /// jittered into `[d / 2, d]` if [`Backoff::jitter`] is on. Never above
    /// `max`.
    ///
    /// [`base_delay`]: Backoff::base_delay
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, fastrand::f64())
    }

    /// [`Backoff::delay`] with the random draw given: `unit` in `[0, 1]`
    /// picks the point in `[d / 2, d]` (0: `d / 2`, 1: `d`; out of range is
    /// clamped). For deterministic tests.
    pub fn delay_with(&self, attempt: u32, unit: f64) -> Duration {
        let d = self.base_delay(attempt);
        if !self.jitter {
            return d;
        }
        let unit = if unit >= 0.0 { unit.min(1.0) } else { 0.0 }; // NaN: 0
        let scale = 0.5 + 0.5 * unit;
        let jittered = match u64::try_from(d.as_nanos()) {
            // Exact to the nanosecond for any sane delay (up to 584 years).
            Ok(nanos) => Duration::from_nanos((nanos as f64 * scale) as u64),
            Err(_) => Duration::try_from_secs_f64(d.as_secs_f64() * scale).unwrap_or(d),
        };
        jittered.min(d)
    }

    /// The same schedule as a `backon` builder, endless (no attempt limit),
    /// for `backon::Retryable` and friends; add `with_max_times` or
    /// `with_total_delay` to bound it.
    ///
    /// Its delays follow [`Backoff::delay`] (up to backon's `f32`
    /// rounding): with jitter, backon adds a random `[0, c)` to `c`, so the
    /// builder runs on half the delays to land in `[d / 2, d)`, never above
    /// `max`.
    pub fn builder(&self) -> ExponentialBuilder {
        let max = self.max;
        let initial = self.initial.min(max);
        let (initial, max) = if self.jitter {
            (initial / 2, max / 2)
        } else {
            (initial, max)
        };
        let builder = ExponentialBuilder::new()
            .with_min_delay(initial)
            .with_max_delay(max)
            .with_factor(self.sane_factor() as f32)
            .without_max_times();
        if self.jitter {
            builder.with_jitter()
        } else {
            builder
        }
    }

    /// Checks the bounds of a configured policy: `initial` above 0, `max` at
    /// least `initial` and at most [`MAX_DELAY_LIMIT`], `factor` finite and
    /// at least 1. `key` names the policy in the error (for example
    /// `"spool.retry"`).
    pub fn check(&self, key: &str) -> Result<()> {
        let key = || key.to_owned();
        if self.initial.is_zero() {
            return Err(Error::ZeroInitial { key: key() });
        }
        if self.max < self.initial {
            return Err(Error::MaxBelowInitial {
                key: key(),
                initial: self.initial,
                max: self.max,
            });
        }
        if self.max > MAX_DELAY_LIMIT {
            return Err(Error::MaxTooLong {
                key: key(),
                max: self.max,
                limit: MAX_DELAY_LIMIT,
            });
        }
        if !self.factor.is_finite() || self.factor < 1.0 {
            return Err(Error::Factor {
                key: key(),
                factor: self.factor,
            });
        }
        Ok(())
    }

    fn sane_factor(&self) -> f64 {
        if self.factor >= 1.0 {
            f64::from(self.factor)
        } else {
            1.0 // below 1 or NaN
        }
    }
}

#[cfg(test)]
mod tests;
