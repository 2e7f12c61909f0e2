//! The episode ledger: which watchdog pauses the owner was already told about,
//! kept on disk so that it survives an agent restart.
//!
//! `wd-events` keeps one event per pause episode while the listener runs. A
//! restarted agent starts with no memory, and its catch-up finds every guest
//! that is still paused by its watchdog. Without a ledger each restart would
//! announce those pauses again, with new event ids. The ledger records, per
//! domain *run*, the event id of its open pause episode and whether the
//! delivery layer has accepted it:
//!
//! 1. Before a pause is handed to the delivery layer, its entry is written as
//!    `accepted: false`, with its event id and the domain's run.
//! 2. Once the delivery layer has accepted that very notification (with a
//!    spool: once its event id is on disk), the entry becomes
//!    `accepted: true`. The delivery layer never folds a pause into another
//!    notification (see `wd_notify::Coalesce`), so acceptance always means
//!    the pause's own event id was made durable.
//! 3. A pause found again by a catch-up (after a reconnect or a restart) of
//!    the **same run** whose entry is accepted is not announced again; one
//!    whose entry is not accepted is handed over again **with the same event
//!    id**, so a crash between 1 and 2 gives at worst a duplicate that
//!    consumers deduplicate on the id. A pause of **another run** is a new
//!    episode: the domain was started again (a hard reboot is a destroy and
//!    a start), so its old entry no longer applies.
//! 4. The entry is removed when the domain is resumed, started, stopped or
//!    undefined, or when a catch-up finds it no longer paused by its
//!    watchdog.
//!
//! A *run* is libvirt's runtime id of the domain (`virDomainGetID`), which
//! changes on every start. Runtime ids start again from 1 when the host
//! boots, so the ledger also records the host's boot id
//! (`/proc/sys/kernel/random/boot_id`): entries written before the host last
//! booted are dropped when the ledger is opened (every guest was stopped
//! since).
//!
//! # Written beside the queues, not before them
//!
//! The file is a log of JSON lines (see `log.rs`): a change is one line
//! appended with one `write(2)` ([`Ledger::write`]), and its `fdatasync`
//! ([`LogSync::run`]) is a separate step that the pipeline runs on a
//! blocking thread **at the same time as** the queues' own fsyncs, so a
//! pause waits for one fsync, not for the ledger's then the queue's. Step 1
//! above is the `write(2)`, done on the pipeline's task before the router is
//! given the notification; the pipeline counts the hand-over done (and
//! stages step 2) only once both the queues and the ledger's sync have
//! finished. Why that keeps every promise, crash by crash:
//!
//! - **The agent dies (`kill -9`, a panic, the OOM killer, a restart by
//!   systemd) on the same host boot.** What `write(2)` returned is in the
//!   kernel's page cache, which the restarted agent reads whether or not it
//!   reached the disk. Since the ledger's line is written before any queue
//!   is handed the notification, a queue never holds a pause that the
//!   restarted agent's ledger lacks: its catch-up finds the entry (step 3)
//!   and announces nothing new, or, if the entry was not yet accepted,
//!   announces it again with the same event id (receivers deduplicate).
//!   The window "queue durable, ledger not" does not exist on one boot.
//! - **The host loses power or its kernel crashes** before the ledger's sync
//!   finished, while a queue's entry was synced: the ledger's last lines
//!   may be lost or torn. But the host then boots again, every guest with
//!   it, and the boot id in the header makes the restarted agent drop every
//!   entry of the earlier boot anyway: no catch-up can find that run of the
//!   guest paused again, so the queue's entry is delivered (with its id)
//!   and nothing is announced twice. A torn last line is ignored, and the
//!   next write rewrites the file first.
//! - **The ledger's sync fails** (`EIO`, a full disk showing only at the
//!   sync): the failure is reported like a failed write
//!   (`wd_write_failures_total{target="ledger"}`), and the next write
//!   rewrites the whole file (temporary file, `fsync`, `rename`, directory
//!   `fsync`) from memory before appending again, since pages whose
//!   writeback failed may be lost.
//!
//! So the sync is not what makes the ledger reliable across an agent crash;
//! it keeps the file whole on the disk and makes a failing disk visible.
//!
//! A compaction rewrites the file whole, the same atomic way, so it is never
//! half-written: at the first write after the agent starts (when the file is
//! missing, of an earlier format or boot, or torn; the pipeline does it once
//! its first catch-up is done, off a firing's path) and when the log has
//! grown to many times its open episodes. A missing file is an empty
//! ledger; an unreadable one is logged, set aside as `*.corrupt`, and
//! replaced by an empty ledger (the worst case is a duplicate
//! announcement).
//!
//! Format version 3 (this one) is the log. Versions 1 and 2 were one JSON
//! document rewritten whole; they still load. A version 1 file (before runs
//! were recorded) has entries without a run, which match whatever run a
//! catch-up finds (as version 1 did), and learn that run the first time
//! they match.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;
use wd_notify::{RealFs, SpoolFs};

