//! Per-destination queues: fan out first, then one queue (a [`Spool`], on
//! disk or in memory) per destination, whose worker is the destination's one
//! retry loop, then the destination. This is Vector's model (one disk buffer per sink): a
//! destination that hangs, fails or throttles fills only its own queue and
//! delays no other.
//!
//! The router is the one registry of destinations: it owns each one's
//! queue, retry, counters and last error ([`Router::status`]), and
//! [`Router::reconfigure`] is the one way to change them while running.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;

use crate::error::{Error, Result, error_chain};
use crate::model::Notification;
use crate::notifier::{Notifier, NotifyError};
use crate::spool::{QueueConfig, Spool, SpoolStats, lock_dir};

mod destination;
mod reconfigure;
mod tally;

pub use destination::{Destination, DestinationKind, DestinationState, DestinationStatus, Scope};
pub use reconfigure::Reconfigured;
pub use tally::DeliveryObserver;
use tally::{Counted, Nowhere, ObserverCell, Swap, Tally};

/// The queue settings of destinations that do not set their own.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouterDefaults {
    /// Each queue's bounds, redelivery delays and attempt timeout: the one
    /// place a destination's retries are configured.
    pub queue: QueueConfig,
}

impl RouterDefaults {
    /// `d`'s queue settings.
    fn resolve(&self, d: &Destination) -> QueueConfig {
        d.queue.clone().unwrap_or_else(|| self.queue.clone())
    }
}

const ACTIVE: u8 = 0;
const RETIRED: u8 = 1;
const DRAINING: u8 = 2;
const ORPHANED: u8 = 3;

/// One destination's queue and everything the router knows about it.
struct Queue {
    /// The destination's directory name (its identity, see
    /// [`Destination::dir_name`]).
    dir: String,
    scope: Scope,
    /// [`ACTIVE`], [`RETIRED`], [`DRAINING`] or [`ORPHANED`].
    state: AtomicU8,
    /// Its counters, last failure and removal switch.
    tally: Arc<Tally>,
    /// What its worker calls: its counted transport.
    stack: Arc<Swap>,
    /// The queue settings it was opened with (they need a reopen to change).
    config: QueueConfig,
    spool: Arc<Spool>,
}

impl Queue {
    fn state(&self) -> DestinationState {
        match self.state.load(Ordering::SeqCst) {
            ACTIVE => DestinationState::Active,
            RETIRED => DestinationState::Retired,
            DRAINING => DestinationState::Draining,
            _ => DestinationState::Orphaned,
        }
    }

    fn is_active(&self) -> bool {
        self.state.load(Ordering::SeqCst) == ACTIVE
    }
}

/// Delivers each notification into the queue of every destination whose
/// route matches it; each queue's worker then delivers on its own.
///
/// `notify` returns `Ok` once every matching queue has it (on disk, for a
/// durable router). Each queue keeps its own progress (acks) on disk, so
/// after a restart a destination is offered only what it has not taken.
pub struct Router {
    queues: RwLock<Vec<Arc<Queue>>>,
    observer: ObserverCell,
    root: Option<PathBuf>,
    /// The file-system calls of every queue opened under `root`.
    fs: Arc<dyn crate::spool::disk::SpoolFs>,
    _lock: Option<std::fs::File>,
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field("root", &self.root)
            .field("destinations", &self.names())
            .finish()
    }
}

/// Refuses two destinations with one identity (they would share a queue).
fn check_unique(destinations: &[Destination]) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for d in destinations {
        if !seen.insert(d.dir_name()) {
            return Err(Error::QueueConfig {
                name: "destination",
                value: d.name.clone(),
                allowed: "each destination once",
            });
        }
    }
    Ok(())
}

impl Router {
    /// Opens one queue per destination: under `root/dest/` on disk when
    /// `root` is given, else in memory. Must run inside a Tokio runtime.
    ///
    /// A queue directory under `root/dest/` that no destination owns (its
    /// destination was removed while nothing ran) is opened too, as an
    /// [orphaned](DestinationState::Orphaned) queue: it delivers nothing,
    /// but [`Router::status`] shows its backlog until it is configured
    /// again or dropped ([`Router::drop_backlog`]).
    ///
    /// # Errors
    ///
    /// A queue cannot be opened or a setting is out of range; two
    /// destinations share a key; another process holds `root`.
    pub fn open(
        root: Option<&Path>,
        destinations: Vec<Destination>,
        defaults: &RouterDefaults,
    ) -> Result<Router> {
        Self::open_dyn(
            Arc::new(crate::spool::disk::RealFs),
            root,
            destinations,
            defaults,
        )
    }

