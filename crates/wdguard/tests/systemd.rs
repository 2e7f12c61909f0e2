//! `wdguard watch` under systemd's service protocol, with a Unix datagram
//! socket standing in for systemd's `NOTIFY_SOCKET` (systemd is not PID 1
//! here), and the packaged unit checked with `systemd-analyze`.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// One datagram and when it arrived.
struct Datagram {
    at: Instant,
    text: String,
}

/// The stand-in for systemd: a datagram socket the agent notifies.
struct Systemd {
    socket: UnixDatagram,
    got: Vec<Datagram>,
}

impl Systemd {
    fn bind(path: &Path) -> Systemd {
        let socket = UnixDatagram::bind(path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        Systemd {
            socket,
            got: Vec::new(),
        }
    }

    /// Reads datagrams for `span`.
    fn read_for(&mut self, span: Duration) {
        let deadline = Instant::now() + span;
        let mut buf = vec![0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.socket.recv(&mut buf) {
                self.got.push(Datagram {
                    at: Instant::now(),
                    text: String::from_utf8_lossy(&buf[..n]).into_owned(),
                });
            }
        }
    }

    /// Reads until a datagram has a line `line`, or panics after `limit`.
    fn read_until(&mut self, line: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.has(line) {
            assert!(
                Instant::now() < deadline,
                "no {line} within {limit:?}; got {:?}",
                self.texts()
            );
            self.read_for(Duration::from_millis(100));
        }
    }

    fn has(&self, line: &str) -> bool {
        self.got.iter().any(|d| d.text.lines().any(|l| l == line))
    }

    fn texts(&self) -> Vec<&str> {
        self.got.iter().map(|d| d.text.as_str()).collect()
    }

    /// When each datagram carrying line `line` arrived.
    fn times_of(&self, line: &str) -> Vec<Instant> {
        self.got
            .iter()
            .filter(|d| d.text.lines().any(|l| l == line))
            .map(|d| d.at)
            .collect()
    }
}

/// Starts `wdguard watch ARGS` the way systemd does for `Type=notify` with
/// `WatchdogSec=`: `NOTIFY_SOCKET`, `WATCHDOG_USEC`, and `WATCHDOG_PID` set
/// to the agent's own pid (hence the `exec` from a shell).
fn start(socket: &Path, watchdog: Duration, args: &[&str]) -> Child {
    Command::new("sh")
        .args(["-c", "WATCHDOG_PID=$$ exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_wdguard"))
        .arg("watch")
        .args(args)
        .env("NOTIFY_SOCKET", socket)
        .env("WATCHDOG_USEC", watchdog.as_micros().to_string())
        .env("RUST_LOG", "info")
        .env_remove("WD_WEBHOOK_SECRET")
        .env_remove("WD_AMQP_PASSWORD")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn stop(mut child: Child) -> (Option<i32>, String) {
    wd_testkit::run_quiet("kill", &["-TERM", &child.id().to_string()]);
    let deadline = Instant::now() + Duration::from_secs(15);
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut log = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut log).unwrap();
    (code, log)
}

#[test]
fn ready_after_catch_up_watchdog_at_half_the_timeout_status_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let mut systemd = Systemd::bind(&path);
    let watchdog = Duration::from_secs(2);
    let child = start(
        &path,
        watchdog,
        &[
            "--connect",
            "test:///default",
            "--notify",
            "log",
            "--log-format",
            "json",
        ],
    );
    systemd.read_until("READY=1", Duration::from_secs(30));
    let ready_at = systemd.times_of("READY=1")[0];
    systemd.read_for(Duration::from_secs(6));
    let (code, log) = stop(child);
    systemd.read_for(Duration::from_millis(300));
    let texts = systemd.texts();
    assert_eq!(code, Some(0), "{log}");

    // First what it is doing, then READY=1 only with the catch-up's result
    // (test:///default has one domain), exactly once.
    assert!(
        texts[0].contains("STATUS=connecting to libvirt at test:///default"),
        "{texts:?}"
    );
    let ready: Vec<_> = texts.iter().filter(|t| t.contains("READY=1")).collect();
    assert_eq!(ready.len(), 1, "{texts:?}");
    assert!(
        ready[0].contains("STATUS=watching 1 domain(s)"),
        "{texts:?}"
    );

