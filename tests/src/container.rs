//! The `wdguard` container image as an operator runs it: built by `cargo
//! xtask image` from the `.deb` under `target/debian/`, run with podman, and
//! every container, volume and host user a test made removed again, by id.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, bail};
use wd_testkit::container::{LABEL_DEB, LABEL_UID, LATEST, label, podman_installed, sha256};

/// The newest `wdguard_*.deb` under `target/debian/` (`cargo xtask package`,
/// or `cargo xtask test`, which packages the dev build).
pub fn find_deb() -> Option<PathBuf> {
    let root = wd_testkit::target_dir().join("debian");
    let mut debs: Vec<(std::time::SystemTime, PathBuf)> = ["dev", "release"]
        .iter()
        .filter_map(|p| std::fs::read_dir(root.join(p)).ok())
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|e| e == "deb")
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("wdguard_"))
        })
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .collect();
    debs.sort();
    debs.pop().map(|(_, p)| p)
}

/// `podman --runtime runc ARGS` (crun refuses these machines' hybrid
/// cgroups); its output, whatever the exit status.
pub fn podman(args: &[&str]) -> anyhow::Result<Output> {
    Command::new("podman")
        .args(["--runtime", "runc"])
        .args(args)
        .output()
        .context("run podman")
}

/// [`podman`], failing unless it exits 0; its stdout, trimmed.
pub fn podman_ok(args: &[&str]) -> anyhow::Result<String> {
    let out = podman(args)?;
    if !out.status.success() {
        bail!(
            "podman {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The image built from the newest `.deb`, and the uid it runs as, from
/// `cargo xtask image --deb DEB`. `None` (the test skips, or fails under
/// `WD_REQUIRE_REAL=1`) without root, podman or a `.deb`.
pub fn image() -> Option<(String, u32)> {
    if !wd_testkit::run_quiet("sh", &["-c", "test \"$(id -u)\" = 0"]) {
        return wd_testkit::unavailable("root", "the container test runs podman as root");
    }
    if !podman_installed() {
        return wd_testkit::unavailable("podman", "run `cargo xtask deps` as root");
    }
    let Some(deb) = find_deb() else {
        return wd_testkit::unavailable(
            "the wdguard .deb under target/debian",
            "run `cargo xtask package --profile dev`",
        );
    };
    // A no-op when the image is up to date (its label holds the hash of
    // every input); else seconds, or a minute when the base is rebuilt.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "run",
            "--quiet",
            "--package",
            "xtask",
            "--",
            "image",
            "--deb",
        ])
        .arg(&deb)
        .current_dir(wd_testkit::workspace_root())
        .status()
        .expect("run cargo xtask image");
    assert!(
        status.success(),
        "cargo xtask image --deb {}: {status}",
        deb.display()
    );
    assert_eq!(
        label(LATEST, LABEL_DEB),
        Some(sha256(&deb).expect("hash the .deb")),
        "{LATEST} does not hold {}",
        deb.display()
    );
    let uid = label(LATEST, LABEL_UID)
        .and_then(|u| u.parse().ok())
        .expect("the image is labelled with its uid");
    Some((LATEST.to_owned(), uid))
}

/// A container this test started; removed with its anonymous volumes
/// (`podman rm --force --volumes`, by id) when dropped.
#[derive(Debug)]
pub struct Container {
    /// Its full id.
    pub id: String,
}

impl Container {
    /// `podman run --detach ARGS` (options, the image, and its command).
    pub fn run(args: &[&str]) -> anyhow::Result<Container> {
        let mut all = vec!["run", "--detach"];
        all.extend_from_slice(args);
        let id = podman_ok(&all)?;
        // podman prints systemd's healthcheck-timer errors on stderr, and
        // only the id on stdout.
        let id = id.lines().last().unwrap_or_default().to_owned();
        if id.len() != 64 {
            bail!("podman run printed `{id}`, not a container id");
        }
        Ok(Container { id })
    }

    /// Its log so far (stdout and stderr).
    pub fn logs(&self) -> String {
        podman(&["logs", &self.id])
            .map(|o| {
                String::from_utf8_lossy(&o.stdout).into_owned()
                    + &String::from_utf8_lossy(&o.stderr)
            })
            .unwrap_or_default()
    }

    /// `podman inspect --format FORMAT`.
    pub fn inspect(&self, format: &str) -> anyhow::Result<String> {
        podman_ok(&["inspect", "--format", format, &self.id])
    }

    /// The host pid of its main process.
    pub fn pid(&self) -> anyhow::Result<u32> {
        self.inspect("{{.State.Pid}}")?
            .parse()
            .context("the container's pid")
    }

    /// Whether it is running.
    pub fn running(&self) -> bool {
        self.inspect("{{.State.Running}}")
            .is_ok_and(|r| r == "true")
    }

    /// Waits until `text` appears in `log` (its own log by default), or
    /// fails after `timeout` or when the container stops.
    pub async fn wait_for(
        &self,
        text: &str,
        log: Option<&Path>,
        timeout: std::time::Duration,
    ) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        let read = || match log {
            Some(path) => std::fs::read_to_string(path).unwrap_or_default(),
            None => self.logs(),
        };
        loop {
            if read().contains(text) {
                return Ok(());
            }
            if !self.running() || std::time::Instant::now() >= deadline {
                bail!(
                    "no `{text}` within {timeout:?} (running: {}); log:\n{}\ncontainer output:\n{}",
                    self.running(),
                    read(),
                    self.logs()
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // --volumes: also the anonymous volumes of the image's VOLUMEs that
        // nothing was mounted on.
        let _ = podman(&["rm", "--force", "--volumes", "--time", "10", &self.id]);
    }
}

/// A named volume this test created; removed when dropped (after the
/// containers that use it).
#[derive(Debug)]
pub struct Volume {
    /// Its name.
    pub name: String,
}

impl Volume {
    /// `podman volume create` with a fresh name starting with `prefix`.
    pub fn create(prefix: &str) -> anyhow::Result<Volume> {
        let name = wd_testkit::unique_name(prefix);
        podman_ok(&["volume", "create", &name])?;
        Ok(Volume { name })
    }

    /// Where its data is on the host.
    pub fn mountpoint(&self) -> anyhow::Result<PathBuf> {
        podman_ok(&[
            "volume",
            "inspect",
            "--format",
            "{{.Mountpoint}}",
            &self.name,
        ])
        .map(PathBuf::from)
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        let _ = podman(&["volume", "rm", "--force", &self.name]);
    }
}

/// The container's uid and gid, known to the host: libvirtd names each
/// client of its socket, and refuses one whose uid or gid has no passwd or
/// group entry (as a deployment must give it; see docs/deploy.md). Made
/// here only when missing, as `wd-image`, and removed when dropped.
#[derive(Debug)]
pub struct HostUser {
    made_user: bool,
    made_group: bool,
}

/// The name the test gives the host user and group it makes.
const HOST_NAME: &str = "wd-image";

impl HostUser {
    /// Makes group and user `uid` exist on the host.
    pub fn ensure(uid: u32) -> anyhow::Result<HostUser> {
        let id = uid.to_string();
        let mut made = HostUser {
            made_user: false,
            made_group: false,
        };
        if !wd_testkit::run_quiet("getent", &["group", &id]) {
            run_ok("groupadd", &["--system", "--gid", &id, HOST_NAME])?;
            made.made_group = true;
        }
        if !wd_testkit::run_quiet("getent", &["passwd", &id]) {
            run_ok(
                "useradd",
                &[
                    "--system",
                    "--uid",
                    &id,
                    "--gid",
                    &id,
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    HOST_NAME,
                ],
            )?;
            made.made_user = true;
        }
        Ok(made)
    }
}

impl Drop for HostUser {
    fn drop(&mut self) {
        if self.made_user {
            let _ = run_ok("userdel", &[HOST_NAME]);
        }
        if self.made_group {
            let _ = run_ok("groupdel", &[HOST_NAME]);
        }
    }
}

fn run_ok(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("run {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `/proc/PID/status`'s `Uid:` or `Gid:` line: real, effective, saved and
/// filesystem ids.
pub fn proc_ids(pid: u32, field: &str) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| {
            v.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}
