//! libvirtd (with virtlogd) and RabbitMQ, started and stopped by pid.

use std::fs;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::process::{daemon_command, pid_alive, run_quiet, stop_pid};
use crate::{target_dir, unavailable};

/// Where services keep their pid files and logs.
pub fn services_dir() -> PathBuf {
    target_dir().join("wd-services")
}

fn pid_file(name: &str) -> PathBuf {
    services_dir().join(format!("{name}.pid"))
}

pub(crate) fn read_pid(path: &std::path::Path) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn write_pid(name: &str, pid: u32) -> Result<(), String> {
    fs::create_dir_all(services_dir())
        .map_err(|e| format!("create {}: {e}", services_dir().display()))?;
    fs::write(pid_file(name), format!("{pid}\n"))
        .map_err(|e| format!("write pid file for {name}: {e}"))
}

/// Spawns a daemon in its own process group, with output appended to
/// `target/wd-services/<name>.log`, and records its pid.
fn spawn_daemon(name: &str, cmd: &mut Command) -> Result<u32, String> {
    fs::create_dir_all(services_dir())
        .map_err(|e| format!("create {}: {e}", services_dir().display()))?;
    let log_path = services_dir().join(format!("{name}.log"));
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| format!("open {}: {e}", log_path.display()))?;
    let log2 = log.try_clone().map_err(|e| format!("dup log: {e}"))?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        // Its own group: a Ctrl-C meant for the test runner does not reach it.
        .process_group(0)
        .spawn()
        .map_err(|e| format!("start {name}: {e}"))?;
    let pid = child.id();
    write_pid(name, pid)?;
    Ok(pid)
}

pub(crate) fn wait_until(timeout: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if ready() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        sleep(Duration::from_millis(200));
    }
}

/// Writes `/etc/libvirt/NAME` unless it already holds exactly `wanted`
/// (temp file, fsync, rename; an earlier different file is kept as
/// `NAME.wd-backup`). Returns whether it wrote.
pub(crate) fn write_config(name: &str, wanted: &str) -> Result<bool, String> {
    write_file(&PathBuf::from("/etc/libvirt").join(name), wanted)
}

/// Writes `conf` as [`write_config`] does, creating its directory.
pub(crate) fn write_file(conf: &std::path::Path, wanted: &str) -> Result<bool, String> {
    let current = fs::read_to_string(conf).unwrap_or_default();
    if current == wanted {
        return Ok(false);
    }
    if !current.is_empty() {
        let _ = fs::copy(conf, conf.with_extension("conf.wd-backup"));
    }
    if let Some(dir) = conf.parent() {
        fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    }
    let tmp = conf.with_extension("conf.tmp");
    let mut f = fs::File::create(&tmp).map_err(|e| format!("write {}: {e}", tmp.display()))?;
    f.write_all(wanted.as_bytes())
        .map_err(|e| format!("write {}: {e}", tmp.display()))?;
    f.sync_all()
        .map_err(|e| format!("sync {}: {e}", tmp.display()))?;
    fs::rename(&tmp, conf).map_err(|e| format!("rename to {}: {e}", conf.display()))?;
    Ok(true)
}

/// The system libvirtd (`qemu:///system`), with virtlogd beside it.
#[derive(Debug, Clone, Copy)]
pub struct Libvirtd;

/// Returns the running system libvirtd, or skips (see [`crate::unavailable`]).
pub fn libvirtd() -> Option<Libvirtd> {
    if Libvirtd::is_up() {
        Some(Libvirtd)
    } else {
        unavailable(
            "libvirtd (qemu:///system)",
            "start it with `cargo xtask services up`",
        )
    }
}

impl Libvirtd {
    /// The connection URI of the system daemon.
    pub const URI: &'static str = "qemu:///system";

