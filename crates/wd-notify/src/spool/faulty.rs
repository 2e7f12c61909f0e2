//! A file system that fails on demand (feature `fault-injection`): the
//! faults a real disk gives and a test cannot make on these machines (no
//! device-mapper, and `mount -o remount,ro` fails while files are open).
//!
//! [`FaultyFs`] does every call for real, except that while a fault is set
//! ([`Faults`]), the chosen calls fail with the chosen `errno` (`ENOSPC`,
//! `EIO`, `EROFS`, ...), and file syncs can be slowed down (a disk under
//! load, for races).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::disk::{RealFs, SpoolFile, SpoolFs};

/// The faults of a [`FaultyFs`], shared by its clones; change them at any
/// time.
#[derive(Debug, Default)]
pub struct Faults {
    /// `errno` for every `write` (0: none).
    write: AtomicI32,
    /// `errno` for every file `fsync`/`fdatasync` (0: none).
    sync: AtomicI32,
    /// `errno` for every file creation (0: none).
    create: AtomicI32,
    /// How long each file sync sleeps first, in microseconds.
    slow_sync_us: AtomicU64,
    /// Calls failed so far.
    failed: AtomicU64,
    /// If set, faults apply only while this file exists.
    flag: OnceLock<PathBuf>,
}

impl Faults {
    /// Writes fail with `errno` (`None`: they succeed again).
    pub fn fail_writes(&self, errno: Option<i32>) {
        self.write.store(errno.unwrap_or(0), Ordering::SeqCst);
    }

    /// File syncs fail with `errno` (`None`: they succeed again).
    pub fn fail_syncs(&self, errno: Option<i32>) {
        self.sync.store(errno.unwrap_or(0), Ordering::SeqCst);
    }

    /// File creations fail with `errno` (`None`: they succeed again).
    pub fn fail_creates(&self, errno: Option<i32>) {
        self.create.store(errno.unwrap_or(0), Ordering::SeqCst);
    }

    /// Every fault at once: writes, syncs and creations fail with `errno`.
    pub fn fail_all(&self, errno: Option<i32>) {
        self.fail_writes(errno);
        self.fail_syncs(errno);
        self.fail_creates(errno);
    }

    /// Each file sync takes at least `d` (on the writer's thread).
    pub fn slow_syncs(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.slow_sync_us.store(us, Ordering::SeqCst);
    }

    /// The faults apply only while the file `flag` exists (checked at each
    /// call): another process heals the disk by removing it. Set once; a
    /// second call is ignored.
    pub fn only_while_exists(&self, flag: PathBuf) {
        let _ = self.flag.set(flag);
    }

    /// How many calls failed so far.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::SeqCst)
    }

    fn check(&self, which: &AtomicI32) -> io::Result<()> {
        match which.load(Ordering::SeqCst) {
            0 => Ok(()),
            _ if self.flag.get().is_some_and(|f| !f.exists()) => Ok(()),
            errno => {
                self.failed.fetch_add(1, Ordering::SeqCst);
                Err(io::Error::from_raw_os_error(errno))
            }
        }
    }
}

/// The real file system, with [`Faults`] injected.
#[derive(Debug, Clone, Default)]
pub struct FaultyFs {
    faults: Arc<Faults>,
}

impl FaultyFs {
    /// A file system without faults yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The switches of its faults.
    pub fn faults(&self) -> Arc<Faults> {
        self.faults.clone()
    }
}

impl SpoolFs for FaultyFs {
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn SpoolFile>> {
        self.faults.check(&self.faults.create)?;
        let inner = RealFs.create_new(path)?;
        Ok(Box::new(FaultyFile {
            inner,
            faults: self.faults.clone(),
        }))
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.faults.check(&self.faults.sync)?;
        RealFs.sync_dir(dir)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        RealFs.remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        RealFs.rename(from, to)
    }
}

struct FaultyFile {
    inner: Box<dyn SpoolFile>,
    faults: Arc<Faults>,
}

impl FaultyFile {
    fn sync(&mut self, all: bool) -> io::Result<()> {
        let us = self.faults.slow_sync_us.load(Ordering::SeqCst);
        if us > 0 {
            std::thread::sleep(Duration::from_micros(us));
        }
        self.faults.check(&self.faults.sync)?;
        if all {
            self.inner.sync_all()
        } else {
            self.inner.sync_data()
        }
    }
}

impl SpoolFile for FaultyFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.faults.check(&self.faults.write)?;
        self.inner.write_all(buf)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.sync(false)
    }

    fn sync_all(&mut self) -> io::Result<()> {
        self.sync(true)
    }
}
