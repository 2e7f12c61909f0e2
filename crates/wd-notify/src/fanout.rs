//! Delivery to several backends at once.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use uuid::Uuid;

use crate::model::Notification;
use crate::notifier::{Notifier, NotifyError};

/// [`Fanout`] settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FanoutConfig {
    /// The longest one backend's delivery may take before it counts as a
    /// retryable failure; `None` waits as long as the backend does. Put the
    /// deadline on a [`Retry`](crate::Retry) around each backend instead when
    /// you can.
    pub backend_timeout: Option<Duration>,
}

impl FanoutConfig {
    /// Sets [`FanoutConfig::backend_timeout`].
    #[must_use]
    pub fn backend_timeout(mut self, timeout: Duration) -> Self {
        self.backend_timeout = Some(timeout);
        self
    }
}

/// What happened at one backend.
#[derive(Debug)]
#[non_exhaustive]
pub enum Outcome {
    /// Delivered now.
    Delivered {
        /// How long the backend took.
        elapsed: Duration,
    },
    /// Failed (a timeout counts as a retryable failure).
    Failed(NotifyError),
}

/// One backend's outcome.
#[derive(Debug)]
pub struct BackendOutcome {
    /// The name the backend was added under.
    pub backend: String,
    /// What happened there.
    pub outcome: Outcome,
}

/// Every backend's outcome for one notification, in the order the backends
/// were added.
#[derive(Debug)]
pub struct FanoutReport {
    /// The event id delivered.
    pub event_id: Uuid,
    /// One entry per backend.
    pub outcomes: Vec<BackendOutcome>,
}

impl FanoutReport {
    /// Whether every backend has the notification.
    pub fn all_delivered(&self) -> bool {
        self.failures().next().is_none()
    }

    /// The backends that failed, with their errors.
    pub fn failures(&self) -> impl Iterator<Item = (&str, &NotifyError)> {
        self.outcomes.iter().filter_map(|o| match &o.outcome {
            Outcome::Failed(e) => Some((o.backend.as_str(), e)),
            _ => None,
        })
    }

    /// The fanout's overall result, as [`Notifier::notify`] returns it:
    /// `Ok` when every backend has it; `Retryable` when any failure is
    /// retryable (with the longest retry-after any backend asked for);
    /// otherwise `Permanent`.
    pub fn into_result(self) -> Result<(), NotifyError> {
        if self.all_delivered() {
            return Ok(());
        }
        let retryable = self.failures().any(|(_, e)| e.is_retryable());
        let retry_after = self.failures().filter_map(|(_, e)| e.retry_after()).max();
        let message = format!("fanout: {self}");
        let err = if retryable {
            let err = NotifyError::retryable(message);
            match retry_after {
                Some(wait) => err.with_retry_after(wait),
                None => err,
            }
        } else {
            NotifyError::permanent(message)
        };
        Err(err.with_source(FanoutFailure(self)))
    }
}

impl fmt::Display for FanoutReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for o in &self.outcomes {
            if !first {
                f.write_str(", ")?;
            }
            first = false;
            match &o.outcome {
                Outcome::Delivered { .. } => write!(f, "{} delivered", o.backend)?,
                Outcome::Failed(e) if e.is_retryable() => {
                    write!(f, "{} failed (retryable): {e}", o.backend)?
                }
                Outcome::Failed(e) => write!(f, "{} failed (permanent): {e}", o.backend)?,
            }
        }
        Ok(())
    }
}

/// The source of a failed fanout's [`NotifyError`]: the whole report, for a
/// caller that wants each backend's outcome (`downcast_ref::<FanoutFailure>`).
#[derive(Debug)]
pub struct FanoutFailure(pub FanoutReport);

impl fmt::Display for FanoutFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "some backends failed for event {}", self.0.event_id)
    }
}

impl std::error::Error for FanoutFailure {}

struct Backend {
    name: String,
    notifier: Arc<dyn Notifier>,
}

/// Delivers each notification to every backend concurrently.
///
/// A failing or slow backend neither fails nor delays delivery to the
/// others; `notify` returns once every backend has answered, with the
/// combined result of [`FanoutReport::into_result`], and each backend's
/// outcome is logged (`tracing`) and available from [`Fanout::deliver`].
///
/// # Composing with retry and a spool
///
/// Retry *inside* the fanout, per backend (`Fanout [ Retry(a), Retry(b) ]`),
/// never around it, so one backend's outage costs the others nothing. A
/// fanout remembers nothing: offered the same event again, it sends it to
/// every backend again. For durable delivery use a [`Router`](crate::Router)
/// instead, which gives every destination its own queue and keeps each
/// destination's progress on disk.
///
/// At most 128 backends.
pub struct Fanout {
    backends: Vec<Backend>,
    config: FanoutConfig,
}

impl fmt::Debug for Fanout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fanout")
            .field(
                "backends",
                &self.backends.iter().map(|b| &b.name).collect::<Vec<_>>(),
            )
            .field("config", &self.config)
            .finish()
    }
}

impl Default for Fanout {
    fn default() -> Self {
        Fanout::new(FanoutConfig::default())
    }
}

impl Fanout {
    /// A fanout with no backends yet.
    pub fn new(config: FanoutConfig) -> Self {
        Fanout {
            backends: Vec::new(),
            config,
        }
    }

