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
//! The file is JSON, rewritten whole on each change through a temporary file,
//! `fsync` and `rename`, so it is never half-written. A missing file is an
//! empty ledger; an unreadable one is logged, set aside as `*.corrupt`, and
//! replaced by an empty ledger (the worst case is a duplicate announcement).
//!
//! Format version 2 (this one) adds `boot_id` and each entry's `run_id`.
//! A version 1 file (before runs were recorded) still loads: its entries
//! have no run, match whatever run a catch-up finds (as version 1 did), and
//! learn that run the first time they match.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;
use wd_notify::{RealFs, SpoolFs};

use crate::error::{Error, Result};

/// The file format version written.
const VERSION: u32 = 2;

/// Where Linux publishes the id of the current boot.
const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

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
    /// Entries staged ([`Ledger::stage`]) since the file was last written.
    dirty: bool,
    /// The file-system calls of its writes (`None`: the real one).
    fs: Option<Arc<dyn SpoolFs>>,
}

#[derive(Serialize, Deserialize)]
struct FileForm {
    version: u32,
    /// The host boot the entries belong to; absent in version 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    boot_id: Option<String>,
    episodes: BTreeMap<Uuid, Entry>,
}

/// Reads a ledger file of any version up to [`VERSION`].
fn parse(bytes: &[u8]) -> std::result::Result<FileForm, String> {
    let f: FileForm = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if !(1..=VERSION).contains(&f.version) {
        return Err(format!(
            "format version {} is not supported; allowed: 1 to {VERSION}",
            f.version
        ));
    }
    Ok(f)
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

    /// Opens (or creates) the ledger at `path`.
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
        let entries = match fs::read(&path) {
            Ok(bytes) => match parse(&bytes) {
                Ok(f) => match (&f.boot_id, &boot_id) {
                    (Some(then), Some(now)) if then != now => {
                        tracing::info!(path = %path.display(), episodes = f.episodes.len(),
                            "episode ledger is from an earlier boot of this host; its episodes have ended");
                        BTreeMap::new()
                    }
                    _ => f.episodes,
                },
                Err(e) => {
                    let aside = path.with_extension("corrupt");
                    tracing::warn!(path = %path.display(), error = %e, aside = %aside.display(),
                        "episode ledger is unreadable; starting empty (paused guests may be announced again)");
                    fs::rename(&path, &aside).map_err(|source| Error::Ledger {
                        path: path.clone(),
                        source,
                    })?;
                    BTreeMap::new()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => return Err(Error::Ledger { path, source }),
        };
        Ok(Ledger {
            path: Some(path),
            boot_id,
            entries,
            dirty: false,
            fs: None,
        })
    }

    /// Makes its writes through `fs` (a power-cut model, a failing disk).
    #[cfg(test)]
    pub(crate) fn with_fs(mut self, fs: Arc<dyn SpoolFs>) -> Self {
        self.fs = Some(fs);
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
    /// [`Ledger::flush`] (or any other write) persists it. Many entries
    /// staged then flushed cost one write of the file, not one each.
    pub fn stage(&mut self, domain: Uuid, entry: Entry) {
        if self.entries.insert(domain, entry) != Some(entry) {
            self.dirty = true;
        }
    }

    /// Persists what was staged, if anything.
    ///
    /// # Errors
    ///
    /// The file could not be written; the entries stay staged, so the next
    /// flush tries again.
    pub fn flush(&mut self) -> Result<()> {
        if !self.dirty {
            return Ok(());
        }
        self.persist()
    }

    /// Ends `domain`'s episode and persists. Returns whether there was one.
    ///
    /// # Errors
    ///
    /// The file could not be written; the in-memory state is updated anyway.
    pub fn remove(&mut self, domain: &Uuid) -> Result<bool> {
        if self.entries.remove(domain).is_none() {
            return Ok(false);
        }
        self.dirty = true;
        self.persist().map(|()| true)
    }

    /// Keeps only the domains for which `keep` is true, and persists.
    ///
    /// # Errors
    ///
    /// The file could not be written; the in-memory state is updated anyway.
    pub fn retain(&mut self, mut keep: impl FnMut(&Uuid) -> bool) -> Result<()> {
        let before = self.entries.len();
        self.entries.retain(|d, _| keep(d));
        if self.entries.len() == before {
            return Ok(());
        }
        self.dirty = true;
        self.persist()
    }

    fn persist(&mut self) -> Result<()> {
        let Some(path) = &self.path else {
            self.dirty = false;
            return Ok(());
        };
        let fs: &dyn SpoolFs = self.fs.as_deref().unwrap_or(&RealFs);
        write_atomically(
            fs,
            path,
            &serde_json::to_vec_pretty(&FileForm {
                version: VERSION,
                boot_id: self.boot_id.clone(),
                episodes: self.entries.clone(),
            })
            .unwrap_or_default(),
        )
        .map_err(|source| Error::Ledger {
            path: path.clone(),
            source,
        })?;
        self.dirty = false;
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
mod tests {
    use wd_notify::fault::SimFs;

    use super::*;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn entry(event: u128, accepted: bool, run: Option<u32>) -> Entry {
        Entry {
            event_id: id(event),
            accepted,
            run_id: run,
        }
    }

    #[test]
    fn survives_reopen_and_tracks_acceptance() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("episodes.json");
        let mut l = Ledger::open(&path).unwrap();
        assert_eq!(l.get(&id(1)), None);
        l.put(id(1), entry(10, false, Some(4))).unwrap();
        l.put(id(2), entry(20, true, Some(5))).unwrap();
        l.put(id(1), entry(10, true, Some(4))).unwrap();
        drop(l);
        let mut l = Ledger::open(&path).unwrap();
        assert_eq!(l.get(&id(1)), Some(entry(10, true, Some(4))));
        assert_eq!(l.get(&id(2)), Some(entry(20, true, Some(5))));
        assert!(l.remove(&id(2)).unwrap());
        assert!(!l.remove(&id(2)).unwrap());
        l.retain(|d| *d != id(1)).unwrap();
        drop(l);
        let l = Ledger::open(&path).unwrap();
        assert_eq!(l.domains().count(), 0);
        assert!(!path.with_extension("tmp").exists());
    }

    #[test]
    fn an_episode_belongs_to_one_run_of_its_domain() {
        let mut l = Ledger::in_memory();
        l.put(id(1), entry(10, true, Some(4))).unwrap();
        assert_eq!(l.episode(&id(1), Some(4)), Some(entry(10, true, Some(4))));
        // Started again (a hard reboot): another run, another episode.
        assert_eq!(l.episode(&id(1), Some(5)), None);
        // An unknown run cannot prove a restart.
        assert!(l.episode(&id(1), None).is_some());
        l.put(id(2), entry(20, true, None)).unwrap();
        assert!(l.episode(&id(2), Some(9)).is_some());
        // A new run's entry replaces the old run's.
        l.put(id(1), entry(11, false, Some(5))).unwrap();
        assert_eq!(l.episode(&id(1), Some(4)), None);
        assert_eq!(l.domains().count(), 2);
    }

    #[test]
    fn a_version_1_file_loads_with_unknown_runs_and_is_rewritten_as_version_2() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("episodes.json");
        // Exactly what the previous version wrote.
        let v1 = format!(
            "{{\n  \"version\": 1,\n  \"episodes\": {{\n    \"{}\": {{\n      \"event_id\": \"{}\",\n      \"accepted\": true\n    }}\n  }}\n}}",
            id(1),
            id(10)
        );
        fs::write(&path, v1).unwrap();
        let mut l = Ledger::open_on_boot(path.clone(), Some("boot-a".into())).unwrap();
        assert_eq!(l.get(&id(1)), Some(entry(10, true, None)));
        l.put(id(1), entry(10, true, Some(3))).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["version"], 2, "{text}");
        assert_eq!(v["boot_id"], "boot-a", "{text}");
        assert_eq!(v["episodes"][id(1).to_string()]["run_id"], 3, "{text}");
        assert_eq!(
            Ledger::open_on_boot(path, Some("boot-a".into()))
                .unwrap()
                .get(&id(1)),
            Some(entry(10, true, Some(3)))
        );
    }

    #[test]
    fn episodes_from_an_earlier_boot_of_the_host_have_ended() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("episodes.json");
        let mut l = Ledger::open_on_boot(path.clone(), Some("boot-a".into())).unwrap();
        l.put(id(1), entry(10, true, Some(1))).unwrap();
        drop(l);
        // The same boot, or a system that publishes no boot id: kept.
        for boot in [Some("boot-a"), None] {
            let l = Ledger::open_on_boot(path.clone(), boot.map(Into::into)).unwrap();
            assert_eq!(l.domains().count(), 1, "{boot:?}");
        }
        // After a reboot runtime ids start again from 1: run 1 of this boot
        // is not the run 1 the entry was about.
        let l = Ledger::open_on_boot(path.clone(), Some("boot-b".into())).unwrap();
        assert_eq!(l.episode(&id(1), Some(1)), None);
        // The real boot id is read from the system.
        let now = current_boot_id();
        if std::path::Path::new(BOOT_ID_PATH).exists() {
            assert!(now.is_some_and(|b| b.len() == 36));
        }
    }

    #[test]
    fn corrupt_or_unknown_version_file_is_set_aside_not_fatal() {
        for bad in [
            "{\"version\":1,\"episodes\":{\"not-a-uu",
            "{\"version\":3,\"episodes\":{}}",
        ] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("episodes.json");
            fs::write(&path, bad).unwrap();
            let mut l = Ledger::open(&path).unwrap();
            assert_eq!(l.domains().count(), 0);
            assert_eq!(
                fs::read_to_string(path.with_extension("corrupt")).unwrap(),
                bad
            );
            l.put(id(3), entry(30, true, None)).unwrap();
            assert_eq!(
                Ledger::open(&path).unwrap().get(&id(3)).map(|e| e.event_id),
                Some(id(30))
            );
        }
    }

    /// The names and modification times of everything in `dir`.
    fn snapshot(dir: &Path) -> Vec<(std::ffi::OsString, Option<std::time::SystemTime>)> {
        let mut all: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name(),
                    e.metadata().ok().and_then(|m| m.modified().ok()),
                )
            })
            .collect();
        all.sort();
        all
    }

    #[test]
    fn in_memory_ledger_writes_nothing() {
        // The same operations on a file-backed ledger change its directory,
        // so the snapshot would notice a write.
        let dir = tempfile::tempdir().unwrap();
        let ops = |l: &mut Ledger| {
            l.put(id(1), entry(2, false, Some(1))).unwrap();
            l.put(id(1), entry(2, true, Some(1))).unwrap();
            l.put(id(3), entry(4, true, None)).unwrap();
            assert!(l.remove(&id(3)).unwrap());
            l.retain(|_| false).unwrap();
        };
        let before = snapshot(dir.path());
        ops(&mut Ledger::open(dir.path().join("episodes.json")).unwrap());
        assert_ne!(snapshot(dir.path()), before);

        // The in-memory one: the working directory (where a relative
        // default file would go) is untouched, and it has no file at all.
        let cwd = std::env::current_dir().unwrap();
        let before = snapshot(&cwd);
        let mut l = Ledger::in_memory();
        ops(&mut l);
        l.put(id(5), entry(6, true, Some(2))).unwrap();
        assert_eq!(l.get(&id(5)).map(|e| e.accepted), Some(true));
        assert!(l.path.is_none());
        assert_eq!(snapshot(&cwd), before);
    }

    /// Rewrites a ledger through a power-cut model over its directory
    /// (whose syncs `lie` may turn off) and checks every cut point: what survives is the old or
    /// the new ledger, never a torn or missing one, and once the write has
    /// returned, the new one.
    fn cuts_keep_old_or_new(lie: fn(SimFs) -> SimFs) -> std::result::Result<(), String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("episodes.json");
        let mut l = Ledger::open(&path).unwrap();
        l.put(id(1), entry(10, true, Some(1))).unwrap();
        let old = l.entries.clone();
        drop(l);
        // A temporary file an earlier, interrupted rewrite left.
        fs::write(path.with_extension("tmp"), b"{\"torn").unwrap();
        let fs = lie(SimFs::over(dir.path()).unwrap()).every_cut();
        let mut l = Ledger::open(&path).unwrap().with_fs(Arc::new(fs.clone()));
        l.put(id(2), entry(20, false, Some(3))).unwrap();
        let new = l.entries.clone();
        let cuts = fs.cuts();
        assert!(cuts.len() >= 6, "{:?}", fs.ops());
        for (at, cut) in cuts.iter().enumerate() {
            let out = tempfile::tempdir().unwrap();
            cut.restore(dir.path(), out.path()).unwrap();
            let after = out.path().join("episodes.json");
            let bytes = fs::read(&after)
                .map_err(|e| format!("cut {at}: the ledger is missing ({e}): {cut:?}"))?;
            let got = parse(&bytes)
                .map_err(|e| format!("cut {at}: the ledger is torn ({e}): {cut:?}"))?
                .episodes;
            if got != old && got != new {
                return Err(format!("cut {at}: neither old nor new: {got:?}"));
            }
            // What the agent reads after the power cut.
            let reopened = Ledger::open(&after).unwrap();
            assert_eq!(reopened.entries, got);
        }
        let last = cuts.last().map(|c| c.files.get(&path).cloned());
        let done = last.flatten().map(|b| parse(&b).map(|f| f.episodes));
        if !matches!(&done, Some(Ok(e)) if *e == new) {
            return Err(format!(
                "the rewrite returned, but a power cut then loses it: {:?}",
                fs.ops()
            ));
        }
        Ok(())
    }

    #[test]
    fn a_power_cut_at_any_point_of_a_rewrite_leaves_the_old_or_the_new_ledger() {
        cuts_keep_old_or_new(|fs| fs).unwrap();
        // The model catches a writer without the file fsync (a torn or
        // empty ledger) or without the directory fsync (the rename is lost
        // after the write returned).
        let e = cuts_keep_old_or_new(SimFs::lying_fsync).unwrap_err();
        assert!(e.contains("torn"), "{e}");
        let e = cuts_keep_old_or_new(SimFs::lying_dir_sync).unwrap_err();
        assert!(e.contains("returned"), "{e}");
    }
}
