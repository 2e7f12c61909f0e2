//! Reading a spool directory: segment names, the scan that recovery and
//! [`scan`] share, and the directory lock.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use std::os::unix::fs::OpenOptionsExt;

use super::disk::SpoolFs;
use super::format::{RecordBody, Skipped, recover};
use crate::error::{Error, Result};
use crate::model::Notification;

/// A segment file's name for segment `id`.
pub(crate) fn segment_name(id: u64) -> String {
    format!("seg-{id:016x}.wal")
}

pub(crate) fn segment_id(name: &str) -> Option<u64> {
    let hex = name.strip_prefix("seg-")?.strip_suffix(".wal")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

pub(crate) fn sync_dir(fs: &dyn SpoolFs, dir: &Path) -> Result<()> {
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
    /// For each seq, the id of the last segment holding its entry (the
    /// spool recovers entries where they are, without copying them).
    pub(crate) located: BTreeMap<u64, u64>,
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
                    report.located.insert(r.seq, id);
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
    report.located.retain(|seq, _| !acked.contains(seq));
    Ok(report)
}

/// Takes the exclusive advisory lock on `dir/LOCK`.
pub(crate) fn lock_dir(dir: &Path) -> Result<fs::File> {
    let path = dir.join("LOCK");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(super::disk::FILE_MODE)
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
