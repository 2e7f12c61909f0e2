//! Retrying one backend with capped exponential backoff.

use std::time::Duration;

use async_trait::async_trait;
use backon::BackoffBuilder;
use tokio::time::Instant;

use crate::model::Notification;
use crate::notifier::{Notifier, NotifyError};

/// [`Retry`] settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    /// The first wait (with jitter, drawn from its upper half). Default
    /// 500 ms.
    pub min_delay: Duration,
    /// The longest wait between attempts, jitter included. Default 30 s.
    pub max_delay: Duration,
    /// How much each wait grows. Default 2.
    pub factor: f32,
    /// Whether to draw each wait at random from its upper half (as
    /// [`wd_backoff::Backoff`] does; still capped by `max_delay`), so that
    /// many senders do not retry in step. Default on.
    pub jitter: bool,
    /// The time from the first attempt after which no attempt starts and a
    /// running attempt is abandoned. Default 60 s.
    pub deadline: Duration,
    /// The most attempts, the first included; `None` for no limit but the
    /// deadline. Default `None`.
    pub max_attempts: Option<usize>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            min_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            factor: 2.0,
            jitter: true,
            deadline: Duration::from_secs(60),
            max_attempts: None,
        }
    }
}

impl RetryConfig {
    /// Sets [`RetryConfig::min_delay`].
    #[must_use]
    pub fn min_delay(mut self, d: Duration) -> Self {
        self.min_delay = d;
        self
    }

    /// Sets [`RetryConfig::max_delay`].
    #[must_use]
    pub fn max_delay(mut self, d: Duration) -> Self {
        self.max_delay = d;
        self
    }

    /// Sets [`RetryConfig::factor`].
    #[must_use]
    pub fn factor(mut self, f: f32) -> Self {
        self.factor = f;
        self
    }

    /// Sets [`RetryConfig::jitter`].
    #[must_use]
    pub fn jitter(mut self, on: bool) -> Self {
        self.jitter = on;
        self
    }

    /// Sets [`RetryConfig::deadline`].
    #[must_use]
    pub fn deadline(mut self, d: Duration) -> Self {
        self.deadline = d;
        self
    }

    /// Sets [`RetryConfig::max_attempts`].
    #[must_use]
    pub fn max_attempts(mut self, n: usize) -> Self {
        self.max_attempts = Some(n);
        self
    }

    /// The waits between attempts: the workspace's one backoff policy,
    /// [`wd_backoff::Backoff`], run through backon.
    fn backoff(&self) -> impl Iterator<Item = Duration> + use<> {
        let policy = wd_backoff::Backoff::new(self.min_delay, self.max_delay)
            .factor(self.factor.max(1.0))
            .jitter(self.jitter);
        let cap = self.max_delay;
        policy.builder().build().map(move |d| d.min(cap))
    }
}

/// Retries retryable failures of the notifier it wraps, with capped
/// exponential backoff and jitter (from `backon`), within an overall
/// deadline.
///
/// - A permanent failure is returned at once, never retried.
/// - A backend's retry-after ([`NotifyError::retry_after`]) is honoured: the
///   wait is the longer of it and the backoff step. If that wait would reach
///   past the deadline, `Retry` gives up at once rather than sleep in vain.
/// - Giving up returns the last error, still retryable, so that a spool
///   around it can try again much later.
///
/// For a transport used on its own, without a queue (a one-shot tool, a
/// test). A [`Router`](crate::Router) does not use it: each destination's
/// queue worker is its one retry loop, configured in its
/// [`SpoolConfig`](crate::SpoolConfig).
#[derive(Debug)]
pub struct Retry<N> {
    inner: N,
    config: RetryConfig,
}

impl<N: Notifier> Retry<N> {
    /// Retries `inner` as `config` says.
    pub fn new(inner: N, config: RetryConfig) -> Self {
        Retry { inner, config }
    }

    /// The settings.
    pub fn config(&self) -> &RetryConfig {
        &self.config
    }
}

