//! The file-system calls the spool writer makes, behind a small seam, so
//! that a test can simulate a power cut.
//!
//! A `SIGKILL` keeps the page cache: every `write` the process made
//! survives it, whether it was `fsync`ed or not. So a crash test that kills
//! the process cannot tell a writer that forgets an `fsync` from a correct
//! one. [`SimFs`] (feature `fault-injection`) models what a power cut
//! keeps: file contents up to their last `fsync`, and directory entries
//! (created or removed files) up to their directory's last `fsync`.
//! [`SimFs::power_cut`] returns exactly that state, to be written into a
//! fresh directory and recovered with the real code.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// The mode of a spool directory: only its owner may list or enter it.
pub(crate) const DIR_MODE: u32 = 0o700;
/// The mode of the files in it: only their owner may read them.
pub(crate) const FILE_MODE: u32 = 0o600;

/// The file-system calls of the spool writer.
pub trait SpoolFs: Send + Sync + std::fmt::Debug {
    /// Creates `path`, which must not exist, for appending, with mode 0600.
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn SpoolFile>>;
    /// Makes the directory entries of `dir` (files created and removed in
    /// it) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Removes the file `path`.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Renames the file `from` to `to` (replacing `to`), both in one
    /// directory; durable with that directory's sync.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
}

/// A file the spool writer appends to.
pub trait SpoolFile: Send {
    /// Appends `buf`.
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Makes the contents durable (`fdatasync`).
    fn sync_data(&mut self) -> io::Result<()>;
    /// Makes the contents and metadata durable (`fsync`).
    fn sync_all(&mut self) -> io::Result<()>;
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFs;

impl SpoolFs for RealFs {
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn SpoolFile>> {
        Ok(Box::new(open_new(path)?))
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }
}

fn open_new(path: &Path) -> io::Result<File> {
    File::options()
        .create_new(true)
        .append(true)
        .mode(FILE_MODE)
        .open(path)
}

impl SpoolFile for File {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        Write::write_all(self, buf)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        File::sync_data(self)
    }

    fn sync_all(&mut self) -> io::Result<()> {
        File::sync_all(self)
    }
}

/// Creates `dir` (and missing parents) with mode 0700, and brings an
/// existing `dir` to 0700: notifications name tenants and their instances.
pub(crate) fn create_private_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    let perms = fs::metadata(dir)?.permissions();
    if perms.mode() & 0o7777 != DIR_MODE {
        fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE))?;
    }
    Ok(())
}

#[cfg(any(test, feature = "fault-injection"))]
pub use sim::{FsOp, PowerCut, SimFs};

#[cfg(any(test, feature = "fault-injection"))]
mod sim {
    use std::collections::BTreeMap;
    use std::fs::File;
    use std::io;
    use std::path::{Path, PathBuf};
    use std::sync::{Arc, Mutex, MutexGuard};

    use super::{SpoolFile, SpoolFs, open_new};

