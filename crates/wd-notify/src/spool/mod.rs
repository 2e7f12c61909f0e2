//! The durable spool: a directory-backed write-ahead log with a delivery
//! task. The format and the recovery rules are in the crate docs.

pub(crate) mod disk;
mod format;
mod writer;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use format::{
    MAX_PAYLOAD, RECORD_HEADER_LEN, RECORD_MAGIC, Record, RecordBody, RecoveryReport,
    SEGMENT_MAGIC, SkipReason, Skipped, recover,
};

use self::disk::{RealFs, SpoolFs, create_private_dir};
use crate::error::{Error, Result};
use crate::model::Notification;
use crate::notifier::{Notifier, NotifyError, notify_catching};
use writer::{Msg, Writer};

/// When the spool's writer forces accepted entries to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SyncMode {
    /// One `fsync` per entry: simple, and as slow as the disk.
    PerEntry,
    /// Group commit: entries that arrive while an `fsync` runs share the
    /// next one. Each `notify` still returns only after its own entry is
    /// on disk.
    #[default]
    GroupCommit,
}

/// [`Spool`] settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolConfig {
    /// When entries are forced to disk. Default [`SyncMode::GroupCommit`].
    pub sync: SyncMode,
    /// The most entries waiting for delivery; beyond it the oldest are
    /// dropped (counted and logged). Default 100 000.
    pub max_entries: usize,
    /// The most bytes (of entries' JSON) waiting for delivery; beyond it the
    /// oldest are dropped. Default 64 MiB.
    pub max_bytes: u64,
    /// A segment file is closed and a new one started past this size.
    /// Default 8 MiB.
    pub segment_bytes: u64,
    /// How many deliveries run at once. Default 8.
    pub concurrency: usize,
    /// The first wait before retrying a retryable failure. Default 1 s.
    pub retry_min_delay: Duration,
    /// The longest wait between retries of one entry. Default 5 min.
    pub retry_max_delay: Duration,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            sync: SyncMode::GroupCommit,
            max_entries: 100_000,
            max_bytes: 64 << 20,
            segment_bytes: 8 << 20,
            concurrency: 8,
            retry_min_delay: Duration::from_secs(1),
            retry_max_delay: Duration::from_secs(300),
        }
    }
}

impl SpoolConfig {
    /// Sets [`SpoolConfig::sync`].
    #[must_use]
    pub fn sync(mut self, mode: SyncMode) -> Self {
        self.sync = mode;
        self
    }

    /// Sets [`SpoolConfig::max_entries`].
    #[must_use]
    pub fn max_entries(mut self, n: usize) -> Self {
        self.max_entries = n;
        self
    }

    /// Sets [`SpoolConfig::max_bytes`].
    #[must_use]
    pub fn max_bytes(mut self, n: u64) -> Self {
        self.max_bytes = n;
        self
    }

    /// Sets [`SpoolConfig::segment_bytes`].
    #[must_use]
    pub fn segment_bytes(mut self, n: u64) -> Self {
        self.segment_bytes = n;
        self
    }

    /// Sets [`SpoolConfig::concurrency`].
    #[must_use]
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }

    /// Sets the retry waits, [`SpoolConfig::retry_min_delay`] and
    /// [`SpoolConfig::retry_max_delay`].
    #[must_use]
    pub fn retry_delays(mut self, min: Duration, max: Duration) -> Self {
        self.retry_min_delay = min;
        self.retry_max_delay = max;
        self
    }

    fn validate(&self) -> Result<()> {
        let check = |ok: bool, name, value: String, allowed| {
            if ok {
                Ok(())
            } else {
                Err(Error::SpoolConfig {
                    name,
                    value,
                    allowed,
                })
            }
        };
        check(
            self.max_entries > 0,
            "max_entries",
            self.max_entries.to_string(),
            "at least 1",
        )?;
        check(
            self.max_bytes >= MAX_PAYLOAD as u64,
            "max_bytes",
            self.max_bytes.to_string(),
            "at least 1048576",
        )?;
        check(
            self.segment_bytes >= 4096,
            "segment_bytes",
            self.segment_bytes.to_string(),
            "at least 4096",
        )?;
        check(
            self.concurrency > 0,
            "concurrency",
            self.concurrency.to_string(),
            "at least 1",
        )?;
        check(
            self.retry_min_delay <= self.retry_max_delay,
            "retry_min_delay",
            format!("{:?}", self.retry_min_delay),
            "at most retry_max_delay",
        )
    }
}

