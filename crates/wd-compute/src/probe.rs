//! The spool probe: is the spool's filesystem writable right now?
//!
//! A queue finds out that its disk is full (or failing, or read-only) only
//! when it writes, which is when a guest fires. An agent started on a full
//! `/var` would look healthy until then. So the runtime writes a small
//! file in the spool root, `fsync`s and removes it, at start and then
//! every few seconds, and `/healthz` says 503 with the path and the error
//! while that fails. It needs one filesystem block while it works, and
//! leaves nothing behind when it fails (the file is removed whatever
//! happened).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::metrics::Metrics;

/// The probe file, in the spool root.
const PROBE: &str = ".write-probe";

/// One block: what a new queue entry or segment needs.
const PROBE_BYTES: usize = 4096;

/// Writes, syncs and removes the probe file in `dir`.
fn probe_once(dir: &Path) -> std::io::Result<()> {
    let path = dir.join(PROBE);
    let result = (|| {
        let mut f = std::fs::File::create(&path)?;
        f.write_all(&[0u8; PROBE_BYTES])?;
        f.sync_all()
    })();
    let _ = std::fs::remove_file(&path);
    result
}

/// Probes `dir` every `every` (the first at once) and tells `metrics`.
pub(crate) async fn run(dir: PathBuf, metrics: Metrics, every: Duration) {
    let mut failing = false;
    loop {
        let d = dir.clone();
        let result = tokio::task::spawn_blocking(move || probe_once(&d))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        match result {
            Ok(()) => {
                if std::mem::take(&mut failing) {
                    tracing::info!(dir = %dir.display(), "the spool is writable again");
                }
                metrics.set_write_error("spool", None);
            }
            Err(e) => {
                let reason = format!("cannot write to the spool {}: {e}", dir.display());
                if !failing {
                    tracing::error!(error = %reason, "the spool's filesystem is not writable");
                }
                failing = true;
                metrics.set_write_error("spool", Some(reason));
            }
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_writable_dir_passes_and_keeps_nothing_and_a_missing_one_fails() {
        let tmp = tempfile::tempdir().unwrap();
        probe_once(tmp.path()).unwrap();
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
        let e = probe_once(&tmp.path().join("gone")).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
    }
}
