//! One-shot questions to libvirt beside the listener: can a URI be opened
//! right now, and which version is the local library. A program that uses
//! these needs no `virt` dependency of its own.

use virt::connect::Connect;

use crate::error::{Error, Result};

/// Stops libvirt's default error handler, which prints every error to
/// stderr outside the program's own log. This crate reports the errors that
/// matter itself (as [`Error`]s and [`Item::Error`](crate::Item::Error)s).
pub fn quiet_default_errors() {
    virt::error::clear_error_callback();
}

/// Opens `uri` (read-only with `read_only`, as the listener would) and
/// closes it again: whether the listener could connect now. Blocking; call
/// it from a blocking thread in async code.
///
/// # Errors
///
/// [`Error::Connect`] with libvirt's reason, or [`Error::ReadWriteRefused`]
/// when only the read-only connection is allowed.
pub fn probe(uri: &str, read_only: bool) -> Result<()> {
    // Dropping the connection closes it.
    open(uri, read_only).map(drop)
}

/// Opens `uri`, read-only with `read_only`. When a read-write open fails,
/// a read-only one is tried: if that works, the failure was this user's
/// access, and the error says what to grant.
pub(crate) fn open(uri: &str, read_only: bool) -> Result<Connect> {
    if read_only {
        return Connect::open_read_only(Some(uri)).map_err(|source| Error::Connect {
            uri: uri.to_owned(),
            source,
        });
    }
    Connect::open(Some(uri)).map_err(|source| match Connect::open_read_only(Some(uri)) {
        Ok(ro) => {
            drop(ro);
            Error::ReadWriteRefused {
                uri: uri.to_owned(),
                source,
            }
        }
        Err(_) => Error::Connect {
            uri: uri.to_owned(),
            source,
        },
    })
}

/// The version of the libvirt library this process is linked with, as
/// libvirt encodes it: `major * 1_000_000 + minor * 1_000 + release`.
///
/// `virGetVersion` has no safe wrapper in the `virt` crate, so this opens
/// the built-in `test:///default` driver, which runs inside the process (no
/// daemon, no I/O beyond memory), and asks it.
///
/// # Errors
///
/// [`Error::Connect`] if the test driver cannot be opened, or
/// [`Error::Version`].
pub fn library_version() -> Result<u32> {
    let uri = "test:///default";
    let conn = Connect::open(Some(uri)).map_err(|source| Error::Connect {
        uri: uri.to_owned(),
        source,
    })?;
    conn.lib_version().map_err(Error::Version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_library_reports_a_plausible_version() {
        quiet_default_errors();
        let v = library_version().unwrap();
        // Debian 12 ships 9.0; anything from 1.0 on is plausible.
        assert!(v >= 1_000_000, "{v}");
    }

    #[test]
    fn probing_names_the_uri_that_failed() {
        quiet_default_errors();
        probe("test:///default", false).unwrap();
        let err = probe("qemu+unix:///system?socket=/nonexistent/sock", true).unwrap_err();
        assert!(
            err.to_string().contains(
                "cannot connect to libvirt at `qemu+unix:///system?socket=/nonexistent/sock`"
            ),
            "{err}"
        );
        // Neither open works: not a matter of access.
        let err = probe("qemu+unix:///system?socket=/nonexistent/sock", false).unwrap_err();
        assert!(matches!(err, Error::Connect { .. }), "{err}");
    }
}