    /// The connection URI of the system daemon.
    pub fn uri(&self) -> &'static str {
        Self::URI
    }

    /// Whether libvirtd answers on its socket.
    pub fn is_up() -> bool {
        std::path::Path::new("/run/libvirt/libvirt-sock").exists()
            && run_quiet("timeout", &["10", "virsh", "-c", Self::URI, "version"])
    }

    /// The pid of the running libvirtd: ours, or the one libvirtd recorded.
    pub fn pid() -> Option<u32> {
        [pid_file("libvirtd"), PathBuf::from("/run/libvirtd.pid")]
            .iter()
            .filter_map(|p| read_pid(p))
            .find(|&pid| pid_alive(pid))
    }

    /// Prepares the host once: the `libvirt-qemu` user and group that the QEMU
    /// driver insists on, a `qemu.conf` that runs guests as root without a
    /// security driver, and libvirt's directories. Needs root.
    pub fn prepare_host() -> Result<(), String> {
        if !run_quiet("getent", &["group", "libvirt-qemu"])
            && !run_quiet("groupadd", &["-r", "libvirt-qemu"])
        {
            return Err("groupadd -r libvirt-qemu failed".into());
        }
        if !run_quiet("id", &["libvirt-qemu"])
            && !run_quiet(
                "useradd",
                &[
                    "-r",
                    "-g",
                    "libvirt-qemu",
                    "-d",
                    "/var/lib/libvirt",
                    "-s",
                    "/usr/sbin/nologin",
                    "libvirt-qemu",
                ],
            )
        {
            return Err("useradd -r libvirt-qemu failed".into());
        }
        write_config(
            "qemu.conf",
            "# Written by wd's xtask: guests run as root under TCG, no security driver.\n\
             user = \"root\"\ngroup = \"root\"\nsecurity_driver = \"none\"\n",
        )?;
        Self::allow_read_only_clients()?;
        for dir in [
            "/var/log/libvirt",
            "/var/run/libvirt",
            "/var/lib/libvirt/qemu",
            "/var/cache/libvirt",
        ] {
            fs::create_dir_all(dir).map_err(|e| format!("create {dir}: {e}"))?;
        }
        Ok(())
    }

    /// Writes `/etc/libvirt/libvirtd.conf` so that any local user may open a
    /// read-only connection (`auth_unix_ro = "none"`), as the agent does when
    /// it runs as user `wd`. libvirtd's default is polkit, which needs a
    /// system D-Bus that these machines do not run; on a production host the
    /// stock polkit policy gives the same read-only access to every local
    /// user. Returns whether the file changed: a running libvirtd must be
    /// restarted to apply it. Needs root.
    ///
    /// The same file opens the TCP listener with SASL on 127.0.0.1 (see
    /// [`Libvirtd::TCP_PORT`] and [`crate::sasl`]); the Unix sockets are
    /// unchanged by it.
    pub fn allow_read_only_clients() -> Result<bool, String> {
        let sasl = crate::sasl::write_sasl_config()?;
        let conf = write_config("libvirtd.conf", &crate::sasl::libvirtd_conf())?;
        Ok(sasl || conf)
    }

    /// Starts virtlogd (unless running) and libvirtd (unless running), and
    /// waits until libvirtd answers. Returns whether this call started it.
    pub fn start() -> Result<bool, String> {
        if Self::is_up() {
            return Ok(false);
        }
        // A socket file alone proves nothing: a killed virtlogd leaves it.
        let virtlogd_running = read_pid(&pid_file("virtlogd")).is_some_and(pid_alive)
            || run_quiet("pidof", &["virtlogd"]);
        if !virtlogd_running {
            spawn_daemon("virtlogd", &mut daemon_command("virtlogd"))?;
        }
        // `--listen` opens the TCP listener that libvirtd.conf describes
        // (127.0.0.1 only, SASL); the Unix sockets are the same either way.
        // Only with that file: under another libvirtd.conf, `--listen` would
        // also open a TLS listener (libvirt's default), which fails the
        // start without certificates.
        let mut cmd = daemon_command("libvirtd");
        if crate::sasl::config_is_ours() {
            cmd.arg("--listen");
        }
        spawn_daemon("libvirtd", &mut cmd)?;
        // The first start probes QEMU's capabilities, which takes a while.
        if !wait_until(Duration::from_secs(90), Self::is_up) {
            return Err(format!(
                "libvirtd did not answer within 90 s; see {}",
                services_dir().join("libvirtd.log").display()
            ));
        }
        Ok(true)
    }

    /// Stops libvirtd by pid (guests keep running, as with a real restart).
    pub fn stop(&self) {
        if let Some(pid) = Self::pid() {
            stop_pid(pid, Duration::from_secs(15));
        }
        let _ = fs::remove_file(pid_file("libvirtd"));
    }

    /// Stops libvirtd, then starts it again and waits until it answers.
    pub fn restart(&self) -> Result<(), String> {
        self.stop();
        Self::start().map(|_| ())
    }

    /// Stops libvirtd and the virtlogd that we started, by pid.
    pub fn stop_all() {
        Libvirtd.stop();
        if let Some(pid) = read_pid(&pid_file("virtlogd")) {
            stop_pid(pid, Duration::from_secs(10));
            let _ = fs::remove_file(pid_file("virtlogd"));
        }
    }
}

