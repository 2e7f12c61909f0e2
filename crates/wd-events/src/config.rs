//! The listener's configuration and its reconnect backoff.

use std::time::Duration;

/// How the listener connects and reconnects.
///
/// ```
/// use std::time::Duration;
/// use wd_events::ListenerConfig;
///
/// let config = ListenerConfig::default()
///     .uri("qemu:///system")
///     .keepalive(Duration::from_secs(5), 3);
/// assert_eq!(config.keepalive_count, 3);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    /// The libvirt connection URI.
    pub uri: String,
    /// How often keepalive messages are sent on an idle connection (remote
    /// connections only). Zero turns keepalive off.
    pub keepalive_interval: Duration,
    /// How many keepalive messages may go unanswered before the connection
    /// is closed with reason `keepalive`.
    pub keepalive_count: u32,
    /// How often the listener also asks `virConnectIsAlive`, as a backstop
    /// for a drop the close callback does not report.
    pub alive_check_interval: Duration,
    /// How often the listener lists the domains again while connected, to
    /// recover a watchdog pause that no event reported (zero: never). See
    /// the crate docs, "What cannot be recovered".
    pub recheck_interval: Duration,
    /// The reconnect backoff.
    pub backoff: BackoffConfig,
    /// How many items may wait for the consumer before the listener waits
    /// for it. The libvirt event loop itself never waits, and neither do
    /// the listener's liveness checks and re-checks.
    pub channel_capacity: usize,
    /// How many events may wait in the listener's inbox before lifecycle
    /// repeats of a domain are folded (watchdog firings never are). See
    /// [`ListenerStats`](crate::ListenerStats).
    pub inbox_capacity: usize,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            uri: "qemu:///system".to_owned(),
            keepalive_interval: Duration::from_secs(5),
            keepalive_count: 3,
            alive_check_interval: Duration::from_secs(5),
            recheck_interval: Duration::from_secs(60),
            backoff: BackoffConfig::default(),
            channel_capacity: 1024,
            inbox_capacity: 4096,
        }
    }
}

impl ListenerConfig {
    /// Sets the connection URI.
    #[must_use]
    pub fn uri(mut self, uri: impl Into<String>) -> Self {
        self.uri = uri.into();
        self
    }

    /// Sets the keepalive interval and count.
    #[must_use]
    pub fn keepalive(mut self, interval: Duration, count: u32) -> Self {
        self.keepalive_interval = interval;
        self.keepalive_count = count;
        self
    }

    /// Sets how often the connection's liveness is polled.
    #[must_use]
    pub fn alive_check_interval(mut self, interval: Duration) -> Self {
        self.alive_check_interval = interval;
        self
    }

    /// Sets how often the domains are re-checked (zero: never).
    #[must_use]
    pub fn recheck_interval(mut self, interval: Duration) -> Self {
        self.recheck_interval = interval;
        self
    }

    /// Sets the inbox's folding threshold (at least 1).
    #[must_use]
    pub fn inbox_capacity(mut self, capacity: usize) -> Self {
        self.inbox_capacity = capacity.max(1);
        self
    }

    /// Sets the reconnect backoff.
    #[must_use]
    pub fn backoff(mut self, backoff: BackoffConfig) -> Self {
        self.backoff = backoff;
        self
    }

    /// Sets the consumer channel's capacity (at least 1).
    #[must_use]
    pub fn channel_capacity(mut self, capacity: usize) -> Self {
        self.channel_capacity = capacity.max(1);
        self
    }
}

/// Capped exponential backoff with jitter, reset after a stretch of health,
/// like kube-runtime's watcher backoff.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackoffConfig {
    /// The first delay.
    pub initial: Duration,
    /// The largest delay.
    pub max: Duration,
    /// Each delay is the previous one times this.
    pub factor: f64,
    /// Each delay is scaled by a random factor in `[1 - jitter, 1 + jitter]`
    /// (and then capped at `max`), so that many listeners do not reconnect
    /// in lockstep. `0.0` turns jitter off.
    pub jitter: f64,
    /// A connection that stayed up at least this long resets the backoff to
    /// `initial`.
    pub reset_after: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            initial: Duration::from_millis(800),
            max: Duration::from_secs(30),
            factor: 2.0,
            jitter: 0.25,
            reset_after: Duration::from_secs(120),
        }
    }
}