    /// One call the writer made, as [`SimFs`] recorded it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum FsOp {
        /// `create_new(path)`.
        Create(PathBuf),
        /// `write_all` of this many bytes to `path`.
        Write(PathBuf, usize),
        /// `sync_data` or `sync_all` of `path`.
        Sync(PathBuf),
        /// `sync_dir(dir)`.
        SyncDir(PathBuf),
        /// `remove_file(path)`.
        Remove(PathBuf),
        /// `rename(from, to)`.
        Rename(PathBuf, PathBuf),
    }

    #[derive(Debug, Default)]
    struct Inode {
        /// What a reader sees now (the page cache).
        data: Vec<u8>,
        /// What survives a power cut: the contents at the last sync.
        synced: Vec<u8>,
    }

    #[derive(Debug, Default)]
    struct Model {
        inodes: Vec<Inode>,
        /// The directory entries a reader sees now.
        names: BTreeMap<PathBuf, usize>,
        /// The directory entries that survive a power cut.
        durable_names: BTreeMap<PathBuf, usize>,
        ops: Vec<FsOp>,
        /// With [`SimFs::every_cut`]: what a power cut would have left
        /// before the first call and after each call.
        cuts: Option<Vec<PowerCut>>,
    }

    impl Model {
        fn power_cut(&self) -> PowerCut {
            PowerCut {
                files: self
                    .durable_names
                    .iter()
                    .map(|(p, &i)| (p.clone(), self.inodes[i].synced.clone()))
                    .collect(),
            }
        }

        /// Records `op`, and with [`SimFs::every_cut`] the state after it.
        fn record(&mut self, op: FsOp) {
            self.ops.push(op);
            if self.cuts.is_some() {
                let now = self.power_cut();
                if let Some(cuts) = &mut self.cuts {
                    cuts.push(now);
                }
            }
        }
    }

    /// A file system that does every call for real (so the spool works as
    /// usual) and also keeps a model of what a power cut would leave. Its
    /// own `fsync`s only update the model, so it is fast.
    ///
    /// For a test of the test, [`SimFs::lying_fsync`] and
    /// [`SimFs::lying_dir_sync`] make syncs do nothing, as a writer that
    /// forgot them would.
    #[derive(Debug, Clone, Default)]
    pub struct SimFs {
        model: Arc<Mutex<Model>>,
        lying_fsync: bool,
        lying_dir_sync: bool,
    }

    /// What a power cut left: file path → durable contents.
    #[derive(Debug, Clone, Default, PartialEq, Eq)]
    pub struct PowerCut {
        /// Every file whose directory entry was durable, with the contents
        /// it had at its last sync.
        pub files: BTreeMap<PathBuf, Vec<u8>>,
    }

    impl PowerCut {
        /// Writes the files that were in `from` into `to` (created if
        /// needed), as the disk would show them after the power cut.
        ///
        /// # Errors
        ///
        /// A file cannot be written.
        pub fn restore(&self, from: &Path, to: &Path) -> io::Result<()> {
            std::fs::create_dir_all(to)?;
            for (path, data) in &self.files {
                if let Ok(rel) = path.strip_prefix(from) {
                    std::fs::write(to.join(rel), data)?;
                }
            }
            Ok(())
        }
    }

    impl SimFs {
        /// A model of `dir` whose existing files are all durable.
        ///
        /// # Errors
        ///
        /// `dir` exists but cannot be read.
        pub fn over(dir: &Path) -> io::Result<SimFs> {
            let fs = SimFs::default();
            match std::fs::read_dir(dir) {
                Ok(entries) => {
                    let mut m = fs.lock();
                    for entry in entries {
                        let path = entry?.path();
                        if path.is_file() {
                            let data = std::fs::read(&path)?;
                            let i = m.inodes.len();
                            m.inodes.push(Inode {
                                synced: data.clone(),
                                data,
                            });
                            m.names.insert(path.clone(), i);
                            m.durable_names.insert(path, i);
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            Ok(fs)
        }

        /// File syncs do nothing (a writer without `fsync`).
        #[must_use]
        pub fn lying_fsync(mut self) -> Self {
            self.lying_fsync = true;
            self
        }

        /// Directory syncs do nothing (a writer without the directory
        /// `fsync` after creating or removing a file).
        #[must_use]
        pub fn lying_dir_sync(mut self) -> Self {
            self.lying_dir_sync = true;
            self
        }

        /// Records what a power cut would leave at every cut point: before
        /// the first call and after each one ([`SimFs::cuts`]). Meant for
        /// small files (each point copies every file).
        #[must_use]
        pub fn every_cut(self) -> Self {
            {
                let mut m = self.lock();
                let now = m.power_cut();
                m.cuts = Some(vec![now]);
            }
            self
        }

        fn lock(&self) -> MutexGuard<'_, Model> {
            self.model.lock().unwrap_or_else(|p| p.into_inner())
        }

        /// What the disk would hold if the power failed now.
        pub fn power_cut(&self) -> PowerCut {
            self.lock().power_cut()
        }

        /// With [`SimFs::every_cut`]: what the disk would have held had the
        /// power failed before the first call or after any one call.
        pub fn cuts(&self) -> Vec<PowerCut> {
            self.lock().cuts.clone().unwrap_or_default()
        }

        /// Every call made so far, in order.
        pub fn ops(&self) -> Vec<FsOp> {
            self.lock().ops.clone()
        }
    }

    impl SpoolFs for SimFs {
        fn create_new(&self, path: &Path) -> io::Result<Box<dyn SpoolFile>> {
            let file = open_new(path)?;
            let mut m = self.lock();
            let inode = m.inodes.len();
            m.inodes.push(Inode::default());
            m.names.insert(path.to_owned(), inode);
            m.record(FsOp::Create(path.to_owned()));
            Ok(Box::new(SimFile {
                fs: self.clone(),
                path: path.to_owned(),
                inode,
                file,
            }))
        }

        fn sync_dir(&self, dir: &Path) -> io::Result<()> {
            let mut m = self.lock();
            if !self.lying_dir_sync {
                let in_dir = |p: &PathBuf| p.parent() == Some(dir);
                let visible: Vec<(PathBuf, usize)> = m
                    .names
                    .iter()
                    .filter(|(p, _)| in_dir(p))
                    .map(|(p, i)| (p.clone(), *i))
                    .collect();
                m.durable_names.retain(|p, _| !in_dir(p));
                m.durable_names.extend(visible);
            }
            m.record(FsOp::SyncDir(dir.to_owned()));
            Ok(())
        }

        fn remove_file(&self, path: &Path) -> io::Result<()> {
            std::fs::remove_file(path)?;
            let mut m = self.lock();
            m.names.remove(path);
            m.record(FsOp::Remove(path.to_owned()));
            Ok(())
        }

        fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
            std::fs::rename(from, to)?;
            let mut m = self.lock();
            if let Some(inode) = m.names.remove(from) {
                m.names.insert(to.to_owned(), inode);
            }
            m.record(FsOp::Rename(from.to_owned(), to.to_owned()));
            Ok(())
        }
    }

    struct SimFile {
        fs: SimFs,
        path: PathBuf,
        inode: usize,
        file: File,
    }

    impl SimFile {
        fn sync(&mut self) -> io::Result<()> {
            let mut m = self.fs.lock();
            if !self.fs.lying_fsync {
                let inode = &mut m.inodes[self.inode];
                inode.synced = inode.data.clone();
            }
            m.record(FsOp::Sync(self.path.clone()));
            Ok(())
        }
    }

    impl SpoolFile for SimFile {
        fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
            io::Write::write_all(&mut self.file, buf)?;
            let mut m = self.fs.lock();
            m.inodes[self.inode].data.extend_from_slice(buf);
            m.record(FsOp::Write(self.path.clone(), buf.len()));
            Ok(())
        }

        fn sync_data(&mut self) -> io::Result<()> {
            self.sync()
        }

        fn sync_all(&mut self) -> io::Result<()> {
            self.sync()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn check(fs: &SimFs, dir: &Path, expected: &[(&str, &[u8])]) {
        let cut = fs.power_cut();
        let got: Vec<(String, Vec<u8>)> = cut
            .files
            .iter()
            .map(|(p, d)| {
                (
                    p.strip_prefix(dir).unwrap().display().to_string(),
                    d.clone(),
                )
            })
            .collect();
        let want: Vec<(String, Vec<u8>)> = expected
            .iter()
            .map(|(n, d)| ((*n).to_owned(), d.to_vec()))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_power_cut_keeps_only_what_was_synced() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::write(dir.join("old"), b"old").unwrap();
        let fs = SimFs::over(dir).unwrap();
        check(&fs, dir, &[("old", b"old")]);

        let mut f = fs.create_new(&dir.join("a")).unwrap();
        f.write_all(b"one").unwrap();
        // Written, not synced, entry not synced: gone.
        check(&fs, dir, &[("old", b"old")]);
        f.sync_data().unwrap();
        // Contents synced, the directory entry not: still gone.
        check(&fs, dir, &[("old", b"old")]);
        fs.sync_dir(dir).unwrap();
        check(&fs, dir, &[("a", b"one"), ("old", b"old")]);
        f.write_all(b"two").unwrap();
        // Appended, not synced: the synced prefix survives.
        check(&fs, dir, &[("a", b"one"), ("old", b"old")]);
        f.sync_all().unwrap();
        check(&fs, dir, &[("a", b"onetwo"), ("old", b"old")]);
        // A removal is durable only with its directory's sync.
        fs.remove_file(&dir.join("old")).unwrap();
        assert!(!dir.join("old").exists());
        check(&fs, dir, &[("a", b"onetwo"), ("old", b"old")]);
        fs.sync_dir(dir).unwrap();
        check(&fs, dir, &[("a", b"onetwo")]);
        // Everything was done for real too.
        assert_eq!(std::fs::read(dir.join("a")).unwrap(), b"onetwo");
        let a = dir.join("a");
        assert_eq!(
            fs.ops(),
            [
                FsOp::Create(a.clone()),
                FsOp::Write(a.clone(), 3),
                FsOp::Sync(a.clone()),
                FsOp::SyncDir(dir.to_owned()),
                FsOp::Write(a.clone(), 3),
                FsOp::Sync(a),
                FsOp::Remove(dir.join("old")),
                FsOp::SyncDir(dir.to_owned()),
            ]
        );

        let out = tempfile::tempdir().unwrap();
        fs.power_cut().restore(dir, out.path()).unwrap();
        assert_eq!(std::fs::read(out.path().join("a")).unwrap(), b"onetwo");
    }

    #[test]
    fn lying_syncs_keep_nothing_new() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        for (i, fs) in [
            SimFs::default().lying_fsync(),
            SimFs::default().lying_dir_sync(),
        ]
        .into_iter()
        .enumerate()
        {
            let mut f = fs.create_new(&dir.join(i.to_string())).unwrap();
            f.write_all(b"data").unwrap();
            f.sync_data().unwrap();
            fs.sync_dir(dir).unwrap();
            let cut = fs.power_cut();
            assert!(cut.files.values().all(|d| d.is_empty()), "{fs:?}: {cut:?}");
        }
    }

    #[test]
    fn files_are_0600_and_directories_0700() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        create_private_dir(&dir).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&tmp.path().join("a")), 0o700);
        // An existing, looser directory is tightened.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        create_private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        drop(RealFs.create_new(&dir.join("f")).unwrap());
        assert_eq!(mode(&dir.join("f")), 0o600);
        assert!(RealFs.create_new(&dir.join("f")).is_err(), "create_new");
    }

    #[tokio::test]
    async fn a_spool_directory_is_0700_and_its_files_0600() {
        use crate::Notifier;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("spool");
        let (inbox, _rx) = crate::ChannelNotifier::channel(4);
        let spool = crate::Spool::open(&dir, crate::QueueConfig::default(), inbox).unwrap();
        spool.notify(&crate::testing::firing(1)).await.unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        let mut files = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            assert_eq!(mode(&path), 0o600, "{}", path.display());
            files += 1;
        }
        // The lock file and at least one segment.
        assert!(files >= 2, "{files}");
    }
}
