//! Per-destination queues: fan out first, then one queue (a [`Spool`], on
//! disk or in memory) per destination, then the destination with its
//! [`Retry`]. This is Vector's model (one disk buffer per sink): a
//! destination that hangs, fails or throttles fills only its own queue and
//! delays no other.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;

use crate::error::{Error, Result};
use crate::model::Notification;
use crate::notifier::{Notifier, NotifyError};
use crate::retry::{Retry, RetryConfig};
use crate::spool::{Spool, SpoolConfig, SpoolStats, error_chain, lock_dir, scan};

/// What kind of destination a queue feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DestinationKind {
    /// An operator channel: receives every notification.
    Operator,
    /// A project's (tenant's) own endpoint: only its project's notifications.
    Project,
    /// The message bus (AMQP).
    Bus,
    /// The agent's own log.
    Log,
}

impl DestinationKind {
    /// The lowercase name: `operator`, `project`, `bus` or `log`.
    pub fn as_str(self) -> &'static str {
        match self {
            DestinationKind::Operator => "operator",
            DestinationKind::Project => "project",
            DestinationKind::Bus => "bus",
            DestinationKind::Log => "log",
        }
    }
}

impl fmt::Display for DestinationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which notifications a destination receives.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Route {
    /// Every notification (operator channels, the bus, the log).
    All,
    /// Only notifications whose instance belongs to exactly this project
    /// (case-sensitive). A notification with no known owner never matches.
    Project(String),
}

impl Route {
    /// Whether `n` goes to a destination with this route.
    pub fn matches(&self, n: &Notification) -> bool {
        match self {
            Route::All => true,
            Route::Project(p) => n.instance.project_id.as_deref() == Some(p.as_str()),
        }
    }
}

/// One destination: where it delivers, what it receives, and its own
/// queue bounds and retries.
pub struct Destination {
    /// The name in logs and status (never a secret; URLs redacted).
    pub name: String,
    /// What kind it is.
    pub kind: DestinationKind,
    /// Which notifications it receives.
    pub route: Route,
    /// The backend.
    pub notifier: Arc<dyn Notifier>,
    /// A stable identity, from which the queue's directory name is derived
    /// (hashed, so nothing tenant-controlled reaches a path). It must not
    /// change between runs, or the queue's backlog is left behind. Defaults
    /// to `name`.
    pub key: String,
    /// Its queue's bounds and retry delays (`retry_max_delay` is also the
    /// most its `Retry-After` is honoured); `None` takes the router's
    /// default.
    pub queue: Option<SpoolConfig>,
    /// The retry around the backend, inside the queue; `None` takes the
    /// router's default.
    pub retry: Option<RetryConfig>,
}

impl From<(String, Arc<dyn Notifier>)> for Destination {
    /// An operator destination that receives every notification.
    fn from((name, notifier): (String, Arc<dyn Notifier>)) -> Self {
        Destination::new(name, DestinationKind::Operator, Route::All, notifier)
    }
}

impl fmt::Debug for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Destination")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("route", &self.route)
            .finish_non_exhaustive()
    }
}

impl Destination {
    /// A destination with default queue and retry settings.
    pub fn new(
        name: impl Into<String>,
        kind: DestinationKind,
        route: Route,
        notifier: Arc<dyn Notifier>,
    ) -> Self {
        let name = name.into();
        Destination {
            key: name.clone(),
            name,
            kind,
            route,
            notifier,
            queue: None,
            retry: None,
        }
    }

    /// Sets [`Destination::key`].
    #[must_use]
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = key.into();
        self
    }

    /// Sets [`Destination::queue`].
    #[must_use]
    pub fn queue(mut self, config: SpoolConfig) -> Self {
        self.queue = Some(config);
        self
    }

    /// Sets [`Destination::retry`].
    #[must_use]
    pub fn retry(mut self, config: RetryConfig) -> Self {
        self.retry = Some(config);
        self
    }

    /// The queue's directory under a spool root: `dest/<kind>-<hash>`, where
    /// the hash (FNV-1a, 64 bits, hex) is of the kind and the key.
    pub fn dir_name(&self) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self
            .kind
            .as_str()
            .bytes()
            .chain([0])
            .chain(self.key.bytes())
        {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        format!("{}-{h:016x}", self.kind)
    }
}

