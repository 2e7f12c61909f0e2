//! The durable spool: a directory-backed write-ahead log with a supervised
//! delivery worker. The format and the recovery rules are in the crate docs.
//!
//! Split by concern, as Vector's `disk_v2` buffer is: [`config`] (settings),
//! [`format`] (the on-disk records, pure), [`scan`] (reading a directory,
//! recovery, the lock), `writer` (the thread that owns the files), `state`
//! (what the writer and the worker share) and `delivery` (the worker and
//! its supervisor).

mod config;
mod delivery;
pub(crate) mod disk;
#[cfg(any(test, feature = "fault-injection"))]
pub(crate) mod faulty;
mod format;
mod scan;
mod state;
#[cfg(test)]
mod tests;
mod writer;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use config::{QueueConfig, SyncMode};
pub use format::{
    MAX_PAYLOAD, RECORD_HEADER_LEN, RECORD_MAGIC, Record, RecordBody, RecoveryReport,
    SEGMENT_MAGIC, SkipReason, Skipped, recover,
};
pub use scan::{ScanReport, scan};
pub(crate) use scan::{lock_dir, segment_id, segment_name};
pub(crate) use state::Shared;
pub use state::SpoolStats;

use self::disk::{RealFs, SpoolFs, create_private_dir};
use crate::error::{Error, Result};
use crate::model::Notification;
use crate::notifier::{Notifier, NotifyError};
use crate::stages::Stage;
use writer::{Msg, Writer};

/// `fsync`s a directory (after removing files from it).
pub(crate) fn sync_root(dir: &Path) -> Result<()> {
    scan::sync_dir(&RealFs, dir)
}

/// Deletes the queue directory `dir` of a stopped agent (`wdguard queue
/// drop --spool`): only while holding its lock, so never a queue that a
/// running process has open. Returns how many entries it held.
///
/// # Errors
///
/// [`Error::SpoolLocked`] when a process holds it; I/O errors reading or
/// deleting it.
pub fn drop_queue_dir(dir: &Path) -> Result<u64> {
    let lock = scan::lock_dir(dir)?;
    let pending = scan(dir)?.pending.len();
    std::fs::remove_dir_all(dir).map_err(|source| Error::SpoolIo {
        path: dir.to_owned(),
        source,
    })?;
    drop(lock);
    if let Some(parent) = dir.parent() {
        sync_root(parent)?;
    }
    Ok(u64::try_from(pending).unwrap_or(u64::MAX))
}

/// Creates `dir` (and its parents) with mode 0700, or brings an existing
/// one to 0700.
pub(crate) fn create_root(dir: &Path) -> Result<()> {
    create_private_dir(dir).map_err(|source| Error::OpenSpool {
        path: dir.to_owned(),
        source,
    })
}

/// The files of a durable spool: the writer thread and the directory lock.
struct Disk {
    dir: PathBuf,
    tx: Mutex<Option<mpsc::Sender<Msg>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Held for the spool's lifetime: an advisory lock on `dir/LOCK`, which
    /// the kernel releases when the process dies, even by SIGKILL.
    _lock: fs::File,
}

/// A durable, bounded, at-least-once spool in front of a notifier.
///
/// `notify` returns `Ok` only once the notification is on disk and
/// `fsync`ed (see [`SyncMode`]). A background worker delivers entries to the
/// inner notifier, oldest first, [`QueueConfig::concurrency`] at a time; an
/// entry is acked (removed) only after its delivery succeeds. Retryable
/// failures are tried again with capped exponential backoff and jitter
/// (honouring the notifier's retry-after, clamped to
/// [`QueueConfig::retry_max_delay`]); permanent ones are logged and dropped
/// (`dropped_permanent`). When the spool is full, the oldest entries are
/// dropped with a warning (`dropped_full`): never silently. A panic in the
/// worker is logged and the worker restarted.
///
/// Wakes every [`writer_exits`] waiter when any queue writer thread of the
/// process ends.
static WRITER_EXITS: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Signals [`WRITER_EXITS`] when dropped, at the end of a writer thread.
struct ExitSignal;

impl Drop for ExitSignal {
    fn drop(&mut self) {
        WRITER_EXITS.notify_waiters();
    }
}

/// A future that completes when a queue writer thread of this process ends
/// (normally at shutdown, or because it died). Nothing is missed between
/// creating it and awaiting it once it is
/// [`enable`](tokio::sync::futures::Notified::enable)d: enable it, check
/// [`Spool::writer_died`] (or [`Router::dead_writer`](crate::Router::dead_writer)),
/// then await it, instead of polling.
pub fn writer_exits() -> tokio::sync::futures::Notified<'static> {
    WRITER_EXITS.notified()
}