/// A spool's counters. `accepted`, `delivered` and the drops count since
/// the spool was opened; `corrupt_skipped` counts damaged spans found when
/// it was opened; `pending` is the entries waiting now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SpoolStats {
    /// Entries made durable and accepted.
    pub accepted: u64,
    /// Entries delivered (and then acked).
    pub delivered: u64,
    /// Entries dropped, oldest first, because the spool was full.
    pub dropped_full: u64,
    /// Entries dropped because delivery failed permanently.
    pub dropped_permanent: u64,
    /// Damaged spans skipped when the spool was opened.
    pub corrupt_skipped: u64,
    /// Entries waiting for delivery.
    pub pending: u64,
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    delivered: AtomicU64,
    dropped_full: AtomicU64,
    dropped_permanent: AtomicU64,
    corrupt_skipped: AtomicU64,
}

/// An entry waiting for delivery.
struct Entry {
    n: Arc<Notification>,
    size: u64,
    attempts: u32,
    /// When it may be tried next; `None` while a delivery is in flight.
    due: Option<Instant>,
}

/// What is waiting, shared by the writer thread and the delivery task.
#[derive(Default)]
struct Pending {
    entries: BTreeMap<u64, Entry>,
    /// The entries not in flight, by when they may be tried.
    ready: BTreeSet<(Instant, u64)>,
    bytes: u64,
}

impl Pending {
    fn insert(&mut self, seq: u64, n: Arc<Notification>, size: u64, due: Instant) {
        self.bytes += size;
        self.ready.insert((due, seq));
        self.entries.insert(
            seq,
            Entry {
                n,
                size,
                attempts: 0,
                due: Some(due),
            },
        );
    }

    fn remove(&mut self, seq: u64) -> Option<Entry> {
        let e = self.entries.remove(&seq)?;
        self.bytes -= e.size;
        if let Some(due) = e.due {
            self.ready.remove(&(due, seq));
        }
        Some(e)
    }
}

struct Shared {
    config: SpoolConfig,
    pending: Mutex<Pending>,
    counters: Counters,
    /// New entries, or the end of an in-flight delivery.
    wake: Notify,
    /// Tells the delivery task to stop.
    stop: AtomicBool,
    closed: AtomicBool,
}

impl Shared {
    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn idle(&self) -> bool {
        self.pending().entries.is_empty()
    }

    fn stats(&self) -> SpoolStats {
        let c = &self.counters;
        SpoolStats {
            accepted: c.accepted.load(Ordering::Relaxed),
            delivered: c.delivered.load(Ordering::Relaxed),
            dropped_full: c.dropped_full.load(Ordering::Relaxed),
            dropped_permanent: c.dropped_permanent.load(Ordering::Relaxed),
            corrupt_skipped: c.corrupt_skipped.load(Ordering::Relaxed),
            pending: self.pending().entries.len() as u64,
        }
    }

    /// Drops the oldest entries not in flight while the spool is over its
    /// bounds; returns their seqs, to be acked.
    fn enforce_bounds(&self, pending: &mut Pending) -> Vec<u64> {
        let mut dropped = Vec::new();
        let over = |p: &Pending| {
            p.entries.len() > self.config.max_entries || p.bytes > self.config.max_bytes
        };
        while over(pending) {
            // The oldest entry not in flight; in-flight ones are few.
            let Some(seq) = pending
                .entries
                .iter()
                .find(|(_, e)| e.due.is_some())
                .map(|(seq, _)| *seq)
            else {
                break;
            };
            if let Some(e) = pending.remove(seq) {
                let total = self.counters.dropped_full.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::warn!(
                    event_id = %e.n.event_id, instance = %e.n.instance.uuid, dropped_full = total,
                    max_entries = self.config.max_entries, max_bytes = self.config.max_bytes,
                    "spool: full; dropped the oldest undelivered notification"
                );
                dropped.push(seq);
            }
        }
        dropped
    }
}

/// A segment file's name for segment `id`.
fn segment_name(id: u64) -> String {
    format!("seg-{id:016x}.wal")
}