use crate::error::{Error, Result};

mod log;

/// Where Linux publishes the id of the current boot.
const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

/// A log with more records than this, and more than
/// [`COMPACT_RATIO`] times its open episodes, is compacted.
const COMPACT_AFTER: usize = 4096;

/// See [`COMPACT_AFTER`].
const COMPACT_RATIO: usize = 4;

/// One open pause episode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The event id its notification carries.
    pub event_id: Uuid,
    /// Whether the delivery layer accepted the notification.
    pub accepted: bool,
    /// The run of the domain that paused (libvirt's runtime id); `None` when
    /// unknown, as in ledgers written before runs were recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<u32>,
}

impl Entry {
    /// Whether this entry belongs to run `run` of its domain. An unknown run
    /// on either side cannot prove a restart, so it matches.
    pub fn is_run(&self, run: Option<u32>) -> bool {
        match (self.run_id, run) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        }
    }
}

/// The ledger, in memory and (optionally) on disk.
#[derive(Debug, Default)]
pub struct Ledger {
    path: Option<PathBuf>,
    boot_id: Option<String>,
    entries: BTreeMap<Uuid, Entry>,
    /// Changes staged since the log was last written: an entry, or `None`
    /// for its end.
    pending: BTreeMap<Uuid, Option<Entry>>,
    /// The log, open for appending (`None` until the file is rewritten).
    log: Option<Arc<File>>,
    /// Records in the log after its header.
    records: usize,
    /// The file must be rewritten whole before anything is appended (it is
    /// missing, of an earlier format or boot, or torn).
    rewrite: bool,
    /// A write or sync failed: the file must be rewritten whole from
    /// memory, even with nothing new to write.
    resync: bool,
    /// The file-system calls of its rewrites (`None`: the real one).
    fs: Option<Arc<dyn SpoolFs>>,
    /// Called before each sync of the log (tests).
    #[cfg(test)]
    sync_hook: Option<Hook>,
}

/// A function a test runs before each sync of the log.
#[cfg(test)]
#[derive(Clone)]
pub(crate) struct Hook(pub(crate) Arc<dyn Fn() + Send + Sync>);

#[cfg(test)]
impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hook")
    }
}

/// The `fdatasync` of what [`Ledger::write`] appended, to run anywhere
/// (the pipeline runs it on a blocking thread beside the queues' syncs).
#[must_use = "the appended records are not durable until it runs"]
pub struct LogSync {
    file: Arc<File>,
    path: PathBuf,
    #[cfg(test)]
    hook: Option<Hook>,
}

impl std::fmt::Debug for LogSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogSync")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl LogSync {
    /// Makes the appended records durable. After a failure call
    /// [`Ledger::sync_failed`].
    ///
    /// # Errors
    ///
    /// The sync failed (`EIO`, `ENOSPC`, ...).
    pub fn run(self) -> Result<()> {
        #[cfg(test)]
        if let Some(hook) = &self.hook {
            (hook.0)();
        }
        self.file.sync_data().map_err(|source| Error::Ledger {
            path: self.path,
            source,
        })
    }
}

/// The id of the host's current boot, if the system publishes one.
fn current_boot_id() -> Option<String> {
    let id = fs::read_to_string(BOOT_ID_PATH).ok()?;
    let id = id.trim();
    (!id.is_empty()).then(|| id.to_owned())
}

impl Ledger {
    /// A ledger that lives only in memory (an embedding driver with its own
    /// persistence, or tests).
    pub fn in_memory() -> Self {
        Self::default()
    }

