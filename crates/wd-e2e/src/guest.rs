//! Real guests under the system libvirtd, driven with `virsh` like an
//! operator would, and destroyed and undefined when dropped.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use wd_testkit::Libvirtd;
use wd_testkit::guest::{GuestAssets, GuestSpec};

/// Runs `virsh -c qemu:///system ARGS` and returns its stdout.
pub fn virsh(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("virsh")
        .arg("-c")
        .arg(Libvirtd::URI)
        .args(args)
        .output()
        .context("run virsh")?;
    if !out.status.success() {
        bail!(
            "virsh {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A guest this process created.
pub struct Guest {
    /// Its spec (name, UUID, action, owner).
    pub spec: GuestSpec,
    xml_path: std::path::PathBuf,
}

impl Guest {
    /// Defines `spec` persistently and starts it, as Nova does.
    pub fn define_and_start(
        spec: GuestSpec,
        assets: &GuestAssets,
        xml: Option<String>,
    ) -> anyhow::Result<Guest> {
        let xml = xml.unwrap_or_else(|| spec.domain_xml(assets));
        let xml_path = wd_testkit::target_dir()
            .join("wd-guest")
            .join(format!("{}.xml", spec.name));
        std::fs::write(&xml_path, xml).context("write domain XML")?;
        let guest = Guest { spec, xml_path };
        virsh(&["define", &guest.xml_path.display().to_string()])?;
        virsh(&["start", &guest.spec.name])?;
        Ok(guest)
    }

    /// `virsh domstate --reason`, e.g. `paused (watchdog)`; `gone` if the
    /// domain no longer exists.
    pub fn state(&self) -> String {
        virsh(&["domstate", "--reason", &self.spec.name]).unwrap_or_else(|_| "gone".into())
    }

    /// Waits until the state starts with `want`, or `timeout`; returns the
    /// last state seen.
    pub fn wait_state(&self, want: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.state();
            if s.starts_with(want) || Instant::now() >= deadline {
                return s;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// [`Guest::wait_state`] for async callers: sleeps without blocking the
    /// runtime's worker.
    pub async fn wait_state_async(&self, want: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.state();
            if s.starts_with(want) || Instant::now() >= deadline {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the guest's console shows that it armed its watchdog
    /// (it fires about 4 s later), or `timeout`; returns whether it did.
    pub async fn wait_armed(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let console = std::fs::read_to_string(&self.spec.serial_log).unwrap_or_default();
            if console.contains("wd-guest: armed") {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = virsh(&["destroy", &self.spec.name]);
        let _ = virsh(&["undefine", &self.spec.name]);
        let _ = std::fs::remove_file(&self.xml_path);
        // The console log helps explain a failure; otherwise it is litter.
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.spec.serial_log);
        }
    }
}