/// After a crash, [`Spool::open`] delivers what was not acked, with the
/// same event ids, so consumers may see a notification twice but never
/// lose one that was accepted.
///
/// [`Spool::memory`] gives the same queue and worker without the disk: for
/// running without a spool directory, where a refused notification is still
/// retried in the background (bounded, counted) while the process runs.
///
/// One process at a time may open a directory. `Spool::open` must be called
/// inside a Tokio runtime (it starts the delivery task; outside one it fails
/// with [`Error::NoRuntime`]); the writer is a dedicated thread.
pub struct Spool {
    shared: Arc<Shared>,
    disk: Option<Disk>,
    /// The next seq of a spool in memory.
    next_seq: AtomicU64,
    delivery: Mutex<Option<JoinHandle<()>>>,
    /// The event ids accepted lately: a notification offered again (the
    /// pipeline retries a firing that another queue failed to write) is
    /// accepted once.
    recent: Mutex<RecentIds>,
}

/// The most event ids a spool remembers as accepted.
const RECENT_IDS: usize = 4096;

/// A bounded set of event ids, oldest forgotten first.
#[derive(Debug, Default)]
struct RecentIds {
    set: std::collections::HashSet<uuid::Uuid>,
    order: std::collections::VecDeque<uuid::Uuid>,
}

impl RecentIds {
    fn contains(&self, id: &uuid::Uuid) -> bool {
        self.set.contains(id)
    }

    fn insert(&mut self, id: uuid::Uuid) {
        if self.set.insert(id) {
            self.order.push_back(id);
            if self.order.len() > RECENT_IDS
                && let Some(old) = self.order.pop_front()
            {
                self.set.remove(&old);
            }
        }
    }
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("name", &self.shared.name)
            .field("dir", &self.disk.as_ref().map(|d| &d.dir))
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, recovers what earlier runs
    /// left, and starts delivering to `inner`.
    ///
    /// Recovery reads every segment and leaves the undelivered entries where
    /// they are: a start writes nothing (no free space needed, no partial
    /// file, however often it fails). The first write after it starts a new
    /// segment; a segment is removed once every entry in it is delivered
    /// (and every older one removed), as during the run.
    ///
    /// The directory is created with mode 0700 (an existing one is brought
    /// to 0700), and its files with mode 0600: notifications name tenants
    /// and their instances.
    pub fn open(
        dir: impl AsRef<Path>,
        config: QueueConfig,
        inner: impl Notifier + 'static,
    ) -> Result<Spool> {
        let name = dir.as_ref().display().to_string();
        Self::open_dyn(
            Arc::new(RealFs),
            dir.as_ref(),
            name,
            config,
            Arc::new(inner),
        )
    }

    /// [`Spool::open`] whose writer makes its file-system calls through
    /// `fs` (feature `fault-injection`): with a [`SimFs`](crate::fault::SimFs),
    /// a test can see what a power cut would leave.
    ///
    /// # Errors
    ///
    /// As [`Spool::open`].
    #[cfg(feature = "fault-injection")]
    pub fn open_with_fs(
        fs: Arc<dyn SpoolFs>,
        dir: impl AsRef<Path>,
        config: QueueConfig,
        inner: impl Notifier + 'static,
    ) -> Result<Spool> {
        let name = dir.as_ref().display().to_string();
        Self::open_dyn(fs, dir.as_ref(), name, config, Arc::new(inner))
    }

