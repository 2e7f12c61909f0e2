//! What the local libvirt library says about itself.

use anyhow::{Context as _, Result};
use virt::connect::Connect;
use wd_xml::LibvirtVersion;

/// The version of the libvirt library this process is linked with.
///
/// `virGetVersion` has no safe wrapper in the `virt` crate, so this opens the
/// built-in `test:///default` driver, which runs inside the process (no
/// daemon, no I/O beyond memory) and reports the library's version.
pub fn local_version() -> Result<LibvirtVersion> {
    // libvirt prints its errors to stderr by default; we report them ourselves.
    virt::error::clear_error_callback();
    let conn = Connect::open(Some("test:///default"))
        .context("cannot ask the local libvirt library for its version; pass --libvirt-version")?;
    let version = conn
        .lib_version()
        .context("cannot ask the local libvirt library for its version; pass --libvirt-version");
    // Dropping the connection closes it.
    drop(conn);
    Ok(LibvirtVersion::from(version?))
}