/// A RabbitMQ broker on 127.0.0.1:5672.
#[derive(Debug, Clone, Copy)]
pub struct RabbitMq;

/// Returns the running broker, or skips (see [`crate::unavailable`]).
pub fn rabbitmq() -> Option<RabbitMq> {
    if RabbitMq::is_up() {
        Some(RabbitMq)
    } else {
        unavailable(
            "RabbitMQ on 127.0.0.1:5672",
            "start it with `cargo xtask services up`",
        )
    }
}

impl RabbitMq {
    /// The AMQP URL of the default `guest` account on the default vhost.
    pub const URL: &'static str = "amqp://guest:guest@127.0.0.1:5672/%2f";

    /// The AMQP URL of the default `guest` account on the default vhost.
    pub fn url(&self) -> &'static str {
        Self::URL
    }

    /// Whether the broker accepts TCP connections on 127.0.0.1:5672.
    pub fn is_up() -> bool {
        let addr = SocketAddr::from(([127, 0, 0, 1], 5672));
        TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
    }

    fn env(cmd: &mut Command) -> &mut Command {
        cmd.env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_PID_FILE", "/var/lib/rabbitmq/wd-rabbitmq.pid")
    }

    /// The broker's pid, as the broker recorded it.
    pub fn pid() -> Option<u32> {
        read_pid(std::path::Path::new("/var/lib/rabbitmq/wd-rabbitmq.pid"))
            .filter(|&p| pid_alive(p))
    }

    /// Starts the broker unless it is up, on 127.0.0.1 only, and waits until
    /// it is ready. Returns whether this call started it.
    pub fn start() -> Result<bool, String> {
        if Self::is_up() {
            return Ok(false);
        }
        let epmd_was_running = run_quiet("pidof", &["epmd"]);
        let status = Self::env(&mut daemon_command("rabbitmq-server"))
            .arg("-detached")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| format!("start rabbitmq-server: {e}"))?;
        if !status.success() {
            return Err(format!("rabbitmq-server -detached exited with {status}"));
        }
        if !epmd_was_running {
            fs::create_dir_all(services_dir()).map_err(|e| format!("create services dir: {e}"))?;
            let _ = fs::write(services_dir().join("epmd.ours"), "");
        }
        // await_startup fails at once until the node has registered, so poll.
        let ready = wait_until(Duration::from_secs(90), || {
            Self::env(&mut Command::new("rabbitmqctl"))
                .args(["await_startup", "--timeout", "5"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        if !ready || !wait_until(Duration::from_secs(10), Self::is_up) {
            return Err("RabbitMQ did not become ready within 90 s".into());
        }
        if let Some(pid) = Self::pid() {
            write_pid("rabbitmq", pid)?;
        }
        Ok(true)
    }

    /// Stops the broker: `rabbitmqctl shutdown` (which waits for the node),
    /// then makes sure the recorded pid is gone.
    pub fn stop(&self) {
        let pid = Self::pid();
        Self::env(&mut Command::new("rabbitmqctl"))
            .args(["shutdown", "--timeout", "30"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .ok();
        if let Some(pid) = pid {
            stop_pid(pid, Duration::from_secs(10));
        }
        let _ = fs::remove_file(pid_file("rabbitmq"));
    }

    /// Stops the broker and starts it again.
    pub fn restart(&self) -> Result<(), String> {
        self.stop();
        Self::start().map(|_| ())
    }

    /// Stops the broker, and epmd too when the broker's start launched it.
    pub fn stop_all() {
        if Self::is_up() || Self::pid().is_some() {
            RabbitMq.stop();
        }
        if fs::remove_file(services_dir().join("epmd.ours")).is_ok() {
            run_quiet("epmd", &["-kill"]);
        }
    }
}