    /// Adds a backend under `name` (used in logs and outcomes). A backend
    /// beyond the 128th is ignored with an error log.
    #[must_use]
    pub fn with(mut self, name: impl Into<String>, backend: impl Notifier + 'static) -> Self {
        let name = name.into();
        if self.backends.len() >= 128 {
            tracing::error!(backend = %name, "fanout: more than 128 backends; ignoring this one");
            return self;
        }
        self.backends.push(Backend {
            name,
            notifier: Arc::new(backend),
        });
        self
    }

    /// The backends' names, in order.
    pub fn backend_names(&self) -> impl Iterator<Item = &str> {
        self.backends.iter().map(|b| b.name.as_str())
    }

    /// Delivers to every backend, and reports each backend's outcome.
    pub async fn deliver(&self, n: &Notification) -> FanoutReport {
        let timeout = self.config.backend_timeout;
        let attempts = self.backends.iter().map(|b| async move {
            let start = tokio::time::Instant::now();
            let result = match timeout {
                Some(t) => match tokio::time::timeout(t, b.notifier.notify(n)).await {
                    Ok(r) => r,
                    Err(_) => Err(NotifyError::retryable(format!(
                        "{}: no answer within {t:?}",
                        b.name
                    ))),
                },
                None => b.notifier.notify(n).await,
            };
            match result {
                Ok(()) => Outcome::Delivered {
                    elapsed: start.elapsed(),
                },
                Err(e) => Outcome::Failed(e),
            }
        });
        let results = futures::future::join_all(attempts).await;

        let mut outcomes = Vec::with_capacity(results.len());
        for (b, outcome) in self.backends.iter().zip(results) {
            match &outcome {
                Outcome::Delivered { elapsed } => {
                    tracing::debug!(event_id = %n.event_id, backend = %b.name, ?elapsed, "fanout: delivered");
                }
                Outcome::Failed(e) => {
                    tracing::warn!(event_id = %n.event_id, backend = %b.name, retryable = e.is_retryable(), error = %e, "fanout: delivery failed");
                }
            }
            outcomes.push(BackendOutcome {
                backend: b.name.clone(),
                outcome,
            });
        }
        FanoutReport {
            event_id: n.event_id,
            outcomes,
        }
    }
}

#[async_trait]
impl Notifier for Fanout {
    async fn notify(&self, n: &Notification) -> Result<(), NotifyError> {
        self.deliver(n).await.into_result()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notifier::MockNotifier;
    use crate::test_support::firing;

    fn ok_mock(times: usize) -> MockNotifier {
        let mut m = MockNotifier::new();
        m.expect_notify().times(times).returning(|_| Ok(()));
        m
    }

    #[tokio::test]
    async fn partial_failure_reports_each_backend_and_the_longest_retry_after() {
        let mut flaky = MockNotifier::new();
        flaky.expect_notify().times(1).returning(|_| {
            Err(NotifyError::retryable("flaky down").with_retry_after(Duration::from_secs(3)))
        });
        let fanout = Fanout::default()
            .with("good", ok_mock(1))
            .with("flaky", flaky);
        let report = fanout.deliver(&firing(1)).await;
        assert!(matches!(
            report.outcomes[0].outcome,
            Outcome::Delivered { .. }
        ));
        assert!(matches!(report.outcomes[1].outcome, Outcome::Failed(_)));
        let err = report.into_result().unwrap_err();
        assert!(err.is_retryable());
        assert_eq!(err.retry_after(), Some(Duration::from_secs(3)));
        let source = std::error::Error::source(&err).unwrap();
        let failure = source.downcast_ref::<FanoutFailure>().unwrap();
        assert_eq!(failure.0.failures().next().unwrap().0, "flaky");
    }

    #[tokio::test]
    async fn permanent_only_failures_are_permanent() {
        let mut gone = MockNotifier::new();
        gone.expect_notify()
            .times(1)
            .returning(|_| Err(NotifyError::permanent("gone")));
        let fanout = Fanout::default()
            .with("good", ok_mock(1))
            .with("gone", gone);
        let err = fanout.notify(&firing(1)).await.unwrap_err();
        assert!(!err.is_retryable(), "{err}");
        assert!(err.to_string().contains("good delivered"), "{err}");
        assert!(
            err.to_string().contains("gone failed (permanent): gone"),
            "{err}"
        );
    }

    struct Slow(Duration, Arc<tokio::sync::Notify>);

    #[async_trait]
    impl Notifier for Slow {
        async fn notify(&self, _: &Notification) -> Result<(), NotifyError> {
            self.1.notify_one();
            tokio::time::sleep(self.0).await;
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_backend_does_not_delay_the_others_and_can_time_out() {
        let (fast, mut rx) = crate::ChannelNotifier::channel(1);
        let started = Arc::new(tokio::sync::Notify::new());
        let fanout = Arc::new(
            Fanout::new(FanoutConfig::default().backend_timeout(Duration::from_secs(10)))
                .with("slow", Slow(Duration::from_secs(3600), started.clone()))
                .with("fast", fast),
        );
        let n = firing(1);
        let task = tokio::spawn({
            let fanout = fanout.clone();
            let n = n.clone();
            async move { fanout.deliver(&n).await }
        });
        let t0 = tokio::time::Instant::now();
        // The fast backend has it while the slow one is still busy.
        assert_eq!(rx.recv().await.unwrap(), n);
        assert!(t0.elapsed() < Duration::from_secs(1));
        started.notified().await;
        let report = task.await.unwrap();
        assert_eq!(t0.elapsed(), Duration::from_secs(10));
        match &report.outcomes[0].outcome {
            Outcome::Failed(e) => assert!(e.is_retryable() && e.to_string().contains("no answer")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            report.outcomes[1].outcome,
            Outcome::Delivered { .. }
        ));
    }
}
