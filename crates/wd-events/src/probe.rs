//! One-shot questions to libvirt beside the listener: can a URI be opened
//! right now, and which version is the local library. A program that uses
//! these needs no `virt` dependency of its own.

use std::ffi::c_int;

use virt::connect::Connect;
use virt::sys;

use crate::config::ListenerConfig;
use crate::credentials::{auth_file_shown, credential_name, server_of};
use crate::error::{Error, Result};

/// Stops libvirt's default error handler, which prints every error to
/// stderr outside the program's own log. This crate reports the errors that
/// matter itself (as [`Error`]s and [`Item::Error`](crate::Item::Error)s).
pub fn quiet_default_errors() {
    virt::error::clear_error_callback();
}

/// Opens the connection `config` describes (its URI, read-only or not, its
/// credentials, as the listener would) and closes it again: whether the
/// listener could connect now. Blocking; call it from a blocking thread in
/// async code.
///
/// # Errors
///
/// [`Error::Connect`] with libvirt's reason, [`Error::Credentials`] when the
/// server asks for credentials that neither `auth.conf` nor
/// [`ListenerConfig::credentials`] give, or [`Error::ReadWriteRefused`] when
/// only the read-only connection is allowed.
pub fn probe(config: &ListenerConfig) -> Result<()> {
    // Dropping the connection closes it.
    open(config).map(drop)
}

/// Opens the connection `config` describes. When a read-write open fails,
/// a read-only one is tried: if that works, the failure was this user's
/// access, and the error says what to grant.
pub(crate) fn open(config: &ListenerConfig) -> Result<Connect> {
    if config.read_only {
        return open_as(config, true);
    }
    open_as(config, false).map_err(|e| match e {
        Error::Connect { uri, source } => match open_as(config, true) {
            Ok(ro) => {
                drop(ro);
                Error::ReadWriteRefused { uri, source }
            }
            Err(_) => Error::Connect { uri, source },
        },
        other => other,
    })
}

/// Opens `config.uri` with libvirt's `virConnectOpenAuth`: libvirt fills
/// what `auth.conf` holds for the server, and the rest comes from
/// `config.credentials`, or the open fails. Nothing ever prompts.
fn open_as(config: &ListenerConfig, read_only: bool) -> Result<Connect> {
    let uri = config.uri.as_str();
    let credentials = config.credentials.as_ref();
    let mut answer = |kind: c_int| {
        let c = credentials?;
        match u32::try_from(kind).ok()? {
            sys::VIR_CRED_AUTHNAME => Some(c.username().to_owned()),
            sys::VIR_CRED_PASSPHRASE => Some(c.password().to_owned()),
            _ => None,
        }
    };
    crate::ffi::open_auth(uri, read_only, &mut answer).map_err(|(missing, source)| {
        if missing.is_empty() {
            return Error::Connect {
                uri: uri.to_owned(),
                source,
            };
        }
        let missing: Vec<String> = missing.into_iter().map(credential_name).collect();
        Error::Credentials {
            uri: uri.to_owned(),
            missing: missing.join(" and "),
            auth_file: auth_file_shown(uri),
            server: server_of(uri).to_owned(),
            source: Box::new(source),
        }
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
        let config = |uri: &str, read_only| ListenerConfig::default().uri(uri).read_only(read_only);
        probe(&config("test:///default", false)).unwrap();
        let missing = "qemu+unix:///system?socket=/nonexistent/sock";
        let err = probe(&config(missing, true)).unwrap_err();
        assert!(
            err.to_string().contains(
                "cannot connect to libvirt at `qemu+unix:///system?socket=/nonexistent/sock`"
            ),
            "{err}"
        );
        // Neither open works: not a matter of access.
        let err = probe(&config(missing, false)).unwrap_err();
        assert!(matches!(err, Error::Connect { .. }), "{err}");
    }

    #[test]
    fn a_remote_uri_is_opened_by_libvirt_and_fails_without_prompting() {
        quiet_default_errors();
        // Nothing listens on port 1: libvirt's TCP and TLS clients fail at
        // once (TLS may fail earlier, on its client certificates), with
        // libvirt's reason, never a prompt or a hang.
        for uri in [
            "qemu+tcp://127.0.0.1:1/system",
            "qemu+tls://127.0.0.1:1/system",
        ] {
            let err = probe(&ListenerConfig::default().uri(uri).read_only(true)).unwrap_err();
            assert!(matches!(err, Error::Connect { .. }), "{err}");
            assert!(err.to_string().contains(uri), "{err}");
        }
    }
}