/// The queue and retry settings of destinations that do not set their own.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouterDefaults {
    /// Each queue's bounds and retry delays.
    pub queue: SpoolConfig,
    /// The retry around each backend.
    pub retry: RetryConfig,
}

impl RouterDefaults {
    /// The queue settings and the notifier stack of `d`: its retry around
    /// an observer of each attempt around the backend.
    fn resolve(&self, d: &Destination) -> (SpoolConfig, Arc<Attempts>, Arc<dyn Notifier>) {
        let queue = d.queue.clone().unwrap_or_else(|| self.queue.clone());
        let retry = d.retry.clone().unwrap_or_else(|| self.retry.clone());
        let attempts = Arc::new(Attempts {
            name: d.name.clone(),
            inner: d.notifier.clone(),
            failed: AtomicU64::new(0),
            last_error: Mutex::new(None),
        });
        let stack = Arc::new(Retry::new(attempts.clone(), retry));
        (queue, attempts, stack)
    }
}

/// Observes every attempt at one destination, so that its status shows a
/// failure at once (not only when a [`Retry`] gives up), and logs the cause
/// chain of each failure, at `warn` when it differs from the last one (a
/// destination failing the same way is one line, not one per attempt).
struct Attempts {
    name: String,
    inner: Arc<dyn Notifier>,
    failed: AtomicU64,
    last_error: Mutex<Option<String>>,
}

#[async_trait]
impl Notifier for Attempts {
    async fn notify(&self, n: &Notification) -> Result<(), NotifyError> {
        let result = self.inner.notify(n).await;
        if let Err(e) = &result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            let chain = error_chain(e);
            let mut last = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
            if last.as_deref() == Some(chain.as_str()) {
                tracing::debug!(destination = %self.name, event_id = %n.event_id, error = %chain, "delivery attempt failed");
            } else {
                tracing::warn!(destination = %self.name, event_id = %n.event_id,
                    retryable = e.is_retryable(), error = %chain, "delivery attempt failed");
                *last = Some(chain);
            }
        }
        result
    }
}

/// One destination's state, for metrics, `wdguard status` and the health line.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DestinationStatus {
    /// The destination's name.
    pub name: String,
    /// Its kind.
    pub kind: DestinationKind,
    /// Entries waiting in its queue.
    pub backlog: u64,
    /// Bytes waiting in its queue.
    pub bytes: u64,
    /// How long its oldest waiting entry has waited.
    pub oldest: Option<Duration>,
    /// Entries dropped because the queue was full.
    pub dropped_full: u64,
    /// Entries dropped because delivery failed permanently.
    pub dropped_permanent: u64,
    /// Entries delivered since start.
    pub delivered: u64,
    /// Failed delivery attempts since start.
    pub failed: u64,
    /// Times its worker panicked and was restarted.
    pub worker_restarts: u64,
    /// Its last failure with the cause chain, redacted by the backend.
    pub last_error: Option<String>,
}

struct Queue {
    attempts: Arc<Attempts>,
    /// The destination's directory name (its identity, see
    /// [`Destination::dir_name`]).
    dir: String,
    /// Removed from the configuration: takes nothing new, and leaves once
    /// its backlog has drained.
    retired: AtomicBool,
    name: String,
    kind: DestinationKind,
    route: Route,
    spool: Arc<Spool>,
}

