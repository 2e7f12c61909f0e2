//! The delivery worker: it offers due entries to the inner notifier, a few
//! at a time, and acks, re-schedules or drops each by its outcome; and the
//! supervisor that restarts it should it ever panic.

use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::time::Instant;

use super::config::QueueConfig;
use super::state::Shared;
use super::writer::Msg;
use crate::error::error_chain;
use crate::model::Notification;
use crate::notifier::{Notifier, NotifyError, notify_catching};
use crate::stages::Stage;

/// Where a worker sends acks: the writer thread of a durable spool, or
/// nowhere for a spool in memory.
pub(crate) type AckSink = Option<mpsc::Sender<Msg>>;

/// The farthest ahead a retry is ever scheduled, whatever the config or a
/// remote `Retry-After` says: keeps `Instant` arithmetic far from overflow.
const FAR: Duration = Duration::from_secs(7 * 24 * 3600);

/// The wait before retry `attempt` (from 1): the shared
/// [`wd_backoff::Backoff`] from [`QueueConfig::retry_min_delay`] doubling up
/// to [`QueueConfig::retry_max_delay`], jittered into `[d / 2, d]`, and at
/// least the notifier's retry-after, which is itself clamped to
/// `retry_max_delay` (it comes from a remote party and may say anything, up
/// to `u64::MAX` seconds).
pub(crate) fn retry_delay(
    config: &QueueConfig,
    attempt: u32,
    retry_after: Option<Duration>,
) -> Duration {
    let backoff = wd_backoff::Backoff::new(config.retry_min_delay, config.retry_max_delay);
    let jittered = backoff.delay(attempt.saturating_sub(1));
    let wait = retry_after.map_or(jittered, |ra| ra.min(config.retry_max_delay).max(jittered));
    wait.min(FAR)
}

/// `now + wait`, never overflowing.
fn due_after(now: Instant, wait: Duration) -> Instant {
    now.checked_add(wait.min(FAR))
        .or_else(|| now.checked_add(Duration::from_secs(3600)))
        .unwrap_or(now)
}

/// Runs the delivery worker, and restarts it (after a short pause, with its
/// in-flight entries made ready again) whenever it panics. Returns when the
/// worker returns (the spool is stopping). Aborting this task aborts the
/// worker too.
pub(crate) async fn supervise(shared: Arc<Shared>, inner: Arc<dyn Notifier>, acks: AckSink) {
    struct AbortOnDrop(tokio::task::AbortHandle);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let mut pause = Duration::from_millis(100);
    loop {
        let worker = tokio::spawn(deliver(shared.clone(), inner.clone(), acks.clone()));
        let guard = AbortOnDrop(worker.abort_handle());
        let result = worker.await;
        drop(guard);
        match result {
            Ok(()) => return,
            Err(e) if e.is_cancelled() => return,
            Err(e) => {
                let restarts = shared
                    .counters
                    .worker_restarts
                    .fetch_add(1, Ordering::Relaxed)
                    + 1;
                let what = panic_text(e.into_panic());
                tracing::error!(
                    destination = %shared.name, restarts, panic = %what,
                    "delivery worker panicked; restarting it (other destinations are not affected)"
                );
                shared.set_last_error(format!("delivery worker panicked: {what}"));
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
                shared.pending().requeue_in_flight(Instant::now());
                if shared.stop.load(Ordering::SeqCst) {
                    return;
                }
            }
        }
    }
}

fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_owned()
    }
}

/// The delivery worker.
async fn deliver(shared: Arc<Shared>, inner: Arc<dyn Notifier>, acks: AckSink) {
    let mut in_flight = FuturesUnordered::new();
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        assert!(
            !shared.panic_next.swap(false, Ordering::SeqCst),
            "injected test panic in the delivery worker"
        );
        let now = Instant::now();
        let mut next_due = None;
        {
            let mut pending = shared.pending();
            let paused = shared.paused.load(Ordering::SeqCst);
            while !paused && in_flight.len() < shared.config.concurrency {
                let Some(&(due, seq)) = pending.ready.first() else {
                    break;
                };
                if due > now {
                    next_due = Some(due);
                    break;
                }
                pending.ready.pop_first();
                let Some(e) = pending.entries.get_mut(&seq) else {
                    continue;
                };
                e.due = None;
                let n = e.n.clone();
                let first = e.attempts == 0;
                let inner = inner.clone();
                let timeout = shared.config.attempt_timeout;
                in_flight.push(async move {
                    if first {
                        crate::stages::record(Stage::Sending, &n);
                    }
                    // The one bound on an attempt: a destination that hangs
                    // holds one of this queue's slots for at most this long.
                    let result = tokio::time::timeout(timeout, notify_catching(&*inner, &n))
                        .await
                        .unwrap_or_else(|_| {
                            Err(NotifyError::retryable(format!(
                                "attempt abandoned after {timeout:?} (attempt_timeout)"
                            )))
                        });
                    if first {
                        crate::stages::record(Stage::Answered, &n);
                    }
                    (seq, n, result)
                });
            }
        }
        let can_start = in_flight.len() < shared.config.concurrency;
        tokio::select! {
            Some((seq, n, result)) = in_flight.next(), if !in_flight.is_empty() => {
                finish(&shared, &acks, seq, &n, result);
            }
            () = sleep_until_opt(next_due), if can_start && next_due.is_some() => {}
            () = shared.wake.notified() => {}
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn ack(acks: &AckSink, seq: u64) {
    if let Some(tx) = acks {
        let _ = tx.send(Msg::Ack { seq });
    }
}

fn finish(
    shared: &Shared,
    acks: &AckSink,
    seq: u64,
    n: &Notification,
    result: Result<(), NotifyError>,
) {
    let mut pending = shared.pending();
    match result {
        Ok(()) => {
            if pending.remove(seq).is_some() {
                shared.counters.delivered.fetch_add(1, Ordering::Relaxed);
            }
            drop(pending);
            tracing::debug!(destination = %shared.name, event_id = %n.event_id, "delivered");
            ack(acks, seq);
        }
        Err(e) if !e.is_retryable() => {
            if pending.remove(seq).is_some() {
                shared
                    .counters
                    .dropped_permanent
                    .fetch_add(1, Ordering::Relaxed);
            }
            drop(pending);
            let error = error_chain(&e);
            tracing::error!(
                destination = %shared.name, event_id = %n.event_id, instance = %n.instance.uuid,
                error = %error, "delivery failed permanently; dropped the notification"
            );
            shared.set_last_error(error);
            ack(acks, seq);
        }
        Err(e) => {
            let config = &shared.config;
            let Some(entry) = pending.entries.get_mut(&seq) else {
                return;
            };
            entry.attempts = entry.attempts.saturating_add(1);
            let wait = retry_delay(config, entry.attempts, e.retry_after());
            let due = due_after(Instant::now(), wait);
            entry.due = Some(due);
            let attempts = entry.attempts;
            pending.ready.insert((due, seq));
            drop(pending);
            shared.counters.failed.fetch_add(1, Ordering::Relaxed);
            let error = error_chain(&e);
            tracing::warn!(
                destination = %shared.name, event_id = %n.event_id, attempts, ?wait,
                error = %error, "delivery failed; will retry"
            );
            shared.set_last_error(error);
        }
    }
}
