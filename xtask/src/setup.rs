//! Machine setup: Debian packages, the libvirt host, guest assets, services.

use std::process::Command;

use anyhow::{Context, Result, bail};
use wd_testkit::guest::{GuestAssets, assets_dir, build_assets};
use wd_testkit::{Libvirtd, RabbitMq, RabbitMq2};

/// Every Debian package the workspace's build, tests and demo need.
pub const PACKAGES: &[&str] = &[
    // Building the `virt` crate.
    "libvirt-dev",
    "pkg-config",
    // libvirtd with the QEMU driver, and its client.
    "libvirt-daemon",
    "libvirt-daemon-driver-qemu",
    "libvirt-clients",
    "qemu-system-x86",
    // The guest's initramfs.
    "busybox-static",
    "cpio",
    "kmod",
    "xz-utils",
    // virt-xml-validate needs xmllint.
    "libxml2-utils",
    // libvirtd's TCP listener with SASL for the remote-libvirt tests:
    // saslpasswd2, and the DIGEST-MD5 and SCRAM mechanisms.
    "sasl2-bin",
    "libsasl2-modules",
    // The message bus.
    "rabbitmq-server",
    // `cargo xtask package`: the postinst's adduser, lintian on the .deb,
    // and systemd-analyze to verify the unit (systemd need not be PID 1).
    "adduser",
    "lintian",
    "systemd",
    // Webhook TLS: the system trust store, and the private CA the TLS tests
    // make with the openssl command line; the hostile-endpoint tests'
    // self-signed TLS endpoint (`openssl req`, `openssl s_server`).
    "ca-certificates",
    "openssl",
    // The venv with Ceilometer and Aodh from PyPI (`python3 -m venv`), and
    // the one with Prometheus' Python client whose OpenMetrics parser the
    // metrics test uses (`prometheus_venv`).
    "python3-venv",
    // The baseline agent `cargo xtask bench` compares with (a Python script
    // on libvirt's own bindings, as operators write today).
    "python3-libvirt",
    // `cargo xtask image` and the container test (see image::TOOLS), and
    // jq, which the image's entrypoint uses (its unit test runs it here).
    "jq",
    "mmdebstrap",
    "podman",
    "runc",
];

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status}", pkg])
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout == b"installed")
}

/// Installs the missing packages with apt-get as root; otherwise prints the
/// exact command and fails.
pub fn ensure_packages() -> Result<()> {
    ensure(PACKAGES)
}

