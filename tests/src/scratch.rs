//! Test fixtures shared by the end-to-end test files: a scratch directory
//! removed when dropped, and a guard that starts libvirtd again should a test
//! fail while it has libvirtd stopped.

use std::path::PathBuf;

use wd_testkit::Libvirtd;

/// A scratch directory under the system temp dir, removed when dropped.
#[derive(Debug)]
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// Creates a fresh directory whose name starts with `prefix`.
    ///
    /// # Panics
    ///
    /// If the directory cannot be created (a test fixture).
    pub fn new(prefix: &str) -> Scratch {
        let dir = std::env::temp_dir().join(wd_testkit::unique_name(prefix));
        std::fs::create_dir_all(&dir).expect("create a scratch directory");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts libvirtd again when dropped, should a test fail while it is down.
#[derive(Debug)]
pub struct RestartLibvirtd;

impl Drop for RestartLibvirtd {
    fn drop(&mut self) {
        if !Libvirtd::is_up()
            && let Err(e) = Libvirtd::start()
        {
            eprintln!("could not start libvirtd again: {e}");
        }
    }
}