fn segment_id(name: &str) -> Option<u64> {
    let hex = name.strip_prefix("seg-")?.strip_suffix(".wal")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

fn sync_dir(fs: &dyn SpoolFs, dir: &Path) -> Result<()> {
    fs.sync_dir(dir).map_err(|source| Error::SpoolIo {
        path: dir.to_owned(),
        source,
    })
}

/// What a scan of a spool directory found.
#[derive(Debug, Default)]
pub struct ScanReport {
    /// The entries still to deliver, oldest first, with their seqs.
    pub pending: Vec<(u64, Notification)>,
    /// Damaged spans, per segment file.
    pub skipped: Vec<(PathBuf, Skipped)>,
    /// The segment files found, oldest first.
    pub segments: Vec<PathBuf>,
    /// The highest seq seen in any record.
    pub max_seq: Option<u64>,
}

/// Reads a spool directory without changing it: what a spool opened on it
/// would deliver. A missing directory is an empty spool.
pub fn scan(dir: impl AsRef<Path>) -> Result<ScanReport> {
    let dir = dir.as_ref();
    let mut report = ScanReport::default();
    let listing = match fs::read_dir(dir) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(report),
        Err(source) => {
            return Err(Error::OpenSpool {
                path: dir.to_owned(),
                source,
            });
        }
    };
    let mut ids = Vec::new();
    for entry in listing {
        let entry = entry.map_err(|source| Error::OpenSpool {
            path: dir.to_owned(),
            source,
        })?;
        if let Some(id) = entry.file_name().to_str().and_then(segment_id) {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    let mut entries: BTreeMap<u64, Notification> = BTreeMap::new();
    let mut acked = BTreeSet::new();
    for id in ids {
        let path = dir.join(segment_name(id));
        let bytes = fs::read(&path).map_err(|source| Error::SpoolIo {
            path: path.clone(),
            source,
        })?;
        let (records, rec) = recover(&bytes);
        for s in rec.skipped {
            report.skipped.push((path.clone(), s));
        }
        for r in records {
            report.max_seq = report.max_seq.max(Some(r.seq));
            match r.body {
                // The same seq twice is a copy made by compaction: same content.
                RecordBody::Entry(n) => {
                    entries.entry(r.seq).or_insert(*n);
                }
                RecordBody::Ack => {
                    acked.insert(r.seq);
                }
            }
        }
        report.segments.push(path);
    }
    report.pending = entries
        .into_iter()
        .filter(|(seq, _)| !acked.contains(seq))
        .collect();
    Ok(report)
}

/// A durable, bounded, at-least-once spool in front of a notifier.
///
/// `notify` returns `Ok` only once the notification is on disk and
/// `fsync`ed (see [`SyncMode`]). A background task delivers entries to the
/// inner notifier, oldest first, [`SpoolConfig::concurrency`] at a time; an
/// entry is acked (removed) only after its delivery succeeds. Retryable
/// failures are tried again with capped exponential backoff and jitter
/// (honouring the backend's retry-after); permanent ones are logged and
/// dropped (`dropped_permanent`). When the spool is full, the oldest
/// entries are dropped with a warning (`dropped_full`): never silently.
///
/// After a crash, [`Spool::open`] delivers what was not acked, with the
/// same event ids, so consumers may see a notification twice but never
/// lose one that was accepted.
///
/// One process at a time may open a directory. `Spool::open` must be called
/// inside a Tokio runtime (it starts the delivery task; outside one it fails
/// with [`Error::NoRuntime`]); the writer is a dedicated thread.
pub struct Spool {
    shared: Arc<Shared>,
    dir: PathBuf,
    tx: Mutex<Option<mpsc::Sender<Msg>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    delivery: Mutex<Option<JoinHandle<()>>>,
    /// Held for the spool's lifetime: an advisory lock on `dir/LOCK`, which
    /// the kernel releases when the process dies, even by SIGKILL.
    _lock: fs::File,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("dir", &self.dir)
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Takes the exclusive advisory lock on `dir/LOCK`.
fn lock_dir(dir: &Path) -> Result<fs::File> {
    let path = dir.join("LOCK");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(self::disk::FILE_MODE)
        .open(&path)
        .map_err(|source| Error::OpenSpool {
            path: path.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(Error::SpoolLocked {
            dir: dir.to_owned(),
            lock: path,
        }),
        Err(fs::TryLockError::Error(source)) => Err(Error::OpenSpool { path, source }),
    }
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, recovers what earlier runs
    /// left, and starts delivering to `inner`.
    ///
    /// Recovery rewrites every undelivered entry, with its seq and event id,
    /// into one new segment, `fsync`s it and the directory, and only then
    /// removes the old segments, so a crash during recovery loses nothing.
    ///
    /// The directory is created with mode 0700 (an existing one is brought
    /// to 0700), and its files with mode 0600: notifications name tenants
    /// and their instances.
    pub fn open(
        dir: impl AsRef<Path>,
        config: SpoolConfig,
        inner: impl Notifier + 'static,
    ) -> Result<Spool> {
        Self::open_on(Arc::new(RealFs), dir.as_ref(), config, inner)
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
        config: SpoolConfig,
        inner: impl Notifier + 'static,
    ) -> Result<Spool> {
        Self::open_on(fs, dir.as_ref(), config, inner)
    }

    fn open_on(
        sfs: Arc<dyn SpoolFs>,
        dir: &Path,
        config: SpoolConfig,
        inner: impl Notifier + 'static,
    ) -> Result<Spool> {
        config.validate()?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::NoRuntime);
        }
        let dir = dir.to_owned();
        create_private_dir(&dir).map_err(|source| Error::OpenSpool {
            path: dir.clone(),
            source,
        })?;
        let lock = lock_dir(&dir)?;
        let found = scan(&dir)?;
        let shared = Arc::new(Shared {
            config: config.clone(),
            pending: Mutex::new(Pending::default()),
            counters: Counters::default(),
            wake: Notify::new(),
            stop: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        });
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
        let mut recovered = Vec::with_capacity(found.pending.len());
        {
            let mut pending = shared.pending();
            for (seq, n) in found.pending {
                let payload = n.to_json().into_bytes();
                pending.insert(seq, Arc::new(n), payload.len() as u64, now);
                recovered.push((seq, payload));
            }
            let dropped: BTreeSet<u64> = shared.enforce_bounds(&mut pending).into_iter().collect();
            recovered.retain(|(seq, _)| !dropped.contains(seq));
        }
        if !recovered.is_empty() {
            tracing::info!(dir = %dir.display(), entries = recovered.len(), "spool: recovered undelivered notifications");
        }

        let next_id = found
            .segments
            .last()
            .and_then(|p| p.file_name()?.to_str().and_then(segment_id))
            .map_or(0, |id| id + 1);
        let next_seq = found.max_seq.map_or(0, |s| s + 1);
        let writer = Writer::create(
            sfs.clone(),
            dir.clone(),
            next_id,
            next_seq,
            shared.clone(),
            &recovered,
        )?;
        for old in &found.segments {
            sfs.remove_file(old).map_err(|source| Error::SpoolIo {
                path: old.clone(),
                source,
            })?;
        }
        if !found.segments.is_empty() {
            sync_dir(&*sfs, &dir)?;
        }

        let (tx, rx) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("wd-spool-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|source| Error::OpenSpool {
                path: dir.clone(),
                source,
            })?;
        let delivery = tokio::spawn(deliver(shared.clone(), Arc::new(inner), tx.clone()));
        Ok(Spool {
            shared,
            dir,
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(handle)),
            delivery: Mutex::new(Some(delivery)),
            _lock: lock,
        })
    }

    /// The counters.
    pub fn stats(&self) -> SpoolStats {
        self.shared.stats()
    }

    /// The spool's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stops accepting (`notify` then fails permanently), keeps delivering
    /// for up to `grace` or until nothing is pending, then stops the
    /// delivery task and the writer. What is still pending stays on disk
    /// for the next [`Spool::open`]. Returns the final counters.
    pub async fn shutdown(&self, grace: Duration) -> SpoolStats {
        self.shared.closed.store(true, Ordering::SeqCst);
        let until = Instant::now() + grace;
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
        let tx = lock(&self.tx).take();
        if let Some(tx) = tx {
            let (done_tx, done_rx) = oneshot::channel();
            if tx.send(Msg::Stop { done: done_tx }).is_ok() {
                let _ = done_rx.await;
            }
        }
        let writer = lock(&self.writer).take();
        if let Some(w) = writer {
            // The writer has answered `Stop`, so this join is immediate.
            let _ = w.join();
        }
        let stats = self.shared.stats();
        tracing::info!(
            dir = %self.dir.display(), pending = stats.pending, delivered = stats.delivered,
            "spool: shut down"
        );
        stats
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        // Without `shutdown`: stop delivering; the writer thread ends when
        // the last sender is gone. Everything accepted is already on disk.
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(task) = lock(&self.delivery).take() {
            task.abort();
        }
        lock(&self.tx).take();
    }
}

