//! The `wdguard` container image, as `cargo xtask image` builds it and the
//! container test runs it: its name, its labels, and how to read them.

use std::path::Path;
use std::process::{Command, Output, Stdio};

/// The image's repository (podman's local storage; no registry).
pub const IMAGE: &str = "localhost/wdguard";

/// The tag that always names the newest build.
pub const LATEST: &str = "localhost/wdguard:latest";

/// The user the container runs as, unless `cargo xtask image --uid` says
/// otherwise. It must resolve in the passwd of the libvirtd whose socket
/// the container uses (libvirtd names every client), so it is fixed.
pub const DEFAULT_UID: u32 = 42650;

/// Label: the hash of every input of the image (see `xtask/src/image.rs`).
pub const LABEL_INPUTS: &str = "wd.inputs";

/// Label: the SHA-256 of the `.deb` installed in the image.
pub const LABEL_DEB: &str = "wd.deb.sha256";

/// Label: the numeric user (and group) the container runs as.
pub const LABEL_UID: &str = "wd.uid";

/// The SHA-256 of `path`, in hex (`sha256sum`, from coreutils).
pub fn sha256(path: &Path) -> Result<String, String> {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .map_err(|e| format!("run sha256sum: {e}"))?;
    digest(out, &path.display().to_string())
}

/// The SHA-256 of `bytes`, in hex (`sha256sum` reading them on stdin).
pub fn sha256_bytes(bytes: &[u8]) -> Result<String, String> {
    use std::io::Write as _;
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("run sha256sum: {e}"))?;
    let written = child
        .stdin
        .take()
        .map(|mut stdin| stdin.write_all(bytes))
        .unwrap_or(Ok(()));
    let out = child
        .wait_with_output()
        .map_err(|e| format!("run sha256sum: {e}"))?;
    written.map_err(|e| format!("write to sha256sum: {e}"))?;
    digest(out, "-")
}

/// The hex digest `sha256sum` printed for `what`.
fn digest(out: Output, what: &str) -> Result<String, String> {
    if !out.status.success() {
        return Err(format!(
            "sha256sum {what}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .map(str::to_owned)
        .ok_or_else(|| format!("sha256sum {what} printed nothing"))
}

/// Label `key` of local image `image`, if the image exists and has it.
pub fn label(image: &str, key: &str) -> Option<String> {
    let out = Command::new("podman")
        .args(["image", "inspect", "--format"])
        .arg(format!("{{{{index .Labels \"{key}\"}}}}"))
        .arg(image)
        .output()
        .ok()?;
    let value = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !value.is_empty() && value != "<no value>").then_some(value)
}

/// Whether podman is installed (it answers `podman --version`).
pub fn podman_installed() -> bool {
    crate::run_quiet("podman", &["--version"])
}
