//! The interface every notifier and combinator implements.

use std::time::Duration;

use async_trait::async_trait;

use crate::model::Notification;

/// A boxed error cause.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a delivery failed, and whether trying again may help.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NotifyError {
    /// A failure that may pass: a timeout, a 5xx or 429, a broker that is down.
    #[error("{message}")]
    Retryable {
        /// What failed, naming the notifier; never a secret.
        message: String,
        /// How long the notifier asked us to wait, if it said.
        retry_after: Option<Duration>,
        /// The underlying cause.
        #[source]
        source: Option<BoxError>,
    },
    /// A failure that will not pass by retrying: rejected, gone.
    #[error("{message}")]
    Permanent {
        /// What failed, naming the notifier; never a secret.
        message: String,
        /// The underlying cause.
        #[source]
        source: Option<BoxError>,
    },
}

impl NotifyError {
    /// A retryable failure with no cause attached.
    pub fn retryable(message: impl Into<String>) -> Self {
        NotifyError::Retryable {
            message: message.into(),
            retry_after: None,
            source: None,
        }
    }

    /// A permanent failure with no cause attached.
    pub fn permanent(message: impl Into<String>) -> Self {
        NotifyError::Permanent {
            message: message.into(),
            source: None,
        }
    }

    /// Attaches the underlying cause.
    #[must_use]
    pub fn with_source(mut self, cause: impl Into<BoxError>) -> Self {
        match &mut self {
            NotifyError::Retryable { source, .. } | NotifyError::Permanent { source, .. } => {
                *source = Some(cause.into());
            }
        }
        self
    }

    /// Records how long the notifier asked us to wait. It has no effect on a
    /// permanent failure, which is never retried.
    #[must_use]
    pub fn with_retry_after(mut self, wait: Duration) -> Self {
        if let NotifyError::Retryable { retry_after, .. } = &mut self {
            *retry_after = Some(wait);
        }
        self
    }

    /// What failed, without the cause.
    pub fn message(&self) -> &str {
        match self {
            NotifyError::Retryable { message, .. } | NotifyError::Permanent { message, .. } => {
                message
            }
        }
    }

    /// Whether retrying may help.
    pub fn is_retryable(&self) -> bool {
        matches!(self, NotifyError::Retryable { .. })
    }

    /// The wait the notifier asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            NotifyError::Retryable { retry_after, .. } => *retry_after,
            NotifyError::Permanent { .. } => None,
        }
    }
}

/// Something that delivers notifications: a notifier or a combinator.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait Notifier: Send + Sync {
    /// Delivers one notification. Returns only when it is delivered (or, for a
    /// spool, durably accepted), or with the reason it was not.
    async fn notify(&self, n: &Notification) -> Result<(), NotifyError>;
}

#[async_trait]
impl<T: Notifier + ?Sized> Notifier for std::sync::Arc<T> {
    async fn notify(&self, n: &Notification) -> Result<(), NotifyError> {
        (**self).notify(n).await
    }
}

#[async_trait]
impl<T: Notifier + ?Sized> Notifier for Box<T> {
    async fn notify(&self, n: &Notification) -> Result<(), NotifyError> {
        (**self).notify(n).await
    }
}

/// Calls `inner.notify(n)`, turning a panic in the notifier into a retryable
/// failure, so that a background task survives a buggy notifier.
pub(crate) async fn notify_catching<N: Notifier + ?Sized>(
    inner: &N,
    n: &Notification,
) -> Result<(), NotifyError> {
    use futures::FutureExt;
    match std::panic::AssertUnwindSafe(inner.notify(n))
        .catch_unwind()
        .await
    {
        Ok(result) => result,
        Err(_) => {
            tracing::error!(event_id = %n.event_id, "a notifier panicked");
            Err(NotifyError::retryable("notifier panicked"))
        }
    }
}
