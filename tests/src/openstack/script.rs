//! A fixture script of `tests/fixtures/openstack/` run by the venv's Python:
//! its stdout read line by line, and stopped when dropped.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A running fixture script. Dropping it closes its stdin (the scripts end
/// their services then) and kills it if it has not exited 20 s later.
pub(crate) struct Script {
    child: Child,
    stdin: Option<ChildStdin>,
    /// The script's stdout, a line at a time.
    pub(crate) lines: mpsc::Receiver<String>,
}

impl Script {
    /// Runs `tests/fixtures/openstack/NAME ARGS` with `python`, its stderr
    /// to `stderr` (see [`log_in`]).
    pub(crate) fn start(
        python: &Path,
        name: &str,
        args: &[&std::ffi::OsStr],
        stderr: Stdio,
    ) -> Result<Script, String> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/openstack")
            .join(name);
        let mut child = Command::new(python)
            .arg(&script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("start {}: {e}", script.display()))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Script {
            stdin: child.stdin.take(),
            child,
            lines,
        })
    }
}

/// The file `work/NAME` (`work` is created), for a script's stderr.
pub(crate) fn log_in(work: &Path, name: &str) -> Result<Stdio, String> {
    std::fs::create_dir_all(work).map_err(|e| format!("create {}: {e}", work.display()))?;
    let log = std::fs::File::create(work.join(name))
        .map_err(|e| format!("create the log in {}: {e}", work.display()))?;
    Ok(log.into())
}

impl Drop for Script {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
