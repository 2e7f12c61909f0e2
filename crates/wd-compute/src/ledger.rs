//! The episode ledger: which watchdog pauses the owner was already told about,
//! kept on disk so that it survives an agent restart.
//!
//! `wd-events` keeps one event per pause episode while the listener runs. A
//! restarted agent starts with no memory, and its catch-up finds every guest
//! that is still paused by its watchdog. Without a ledger each restart would
//! announce those pauses again, with new event ids. The ledger records, per
//! domain, the event id of its open pause episode and whether the delivery
//! layer has accepted it:
//!
//! 1. Before a pause is handed to the delivery layer, its entry is written as
//!    `accepted: false`, with its event id.
//! 2. Once the delivery layer (the spool) has accepted it, the entry becomes
//!    `accepted: true`.
//! 3. A pause found again (after a reconnect or a restart) whose entry is
//!    accepted is not announced again; one whose entry is not accepted is
//!    handed over again **with the same event id**, so a crash between 1 and
//!    2 gives at worst a duplicate that consumers deduplicate on the id.
//! 4. The entry is removed when the domain is resumed, stopped or undefined,
//!    or when a catch-up finds it no longer paused by its watchdog.
//!
//! The file is JSON, rewritten whole on each change through a temporary file,
//! `fsync` and `rename`, so it is never half-written. A missing file is an
//! empty ledger; an unreadable one is logged, set aside as `*.corrupt`, and
//! replaced by an empty ledger (the worst case is a duplicate announcement).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, Result};

/// One open pause episode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The event id its notification carries.
    pub event_id: Uuid,
    /// Whether the delivery layer accepted the notification.
    pub accepted: bool,
}

/// The ledger, in memory and (optionally) on disk.
#[derive(Debug, Default)]
pub struct Ledger {
    path: Option<PathBuf>,
    entries: BTreeMap<Uuid, Entry>,
}

#[derive(Serialize, Deserialize)]
struct FileForm {
    version: u32,
    episodes: BTreeMap<Uuid, Entry>,
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
        let path = path.into();
        let entries = match fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<FileForm>(&bytes) {
                Ok(f) => f.episodes,
                Err(e) => {
                    let aside = path.with_extension("corrupt");
                    tracing::warn!(path = %path.display(), error = %e, aside = %aside.display(),
                        "episode ledger is corrupt; starting empty (paused guests may be announced again)");
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
            entries,
        })
    }

    /// The open episode of `domain`, if any.
    pub fn get(&self, domain: &Uuid) -> Option<Entry> {
        self.entries.get(domain).copied()
    }

    /// The domains with an open episode.
    pub fn domains(&self) -> impl Iterator<Item = &Uuid> {
        self.entries.keys()
    }

    /// Records `entry` for `domain` and persists.
    ///
    /// # Errors
    ///
    /// The file could not be written; the in-memory state is updated anyway.
    pub fn put(&mut self, domain: Uuid, entry: Entry) -> Result<()> {
        if self.entries.insert(domain, entry) == Some(entry) {
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
        self.persist()
    }

    fn persist(&self) -> Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        write_atomically(
            path,
            &serde_json::to_vec_pretty(&FileForm {
                version: 1,
                episodes: self.entries.clone(),
            })
            .unwrap_or_default(),
        )
        .map_err(|source| Error::Ledger {
            path: path.clone(),
            source,
        })
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory,
/// fsyncing the file and the directory, so readers see the old or the new
/// contents, never a mix.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    #[test]
    fn survives_reopen_and_tracks_acceptance() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("episodes.json");
        let mut l = Ledger::open(&path).unwrap();
        assert_eq!(l.get(&id(1)), None);
        l.put(
            id(1),
            Entry {
                event_id: id(10),
                accepted: false,
            },
        )
        .unwrap();
        l.put(
            id(2),
            Entry {
                event_id: id(20),
                accepted: true,
            },
        )
        .unwrap();
        l.put(
            id(1),
            Entry {
                event_id: id(10),
                accepted: true,
            },
        )
        .unwrap();
        drop(l);
        let mut l = Ledger::open(&path).unwrap();
        assert_eq!(
            l.get(&id(1)),
            Some(Entry {
                event_id: id(10),
                accepted: true
            })
        );
        assert_eq!(
            l.get(&id(2)),
            Some(Entry {
                event_id: id(20),
                accepted: true
            })
        );
        assert!(l.remove(&id(2)).unwrap());
        assert!(!l.remove(&id(2)).unwrap());
        l.retain(|d| *d != id(1)).unwrap();
        drop(l);
        let l = Ledger::open(&path).unwrap();
        assert_eq!(l.domains().count(), 0);
        assert!(!path.with_extension("tmp").exists());
    }

    #[test]
    fn corrupt_file_is_set_aside_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("episodes.json");
        fs::write(&path, b"{\"version\":1,\"episodes\":{\"not-a-uu").unwrap();
        let mut l = Ledger::open(&path).unwrap();
        assert_eq!(l.domains().count(), 0);
        assert!(path.with_extension("corrupt").exists());
        l.put(
            id(3),
            Entry {
                event_id: id(30),
                accepted: true,
            },
        )
        .unwrap();
        assert_eq!(
            Ledger::open(&path).unwrap().get(&id(3)).map(|e| e.event_id),
            Some(id(30))
        );
    }

    #[test]
    fn in_memory_ledger_writes_nothing() {
        let mut l = Ledger::in_memory();
        l.put(
            id(1),
            Entry {
                event_id: id(2),
                accepted: true,
            },
        )
        .unwrap();
        assert_eq!(l.get(&id(1)).map(|e| e.accepted), Some(true));
    }
}