    // WATCHDOG=1 every half of WATCHDOG_USEC: never a gap systemd would
    // punish (the full timeout), and no flood either.
    let pings: Vec<Instant> = systemd
        .times_of("WATCHDOG=1")
        .into_iter()
        .filter(|t| *t >= ready_at)
        .collect();
    assert!(pings.len() >= 4, "{} pings in 6 s: {texts:?}", pings.len());
    assert!(pings.len() <= 12, "{} pings in 6 s: {texts:?}", pings.len());
    for pair in pings.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(gap < watchdog, "a gap of {gap:?} between pings");
        assert!(gap > watchdog / 4, "pings only {gap:?} apart");
    }
    assert!(systemd.has("STOPPING=1"), "{texts:?}");

    // --log-format json: every line of the log is one JSON object.
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    let messages: Vec<&str> = lines
        .iter()
        .map(|v| v["fields"]["message"].as_str().unwrap_or_default())
        .collect();
    assert!(messages.contains(&"catch-up listing done"), "{log}");
    assert!(messages.contains(&"wdguard watch stopped"), "{log}");
    let started = lines
        .iter()
        .find(|v| v["fields"]["message"] == "wdguard watch started")
        .unwrap();
    assert_eq!(started["fields"]["read_only"], true, "{log}");
    assert!(
        lines
            .iter()
            .all(|v| v["level"].is_string() && v["timestamp"].is_string())
    );
}

#[test]
fn while_libvirt_is_unreachable_it_is_alive_but_not_ready() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let mut systemd = Systemd::bind(&path);
    let child = start(
        &path,
        Duration::from_secs(1),
        &[
            "--connect",
            "qemu+unix:///system?socket=/nonexistent/libvirt-sock-ro",
            "--wait",
            "--notify",
            "log",
        ],
    );
    systemd.read_for(Duration::from_secs(3));
    let (code, log) = stop(child);
    let texts = systemd.texts();
    assert_eq!(code, Some(0), "{log}");
    assert!(!systemd.has("READY=1"), "{texts:?}");
    // The core loop goes round, so systemd's watchdog is fed and the start
    // timeout is pushed back, and the status says why it is not ready.
    assert!(systemd.times_of("WATCHDOG=1").len() >= 3, "{texts:?}");
    assert!(
        texts
            .iter()
            .any(|t| t.contains("EXTEND_TIMEOUT_USEC=1500000")),
        "{texts:?}"
    );
    assert!(systemd.has("STATUS=waiting for libvirt"), "{texts:?}");
    // The retry line says why, in libvirt's words.
    assert!(
        log.lines()
            .any(|l| l.contains("cannot connect to libvirt; retrying")
                && l.contains("/nonexistent/libvirt-sock-ro")
                && l.contains("No such file or directory")),
        "{log}"
    );
}

/// The unit from the package: no warnings from `systemd-analyze verify`, and
/// the hardening holds (`systemd-analyze security`'s exposure score).
#[test]
fn the_unit_verifies_cleanly_and_is_hardened() {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("debian/wdguard.service");
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        let _: Option<()> =
            wd_testkit::unavailable("systemd-analyze", "install the Debian package systemd");
        return;
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The program is not installed from the source tree (the package test,
    // wd-e2e's `libvirtd_package_*`, verifies the installed unit).
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.contains("Command /usr/bin/wdguard is not executable"))
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert!(warnings.is_empty(), "warnings: {warnings:#?}");

    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&unit)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for wdguard.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in {text}"));
    assert!(score <= 2.0, "exposure {score}:\n{text}");

    let unit = std::fs::read_to_string(&unit).unwrap();
    for line in [
        "Type=notify",
        "WatchdogSec=30s",
        "User=wd",
        "StateDirectory=wd",
        "RuntimeDirectory=wd",
        "RuntimeDirectoryMode=0750",
        "CapabilityBoundingSet=",
        "NoNewPrivileges=yes",
        "ExecStart=/usr/bin/wdguard watch --config /etc/wd/wd.toml",
        // Not real-time, but first on a core when a firing comes.
        "RestrictRealtime=yes",
        "Nice=-10",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line} missing");
    }
    // No group beyond wd's own: `libvirt` opens the read-write socket.
    assert!(
        !unit.lines().any(|l| l.starts_with("SupplementaryGroups=")),
        "{unit}"
    );
}