#[async_trait]
impl Notifier for Spool {
    async fn notify(&self, n: &Notification) -> Result<(), NotifyError> {
        if self.shared.closed.load(Ordering::SeqCst) {
            return Err(NotifyError::permanent("spool: shut down; not accepting"));
        }
        let payload = n.to_json().into_bytes();
        if payload.len() > MAX_PAYLOAD {
            return Err(NotifyError::permanent(format!(
                "spool: notification is {} bytes; allowed: at most {MAX_PAYLOAD}",
                payload.len()
            )));
        }
        let (reply, accepted) = oneshot::channel();
        let msg = Msg::Append {
            payload,
            n: Arc::new(n.clone()),
            reply,
        };
        let sent = lock(&self.tx).as_ref().map(|tx| tx.send(msg));
        if !matches!(sent, Some(Ok(()))) {
            return Err(NotifyError::permanent(
                "spool: writer stopped; not accepting",
            ));
        }
        match accepted.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(NotifyError::retryable(format!(
                "spool: cannot write to {}",
                self.dir.display()
            ))
            .with_source(e)),
            Err(_) => Err(NotifyError::retryable(
                "spool: writer stopped before the entry was durable",
            )),
        }
    }
}

/// The wait before retry `attempt` (from 1): capped exponential backoff with
/// up to 100 % jitter, and at least the backend's retry-after.
fn retry_delay(config: &SpoolConfig, attempt: u32, retry_after: Option<Duration>) -> Duration {
    let exp = config
        .retry_min_delay
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let jittered = exp
        .mul_f64(1.0 + fastrand::f64())
        .min(config.retry_max_delay);
    retry_after.map_or(jittered, |ra| ra.max(jittered))
}

