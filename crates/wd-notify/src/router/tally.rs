//! One destination's delivery record: every attempt at it counted, its
//! last failure kept, and the switch that stops it sending at once when it
//! is removed from the configuration.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::error::error_chain;
use crate::kind::FailureKind;
use crate::model::Notification;
use crate::notifier::{Notifier, NotifyError};

use super::DestinationKind;

/// Sees every delivery attempt at every destination of a [`Router`]: for
/// metrics (outcome counters and attempt durations by destination kind).
/// The router keeps each destination's own counts and last error itself
/// ([`Router::status`]); an observer only needs what is per attempt.
///
/// [`Router`]: crate::Router
/// [`Router::status`]: crate::Router::status
pub trait DeliveryObserver: Send + Sync {
    /// A destination of `kind` now has a queue (called once per queue, so
    /// that series exist before the first attempt).
    fn opened(&self, kind: DestinationKind) {
        let _ = kind;
    }

    /// One attempt at a destination of `kind` ended after `elapsed`, with
    /// `outcome` (`Err` gives the failure's kind). An attempt abandoned by a
    /// deadline counts as a retryable failure.
    fn attempt(&self, kind: DestinationKind, elapsed: Duration, outcome: Result<(), FailureKind>);
}

/// The router's observer, shared with every destination's record so that
/// one set after the queues opened still sees their attempts.
pub(crate) type ObserverCell = Arc<RwLock<Option<Arc<dyn DeliveryObserver>>>>;

/// The last failure at one destination.
#[derive(Debug, Clone)]
pub(crate) struct LastFailure {
    pub(crate) at: time::OffsetDateTime,
    pub(crate) kind: FailureKind,
    pub(crate) message: String,
}

/// One destination's delivery record.
pub(crate) struct Tally {
    pub(crate) name: RwLock<String>,
    pub(crate) kind: DestinationKind,
    /// Set when the destination is removed: no attempt starts any more, not
    /// even one a running retry loop would make next.
    pub(crate) removed: AtomicBool,
    pub(crate) failed: AtomicU64,
    pub(crate) last: Mutex<Option<LastFailure>>,
    observer: ObserverCell,
}

impl fmt::Debug for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tally")
            .field("name", &self.name())
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// Error text is bounded: an endpoint's answer ends up in status output.
const MAX_ERROR_CHARS: usize = 500;

impl Tally {
    pub(crate) fn new(name: String, kind: DestinationKind, observer: ObserverCell) -> Tally {
        if let Some(o) = observer.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
            o.opened(kind);
        }
        Tally {
            name: RwLock::new(name),
            kind,
            removed: AtomicBool::new(false),
            failed: AtomicU64::new(0),
            last: Mutex::new(None),
            observer,
        }
    }

    pub(crate) fn name(&self) -> String {
        self.name.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn last(&self) -> Option<LastFailure> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Counts one attempt, keeps its failure, and logs the failure's cause
    /// chain: at `warn` when it differs from the last one (a destination
    /// failing the same way is one line, not one per attempt), and at
    /// `error` for a certificate problem, which waiting does not fix.
    fn record(&self, n: &Notification, elapsed: Duration, result: &Result<(), NotifyError>) {
        let outcome = result.as_ref().map(|_| ()).map_err(FailureKind::of);
        if let Some(o) = self
            .observer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            o.attempt(self.kind, elapsed, outcome);
        }
        let Err(e) = result else {
            return;
        };
        self.failed.fetch_add(1, Ordering::Relaxed);
        let kind = FailureKind::of(e);
        let chain = bounded(error_chain(e));
        let name = self.name();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if kind == FailureKind::Certificate {
            tracing::error!(destination = %name, event_id = %n.event_id, error = %chain,
                "delivery attempt failed: tls certificate error; check the destination's ca_file and client certificate");
        } else if last.as_ref().is_some_and(|l| l.message == chain) {
            tracing::debug!(destination = %name, event_id = %n.event_id, error = %chain,
                "delivery attempt failed");
        } else {
            tracing::warn!(destination = %name, event_id = %n.event_id,
                retryable = e.is_retryable(), error = %chain, "delivery attempt failed");
        }
        *last = Some(LastFailure {
            at: time::OffsetDateTime::now_utc(),
            kind,
            message: chain,
        });
    }
}

/// `text`, cut to at most [`MAX_ERROR_CHARS`] characters.
fn bounded(text: String) -> String {
    match text.char_indices().nth(MAX_ERROR_CHARS) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text,
    }
}

/// A transport, counted in its destination's [`Tally`], and silent once the
/// destination is removed.
pub(crate) struct Counted {
    pub(crate) tally: Arc<Tally>,
    pub(crate) inner: Arc<dyn Notifier>,
}

#[async_trait]
impl Notifier for Counted {
    async fn notify(&self, n: &Notification) -> Result<(), NotifyError> {
        // An attempt abandoned by a caller's deadline (its future dropped)
        // still counts, as a failure.
        struct Abandoned<'a> {
            tally: &'a Tally,
            n: &'a Notification,
            start: Instant,
            armed: bool,
        }
        impl Drop for Abandoned<'_> {
            fn drop(&mut self) {
                if self.armed {
                    let err = NotifyError::retryable(format!(
                        "attempt abandoned after {:?} (deadline)",
                        self.start.elapsed()
                    ));
                    self.tally.record(self.n, self.start.elapsed(), &Err(err));
                }
            }
        }
        if self.tally.removed.load(Ordering::SeqCst) {
            // Retryable, so that the entry stays queued (its queue is
            // paused: it is not offered again until drained or taken back).
            return Err(NotifyError::retryable(
                "destination removed from the configuration; its backlog is kept",
            ));
        }
        let mut guard = Abandoned {
            tally: &self.tally,
            n,
            start: Instant::now(),
            armed: true,
        };
        let result = self.inner.notify(n).await;
        guard.armed = false;
        self.tally.record(n, guard.start.elapsed(), &result);
        result
    }
}

/// A destination's counted transport, replaced in place by [`Router::reconfigure`] while its queue
/// keeps running. A delivery in flight at a swap finishes with the old one.
///
/// [`Router::reconfigure`]: crate::Router::reconfigure
pub(crate) struct Swap(RwLock<Arc<dyn Notifier>>);

impl Swap {
    pub(crate) fn new(stack: Arc<dyn Notifier>) -> Swap {
        Swap(RwLock::new(stack))
    }

    pub(crate) fn set(&self, next: Arc<dyn Notifier>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = next;
    }
}

#[async_trait]
impl Notifier for Swap {
    async fn notify(&self, n: &Notification) -> Result<(), NotifyError> {
        let current = self.0.read().unwrap_or_else(|p| p.into_inner()).clone();
        current.notify(n).await
    }
}

/// The stack of a queue found on disk that no destination owns: it has
/// nowhere to deliver (its queue is paused, so this is never called while
/// it is orphaned).
pub(crate) struct Nowhere;

#[async_trait]
impl Notifier for Nowhere {
    async fn notify(&self, _: &Notification) -> Result<(), NotifyError> {
        Err(NotifyError::retryable(
            "no configured destination owns this queue",
        ))
    }
}