    /// [`Spool::open`], naming the spool `name` in logs.
    pub(crate) fn open_dyn(
        sfs: Arc<dyn SpoolFs>,
        dir: &Path,
        name: String,
        config: QueueConfig,
        inner: Arc<dyn Notifier>,
    ) -> Result<Spool> {
        config.validate()?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::NoRuntime);
        }
        let dir = dir.to_owned();
        // The directories this creates must survive a power cut too: their
        // entries in their parents are synced (up to the first that existed).
        let existing = dir.ancestors().find(|a| a.is_dir()).map(Path::to_owned);
        create_private_dir(&dir).map_err(|source| Error::OpenSpool {
            path: dir.clone(),
            source,
        })?;
        if let Some(existing) = existing
            && existing != dir
        {
            for parent in dir.ancestors().skip(1) {
                // Not fatal: a start must succeed on a failing disk (its
                // writes fail later, and are held and reported then).
                if let Err(e) = sfs.sync_dir(parent) {
                    tracing::warn!(dir = %parent.display(), error = %e,
                        "spool: cannot sync a new queue directory into its parent");
                }
                if parent == existing {
                    break;
                }
            }
        }
        let lock = lock_dir(&dir)?;
        let found = scan(&dir)?;
        let shared = Arc::new(Shared::new(name, config));
        for (path, s) in &found.skipped {
            tracing::warn!(
                file = %path.display(), start = s.range.start, end = s.range.end, reason = ?s.reason,
                "spool: skipped a damaged span while recovering"
            );
        }
        shared
            .counters
            .corrupt_skipped
            .store(found.skipped.len() as u64, Ordering::Relaxed);

        let now = Instant::now();
        let next_seq = found.max_seq.map_or(0, |s| s.saturating_add(1));
        // Recovered entries stay where they are (recovery in place: a start
        // writes nothing, so it needs no free space and leaves no partial
        // file however often it fails).
        let count = found.pending.len();
        let dropped: Vec<u64> = {
            let mut pending = shared.pending();
            for (seq, n) in found.pending {
                let size = n.to_json().len() as u64;
                pending.insert(seq, Arc::new(n), size, now);
            }
            shared.enforce_bounds(&mut pending)
        };
        if count > 0 {
            tracing::info!(destination = %shared.name, entries = count, "spool: recovered undelivered notifications");
        }
        let existing: Vec<u64> = found
            .segments
            .iter()
            .filter_map(|p| p.file_name()?.to_str().and_then(segment_id))
            .collect();
        let writer = Writer::create(
            sfs.clone(),
            dir.clone(),
            writer::Start {
                existing,
                located: found.located,
                dropped,
                next_seq,
            },
            shared.clone(),
        )?;

        let (tx, rx) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("wd-spool-writer".into())
            .spawn(move || {
                // Tells `writer_exits` waiters, however the thread ends
                // (a panic unwinds through it too).
                let _exit = ExitSignal;
                writer.run(rx);
            })
            .map_err(|source| Error::OpenSpool {
                path: dir.clone(),
                source,
            })?;
        let delivery = tokio::spawn(delivery::supervise(shared.clone(), inner, Some(tx.clone())));
        Ok(Spool {
            shared,
            disk: Some(Disk {
                dir,
                tx: Mutex::new(Some(tx)),
                writer: Mutex::new(Some(handle)),
                _lock: lock,
            }),
            next_seq: AtomicU64::new(0),
            recent: Mutex::new(RecentIds::default()),
            delivery: Mutex::new(Some(delivery)),
        })
    }

    /// A queue in memory with the same bounds, retries and supervised
    /// worker as a durable spool, and nothing on disk: what it holds is lost
    /// when the process ends. `notify` accepts at once.
    ///
    /// # Errors
    ///
    /// A bad `config`, or no Tokio runtime.
    pub fn memory(
        name: impl Into<String>,
        config: QueueConfig,
        inner: impl Notifier + 'static,
    ) -> Result<Spool> {
        Self::memory_dyn(name.into(), config, Arc::new(inner))
    }

    pub(crate) fn memory_dyn(
        name: String,
        config: QueueConfig,
        inner: Arc<dyn Notifier>,
    ) -> Result<Spool> {
        config.validate()?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::NoRuntime);
        }
        let shared = Arc::new(Shared::new(name, config));
        let delivery = tokio::spawn(delivery::supervise(shared.clone(), inner, None));
        Ok(Spool {
            shared,
            disk: None,
            next_seq: AtomicU64::new(0),
            recent: Mutex::new(RecentIds::default()),
            delivery: Mutex::new(Some(delivery)),
        })
    }

    /// The counters.
    pub fn stats(&self) -> SpoolStats {
        self.shared.stats()
    }

    /// The last delivery failure, with its cause chain, as the notifier
    /// described it (notifiers redact URLs and never include secrets).
    pub fn last_error(&self) -> Option<String> {
        self.shared.last_error()
    }

    /// The spool's directory; `None` for a spool in memory.
    pub fn dir(&self) -> Option<&Path> {
        self.disk.as_ref().map(|d| d.dir.as_path())
    }

    /// Whether the writer thread has died (it never returns on its own
    /// before [`Spool::shutdown`]); always `false` in memory.
    pub fn writer_died(&self) -> bool {
        self.disk.as_ref().is_some_and(|d| {
            !self.shared.closed.load(Ordering::SeqCst)
                && lock(&d.writer).as_ref().is_none_or(|w| w.is_finished())
        })
    }

    /// Starts no new delivery while `paused` (what is in flight finishes);
    /// entries keep waiting, and `notify` still accepts.
    pub(crate) fn set_paused(&self, paused: bool) {
        self.shared.paused.store(paused, Ordering::SeqCst);
        self.shared.wake.notify_one();
    }

    /// Test hook: makes the delivery worker panic at its next turn, to show
    /// that it is restarted and that nothing else is affected.
    #[doc(hidden)]
    pub fn inject_worker_panic(&self) {
        self.shared.panic_next.store(true, Ordering::SeqCst);
        self.shared.wake.notify_one();
    }

    /// Stops accepting (`notify` then fails permanently), keeps delivering
    /// for up to `grace` or until nothing is pending, then stops the
    /// delivery task and the writer. What is still pending stays on disk
    /// for the next [`Spool::open`]. Returns the final counters.
    pub async fn shutdown(&self, grace: Duration) -> SpoolStats {
        self.shared.closed.store(true, Ordering::SeqCst);
        let until = Instant::now() + grace.min(Duration::from_secs(3600));
        while !self.shared.idle() && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(5).min(grace)).await;
        }
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.wake.notify_one();
        let delivery = lock(&self.delivery).take();
        if let Some(task) = delivery {
            // The task ends by returning; a JoinError means it panicked, and
            // its entries are still on disk.
            let _ = task.await;
        }
        if let Some(disk) = &self.disk {
            let tx = lock(&disk.tx).take();
            if let Some(tx) = tx {
                let (done_tx, done_rx) = oneshot::channel();
                if tx.send(Msg::Stop { done: done_tx }).is_ok() {
                    let _ = done_rx.await;
                }
            }
            let writer = lock(&disk.writer).take();
            if let Some(w) = writer {
                // The writer has answered `Stop`, so this join is immediate.
                let _ = w.join();
            }
        }
        let stats = self.shared.stats();
        tracing::info!(
            destination = %self.shared.name, pending = stats.pending, delivered = stats.delivered,
            "spool: shut down"
        );
        stats
    }

    /// Accepts `n` into a spool in memory.
    fn accept_in_memory(&self, n: &Notification, size: u64) {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        {
            let mut pending = self.shared.pending();
            pending.insert(seq, Arc::new(n.clone()), size, Instant::now());
            self.shared.enforce_bounds(&mut pending);
        }
        self.shared
            .counters
            .accepted
            .fetch_add(1, Ordering::Relaxed);
        self.shared.wake.notify_one();
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        // Without `shutdown`: stop delivering; the writer thread ends when
        // the last sender is gone. Everything accepted is already on disk.
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.wake.notify_one();
        if let Some(task) = lock(&self.delivery).take() {
            task.abort();
        }
        if let Some(disk) = &self.disk {
            lock(&disk.tx).take();
        }
    }
}

