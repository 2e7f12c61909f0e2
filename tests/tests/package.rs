//! Install and run as an operator would: the `wd` Debian package from
//! `cargo xtask package` (`cargo xtask test` builds it first, into
//! `target/debian/`), `dpkg -i` on this machine, the agent started exactly as
//! the unit's `ExecStart=` says, as user `wd` with the unit's privileges
//! (no new privileges, no capabilities, umask 0077), read-only, against the
//! system libvirtd, under a stand-in for systemd's `NOTIFY_SOCKET`; real
//! guests fire, their notifications arrive; then `dpkg -r` and
//! `dpkg --purge` leave the machine as the test found it.
//!
//! systemd is not PID 1 here, so `systemd-analyze verify` checks the
//! installed unit and the test plays systemd's part.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use wd_e2e::container::find_deb;
use wd_e2e::receiver::{Received, Receiver};
use wd_e2e::virsh::Guest;
use wd_testkit::Libvirtd;
use wd_testkit::guest::{GuestSpec, NovaOwner};

const SECRET: &str = "whsec_d2QtZTJlIHBhY2thZ2UgdGVzdCBzZWNyZXQgMzIgYnl0ZXM=";
const UNIT: &str = "/usr/lib/systemd/system/wdguard.service";
const CONFIG: &str = "/etc/wd/wd.toml";
const RUNTIME_DIR: &str = "/run/wd";

/// Runs a command, returning (success, stdout, stderr).
fn run(program: &str, args: &[&str]) -> (bool, String, String) {
    match Command::new(program).args(args).output() {
        Ok(o) => (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        ),
        Err(e) => (false, String::new(), e.to_string()),
    }
}

fn must(program: &str, args: &[&str]) -> String {
    let (ok, out, err) = run(program, args);
    assert!(ok, "{program} {}: {out}{err}", args.join(" "));
    out
}

/// `GET path` over plain HTTP/1.1 (the server closes each connection);
/// returns the status code and the body.
fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, body.to_owned())
}

fn exists(kind: &str, name: &str) -> bool {
    run("getent", &[kind, name]).0
}

fn installed() -> bool {
    run("dpkg-query", &["-W", "-f=${db:Status-Status}", "wdguard"]).1 == "installed"
}

/// What the machine looked like before, restored when dropped (even on a
/// panic): the package purged, and the `libvirt` group removed again if
/// the package created it.
struct Restore {
    libvirt_group_existed: bool,
}

impl Drop for Restore {
    fn drop(&mut self) {
        if installed() || run("dpkg-query", &["-W", "wdguard"]).0 {
            let _ = run("dpkg", &["--purge", "wdguard"]);
        }
        if !self.libvirt_group_existed && exists("group", "libvirt") {
            let _ = run("groupdel", &["libvirt"]);
        }
        // systemd removes the runtime directory when the unit stops.
        let _ = std::fs::remove_dir_all(RUNTIME_DIR);
    }
}

/// The agent, killed if the test ends while it runs (before `Restore`
/// purges the package: a running wd process would keep its user).
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The stand-in for systemd's notify socket, writable by user wd.
struct NotifySocket {
    _dir: tempfile::TempDir,
    path: PathBuf,
    socket: UnixDatagram,
    got: Vec<String>,
}

impl NotifySocket {
    fn bind() -> NotifySocket {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        socket.set_nonblocking(true).unwrap();
        NotifySocket {
            _dir: dir,
            path,
            socket,
            got: Vec::new(),
        }
    }

