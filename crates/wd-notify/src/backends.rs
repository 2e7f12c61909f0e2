//! Built-in backends that need no transport: a log line and an in-process
//! channel.

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::model::Notification;
use crate::notifier::{Notifier, NotifyError};

/// Logs one structured `tracing` line per notification, at `info`, with the
/// fields `event_id`, `instance`, `project`, `action`, `recovered` and
/// `count`. It never fails.
///
/// Useful as an operator channel beside the real backends in a
/// [`Fanout`](crate::Fanout), and as the backend of last resort.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogNotifier;

impl LogNotifier {
    /// A log backend.
    pub fn new() -> Self {
        LogNotifier
    }
}

#[async_trait]
impl Notifier for LogNotifier {
    async fn notify(&self, n: &Notification) -> Result<(), NotifyError> {
        tracing::info!(
            event_id = %n.event_id,
            instance = %n.instance.uuid,
            project = n.instance.project_id.as_deref().unwrap_or("-"),
            action = %n.action,
            recovered = n.recovered,
            count = n.occurrences.count,
            "guest watchdog fired"
        );
        Ok(())
    }
}

/// Hands each notification to an in-process receiver, for an embedding
/// driver that wants them as values.
///
/// A full channel makes `notify` wait (back-pressure); a closed channel (the
/// receiver was dropped) is a permanent failure.
#[derive(Debug, Clone)]
pub struct ChannelNotifier {
    tx: mpsc::Sender<Notification>,
}

impl ChannelNotifier {
    /// A backend sending on `tx`.
    pub fn new(tx: mpsc::Sender<Notification>) -> Self {
        ChannelNotifier { tx }
    }

    /// A backend and the receiver of a new channel holding up to `capacity`
    /// notifications (at least 1).
    pub fn channel(capacity: usize) -> (Self, mpsc::Receiver<Notification>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (ChannelNotifier { tx }, rx)
    }
}

#[async_trait]
impl Notifier for ChannelNotifier {
    async fn notify(&self, n: &Notification) -> Result<(), NotifyError> {
        self.tx
            .send(n.clone())
            .await
            .map_err(|_| NotifyError::permanent("channel backend: the receiver is gone"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::firing;

    #[tokio::test]
    async fn channel_delivers_and_reports_a_closed_receiver() {
        let (backend, mut rx) = ChannelNotifier::channel(4);
        let n = firing(1);
        backend.notify(&n).await.unwrap();
        assert_eq!(rx.recv().await.unwrap(), n);
        drop(rx);
        let err = backend.notify(&n).await.unwrap_err();
        assert!(!err.is_retryable(), "{err}");
    }

    #[tokio::test]
    async fn log_never_fails() {
        LogNotifier::new().notify(&firing(1)).await.unwrap();
    }
}