#[async_trait]
impl<N: Notifier> Notifier for Retry<N> {
    async fn notify(&self, n: &Notification) -> Result<(), NotifyError> {
        let start = Instant::now();
        let deadline = self.config.deadline;
        let mut backoff = self.config.backoff();
        let mut attempt = 0usize;
        loop {
            attempt += 1;
            let remaining = deadline.saturating_sub(start.elapsed());
            let err = match tokio::time::timeout(remaining, self.inner.notify(n)).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => e,
                Err(_) => NotifyError::retryable(format!(
                    "retry: attempt {attempt} still running at the {deadline:?} deadline"
                )),
            };
            if !err.is_retryable() {
                return Err(err);
            }
            let step = backoff.next().unwrap_or(self.config.max_delay);
            let wait = err.retry_after().map_or(step, |ra| ra.max(step));
            let out_of_attempts = self.config.max_attempts.is_some_and(|max| attempt >= max);
            // `wait` may come from a remote party (`Retry-After`), so this
            // sum must saturate, never overflow.
            if out_of_attempts || start.elapsed().saturating_add(wait) >= deadline {
                tracing::warn!(
                    event_id = %n.event_id, attempt, error = %err,
                    "retry: giving up (deadline or attempt limit reached)"
                );
                return Err(err);
            }
            tracing::debug!(event_id = %n.event_id, attempt, ?wait, error = %err, "retry: will try again");
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notifier::MockNotifier;
    use crate::testing::firing;
    use std::sync::{Arc, Mutex};

    /// A mock that answers from `script` in order and records when it was called.
    fn scripted(script: Vec<Result<(), NotifyError>>) -> (MockNotifier, Arc<Mutex<Vec<Duration>>>) {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let start = Instant::now();
        let mut m = MockNotifier::new();
        let mut script = script.into_iter();
        let seen = calls.clone();
        m.expect_notify().times(script.len()).returning(move |_| {
            seen.lock().unwrap().push(start.elapsed());
            script.next().unwrap()
        });
        (m, calls)
    }

    fn fixed() -> RetryConfig {
        RetryConfig::default()
            .min_delay(Duration::from_secs(1))
            .max_delay(Duration::from_secs(4))
            .jitter(false)
            .deadline(Duration::from_secs(20))
    }

    fn secs(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|s| Duration::from_secs(*s)).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn backs_off_exponentially_capped_then_succeeds() {
        let down = || Err(NotifyError::retryable("down"));
        let (m, calls) = scripted(vec![down(), down(), down(), down(), Ok(())]);
        Retry::new(m, fixed()).notify(&firing(1)).await.unwrap();
        // Waits 1, 2, 4, then capped at 4.
        assert_eq!(*calls.lock().unwrap(), secs(&[0, 1, 3, 7, 11]));
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_at_the_deadline_with_the_last_error() {
        let down = || Err(NotifyError::retryable("down"));
        // Attempts at 0, 1, 3, 7, 11, 15, 19; the next would start at 23 > 20.
        let (m, calls) = scripted((0..7).map(|_| down()).collect());
        let err = Retry::new(m, fixed()).notify(&firing(1)).await.unwrap_err();
        assert!(err.is_retryable());
        assert_eq!(err.to_string(), "down");
        assert_eq!(*calls.lock().unwrap(), secs(&[0, 1, 3, 7, 11, 15, 19]));
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_attempt_is_cut_at_the_deadline() {
        struct Hang;
        #[async_trait]
        impl Notifier for Hang {
            async fn notify(&self, _: &Notification) -> Result<(), NotifyError> {
                std::future::pending().await
            }
        }
        let t0 = Instant::now();
        let err = Retry::new(Hang, fixed())
            .notify(&firing(1))
            .await
            .unwrap_err();
        assert!(
            err.is_retryable() && err.to_string().contains("deadline"),
            "{err}"
        );
        assert_eq!(t0.elapsed(), Duration::from_secs(20));
    }

    #[tokio::test(start_paused = true)]
    async fn honours_retry_after_and_gives_up_when_it_passes_the_deadline() {
        let wait = |s| Err(NotifyError::retryable("busy").with_retry_after(Duration::from_secs(s)));
        let (m, calls) = scripted(vec![wait(7), Ok(())]);
        Retry::new(m, fixed()).notify(&firing(1)).await.unwrap();
        assert_eq!(*calls.lock().unwrap(), secs(&[0, 7]));

        // A retry-after beyond the deadline: give up at once, keep the hint.
        let (m, calls) = scripted(vec![wait(60)]);
        let t0 = Instant::now();
        let err = Retry::new(m, fixed()).notify(&firing(1)).await.unwrap_err();
        assert_eq!(err.retry_after(), Some(Duration::from_secs(60)));
        assert_eq!(t0.elapsed(), Duration::ZERO);
        assert_eq!(calls.lock().unwrap().len(), 1);

        // A hostile retry-after (u64::MAX seconds) gives up at once too,
        // and never overflows.
        let (m, _) = scripted(vec![wait(u64::MAX)]);
        let err = Retry::new(m, fixed()).notify(&firing(1)).await.unwrap_err();
        assert_eq!(err.retry_after(), Some(Duration::from_secs(u64::MAX)));
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_are_not_retried() {
        let (m, _) = scripted(vec![Err(NotifyError::permanent("rejected"))]);
        let err = Retry::new(m, fixed()).notify(&firing(1)).await.unwrap_err();
        assert!(!err.is_retryable());
    }

    #[tokio::test(start_paused = true)]
    async fn stops_after_max_attempts() {
        let down = || Err(NotifyError::retryable("down"));
        let (m, calls) = scripted(vec![down(), down(), down()]);
        let err = Retry::new(m, fixed().max_attempts(3))
            .notify(&firing(1))
            .await
            .unwrap_err();
        assert!(err.is_retryable());
        assert_eq!(calls.lock().unwrap().len(), 3);
    }

    #[test]
    fn jittered_waits_stay_within_bounds() {
        let cfg = RetryConfig::default()
            .min_delay(Duration::from_millis(100))
            .max_delay(Duration::from_secs(1));
        let waits: Vec<_> = cfg.backoff().take(50).collect();
        // wd_backoff's jitter draws each wait from the upper half of its
        // step: the first from [min/2, min].
        assert!(waits[0] >= Duration::from_millis(50) && waits[0] <= Duration::from_millis(100));
        assert!(waits.iter().all(|w| *w <= Duration::from_secs(1)));
        assert!(
            waits.windows(2).any(|w| w[0] != w[1]),
            "jitter varies: {waits:?}"
        );
    }
}