    /// Opens (or creates) the ledger at `path`. Opening writes nothing.
    ///
    /// # Errors
    ///
    /// The file exists but cannot be read, or it is corrupt and cannot be
    /// moved aside.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self> {
        Self::open_on_boot(path.into(), current_boot_id())
    }

    /// [`Ledger::open`] on the host boot `boot_id` (`None`: unknown, keep
    /// every entry).
    fn open_on_boot(path: PathBuf, boot_id: Option<String>) -> Result<Self> {
        let loaded = match fs::read(&path) {
            Ok(bytes) => match log::parse(&bytes) {
                Ok(f) => match (&f.boot_id, &boot_id) {
                    (Some(then), Some(now)) if then != now => {
                        tracing::info!(path = %path.display(), episodes = f.episodes.len(),
                            "episode ledger is from an earlier boot of this host; its episodes have ended");
                        None
                    }
                    _ => Some(f),
                },
                Err(e) => {
                    let aside = path.with_extension("corrupt");
                    tracing::warn!(path = %path.display(), error = %e, aside = %aside.display(),
                        "episode ledger is unreadable; starting empty (paused guests may be announced again)");
                    fs::rename(&path, &aside).map_err(|source| Error::Ledger {
                        path: path.clone(),
                        source,
                    })?;
                    None
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => return Err(Error::Ledger { path, source }),
        };
        let mut ledger = Ledger {
            path: Some(path),
            boot_id,
            rewrite: true,
            ..Ledger::default()
        };
        if let Some(f) = loaded {
            ledger.rewrite = f.version != log::VERSION || f.torn || f.boot_id != ledger.boot_id;
            ledger.entries = f.episodes;
            ledger.records = f.records;
        }
        if !ledger.rewrite {
            // Appending to it later; opening it so writes nothing.
            match ledger
                .path
                .as_deref()
                .map(|p| File::options().append(true).open(p))
            {
                Some(Ok(file)) => ledger.log = Some(Arc::new(file)),
                _ => ledger.rewrite = true,
            }
        }
        Ok(ledger)
    }

    /// Makes its rewrites through `fs` (a power-cut model, a failing disk).
    #[cfg(test)]
    pub(crate) fn with_fs(mut self, fs: Arc<dyn SpoolFs>) -> Self {
        self.fs = Some(fs);
        self
    }

    /// Calls `hook` before each sync of the log.
    #[cfg(test)]
    pub(crate) fn with_sync_hook(mut self, hook: Arc<dyn Fn() + Send + Sync>) -> Self {
        self.sync_hook = Some(Hook(hook));
        self
    }

    /// The open episode of `domain`, whatever its run, if any.
    pub fn get(&self, domain: &Uuid) -> Option<Entry> {
        self.entries.get(domain).copied()
    }

    /// The open episode of run `run` of `domain`, if any: an entry of another
    /// run of the domain is an episode that ended (see [`Entry::is_run`]).
    pub fn episode(&self, domain: &Uuid, run: Option<u32>) -> Option<Entry> {
        self.get(domain).filter(|e| e.is_run(run))
    }

    /// The domains with an open episode.
    pub fn domains(&self) -> impl Iterator<Item = &Uuid> {
        self.entries.keys()
    }

    /// Records `entry` for `domain` (replacing any entry of an earlier run)
    /// and persists.
    ///
    /// # Errors
    ///
    /// The file could not be written; the in-memory state is updated anyway.
    pub fn put(&mut self, domain: Uuid, entry: Entry) -> Result<()> {
        self.stage(domain, entry);
        self.flush()
    }

    /// Records `entry` for `domain` in memory only; the next
    /// [`Ledger::write`] or [`Ledger::flush`] persists it. Many entries
    /// staged then written cost one write of the file, not one each.
    pub fn stage(&mut self, domain: Uuid, entry: Entry) {
        if self.entries.insert(domain, entry) != Some(entry) {
            self.pending.insert(domain, Some(entry));
        }
    }

    /// Ends `domain`'s episode in memory only (see [`Ledger::stage`]).
    /// Returns whether there was one.
    pub fn end(&mut self, domain: &Uuid) -> bool {
        if self.entries.remove(domain).is_none() {
            return false;
        }
        self.pending.insert(*domain, None);
        true
    }

    /// Keeps only the domains for which `keep` is true, in memory only (see
    /// [`Ledger::stage`]).
    pub fn keep(&mut self, mut keep: impl FnMut(&Uuid) -> bool) {
        let ended: Vec<Uuid> = self.entries.keys().filter(|d| !keep(d)).copied().collect();
        for d in ended {
            self.end(&d);
        }
    }

    /// Ends `domain`'s episode and persists. Returns whether there was one.
    ///
    /// # Errors
    ///
    /// The file could not be written; the in-memory state is updated anyway.
    pub fn remove(&mut self, domain: &Uuid) -> Result<bool> {
        let had = self.end(domain);
        self.flush().map(|()| had)
    }

    /// Keeps only the domains for which `keep` is true, and persists.
    ///
    /// # Errors
    ///
    /// The file could not be written; the in-memory state is updated anyway.
    pub fn retain(&mut self, keep: impl FnMut(&Uuid) -> bool) -> Result<()> {
        self.keep(keep);
        self.flush()
    }

    /// Persists what was staged, and syncs it, if anything.
    ///
    /// # Errors
    ///
    /// The file could not be written; the entries stay in memory, so the
    /// next write tries again.
    pub fn flush(&mut self) -> Result<()> {
        match self.write()? {
            Some(sync) => sync.run().inspect_err(|_| self.sync_failed()),
            None => Ok(()),
        }
    }

    /// Appends what was staged to the log with one `write(2)`: visible at
    /// once to an agent that opens the ledger on this host boot (see the
    /// module docs). Returns the sync that makes it durable, to run
    /// anywhere, or `None` when there was nothing to append or the file was
    /// rewritten whole (and synced) instead.
    ///
    /// # Errors
    ///
    /// The file could not be written; the entries stay in memory, and the
    /// next write rewrites the file whole.
    pub fn write(&mut self) -> Result<Option<LogSync>> {
        let Some(path) = self.path.clone() else {
            self.pending.clear();
            return Ok(None);
        };
        // A missing or old file with nothing new for it is left as it is:
        // it reads the same.
        if self.pending.is_empty() && !self.resync {
            return Ok(None);
        }
        let log = match &self.log {
            Some(log) if !self.rewrite && !self.resync => log.clone(),
            _ => return self.compact().map(|()| None),
        };
        let appended = log::records(&self.pending)
            .map_err(std::io::Error::from)
            .and_then(|bytes| (&*log).write_all(&bytes));
        if let Err(source) = appended {
            // Part of a line may be in the file: nothing may follow it.
            self.sync_failed();
            return Err(Error::Ledger { path, source });
        }
        self.records = self.records.saturating_add(self.pending.len());
        self.pending.clear();
        Ok(Some(LogSync {
            file: log,
            path,
            #[cfg(test)]
            hook: self.sync_hook.clone(),
        }))
    }

    /// Records that a [`LogSync`] failed: the next write rewrites the file
    /// whole from memory.
    pub fn sync_failed(&mut self) {
        self.resync = true;
        self.log = None;
    }

    /// Whether a write or sync failed and the file must be rewritten whole.
    pub fn must_rewrite(&self) -> bool {
        self.path.is_some() && self.resync
    }

    /// Whether the ledger has nothing to keep and nothing to write: a failed
    /// write of it loses nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.pending.is_empty()
    }

    /// Whether the file is due a rewrite after a failure or because the log
    /// has grown to many times its open episodes (see the module docs), to
    /// do off a firing's path with [`Ledger::tidy`].
    pub fn compaction_due(&self) -> bool {
        self.path.is_some()
            && (self.resync
                || (self.records > COMPACT_AFTER
                    && self.records > self.entries.len().saturating_mul(COMPACT_RATIO)))
    }

    /// Rewrites the file whole if it is due (see
    /// [`Ledger::compaction_due`]) or missing, old or torn, so that the
    /// next write is an append; otherwise flushes.
    ///
    /// # Errors
    ///
    /// As [`Ledger::flush`].
    pub fn tidy(&mut self) -> Result<()> {
        if self.path.is_some() && (self.rewrite || self.compaction_due()) {
            return self.compact();
        }
        self.flush()
    }

    /// Rewrites the file whole from memory, atomically, and opens it for
    /// appending.
    fn compact(&mut self) -> Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let fs: &dyn SpoolFs = self.fs.as_deref().unwrap_or(&RealFs);
        let err = |source| Error::Ledger {
            path: path.clone(),
            source,
        };
        let bytes =
            log::render(self.boot_id.as_deref(), &self.entries).map_err(|e| err(e.into()))?;
        write_atomically(fs, path, &bytes).map_err(err)?;
        let file = File::options().append(true).open(path).map_err(err)?;
        self.log = Some(Arc::new(file));
        self.records = self.entries.len();
        self.pending.clear();
        self.rewrite = false;
        self.resync = false;
        Ok(())
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory,
/// fsyncing the file and the directory, so that after a crash or a power
/// cut `path` holds the old or the new contents, never a mix, and once
/// this returns, the new ones (see `ledger_power_tests`).
pub(crate) fn write_atomically(fs: &dyn SpoolFs, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    // A temporary file an interrupted write left behind.
    match fs.remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    {
        let mut f = fs.create_new(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs.rename(&tmp, path)?;
    fs.sync_dir(dir)
}

#[cfg(test)]
mod tests;
