//! Built-in notifiers that need no transport: a log line and an in-process
//! channel.

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::model::Notification;
use crate::notifier::{Notifier, NotifyError};

/// Logs one structured `tracing` line per notification, at `info`, with the
/// fields `event_id`, `instance`, `project`, `action`, `recovered` and
/// `count`. It never fails.
///
/// Useful as an operator destination beside the real ones in a
/// [`Router`](crate::Router), and as the destination of last resort.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogNotifier;

impl LogNotifier {
    /// A log notifier.
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
    /// A notifier sending on `tx`.
    pub fn new(tx: mpsc::Sender<Notification>) -> Self {
        ChannelNotifier { tx }
    }

    /// A notifier and the receiver of a new channel holding up to `capacity`
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
            .map_err(|_| NotifyError::permanent("channel notifier: the receiver is gone"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::firing;

    #[tokio::test]
    async fn channel_delivers_and_reports_a_closed_receiver() {
        let (notifier, mut rx) = ChannelNotifier::channel(4);
        let n = firing(1);
        notifier.notify(&n).await.unwrap();
        assert_eq!(rx.recv().await.unwrap(), n);
        drop(rx);
        let err = notifier.notify(&n).await.unwrap_err();
        assert!(!err.is_retryable(), "{err}");
    }

    /// A `tracing` writer into a shared buffer.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn log_writes_one_info_line_with_the_notification_fields() {
        let out = Captured::default();
        let sink = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let mut n = firing(1);
        n.recovered = true;
        n.occurrences.count = 3;
        LogNotifier::new().notify(&n).await.unwrap();
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        let line = lines[0];
        for want in [
            " INFO ".to_owned(),
            "guest watchdog fired".to_owned(),
            format!("event_id={}", n.event_id),
            format!("instance={}", n.instance.uuid),
            r#"project="project-1""#.to_owned(),
            "action=reset".to_owned(),
            "recovered=true".to_owned(),
            "count=3".to_owned(),
        ] {
            assert!(line.contains(&want), "{want:?} missing from {line:?}");
        }
        // An unknown owner is logged as `-`, and the notifier never fails.
        n.instance.project_id = None;
        LogNotifier::new().notify(&n).await.unwrap();
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert!(
            text.lines()
                .nth(1)
                .is_some_and(|l| l.contains(r#"project="-""#)),
            "{text}"
        );
    }
}
