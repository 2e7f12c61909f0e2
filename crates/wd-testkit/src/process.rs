//! Process helpers: run a command quietly, check and stop a pid.

use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// Runs a command to completion with no output; true when it exits 0.
pub fn run_quiet(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether `pid` is a live process (a zombie counts as gone).
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => match stat.rfind(')') {
            Some(i) => !matches!(stat[i + 1..].trim_start().chars().next(), Some('Z' | 'X')),
            None => true,
        },
        Err(_) => false,
    }
}

/// Sends SIGTERM to `pid`, waits up to `grace` for it to exit, then sends
/// SIGKILL. Returns once the process is gone.
pub fn stop_pid(pid: u32, grace: Duration) {
    if !pid_alive(pid) {
        return;
    }
    run_quiet("kill", &["-TERM", &pid.to_string()]);
    let deadline = Instant::now() + grace;
    while pid_alive(pid) && Instant::now() < deadline {
        sleep(Duration::from_millis(50));
    }
    if pid_alive(pid) {
        run_quiet("kill", &["-KILL", &pid.to_string()]);
        let deadline = Instant::now() + Duration::from_secs(5);
        while pid_alive(pid) && Instant::now() < deadline {
            sleep(Duration::from_millis(20));
        }
    }
}

/// A command for a daemon (a service that outlives the test): `program`
/// started through `sh`, which closes file descriptors 3 to 9 and then
/// `exec`s it (same pid), adding args and environment to the returned
/// command as usual.
///
/// Without this, a daemon started by a test run under
/// `flock /tmp/wd-real.lock …` inherits the lock's descriptor (flock(1)
/// passes it on, on fd 3) and holds the machine-wide lock for as long as it
/// runs, so every later `flock` waits forever.
pub fn daemon_command(program: &str) -> Command {
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        r#"exec 3>&- 4>&- 5>&- 6>&- 7>&- 8>&- 9>&- "$0" "$@""#,
        program,
    ]);
    cmd
}