impl BackoffConfig {
    /// Sets the first and the largest delay.
    #[must_use]
    pub fn delays(mut self, initial: Duration, max: Duration) -> Self {
        self.initial = initial;
        self.max = max;
        self
    }

    /// Sets the jitter (clamped to `0.0..=1.0`).
    #[must_use]
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter.clamp(0.0, 1.0);
        self
    }

    /// Sets how long a connection must stay up to reset the backoff.
    #[must_use]
    pub fn reset_after(mut self, reset_after: Duration) -> Self {
        self.reset_after = reset_after;
        self
    }
}

/// The backoff's running state.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    config: BackoffConfig,
    /// The un-jittered delay the next call returns.
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(config: BackoffConfig) -> Self {
        Backoff {
            next: config.initial.min(config.max),
            config,
        }
    }

    /// The delay before the next attempt. `unit` is a random number in
    /// `[0, 1)` (a parameter so that tests are deterministic).
    pub(crate) fn next_delay(&mut self, unit: f64) -> Duration {
        let base = self.next;
        let grown = base.as_secs_f64() * self.config.factor.max(1.0);
        self.next = Duration::from_secs_f64(grown.min(self.config.max.as_secs_f64()));
        let jitter = self.config.jitter.clamp(0.0, 1.0);
        let scale = 1.0 - jitter + 2.0 * jitter * unit.clamp(0.0, 1.0);
        Duration::from_secs_f64((base.as_secs_f64() * scale).min(self.config.max.as_secs_f64()))
    }

    /// Called when a connection ends after being up for `uptime`: a long
    /// enough stretch of health starts the backoff over.
    pub(crate) fn connection_ended(&mut self, uptime: Duration) {
        if uptime >= self.config.reset_after {
            self.reset();
        }
    }

    pub(crate) fn reset(&mut self) {
        self.next = self.config.initial.min(self.config.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn check(config: BackoffConfig, units: &[f64], expected: &[u64]) {
        let mut b = Backoff::new(config);
        let got: Vec<u64> = units
            .iter()
            .map(|&u| b.next_delay(u).as_millis() as u64)
            .collect();
        assert_eq!(got, expected, "{config:?}");
    }

    #[test]
    fn grows_and_caps() {
        let c = BackoffConfig::default().jitter(0.0);
        check(
            c,
            &[0.5; 8],
            &[800, 1600, 3200, 6400, 12800, 25600, 30000, 30000],
        );
    }

    #[test]
    fn jitter_stays_within_bounds_and_under_the_cap() {
        let c = BackoffConfig::default(); // jitter 0.25
        check(c, &[0.0, 0.0, 0.0], &[600, 1200, 2400]);
        check(c, &[0.999_999; 3], &[999, 1999, 3999]);
        // At the cap, jitter never exceeds it.
        let mut b = Backoff::new(c);
        for _ in 0..20 {
            b.next_delay(0.5);
        }
        for u in [0.0, 0.5, 0.999] {
            let d = b.next_delay(u);
            assert!(d <= ms(30_000) && d >= ms(22_500), "{d:?}");
        }
    }

    #[test]
    fn resets_only_after_a_stretch_of_health() {
        let c = BackoffConfig::default().jitter(0.0);
        let mut b = Backoff::new(c);
        b.next_delay(0.5);
        b.next_delay(0.5);
        b.connection_ended(Duration::from_secs(5)); // flapping: keep growing
        assert_eq!(b.next_delay(0.5), ms(3200));
        b.connection_ended(Duration::from_secs(120));
        assert_eq!(b.next_delay(0.5), ms(800));
    }

    #[test]
    fn builder_clamps() {
        assert_eq!(BackoffConfig::default().jitter(7.0).jitter, 1.0);
        assert_eq!(
            ListenerConfig::default()
                .channel_capacity(0)
                .channel_capacity,
            1
        );
        let c = BackoffConfig::default().delays(ms(10), ms(5)).jitter(0.0);
        check(c, &[0.5; 3], &[5, 5, 5]);
    }
}