    fn drain(&mut self) {
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = self.socket.recv(&mut buf) {
            self.got
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }

    fn has(&mut self, line: &str) -> bool {
        self.drain();
        self.got.iter().any(|d| d.lines().any(|l| l == line))
    }

    async fn wait(&mut self, line: &str, agent: &mut Child, log: &Path, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.has(line) {
            if let Some(status) = agent.try_wait().unwrap() {
                panic!(
                    "the agent exited ({status}) before {line}; log:\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {line} within {limit:?}; got {:?}; log:\n{}",
                self.got,
                std::fs::read_to_string(log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The `ExecStart=` command line of the installed unit.
fn exec_start() -> Vec<String> {
    let unit = std::fs::read_to_string(UNIT).unwrap();
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("the unit has an ExecStart=");
    line.split_whitespace().map(str::to_owned).collect()
}

/// Starts the agent as the unit does: user and group wd with the
/// supplementary groups of user wd (none but its own: the unit sets no
/// `SupplementaryGroups=`), `NoNewPrivileges=yes`, an empty
/// `CapabilityBoundingSet=`, `UMask=0077`, `/` as working directory,
/// systemd's environment (`RUNTIME_DIRECTORY` for `RuntimeDirectory=wd`),
/// and `WATCHDOG_PID` set to the agent's own pid.
fn start_agent(notify: &Path, log: &Path) -> Child {
    start_as_wd(&exec_start(), notify, log)
}

/// What systemd does for `RuntimeDirectory=wd` and
/// `RuntimeDirectoryMode=0750`.
fn make_runtime_directory() {
    must(
        "install",
        &["-d", "-o", "wd", "-g", "wd", "-m", "0750", RUNTIME_DIR],
    );
}

fn start_as_wd(argv: &[String], notify: &Path, log: &Path) -> Child {
    let log_file = std::fs::File::create(log).unwrap();
    Command::new("sh")
        .arg("-c")
        .arg(
            "umask 0077; WATCHDOG_PID=$$ exec setpriv --reuid=wd --regid=wd --init-groups \
             --no-new-privs --bounding-set=-all --inh-caps=-all -- \"$@\"",
        )
        .arg("sh")
        .args(argv)
        .env_clear()
        .env("RUNTIME_DIRECTORY", RUNTIME_DIR)
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", "/var/lib/wd")
        .env("USER", "wd")
        .env("LOGNAME", "wd")
        .env("NOTIFY_SOCKET", notify)
        .env("WATCHDOG_USEC", "30000000")
        .env("RUST_LOG", "info")
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .spawn()
        .unwrap()
}

/// One field of `/proc/PID/status`.
fn proc_status(pid: u32, field: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_owned())
        .unwrap_or_default()
}

fn of<'a>(got: &'a [Received], guest: &Guest) -> Vec<&'a Received> {
    got.iter()
        .filter(|r| r.instance_uuid() == guest.spec.uuid)
        .collect()
}

fn spec(name: &str, project: &str) -> GuestSpec {
    GuestSpec::new(&wd_testkit::unique_name(name), "pause").with_nova(NovaOwner {
        display_name: name.to_owned(),
        flavor: "m1.tiny".into(),
        user_id: "user-package".into(),
        project_id: project.to_owned(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libvirtd_package_installs_runs_as_wd_read_only_and_purges_cleanly() {
    if !run("id", &["-u"]).1.trim().eq("0") {
        let _: Option<()> = wd_testkit::unavailable("root", "dpkg -i needs root");
        return;
    }
    let Some(_libvirtd) = wd_testkit::libvirtd() else {
        return;
    };
    let Some(assets) = wd_testkit::guest::assets() else {
        let _: Option<()> = wd_testkit::unavailable("guest assets", "cargo xtask guest");
        return;
    };
    let Some(deb) = find_deb() else {
        let _: Option<()> = wd_testkit::unavailable(
            "the wd .deb under target/debian",
            "run `cargo xtask package --profile dev`",
        );
        return;
    };
    assert!(
        !installed() && !exists("passwd", "wd"),
        "a wd package or user is already on this machine; the test would not leave it as it was"
    );
    let _restore = Restore {
        libvirt_group_existed: exists("group", "libvirt"),
    };
    // The agent, as wd, reads through libvirt-sock-ro: libvirtd must let
    // read-only clients in without polkit (see wd_testkit).
    if Libvirtd::allow_read_only_clients().unwrap() {
        Libvirtd.restart().unwrap();
    }

    // 1. dpkg -i, and what it leaves behind.
    must("dpkg", &["-i", deb.to_str().unwrap()]);
    assert!(installed());
    // User wd belongs to no group but its own: it reads libvirt-sock-ro,
    // and `libvirt` (the read-write socket) would make it root-equivalent.
    let id = must("id", &["wd"]);
    assert!(!id.contains("libvirt"), "{id}");
    assert_eq!(must("id", &["-nG", "wd"]).trim(), "wd", "{id}");
    assert_eq!(
        exists("group", "libvirt"),
        _restore.libvirt_group_existed,
        "the package must not create group libvirt"
    );
    let unit = std::fs::read_to_string(UNIT).unwrap();
    assert!(
        !unit.lines().any(|l| l.starts_with("SupplementaryGroups=")),
        "{unit}"
    );
    assert!(unit.contains("RuntimeDirectory=wd"), "{unit}");
    let wd_uid: u32 = must("id", &["-u", "wd"]).trim().parse().unwrap();
    let wd_gid: u32 = must("id", &["-g", "wd"]).trim().parse().unwrap();
    let conf = std::fs::metadata(CONFIG).unwrap();
    assert_eq!(
        (conf.uid(), conf.gid(), conf.mode() & 0o7777),
        (0, wd_gid, 0o640),
        "{CONFIG} must be root:wd 0640"
    );
    let state = std::fs::metadata("/var/lib/wd").unwrap();
    assert_eq!((state.uid(), state.mode() & 0o7777), (wd_uid, 0o700));
    assert!(must("dpkg-query", &["-W", "-f=${Conffiles}", "wdguard"]).contains(CONFIG));
    for file in [
        "/usr/bin/wdguard",
        "/usr/share/man/man1/wdguard.1.gz",
        "/usr/share/man/man1/wdguard-watch.1.gz",
        "/usr/share/bash-completion/completions/wdguard",
        "/usr/share/zsh/vendor-completions/_wdguard",
        "/usr/share/fish/vendor_completions.d/wdguard.fish",
        UNIT,
    ] {
        assert!(Path::new(file).is_file(), "{file} is not installed");
    }
    let (ok, out, err) = run("systemd-analyze", &["verify", "--man=no", UNIT]);
    assert!(ok && err.trim().is_empty(), "{out}{err}");
    // util-linux owns /usr/bin/wdguard (its hardware watchdog tool): the
    // package installs the program as wd and leaves that one alone.
    let (_, owner, _) = run(
        "dpkg-query",
        &["-S", "/usr/share/bash-completion/completions/wdguard"],
    );
    assert!(!owner.starts_with("wd:"), "{owner}");

    // 2. The operator's configuration: secrets in the packaged root:wd 0640
    //    file (which the agent accepts), the spool in its StateDirectory.
    let receiver = Receiver::start(SECRET).await.unwrap();
    let project = uuid::Uuid::new_v4().simple().to_string();
    let metrics = {
        // A free port now; the agent binds it (as user wd) in a moment.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    std::fs::write(
        CONFIG,
        format!(
            "metrics = \"{metrics}\"\nnotify = [\"{url}\"]\nspool = \"/var/lib/wd/spool\"\nwait = true\nlog_format = \"json\"\n\
             host = \"package-compute-1\"\n\n[webhook]\nsecrets = [\"{SECRET}\"]\ntimeout_secs = 5\n\n\
             [queue]\nretry_min_delay_secs = 0.2\nretry_max_delay_secs = 1\nattempt_timeout_secs = 2\n",
            url = receiver.url("/ops")
        ),
    )
    .unwrap();
    // Writing kept the owner and mode.
    let conf = std::fs::metadata(CONFIG).unwrap();
    assert_eq!((conf.gid(), conf.mode() & 0o7777), (wd_gid, 0o640));
    // `metrics` is checked below (/metrics counts the firings and the
    // deliveries, /healthz answers 200); /healthz going 503 while libvirtd
    // is stopped is shown by the observability test
    // (`libvirtd_healthz_is_503_while_libvirtd_is_down_and_200_after`).

    // 3. A guest paused by its watchdog before the agent starts: only a
    //    read-only catch-up (state and reason, then XML for the owner) can
    //    find it.
    let early = Guest::define_and_start(spec("wd-pkg-early", &project), &assets, None).unwrap();
    let state = early
        .wait_state_async("paused", Duration::from_secs(60))
        .await;
    assert_eq!(state, "paused (watchdog)");

    let mut notify = NotifySocket::bind();
    let scratch = tempfile::tempdir().unwrap();
    std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o711)).unwrap();

    // An operator who turns read_only off is told what to grant: wd may
    // open the read-only socket, not the read-write one.
    let refused_log = scratch.path().join("read-write.log");
    let mut refused = KillOnDrop(start_as_wd(
        &[
            "/usr/bin/wdguard".into(),
            "watch".into(),
            "--read-write".into(),
            "--notify".into(),
            "log".into(),
            "--connect".into(),
            "qemu:///system".into(),
        ],
        &notify.path,
        &refused_log,
    ));
    let code = refused.0.wait().unwrap();
    let said = std::fs::read_to_string(&refused_log).unwrap();
    assert!(!code.success(), "{said}");
    assert!(
        said.contains("refuses this user a read-write connection")
            && said.contains("SupplementaryGroups=libvirt")
            && said.contains("keep read_only = true"),
        "{said}"
    );

    make_runtime_directory();
    let log = scratch.path().join("agent.log");
    let mut agent = KillOnDrop(start_agent(&notify.path, &log));
    let pid = agent.0.id();
    notify
        .wait("READY=1", &mut agent.0, &log, Duration::from_secs(60))
        .await;

    // It runs as wd, without privileges.
    let wd_uid_s = wd_uid.to_string();
    assert_eq!(
        proc_status(pid, "Uid")
            .split_whitespace()
            .collect::<Vec<_>>(),
        [wd_uid_s.as_str(); 4]
    );
    assert_eq!(proc_status(pid, "CapEff"), "0000000000000000");
    assert_eq!(proc_status(pid, "CapBnd"), "0000000000000000");
    assert_eq!(proc_status(pid, "NoNewPrivs"), "1");

    // 4. A guest that fires while the agent listens.
    let live = Guest::define_and_start(spec("wd-pkg-live", &project), &assets, None).unwrap();
    let got = receiver
        .wait_for(Duration::from_secs(60), |got| {
            !of(got, &early).is_empty() && !of(got, &live).is_empty()
        })
        .await;
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    let early_got = of(&got, &early);
    let live_got = of(&got, &live);
    assert_eq!(early_got.len(), 1, "{got:#?}\n{log_text}");
    assert_eq!(live_got.len(), 1, "{got:#?}\n{log_text}");
    for (r, recovered) in [(early_got[0], true), (live_got[0], false)] {
        assert_eq!(r.data()["action"], "pause");
        assert_eq!(r.data()["recovered"], recovered, "{:#}", r.event);
        assert_eq!(r.data()["instance"]["project_id"], project.as_str());
        assert_eq!(r.data()["host"], "package-compute-1");
    }
    assert!(
        notify.has("WATCHDOG=1") || {
            // At 30 s, the first ping may not have come yet; the status has.
            notify.got.iter().any(|d| d.contains("STATUS=watching"))
        }
    );

    // /metrics shows both firings and their deliveries to the operator
    // endpoint; /healthz is 200 (connected, every worker alive).
    // The receiver records a request before the agent has read its
    // answer and counted the delivery: scrape until the second delivery is
    // counted (or 10 s have passed).
    let delivered = "wd_notifications_total{destination=\"operator\",outcome=\"delivered\"}";
    let scraped_at = Instant::now();
    let (code, text) = loop {
        let (code, text) = http_get(&metrics, "/metrics");
        let counted = text.lines().any(|l| {
            l.strip_prefix(delivered)
                .and_then(|v| v.trim().parse::<f64>().ok())
                .is_some_and(|v| v >= 2.0)
        });
        if code != 200 || counted || scraped_at.elapsed() > Duration::from_secs(10) {
            break (code, text);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(code, 200, "{text}");
    // At least: other guests on this shared libvirtd may count too.
    let sample = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{series} not in:\n{text}"))
    };
    assert!(
        sample("wd_watchdog_firings_total{action=\"pause\"}") >= 2.0,
        "{text}"
    );
    assert!(sample("wd_catchup_firings_total") >= 1.0, "{text}");
    assert!(sample(delivered) >= 2.0, "{text}");
    assert_eq!(sample("wd_libvirt_connected"), 1.0, "{text}");
    assert_eq!(http_get(&metrics, "/healthz"), (200, "ok\n".to_owned()));

    // The local status socket: root and group wd only; `wdguard status`
    // reads it by default.
    let sock = std::fs::metadata(format!("{RUNTIME_DIR}/status.sock")).unwrap();
    assert_eq!(
        (sock.uid(), sock.gid(), sock.mode() & 0o777),
        (wd_uid, wd_gid, 0o660)
    );
    let shown = must("/usr/bin/wdguard", &["status", "--format", "json"]);
    assert!(
        shown.contains("\"source\":\"agent /run/wd/status.sock\""),
        "{shown}"
    );
    assert!(
        shown.contains("webhook operator http://127.0.0.1:"),
        "{shown}"
    );
    assert!(!shown.contains("/ops"), "an endpoint path shows: {shown}");
    // Another user cannot reach the socket (/run/wd is wd:wd 0750).
    let reach = |user: &str| {
        run(
            "runuser",
            &["-u", user, "--", "sh", "-c", "test -S /run/wd/status.sock"],
        )
        .0
    };
    assert!(reach("wd") && !reach("nobody"));

    // The log is JSON (log_format in the file) and says read-only.
    let lines: Vec<Value> = log_text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let started = lines
        .iter()
        .find(|v| v["fields"]["message"] == "wdguard watch started")
        .unwrap_or_else(|| panic!("{log_text}"));
    assert_eq!(started["fields"]["read_only"], true);
    assert!(!log_text.contains("d2QtZTJl"), "the secret is in the log");
    // The spool the agent made in its state directory belongs to wd.
    let spool = std::fs::metadata("/var/lib/wd/spool").unwrap();
    assert_eq!(spool.uid(), wd_uid);

    // 5. Stop as systemd would: SIGTERM, STOPPING=1, exit 0.
    must("kill", &["-TERM", &pid.to_string()]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = agent.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        status.success(),
        "{status}: {}",
        std::fs::read_to_string(&log).unwrap()
    );
    assert!(notify.has("STOPPING=1"));
    drop(early);
    drop(live);

    // 6. dpkg -r: the program and unit go; the edited conffile and the
    //    user stay (an operator may reinstall). Then purge: everything goes.
    must("dpkg", &["-r", "wdguard"]);
    assert!(!Path::new("/usr/bin/wdguard").exists());
    assert!(!Path::new(UNIT).exists());
    assert!(Path::new(CONFIG).exists());
    assert!(exists("passwd", "wd"));
    must("dpkg", &["--purge", "wdguard"]);
    assert!(
        !run("dpkg-query", &["-W", "wdguard"]).0,
        "wdguard is still known to dpkg"
    );
    assert!(!Path::new("/etc/wd").exists(), "/etc/wd is left behind");
    assert!(
        !Path::new("/var/lib/wd").exists(),
        "/var/lib/wd is left behind"
    );
    assert!(!exists("passwd", "wd"), "user wd is left behind");
    assert!(!exists("group", "wd"), "group wd is left behind");
    assert!(
        !must("dpkg-statoverride", &["--list"]).contains(CONFIG),
        "the statoverride is left behind"
    );
    for dir in [
        "/var/lib/systemd/deb-systemd-helper-enabled",
        "/var/lib/systemd/deb-systemd-helper-masked",
    ] {
        let left: Vec<_> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("wdguard.service")
            })
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }
}