/// The delivery task.
async fn deliver(shared: Arc<Shared>, inner: Arc<dyn Notifier>, tx: mpsc::Sender<Msg>) {
    let mut in_flight = FuturesUnordered::new();
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let now = Instant::now();
        let mut next_due = None;
        {
            let mut pending = shared.pending();
            while in_flight.len() < shared.config.concurrency {
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
                let inner = inner.clone();
                in_flight.push(async move {
                    let result = notify_catching(&*inner, &n).await;
                    (seq, n, result)
                });
            }
        }
        let can_start = in_flight.len() < shared.config.concurrency;
        tokio::select! {
            Some((seq, n, result)) = in_flight.next(), if !in_flight.is_empty() => {
                finish(&shared, &tx, seq, &n, result);
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

fn finish(
    shared: &Shared,
    tx: &mpsc::Sender<Msg>,
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
            tracing::debug!(event_id = %n.event_id, "spool: delivered");
            let _ = tx.send(Msg::Ack { seq });
        }
        Err(e) if !e.is_retryable() => {
            if pending.remove(seq).is_some() {
                shared
                    .counters
                    .dropped_permanent
                    .fetch_add(1, Ordering::Relaxed);
            }
            drop(pending);
            tracing::error!(
                event_id = %n.event_id, instance = %n.instance.uuid, error = %e,
                "spool: delivery failed permanently; dropped the notification"
            );
            let _ = tx.send(Msg::Ack { seq });
        }
        Err(e) => {
            let config = &shared.config;
            let Some(entry) = pending.entries.get_mut(&seq) else {
                return;
            };
            entry.attempts = entry.attempts.saturating_add(1);
            let wait = retry_delay(config, entry.attempts, e.retry_after());
            let due = Instant::now() + wait;
            entry.due = Some(due);
            let attempts = entry.attempts;
            pending.ready.insert((due, seq));
            drop(pending);
            tracing::warn!(
                event_id = %n.event_id, attempts, ?wait, error = %e,
                "spool: delivery failed; will retry"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notifier::MockNotifier;
    use crate::test_support::firing;
    use std::collections::HashSet;
    use uuid::Uuid;

    type Log = Arc<Mutex<Vec<Uuid>>>;

    /// A mock that delivers, recording event ids, except that `answer`
    /// may fail a call (given the call index and the notification).
    fn backend(
        answer: impl Fn(usize, &Notification) -> Result<(), NotifyError> + Send + 'static,
    ) -> (MockNotifier, Log) {
        let log: Log = Arc::default();
        let seen = log.clone();
        let mut call = 0;
        let mut m = MockNotifier::new();
        m.expect_notify().returning(move |n| {
            call += 1;
            answer(call - 1, n)?;
            seen.lock().unwrap().push(n.event_id);
            Ok(())
        });
        (m, log)
    }

    fn quick() -> SpoolConfig {
        SpoolConfig::default().retry_delays(Duration::from_millis(5), Duration::from_millis(20))
    }

    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        let t0 = std::time::Instant::now();
        while !done() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn ids(ns: &[Notification]) -> Vec<Uuid> {
        ns.iter().map(|n| n.event_id).collect()
    }

    #[tokio::test]
    async fn a_spool_directory_has_one_owner_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let (m, _) = backend(|_, _| Ok(()));
        let first = Spool::open(dir.path(), quick(), m).unwrap();
        let (m2, _) = backend(|_, _| Ok(()));
        let err = Spool::open(dir.path(), quick(), m2).unwrap_err();
        assert!(matches!(err, Error::SpoolLocked { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!(
                "spool directory {} is in use by another process (lock file {})",
                dir.path().display(),
                dir.path().join("LOCK").display()
            )
        );
        first.shutdown(Duration::from_secs(1)).await;
        drop(first);
        let (m3, _) = backend(|_, _| Ok(()));
        Spool::open(dir.path(), quick(), m3).expect("the lock is released with the spool");
    }

    #[tokio::test]
    async fn delivers_acks_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [SyncMode::PerEntry, SyncMode::GroupCommit] {
            let (m, log) = backend(|_, _| Ok(()));
            let spool = Spool::open(dir.path(), quick().sync(mode), m).unwrap();
            let ns: Vec<_> = (0..20).map(firing).collect();
            for n in &ns {
                spool.notify(n).await.unwrap();
            }
            until("delivery", || spool.stats().delivered == 20).await;
            let stats = spool.shutdown(Duration::from_secs(1)).await;
            assert_eq!((stats.accepted, stats.pending), (20, 0));
            let mut got = log.lock().unwrap().clone();
            got.sort();
            let mut want = ids(&ns);
            want.sort();
            assert_eq!(got, want);
            assert!(scan(dir.path()).unwrap().pending.is_empty());
            assert!(spool.notify(&ns[0]).await.is_err(), "closed after shutdown");
        }
    }

    #[tokio::test]
    async fn retries_retryable_failures_and_drops_permanent_ones() {
        let dir = tempfile::tempdir().unwrap();
        let bad = firing(9);
        let bad_id = bad.event_id;
        let (m, log) = backend(move |call, n| {
            if n.event_id == bad_id {
                Err(NotifyError::permanent("rejected"))
            } else if call < 4 {
                Err(NotifyError::retryable("down"))
            } else {
                Ok(())
            }
        });
        let spool = Spool::open(dir.path(), quick().concurrency(1), m).unwrap();
        let good = firing(1);
        spool.notify(&good).await.unwrap();
        spool.notify(&bad).await.unwrap();
        until("delivery", || {
            let s = spool.stats();
            s.delivered == 1 && s.dropped_permanent == 1
        })
        .await;
        assert_eq!(*log.lock().unwrap(), vec![good.event_id]);
        assert_eq!(spool.stats().pending, 0);
        spool.shutdown(Duration::ZERO).await;
        assert!(scan(dir.path()).unwrap().pending.is_empty());
    }

    #[tokio::test]
    async fn undelivered_entries_survive_a_restart_with_their_event_ids() {
        let dir = tempfile::tempdir().unwrap();
        let ns: Vec<_> = (0..5).map(firing).collect();
        {
            let (m, _) = backend(|_, _| Err(NotifyError::retryable("down")));
            let spool = Spool::open(dir.path(), quick(), m).unwrap();
            for n in &ns {
                spool.notify(n).await.unwrap();
            }
            let stats = spool.shutdown(Duration::from_millis(20)).await;
            assert_eq!(stats.pending, 5);
        }
        let found = scan(dir.path()).unwrap();
        assert_eq!(
            found
                .pending
                .iter()
                .map(|(_, n)| n.clone())
                .collect::<Vec<_>>(),
            ns
        );
        let (m, log) = backend(|_, _| Ok(()));
        let spool = Spool::open(dir.path(), quick(), m).unwrap();
        until("redelivery", || spool.stats().delivered == 5).await;
        let got: HashSet<Uuid> = log.lock().unwrap().iter().copied().collect();
        assert_eq!(got, ids(&ns).into_iter().collect());
        // New entries get seqs above the recovered ones.
        spool.notify(&firing(7)).await.unwrap();
        spool.shutdown(Duration::from_secs(1)).await;
        assert!(scan(dir.path()).unwrap().pending.is_empty());
    }

    #[tokio::test]
    async fn a_full_spool_drops_the_oldest_and_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        let (m, _) = backend(|_, _| {
            Err(NotifyError::retryable("down").with_retry_after(Duration::from_secs(60)))
        });
        let spool = Spool::open(dir.path(), quick().max_entries(3).concurrency(1), m).unwrap();
        let ns: Vec<_> = (0..6).map(firing).collect();
        for n in &ns {
            spool.notify(n).await.unwrap();
        }
        let stats = spool.shutdown(Duration::ZERO).await;
        assert_eq!((stats.accepted, stats.pending), (6, 3));
        // The one in flight (the oldest) may be spared; the rest go oldest first.
        assert_eq!(stats.dropped_full, 3);
        let kept: Vec<Uuid> = scan(dir.path())
            .unwrap()
            .pending
            .iter()
            .map(|(_, n)| n.event_id)
            .collect();
        assert_eq!(kept.len(), 3);
        assert_eq!(kept[1..], ids(&ns)[4..]);
    }

    #[tokio::test]
    async fn damage_is_skipped_and_counted_and_the_rest_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let ns: Vec<_> = (0..4).map(firing).collect();
        {
            let (m, _) = backend(|_, _| Err(NotifyError::retryable("down")));
            let spool = Spool::open(dir.path(), quick(), m).unwrap();
            for n in &ns {
                spool.notify(n).await.unwrap();
            }
            spool.shutdown(Duration::ZERO).await;
        }
        let found = scan(dir.path()).unwrap();
        let seg = found.segments.last().unwrap().clone();
        let mut bytes = fs::read(&seg).unwrap();
        let (records, _) = recover(&bytes);
        let victim = records
            .iter()
            .find(|r| matches!(&r.body, RecordBody::Entry(n) if n.event_id == ns[1].event_id))
            .unwrap();
        bytes[victim.offset + RECORD_HEADER_LEN + 10] ^= 0xff;
        bytes.extend_from_slice(&RECORD_MAGIC);
        bytes.extend_from_slice(&[7, 0, 0]);
        fs::write(&seg, &bytes).unwrap();

        let (m, log) = backend(|_, _| Ok(()));
        let spool = Spool::open(dir.path(), quick(), m).unwrap();
        assert_eq!(spool.stats().corrupt_skipped, 2);
        until("delivery", || spool.stats().delivered == 3).await;
        let got: HashSet<Uuid> = log.lock().unwrap().iter().copied().collect();
        let want: HashSet<Uuid> = [0, 2, 3].iter().map(|i| ns[*i].event_id).collect();
        assert_eq!(got, want);
        spool.shutdown(Duration::ZERO).await;
        // Recovery rewrote the survivors; the damage is gone from disk.
        assert!(scan(dir.path()).unwrap().skipped.is_empty());
    }

    #[tokio::test]
    async fn segments_roll_over_and_a_stuck_entry_does_not_pin_them() {
        let dir = tempfile::tempdir().unwrap();
        let stuck = firing(0);
        let stuck_id = stuck.event_id;
        let (m, _) = backend(move |_, n| {
            if n.event_id == stuck_id {
                Err(NotifyError::retryable("down").with_retry_after(Duration::from_secs(60)))
            } else {
                Ok(())
            }
        });
        let spool = Spool::open(dir.path(), quick().segment_bytes(4096), m).unwrap();
        spool.notify(&stuck).await.unwrap();
        for i in 1..200 {
            spool.notify(&firing(i)).await.unwrap();
            until("delivery", || spool.stats().delivered == i as u64).await;
        }
        let found = scan(dir.path()).unwrap();
        // 200 entries of ~450 bytes fill ~25 segments; compaction and removal
        // keep only the last few.
        assert!(found.segments.len() <= 3, "{:?}", found.segments);
        assert_eq!(found.pending.len(), 1);
        assert_eq!(found.pending[0].1.event_id, stuck_id);
        spool.shutdown(Duration::ZERO).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn group_commit_serves_concurrent_callers() {
        let dir = tempfile::tempdir().unwrap();
        let (m, _) = backend(|_, _| Ok(()));
        let spool = Arc::new(Spool::open(dir.path(), quick(), m).unwrap());
        let tasks: Vec<_> = (0..32)
            .map(|i| {
                let spool = spool.clone();
                tokio::spawn(async move {
                    for j in 0..10 {
                        spool.notify(&firing(i * 100 + j)).await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        until("delivery", || spool.stats().delivered == 320).await;
        assert_eq!(spool.shutdown(Duration::ZERO).await.accepted, 320);
    }

    #[test]
    fn retry_delays_grow_capped_and_honour_retry_after() {
        let config = quick(); // 5 ms .. 20 ms
        let check = |attempt: u32, retry_after: Option<u64>, min: u64, max: u64| {
            for _ in 0..20 {
                let d = retry_delay(&config, attempt, retry_after.map(Duration::from_millis));
                let ms = d.as_millis() as u64;
                assert!(
                    (min..=max).contains(&ms),
                    "attempt {attempt}: {d:?} not in {min}..={max} ms"
                );
            }
        };
        check(1, None, 5, 10);
        check(2, None, 10, 20);
        check(9, None, 20, 20);
        check(40, None, 20, 20);
        check(1, Some(500), 500, 500);
    }

    #[tokio::test]
    async fn an_oversized_notification_is_refused_permanently() {
        let dir = tempfile::tempdir().unwrap();
        let (m, _) = backend(|_, _| Ok(()));
        let spool = Spool::open(dir.path(), quick(), m).unwrap();
        let mut n = firing(1);
        n.instance.name = Some("x".repeat(MAX_PAYLOAD));
        let err = spool.notify(&n).await.unwrap_err();
        assert!(
            !err.is_retryable() && err.to_string().contains("at most 1048576"),
            "{err}"
        );
        assert_eq!(spool.shutdown(Duration::ZERO).await.accepted, 0);
    }

    #[tokio::test]
    async fn a_panicking_backend_is_retried_not_fatal() {
        // Not a mock: mockall poisons its own state when a closure panics.
        #[derive(Default)]
        struct PanicsOnce(std::sync::atomic::AtomicUsize);
        #[async_trait]
        impl Notifier for PanicsOnce {
            async fn notify(&self, _: &Notification) -> Result<(), NotifyError> {
                assert!(
                    self.0.fetch_add(1, Ordering::SeqCst) > 0,
                    "backend bug on the first call"
                );
                Ok(())
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), quick(), PanicsOnce::default()).unwrap();
        spool.notify(&firing(1)).await.unwrap();
        until("delivery after the panic", || spool.stats().delivered == 1).await;
        spool.shutdown(Duration::ZERO).await;
    }

    #[test]
    fn open_outside_a_runtime_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = Spool::open(dir.path(), quick(), crate::LogNotifier).unwrap_err();
        assert!(matches!(err, Error::NoRuntime), "{err}");
    }

    #[test]
    fn config_is_validated() {
        let check = |config: SpoolConfig, msg: &str| {
            let err = config.validate().unwrap_err();
            assert_eq!(err.to_string(), msg);
        };
        check(
            SpoolConfig::default().max_entries(0),
            "spool setting max_entries=0 is invalid; allowed: at least 1",
        );
        check(
            SpoolConfig::default().segment_bytes(10),
            "spool setting segment_bytes=10 is invalid; allowed: at least 4096",
        );
        check(
            SpoolConfig::default().concurrency(0),
            "spool setting concurrency=0 is invalid; allowed: at least 1",
        );
        assert!(SpoolConfig::default().validate().is_ok());
    }
}
