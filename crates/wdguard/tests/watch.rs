//! `wdguard watch` as an operator starts it: bad configurations and an
//! unreachable libvirt stop it at startup with one clear line; a good one
//! runs until SIGTERM and then exits cleanly.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn wdguard() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_wdguard"));
    c.env_remove("WD_WEBHOOK_SECRET")
        .env_remove("WD_AMQP_PASSWORD");
    c
}

/// Runs `wdguard ARGS`, expecting a startup failure: status 2, one stderr line
/// containing `expected`, nothing on stdout.
fn fails(args: &[&str], expected: &str) {
    let out = wdguard().args(args).stdin(Stdio::null()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(
        out.stdout.is_empty(),
        "{args:?}: stdout {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        last.starts_with("wdguard: ") && last.contains(expected),
        "{args:?}: {last:?}"
    );
}

#[test]
fn bad_configuration_and_unreachable_libvirt_stop_it_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("wd.toml");
    std::fs::write(&cfg, "notify = [\"log\"]\nspol = \"/tmp/x\"\n").unwrap();
    fails(
        &["watch", "--config", cfg.to_str().unwrap()],
        "unknown field `spol`",
    );
    fails(
        &["watch", "--config", "/nonexistent/wd.toml"],
        "cannot read config file `/nonexistent/wd.toml`",
    );
    fails(&["watch"], "nowhere to notify");
    fails(
        &["watch", "--notify", "https://127.0.0.1:9/hook"],
        "WD_WEBHOOK_SECRET",
    );
    fails(
        &[
            "watch",
            "--notify",
            "log",
            "--connect",
            "qemu+unix:///system?socket=/nonexistent/libvirt-sock",
        ],
        "cannot connect to libvirt at qemu+unix:///system?socket=/nonexistent/libvirt-sock",
    );
}

/// Waits for the child to exit within `limit`; returns its exit code.
fn wait_exit(child: &mut std::process::Child, limit: Duration) -> Option<i32> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    None
}

#[test]
fn runs_until_sigterm_then_exits_cleanly_and_keeps_the_spool() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let mut child = wdguard()
        .args([
            "watch",
            "--connect",
            "test:///default",
            "--notify",
            "log",
            "--spool",
        ])
        .arg(&spool)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        child.try_wait().unwrap().is_none(),
        "wdguard watch exited on its own"
    );
    assert!(spool.join("LOCK").exists(), "the spool was not opened");

    // A second agent on the same spool is refused: it would deliver twice.
    let out = wdguard()
        .args([
            "watch",
            "--connect",
            "test:///default",
            "--notify",
            "log",
            "--spool",
        ])
        .arg(&spool)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by another process"));

    wd_testkit::run_quiet("kill", &["-TERM", &child.id().to_string()]);
    assert_eq!(wait_exit(&mut child, Duration::from_secs(10)), Some(0));
    let mut log = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut log).unwrap();
    assert!(log.contains("SIGTERM: shutting down"), "{log}");
    assert!(log.contains("wdguard watch stopped"), "{log}");
}
