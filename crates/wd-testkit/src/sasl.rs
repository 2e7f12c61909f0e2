//! The system libvirtd's TCP listener, as kolla-ansible sets one up for
//! remote clients such as masakari-instancemonitor: `qemu+tcp://` on
//! 127.0.0.1 with SASL authentication against libvirt's own user database
//! (`/etc/libvirt/passwd.db`, users made with `saslpasswd2`).
//!
//! Plain TCP carries no TLS, so libvirt insists on a SASL mechanism with a
//! security layer there (SSF of at least 56): DIGEST-MD5. SCRAM-SHA-256 has
//! none and is only accepted over TLS; both are listed, so a `qemu+tls://`
//! listener may use SCRAM.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::services::{Libvirtd, write_file};

/// libvirt's SASL user database, as `sasldb_path` names it.
pub const SASL_DB: &str = "/etc/libvirt/passwd.db";

/// Cyrus SASL's configuration for the `libvirt` service.
pub const SASL_CONF: &str = "/etc/sasl2/libvirt.conf";

/// The `libvirtd.conf` that `cargo xtask services up` writes.
pub(crate) fn libvirtd_conf() -> String {
    format!(
        "# Written by wd's xtask.\n\
         # Read-only clients (libvirt-sock-ro) need no polkit, which needs a\n\
         # system D-Bus that this machine does not run.\n\
         auth_unix_ro = \"none\"\n\
         # The remote clients' TCP listener (libvirtd --listen): loopback\n\
         # only, SASL users from {SASL_DB}. No TLS listener.\n\
         listen_tls = 0\n\
         listen_tcp = 1\n\
         listen_addr = \"127.0.0.1\"\n\
         tcp_port = \"{port}\"\n\
         auth_tcp = \"sasl\"\n",
        port = Libvirtd::TCP_PORT
    )
}

/// Whether `/etc/libvirt/libvirtd.conf` is the one [`libvirtd_conf`] gives
/// (so `libvirtd --listen` opens exactly the TCP listener, and no TLS one).
pub(crate) fn config_is_ours() -> bool {
    std::fs::read_to_string("/etc/libvirt/libvirtd.conf").is_ok_and(|c| c == libvirtd_conf())
}

/// Writes [`SASL_CONF`]; returns whether it changed (libvirtd reads it when
/// it starts).
pub(crate) fn write_sasl_config() -> Result<bool, String> {
    write_file(
        Path::new(SASL_CONF),
        &format!(
            "# Written by wd's xtask: libvirtd's SASL users live in {SASL_DB}.\n\
             mech_list: digest-md5 scram-sha-256\n\
             sasldb_path: {SASL_DB}\n"
        ),
    )
}

impl Libvirtd {
    /// The port of the TCP listener (libvirt's default for `qemu+tcp`).
    pub const TCP_PORT: u16 = 16509;

    /// The URI of the system daemon over TCP.
    pub fn tcp_uri() -> String {
        format!("qemu+tcp://127.0.0.1:{}/system", Self::TCP_PORT)
    }

    /// Whether the TCP listener accepts connections.
    pub fn tcp_is_up() -> bool {
        let addr = SocketAddr::from(([127, 0, 0, 1], Self::TCP_PORT));
        TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
    }

    /// Makes sure the TCP listener is up: a libvirtd started without
    /// `--listen` (or before its configuration asked for TCP) is restarted
    /// with it. Guests keep running across the restart. Needs root.
    pub fn ensure_tcp() -> Result<(), String> {
        if Self::is_up() && Self::tcp_is_up() {
            return Ok(());
        }
        // Writes libvirtd.conf and the SASL configuration; the Unix
        // sockets' settings stay as they were.
        Self::prepare_host()?;
        if Self::is_up() {
            Libvirtd.restart()?;
        } else {
            Self::start()?;
        }
        if crate::services::wait_until(Duration::from_secs(10), Self::tcp_is_up) {
            Ok(())
        } else {
            Err(format!(
                "libvirtd does not listen on 127.0.0.1:{}",
                Self::TCP_PORT
            ))
        }
    }
}

/// Returns the system libvirtd with its TCP listener up (restarting it with
/// `--listen` if needed, as root), or skips (see [`crate::unavailable`]).
pub fn libvirtd_tcp() -> Option<Libvirtd> {
    crate::libvirtd()?;
    match Libvirtd::ensure_tcp() {
        Ok(()) => Some(Libvirtd),
        Err(e) => crate::unavailable(
            "libvirtd's TCP listener with SASL",
            &format!("{e}; run `cargo xtask services up` as root"),
        ),
    }
}

/// A SASL user of libvirtd, made with `saslpasswd2` and deleted when
/// dropped. Its password is random and never on a command line.
pub struct SaslUser {
    /// The user name.
    pub name: String,
    /// The password.
    pub password: String,
}

impl std::fmt::Debug for SaslUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaslUser")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl SaslUser {
    /// Creates a user whose name starts with `prefix`, with a random
    /// password (given to `saslpasswd2` on its standard input). Needs root.
    pub fn create(prefix: &str) -> Result<SaslUser, String> {
        let name = crate::unique_name(prefix);
        let password = random_password()?;
        let mut child = Command::new("saslpasswd2")
            .args(["-p", "-c", "-a", "libvirt", "-f", SASL_DB, &name])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("run saslpasswd2 (package sasl2-bin): {e}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(password.as_bytes())
                .map_err(|e| format!("write to saslpasswd2: {e}"))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| format!("wait for saslpasswd2: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "saslpasswd2 failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(SaslUser { name, password })
    }
}

impl Drop for SaslUser {
    fn drop(&mut self) {
        crate::run_quiet(
            "saslpasswd2",
            &["-d", "-a", "libvirt", "-f", SASL_DB, &self.name],
        );
    }
}

/// 24 random alphanumerics from the kernel.
fn random_password() -> Result<String, String> {
    let mut bytes = [0u8; 64];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .map_err(|e| format!("read /dev/urandom: {e}"))?;
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    Ok(bytes
        .iter()
        .filter_map(|b| ALPHABET.get(usize::from(*b) % 64))
        .take(24)
        .map(|&b| char::from(b))
        .collect())
}