#[async_trait]
impl Notifier for Spool {
    async fn notify(&self, n: &Notification) -> Result<(), NotifyError> {
        if self.shared.closed.load(Ordering::SeqCst) {
            return Err(NotifyError::permanent("spool: shut down; not accepting"));
        }
        crate::stages::record(Stage::Queued, n);
        let payload = n.to_json().into_bytes();
        if payload.len() > MAX_PAYLOAD {
            return Err(NotifyError::permanent(format!(
                "spool: notification is {} bytes; allowed: at most {MAX_PAYLOAD}",
                payload.len()
            )));
        }
        if lock(&self.recent).contains(&n.event_id) {
            tracing::debug!(destination = %self.shared.name, event_id = %n.event_id,
                "spool: already accepted; not queued again");
            return Ok(());
        }
        let Some(disk) = &self.disk else {
            self.accept_in_memory(n, payload.len() as u64);
            lock(&self.recent).insert(n.event_id);
            crate::stages::record(Stage::Durable, n);
            return Ok(());
        };
        let (reply, accepted) = oneshot::channel();
        let msg = Msg::Append {
            payload,
            n: Arc::new(n.clone()),
            reply,
        };
        let sent = lock(&disk.tx).as_ref().map(|tx| tx.send(msg));
        if !matches!(sent, Some(Ok(()))) {
            return Err(NotifyError::permanent(
                "spool: writer stopped; not accepting",
            ));
        }
        match accepted.await {
            Ok(Ok(())) => {
                lock(&self.recent).insert(n.event_id);
                crate::stages::record(Stage::Durable, n);
                Ok(())
            }
            Ok(Err(e)) => Err(NotifyError::retryable(format!(
                "spool: cannot write to {}",
                disk.dir.display()
            ))
            .with_source(e)),
            Err(_) => Err(NotifyError::retryable(
                "spool: writer stopped before the entry was durable",
            )),
        }
    }
}