    /// [`Router::open`] whose queues make their file-system calls through
    /// `fs` (feature `fault-injection`), now and after each reload: with a
    /// [`FaultyFs`](crate::fault::FaultyFs), a test can fail the disk of a
    /// running agent.
    ///
    /// # Errors
    ///
    /// As [`Router::open`].
    #[cfg(feature = "fault-injection")]
    pub fn open_with_fs(
        fs: Arc<dyn crate::fault::SpoolFs>,
        root: Option<&Path>,
        destinations: Vec<Destination>,
        defaults: &RouterDefaults,
    ) -> Result<Router> {
        Self::open_dyn(fs, root, destinations, defaults)
    }

    fn open_dyn(
        fs: Arc<dyn crate::spool::disk::SpoolFs>,
        root: Option<&Path>,
        destinations: Vec<Destination>,
        defaults: &RouterDefaults,
    ) -> Result<Router> {
        check_unique(&destinations)?;
        let lock = match root {
            Some(root) => {
                crate::spool::create_root(root)?;
                // One process per spool root.
                Some(lock_dir(root)?)
            }
            None => None,
        };
        let router = Router {
            queues: RwLock::new(Vec::new()),
            observer: ObserverCell::default(),
            root: root.map(Path::to_owned),
            fs,
            _lock: lock,
        };
        let mut queues = Vec::with_capacity(destinations.len());
        for d in destinations {
            queues.push(Arc::new(router.open_queue(d, defaults)?));
        }
        if let Some(root) = root {
            queues.extend(router.open_orphans(root, &queues)?);
        }
        *router.queues.write().unwrap_or_else(|p| p.into_inner()) = queues;
        Ok(router)
    }

    /// Opens `d`'s queue (with any backlog a previous run left there) and
    /// starts its worker.
    fn open_queue(&self, d: Destination, defaults: &RouterDefaults) -> Result<Queue> {
        let config = defaults.resolve(&d);
        let dir = d.dir_name();
        let tally = Arc::new(Tally::new(d.name.clone(), d.kind, self.observer.clone()));
        let stack = Arc::new(Swap::new(stack(&tally, d.notifier)));
        let spool = self.open_spool(&dir, d.name, config.clone(), stack.clone())?;
        Ok(Queue {
            dir,
            scope: d.scope,
            state: AtomicU8::new(ACTIVE),
            tally,
            stack,
            config,
            spool: Arc::new(spool),
        })
    }

    fn open_spool(
        &self,
        dir: &str,
        name: String,
        config: QueueConfig,
        stack: Arc<Swap>,
    ) -> Result<Spool> {
        match &self.root {
            Some(root) => Spool::open_dyn(
                self.fs.clone(),
                &root.join("dest").join(dir),
                name,
                config,
                stack,
            ),
            None => Spool::memory_dyn(name, config, stack),
        }
    }

