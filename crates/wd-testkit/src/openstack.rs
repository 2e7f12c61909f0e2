//! A Python venv with OpenStack's own consumers (Ceilometer, Aodh) from
//! PyPI, for tests that check wd's bus notifications with their code.
//!
//! `cargo xtask test` creates it once under `target/wd-venv` ([`ensure_venv`])
//! and keeps it: a marker file records the package list installed, and the
//! venv is rebuilt only when that list changes.

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::{target_dir, unavailable};

/// The PyPI packages installed into the venv.
pub const VENV_PACKAGES: &[&str] = &["ceilometer", "aodh"];

/// Written into the venv once every package is installed.
const MARKER: &str = ".wd-ready";

/// Nova, as `cargo xtask test` installs it into `target/wd-venv-nova`.
pub const NOVA_PIN: &str = "nova==34.0.0";

/// The Python of the venv with Nova (`target/wd-venv-nova`, made by
/// `cargo xtask test`), or skips (see [`crate::unavailable`]).
pub fn nova_python() -> Option<PathBuf> {
    let dir = target_dir().join("wd-venv-nova");
    if fs::read_to_string(dir.join("wd-installed")).is_ok_and(|s| s.trim() == NOVA_PIN) {
        Some(dir.join("bin").join("python3"))
    } else {
        unavailable(
            "the Nova venv (target/wd-venv-nova)",
            "run `cargo xtask test`, which creates it (pip install nova)",
        )
    }
}

/// The venv directory, `target/wd-venv`.
pub fn venv_dir() -> PathBuf {
    target_dir().join("wd-venv")
}

fn marker_text() -> String {
    format!("{}\n", VENV_PACKAGES.join(" "))
}

/// Whether the venv holds every package of [`VENV_PACKAGES`].
pub fn venv_ready() -> bool {
    fs::read_to_string(venv_dir().join(MARKER)).is_ok_and(|t| t == marker_text())
}

/// The venv's Python, or skips (see [`crate::unavailable`]) when the venv
/// is not ready.
pub fn venv_python() -> Option<PathBuf> {
    if venv_ready() {
        Some(venv_dir().join("bin").join("python3"))
    } else {
        unavailable(
            "the Ceilometer/Aodh venv (target/wd-venv)",
            "`cargo xtask test` creates it",
        )
    }
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let shown = format!("{cmd:?}");
    let status = cmd
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("run {shown}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{shown} failed with {status}"))
    }
}

/// Creates the venv and installs [`VENV_PACKAGES`] from PyPI, unless that
/// is already done. Returns whether it installed anything. Needs `python3`
/// with the `venv` module (Debian's `python3-venv`).
pub fn ensure_venv() -> Result<bool, String> {
    if venv_ready() {
        return Ok(false);
    }
    let dir = venv_dir();
    let python = dir.join("bin").join("python3");
    if !python.exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&dir))?;
    }
    let _ = fs::remove_file(dir.join(MARKER));
    run(Command::new(dir.join("bin").join("pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .args(VENV_PACKAGES))?;
    // Written last: an interrupted install is redone next time.
    let tmp = dir.join(format!("{MARKER}.tmp"));
    fs::write(&tmp, marker_text()).map_err(|e| format!("write {}: {e}", tmp.display()))?;
    fs::rename(&tmp, dir.join(MARKER)).map_err(|e| format!("write the venv marker: {e}"))?;
    Ok(true)
}