/// Installs those of `packages` that are missing, with apt-get as root;
/// otherwise prints the exact command and fails.
pub fn ensure(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    if !is_root() {
        bail!(
            "missing Debian packages: {list}\nrun as root:\n  apt-get update && apt-get install -y --no-install-recommends {list}"
        );
    }
    eprintln!("xtask: installing {list}");
    cmd_ok(Command::new("apt-get").args(["update", "-q"]))?;
    cmd_ok(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

pub fn cmd_ok(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// The venv with Prometheus' Python client, whose OpenMetrics parser the
/// metrics tests use: `target/wd-venv-prom` (apart from other venvs, so its
/// pins move alone).
pub fn prometheus_venv() -> Result<()> {
    pinned_venv("wd-venv-prom", "prometheus-client==0.21.1")
}

/// The venv with Nova itself, whose `RequestContext.from_dict` the
/// notification tests use as the oracle for the `_context_*` keys:
/// `target/wd-venv-nova` (apart from Ceilometer's venv, whose pins differ).
pub fn nova_venv() -> Result<()> {
    pinned_venv("wd-venv-nova", wd_testkit::openstack::NOVA_PIN)
}

/// Creates (once per `pin`) `target/NAME`, a venv with `pin` from PyPI.
fn pinned_venv(name: &str, pin: &str) -> Result<()> {
    let dir = crate::target_dir().join(name);
    let python = dir.join("bin/python3");
    let stamp = dir.join("wd-installed");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == pin) {
        return Ok(());
    }
    eprintln!("xtask: creating {} with {pin}", dir.display());
    cmd_ok(Command::new("python3").args(["-m", "venv"]).arg(&dir))?;
    cmd_ok(Command::new(&python).args([
        "-m",
        "pip",
        "install",
        "-q",
        "--disable-pip-version-check",
        pin,
    ]))?;
    std::fs::write(&stamp, pin).with_context(|| format!("write {}", stamp.display()))
}

/// The venv with OpenStack's `masakari-instancemonitor` (PyPI
/// `masakari-monitors`, and `libvirt-python`, which it imports but does not
/// declare), which `cargo xtask bench` runs beside `wdguard watch`:
/// `target/wd-venv-masakari` (apart from other venvs, so its pins move
/// alone). `libvirt-python` builds against `libvirt-dev`.
pub fn masakari_venv() -> Result<()> {
    const PINS: [&str; 2] = ["masakari-monitors==22.0.0", "libvirt-python==12.8.0"];
    let dir = crate::target_dir().join("wd-venv-masakari");
    let python = dir.join("bin/python3");
    let stamp = dir.join("wd-installed");
    let want = PINS.join(" ");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == want) {
        return Ok(());
    }
    eprintln!("xtask: creating {} with {want}", dir.display());
    cmd_ok(Command::new("python3").args(["-m", "venv"]).arg(&dir))?;
    cmd_ok(
        Command::new(&python)
            .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
            .args(PINS),
    )?;
    std::fs::write(&stamp, want).with_context(|| format!("write {}", stamp.display()))
}

/// Builds (or finds) the guest kernel and initramfs.
pub fn guest() -> Result<GuestAssets> {
    let dir = assets_dir();
    if let Some(a) = GuestAssets::in_dir(&dir) {
        return Ok(a);
    }
    eprintln!("xtask: building the watchdog guest in {}", dir.display());
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    match build_assets(&dir) {
        Ok(a) => Ok(a),
        // Fresh machines may have no apt lists yet: update once and retry.
        Err(first) if is_root() => {
            eprintln!("xtask: {first}; running apt-get update and trying again");
            cmd_ok(Command::new("apt-get").args(["update", "-q"]))?;
            build_assets(&dir).map_err(anyhow::Error::msg)
        }
        Err(e) => Err(anyhow::Error::msg(e)),
    }
}

/// Creates (once) the Python venv with Ceilometer and Aodh from PyPI that
/// the OpenStack interop tests run.
pub fn venv() -> Result<()> {
    if !wd_testkit::openstack::venv_ready() {
        eprintln!(
            "xtask: creating {} with {} from PyPI",
            wd_testkit::openstack::venv_dir().display(),
            wd_testkit::openstack::VENV_PACKAGES.join(", ")
        );
    }
    wd_testkit::openstack::ensure_venv()
        .map(|_| ())
        .map_err(anyhow::Error::msg)
}

/// What `services_up` started, so that only that is stopped afterwards.
#[derive(Debug, Default)]
pub struct Started {
    pub libvirtd: bool,
    pub rabbitmq: bool,
    /// The second RabbitMQ node (127.0.0.1:5673), for failover tests.
    pub rabbitmq2: bool,
}

/// Starts libvirtd (with virtlogd) and RabbitMQ unless they already answer.
pub fn services_up() -> Result<Started> {
    let mut started = Started::default();
    if !Libvirtd::is_up() && !is_root() {
        bail!(
            "libvirtd is not running and starting it needs root; as root run:\n  cargo xtask services up"
        );
    }
    started.libvirtd = libvirtd_up()?;
    if !RabbitMq::is_up() {
        if !is_root() {
            bail!(
                "RabbitMQ is not running and starting it needs root; as root run:\n  cargo xtask services up"
            );
        }
        eprintln!("xtask: starting RabbitMQ on 127.0.0.1:5672");
        started.rabbitmq = RabbitMq::start().map_err(anyhow::Error::msg)?;
    }
    if !RabbitMq2::is_up() && is_root() {
        eprintln!(
            "xtask: starting the second RabbitMQ node {} on 127.0.0.1:{}",
            RabbitMq2::NODE,
            RabbitMq2::PORT
        );
        started.rabbitmq2 = RabbitMq2::start().map_err(anyhow::Error::msg)?;
    }
    services_status();
    Ok(started)
}

/// Starts libvirtd (with virtlogd) unless it answers; returns whether it
/// started it.
pub fn libvirtd_up() -> Result<bool> {
    if Libvirtd::is_up() {
        // A libvirtd started before read-only clients were allowed (the
        // agent runs as user wd, read-only), or without its TCP listener,
        // must restart with the new configuration.
        if is_root()
            && (Libvirtd::allow_read_only_clients().map_err(anyhow::Error::msg)?
                || !Libvirtd::tcp_is_up())
        {
            eprintln!(
                "xtask: restarting libvirtd to allow read-only clients and listen on 127.0.0.1:{} (SASL)",
                Libvirtd::TCP_PORT
            );
            Libvirtd.restart().map_err(anyhow::Error::msg)?;
        }
        return Ok(false);
    }
    Libvirtd::prepare_host().map_err(anyhow::Error::msg)?;
    eprintln!("xtask: starting virtlogd and libvirtd");
    Libvirtd::start().map_err(anyhow::Error::msg)
}

/// Stops every service recorded under `target/wd-services`.
pub fn services_down() {
    Libvirtd::stop_all();
    RabbitMq2::stop();
    RabbitMq::stop_all();
    services_status();
}

/// Stops what a command started, even when a step fails.
pub struct ServicesGuard(pub Started);

impl Drop for ServicesGuard {
    fn drop(&mut self) {
        stop_started(&self.0);
    }
}

/// Stops what `started` says this run started.
pub fn stop_started(started: &Started) {
    if started.libvirtd {
        Libvirtd::stop_all();
    }
    // The second node first: the main node's stop may take epmd with it.
    if started.rabbitmq2 {
        RabbitMq2::stop();
    }
    if started.rabbitmq {
        RabbitMq::stop_all();
    }
}

pub fn services_status() {
    let show = |up: bool| if up { "up" } else { "down" };
    eprintln!(
        "xtask: libvirtd {} (pid {:?}), rabbitmq {} (pid {:?}), rabbitmq node 2 {} (pid {:?})",
        show(Libvirtd::is_up()),
        Libvirtd::pid(),
        show(RabbitMq::is_up()),
        RabbitMq::pid(),
        show(RabbitMq2::is_up()),
        RabbitMq2::pid()
    );
}
