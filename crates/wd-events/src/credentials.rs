//! Credentials for a libvirt connection that authenticates (`qemu+tcp://`
//! or `qemu+tls://` with SASL), and where libvirt looks for its own.
//!
//! libvirt itself fills what its client configuration file, `auth.conf`,
//! holds for the server ([`auth_file`] says which file that is). The
//! listener answers what is left from its [`Credentials`], if it has any,
//! and otherwise fails with [`Error::Credentials`](crate::Error::Credentials):
//! it never prompts, because a daemon has no one to ask.

use std::path::PathBuf;

/// A SASL user name and password for libvirt. `Debug` never shows the
/// password.
///
/// ```
/// let c = wd_events::Credentials::new("nova", "s3cret");
/// assert_eq!(c.username(), "nova");
/// assert!(!format!("{c:?}").contains("s3cret"));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    username: String,
    password: String,
}

impl Credentials {
    /// Credentials of `username` with `password`.
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Credentials {
        Credentials {
            username: username.into(),
            password: password.into(),
        }
    }

    /// The SASL user name (libvirt's `authname`).
    pub fn username(&self) -> &str {
        &self.username
    }

    /// The password. Never log it.
    pub fn password(&self) -> &str {
        &self.password
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// One credential libvirt asks the client for, by its `virConnectCredentialType`.
pub(crate) fn credential_name(kind: i32) -> String {
    match kind {
        1 => "a user name to act as (`username`)".to_owned(),
        2 => "a user name (`authname`)".to_owned(),
        5 => "a password (`password`)".to_owned(),
        8 => "a realm (`realm`)".to_owned(),
        other => format!("credential type {other}"),
    }
}

/// The `auth.conf` libvirt reads for `uri`, as libvirt looks for it: the
/// `LIBVIRT_AUTH_FILE` environment variable, the URI's `authfile=`
/// parameter, `$XDG_CONFIG_HOME/libvirt/auth.conf` (else
/// `~/.config/libvirt/auth.conf`), `/etc/libvirt/auth.conf`; the first that
/// is set (the variable and the parameter) or exists (the files). `None`
/// when there is none.
pub fn auth_file(uri: &str) -> Option<PathBuf> {
    auth_file_in(
        uri,
        |k| std::env::var_os(k).map(PathBuf::from),
        |p| p.exists(),
    )
}

fn auth_file_in(
    uri: &str,
    env: impl Fn(&str) -> Option<PathBuf>,
    exists: impl Fn(&std::path::Path) -> bool,
) -> Option<PathBuf> {
    if let Some(p) = env("LIBVIRT_AUTH_FILE") {
        return Some(p);
    }
    if let Some(p) = uri
        .split_once('?')
        .and_then(|(_, q)| q.split('&').find_map(|kv| kv.strip_prefix("authfile=")))
    {
        return Some(PathBuf::from(p));
    }
    let config_home = env("XDG_CONFIG_HOME").or_else(|| env("HOME").map(|h| h.join(".config")));
    config_home
        .map(|d| d.join("libvirt/auth.conf"))
        .into_iter()
        .chain(std::iter::once(PathBuf::from("/etc/libvirt/auth.conf")))
        .find(|p| exists(p))
}

/// Where the error says libvirt looked.
pub(crate) fn auth_file_shown(uri: &str) -> String {
    match auth_file(uri) {
        Some(p) if std::env::var_os("LIBVIRT_AUTH_FILE").is_some() => {
            format!("LIBVIRT_AUTH_FILE={}", p.display())
        }
        Some(p) => p.display().to_string(),
        None => "none found: set LIBVIRT_AUTH_FILE, or write ~/.config/libvirt/auth.conf or /etc/libvirt/auth.conf".to_owned(),
    }
}

/// The `HOST[:PORT]` part of `uri`'s authority (after any user info; an
/// IPv6 host in brackets), `""` when it has none.
pub(crate) fn host_port_of(uri: &str) -> &str {
    let rest = uri.split_once("://").map_or("", |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    authority.rsplit_once('@').map_or(authority, |(_, h)| h)
}

/// The server name that `auth.conf` sections are looked up under
/// (`[auth-libvirt-HOST]`), from `uri`.
pub(crate) fn server_of(uri: &str) -> &str {
    let host_port = host_port_of(uri);
    if let Some(v6) = host_port.strip_prefix('[') {
        return v6.split(']').next().unwrap_or("");
    }
    host_port.split(':').next().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn debug_hides_the_password() {
        let c = Credentials::new("nova", "hunter2");
        let shown = format!("{c:?} {c:#?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("nova"), "{shown}");
    }

    #[test]
    fn the_auth_file_is_found_where_libvirt_looks() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| PathBuf::from(v))
            }
        };
        let all = |_: &Path| true;
        let none = |_: &Path| false;
        let uri = "qemu+tcp://h/system";
        assert_eq!(
            auth_file_in(
                uri,
                env(&[("LIBVIRT_AUTH_FILE", "/a"), ("HOME", "/h")]),
                all
            ),
            Some(PathBuf::from("/a"))
        );
        assert_eq!(
            auth_file_in("qemu+tcp://h/system?authfile=/b&x=1", env(&[]), all),
            Some(PathBuf::from("/b"))
        );
        assert_eq!(
            auth_file_in(uri, env(&[("HOME", "/h")]), all),
            Some(PathBuf::from("/h/.config/libvirt/auth.conf"))
        );
        assert_eq!(
            auth_file_in(uri, env(&[("HOME", "/h"), ("XDG_CONFIG_HOME", "/x")]), all),
            Some(PathBuf::from("/x/libvirt/auth.conf"))
        );
        assert_eq!(
            auth_file_in(uri, env(&[("HOME", "/h")]), |p: &Path| p
                .starts_with("/etc")),
            Some(PathBuf::from("/etc/libvirt/auth.conf"))
        );
        assert_eq!(auth_file_in(uri, env(&[("HOME", "/h")]), none), None);
    }

    #[test]
    fn the_server_name_comes_from_the_uri() {
        for (uri, server) in [
            ("qemu+tcp://compute-1/system", "compute-1"),
            ("qemu+tcp://127.0.0.1:16509/system", "127.0.0.1"),
            (
                "qemu+tls://nova@compute-1.example:16514/system?x=1",
                "compute-1.example",
            ),
            ("qemu+tcp://[::1]:16509/system", "::1"),
            ("qemu:///system", ""),
            ("nonsense", ""),
        ] {
            assert_eq!(server_of(uri), server, "{uri}");
        }
    }
}