    /// Opens, paused, every queue directory under `root/dest/` that none of
    /// `owned` is.
    fn open_orphans(&self, root: &Path, owned: &[Arc<Queue>]) -> Result<Vec<Arc<Queue>>> {
        let base = root.join("dest");
        let entries = match std::fs::read_dir(&base) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(Error::SpoolIo { path: base, source }),
        };
        let mut out = Vec::new();
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| !owned.iter().any(|q| &q.dir == n))
            .collect();
        names.sort();
        for dir in names {
            let Some(kind) = dir
                .rsplit_once('-')
                .and_then(|(k, _)| DestinationKind::parse(k))
            else {
                tracing::warn!(dir = %base.join(&dir).display(),
                    "not a destination's queue directory; ignored");
                continue;
            };
            // Bounds that drop nothing: whatever it holds is reported.
            let config = QueueConfig::default()
                .max_entries(usize::MAX)
                .max_bytes(u64::MAX);
            let name = format!("orphaned queue {dir}");
            let tally = Arc::new(Tally::new(name.clone(), kind, self.observer.clone()));
            tally.removed.store(true, Ordering::SeqCst);
            let stack = Arc::new(Swap::new(Arc::new(Nowhere)));
            let spool = self.open_spool(&dir, name.clone(), config.clone(), stack.clone())?;
            spool.set_paused(true);
            if spool.stats().pending == 0 {
                // Nothing waits in it: nothing to report.
                continue;
            }
            tracing::warn!(destination = %name, backlog = spool.stats().pending,
                "a queue on disk that no configured destination owns; it delivers nothing until its destination is configured again or it is dropped (`wdguard queue drop`)");
            out.push(Arc::new(Queue {
                dir,
                scope: Scope::All,
                state: AtomicU8::new(ORPHANED),
                tally,
                stack,
                config,
                spool: Arc::new(spool),
            }));
        }
        Ok(out)
    }

    /// Sends every delivery attempt's outcome and duration to `observer`
    /// (metrics), from now on.
    pub fn observe(&self, observer: Arc<dyn DeliveryObserver>) {
        for q in self.queues() {
            observer.opened(q.tally.kind);
        }
        *self.observer.write().unwrap_or_else(|p| p.into_inner()) = Some(observer);
    }

    /// The spool root, if the queues are on disk.
    pub fn root(&self) -> Option<&Path> {
        self.root.as_deref()
    }

    fn queues(&self) -> Vec<Arc<Queue>> {
        self.queues
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The destinations' names, in order (removed ones with a backlog
    /// included).
    pub fn names(&self) -> Vec<String> {
        self.queues().iter().map(|q| q.tally.name()).collect()
    }

    /// Every destination's state now, removed ones with a backlog included.
    pub fn status(&self) -> Vec<DestinationStatus> {
        self.queues()
            .iter()
            .map(|q| {
                let s = q.spool.stats();
                let last = q.tally.last();
                // A worker's panic says more than the failure before it.
                let last_error = q
                    .spool
                    .last_error()
                    .filter(|_| s.worker_restarts > 0)
                    .or_else(|| last.as_ref().map(|l| l.message.clone()))
                    .or_else(|| q.spool.last_error());
                DestinationStatus {
                    name: q.tally.name(),
                    kind: q.tally.kind,
                    state: q.state(),
                    dir: q.dir.clone(),
                    backlog: s.pending,
                    bytes: s.bytes,
                    oldest: s.oldest,
                    dropped_full: s.dropped_full,
                    dropped_permanent: s.dropped_permanent,
                    delivered: s.delivered,
                    failed: q.tally.failed.load(Ordering::Relaxed),
                    worker_restarts: s.worker_restarts,
                    last_error,
                    last_failure: last.map(|l| (l.at, l.kind)),
                }
            })
            .collect()
    }

    /// One line describing every destination's backlog and last error, for
    /// the periodic health log.
    pub fn health_line(&self) -> String {
        let mut parts = Vec::new();
        for s in self.status() {
            let mut part = format!(
                "{} [{}]: backlog {} ({} B",
                s.name, s.kind, s.backlog, s.bytes
            );
            if let Some(age) = s.oldest {
                part.push_str(&format!(", oldest {}s", age.as_secs()));
            }
            part.push_str(&format!(
                "), delivered {}, failed {}, dropped {}",
                s.delivered,
                s.failed,
                s.dropped_full.saturating_add(s.dropped_permanent)
            ));
            if s.state != DestinationState::Active {
                part.push_str(&format!(", {}", s.state));
            }
            if let Some(e) = &s.last_error {
                part.push_str(&format!(", last error: {e}"));
            }
            parts.push(part);
        }
        parts.join("; ")
    }

    /// The name of a destination whose queue writer thread has died, if
    /// any: a core failure the process should exit on.
    pub fn dead_writer(&self) -> Option<String> {
        self.queues()
            .iter()
            .find(|q| q.spool.writer_died())
            .map(|q| q.tally.name())
    }

    /// Test hook: makes destination `name`'s worker panic once. Returns
    /// whether there is such a destination.
    #[doc(hidden)]
    pub fn inject_worker_panic(&self, name: &str) -> bool {
        let queues = self.queues();
        let q = queues.iter().find(|q| q.tally.name() == name);
        if let Some(q) = q {
            q.spool.inject_worker_panic();
        }
        q.is_some()
    }

    /// Stops accepting, lets every queue deliver for up to `grace` (all at
    /// once), and stops them; returns each destination's final counters.
    /// What is left stays on disk for the next start.
    pub async fn shutdown(&self, grace: Duration) -> Vec<(String, SpoolStats)> {
        let queues = self.queues();
        let stats = futures::future::join_all(queues.iter().map(|q| q.spool.shutdown(grace)));
        queues
            .iter()
            .map(|q| q.tally.name())
            .zip(stats.await)
            .collect()
    }
}

/// What a destination's queue worker calls: its transport, counted. The
/// queue's worker is the one retry loop.
fn stack(tally: &Arc<Tally>, transport: Arc<dyn Notifier>) -> Arc<dyn Notifier> {
    Arc::new(Counted {
        tally: tally.clone(),
        inner: transport,
    })
}

#[async_trait]
impl Notifier for Router {
    async fn notify(&self, n: &Notification) -> Result<(), NotifyError> {
        let queues = self.queues();
        let targets: Vec<&Arc<Queue>> = queues
            .iter()
            .filter(|q| q.is_active() && q.scope.matches(n))
            .collect();
        if targets.is_empty() {
            tracing::debug!(event_id = %n.event_id, "no destination for this notification");
            return Ok(());
        }
        let results = futures::future::join_all(targets.iter().map(|q| q.spool.notify(n))).await;
        let mut failures = Vec::new();
        let mut retryable = false;
        for (q, r) in targets.iter().zip(results) {
            if let Err(e) = r {
                retryable |= e.is_retryable();
                failures.push(format!("{}: {}", q.tally.name(), error_chain(&e)));
            }
        }
        if failures.is_empty() {
            return Ok(());
        }
        let message = format!("not accepted by every queue: {}", failures.join("; "));
        Err(if retryable {
            NotifyError::retryable(message)
        } else {
            NotifyError::permanent(message)
        })
    }
}

#[cfg(test)]
mod tests;