/// Delivers each notification into the queue of every destination whose
/// route matches it; each queue's worker then delivers on its own.
///
/// `notify` returns `Ok` once every matching queue has it (on disk, for a
/// durable router). Each queue keeps its own progress (acks) on disk, so
/// after a restart a destination is offered only what it has not taken.
pub struct Router {
    queues: RwLock<Vec<Arc<Queue>>>,
    defaults: RouterDefaults,
    root: Option<PathBuf>,
    _lock: Option<std::fs::File>,
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field("root", &self.root)
            .field(
                "destinations",
                &self
                    .queues()
                    .iter()
                    .map(|q| q.name.clone())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Router {
    /// Opens one queue per destination: under `root/dest/` on disk when
    /// `root` is given, else in memory. Must run inside a Tokio runtime.
    ///
    /// A spool in the old shared layout (segment files directly in `root`)
    /// is drained first: each pending entry is written, with its event id,
    /// into the queue of every destination it routes to, durably, and only
    /// then are the old segments removed.
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
        let mut seen = std::collections::HashSet::new();
        for d in &destinations {
            if !seen.insert(d.dir_name()) {
                return Err(Error::SpoolConfig {
                    name: "destination",
                    value: d.name.clone(),
                    allowed: "each destination once",
                });
            }
        }
        let Some(root) = root else {
            let queues = destinations
                .into_iter()
                .map(|d| {
                    let (queue, attempts, inner) = defaults.resolve(&d);
                    let spool = Spool::memory_dyn(d.name.clone(), queue, inner)?;
                    Ok(Arc::new(Queue {
                        attempts,
                        dir: d.dir_name(),
                        retired: AtomicBool::new(false),
                        name: d.name,
                        kind: d.kind,
                        route: d.route,
                        spool: Arc::new(spool),
                    }))
                })
                .collect::<Result<Vec<_>>>()?;
            return Ok(Router {
                queues: RwLock::new(queues),
                defaults: defaults.clone(),
                root: None,
                _lock: None,
            });
        };
        crate::spool::create_root(root)?;
        // The old single spool held this lock too, so an old agent and a new
        // one never share the directory.
        let lock = lock_dir(root)?;
        let old = scan(root)?;
        if !old.pending.is_empty() {
            tracing::info!(
                dir = %root.display(), entries = old.pending.len(),
                "spool in the old shared layout found; moving its entries into per-destination queues"
            );
        }
        let mut queues = Vec::with_capacity(destinations.len());
        for d in destinations {
            let imports: Vec<Notification> = old
                .pending
                .iter()
                .filter(|(_, n)| d.route.matches(n))
                .map(|(_, n)| n.clone())
                .collect();
            let dir = root.join("dest").join(d.dir_name());
            let (queue, attempts, inner) = defaults.resolve(&d);
            let spool = Spool::open_importing(
                Arc::new(crate::spool::disk::RealFs),
                &dir,
                d.name.clone(),
                queue,
                inner,
                imports,
            )?;
            queues.push(Arc::new(Queue {
                attempts,
                dir: d.dir_name(),
                retired: AtomicBool::new(false),
                name: d.name,
                kind: d.kind,
                route: d.route,
                spool: Arc::new(spool),
            }));
        }
        // Every entry is now durable in its queues: the old segments go.
        for seg in &old.segments {
            std::fs::remove_file(seg).map_err(|source| Error::SpoolIo {
                path: seg.clone(),
                source,
            })?;
        }
        if !old.segments.is_empty() {
            crate::spool::sync_root(root)?;
            tracing::info!(dir = %root.display(), segments = old.segments.len(), "old spool layout drained");
        }
        Ok(Router {
            queues: RwLock::new(queues),
            defaults: defaults.clone(),
            root: Some(root.to_owned()),
            _lock: Some(lock),
        })
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

    /// The destinations' names, in order.
    pub fn names(&self) -> Vec<String> {
        self.queues().iter().map(|q| q.name.clone()).collect()
    }

    /// The directory names ([`Destination::dir_name`]) of the destinations
    /// that still take new notifications.
    pub fn active(&self) -> Vec<String> {
        self.queues()
            .iter()
            .filter(|q| !q.retired.load(Ordering::Relaxed))
            .map(|q| q.dir.clone())
            .collect()
    }

    /// Adds destination `d` while running (a configuration reload): its
    /// queue opens (on disk, with any backlog a previous run left there) and
    /// its worker starts. A retired destination with the same identity is
    /// taken back instead, keeping its queue. Must run inside a Tokio
    /// runtime.
    ///
    /// # Errors
    ///
    /// The queue cannot be opened.
    pub fn add(&self, d: Destination) -> Result<()> {
        let dir = d.dir_name();
        if let Some(q) = self.queues().iter().find(|q| q.dir == dir) {
            q.retired.store(false, Ordering::Relaxed);
            return Ok(());
        }
        let (queue, attempts, inner) = self.defaults.resolve(&d);
        let spool = match &self.root {
            Some(root) => Spool::open_importing(
                Arc::new(crate::spool::disk::RealFs),
                &root.join("dest").join(&dir),
                d.name.clone(),
                queue,
                inner,
                Vec::new(),
            )?,
            None => Spool::memory_dyn(d.name.clone(), queue, inner)?,
        };
        tracing::info!(destination = %d.name, "destination added; its queue started");
        self.queues
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::new(Queue {
                attempts,
                dir,
                retired: AtomicBool::new(false),
                name: d.name,
                kind: d.kind,
                route: d.route,
                spool: Arc::new(spool),
            }));
        Ok(())
    }

    /// Retires the destination whose directory name is `dir` (removed from
    /// the configuration): it takes no new notification, keeps delivering
    /// its backlog, and is closed once that has drained (or at shutdown;
    /// what is left then stays on disk). Returns whether there was one.
    pub fn retire(self: &Arc<Self>, dir: &str) -> bool {
        let Some(q) = self.queues().into_iter().find(|q| q.dir == dir) else {
            return false;
        };
        q.retired.store(true, Ordering::Relaxed);
        tracing::warn!(destination = %q.name, backlog = q.spool.stats().pending,
            "destination removed: it takes nothing new; its queue is kept until it drains");
        let router = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if !q.retired.load(Ordering::Relaxed) {
                    return;
                }
                let Some(router) = router.upgrade() else {
                    return;
                };
                if q.spool.stats().pending == 0 {
                    router
                        .queues
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .retain(|other| !Arc::ptr_eq(other, &q));
                    q.spool.shutdown(Duration::ZERO).await;
                    tracing::info!(destination = %q.name, "removed destination drained; its queue is closed");
                    return;
                }
            }
        });
        true
    }

    /// Every destination's state now.
    pub fn status(&self) -> Vec<DestinationStatus> {
        self.queues()
            .iter()
            .map(|q| {
                let s = q.spool.stats();
                DestinationStatus {
                    name: q.name.clone(),
                    kind: q.kind,
                    backlog: s.pending,
                    bytes: s.bytes,
                    oldest: s.oldest,
                    dropped_full: s.dropped_full,
                    dropped_permanent: s.dropped_permanent,
                    delivered: s.delivered,
                    failed: q.attempts.failed.load(Ordering::Relaxed),
                    worker_restarts: s.worker_restarts,
                    last_error: q
                        .spool
                        .last_error()
                        .filter(|_| s.worker_restarts > 0)
                        .or_else(|| q.attempts.last_error.lock().ok()?.clone())
                        .or_else(|| q.spool.last_error()),
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
            .map(|q| q.name.clone())
    }

    /// Test hook: makes destination `name`'s worker panic once. Returns
    /// whether there is such a destination.
    #[doc(hidden)]
    pub fn inject_worker_panic(&self, name: &str) -> bool {
        let queues = self.queues();
        let q = queues.iter().find(|q| q.name == name);
        if let Some(q) = q {
            q.spool.inject_worker_panic();
        }
        q.is_some()
    }

    /// Stops accepting, lets every queue deliver for up to `grace` (all at
    /// once), and stops them; returns each destination's final counters.
    pub async fn shutdown(&self, grace: Duration) -> Vec<(String, SpoolStats)> {
        let queues = self.queues();
        let stats = futures::future::join_all(queues.iter().map(|q| q.spool.shutdown(grace)));
        queues
            .iter()
            .map(|q| q.name.clone())
            .zip(stats.await)
            .collect()
    }
}

#[async_trait]
impl Notifier for Router {
    async fn notify(&self, n: &Notification) -> Result<(), NotifyError> {
        let queues = self.queues();
        let targets: Vec<&Arc<Queue>> = queues
            .iter()
            .filter(|q| !q.retired.load(Ordering::Relaxed) && q.route.matches(n))
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
                failures.push(format!("{}: {}", q.name, error_chain(&e)));
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
#[path = "router_tests.rs"]
mod tests;
