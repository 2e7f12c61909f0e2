//! Watching libvirtd's socket while disconnected, so the listener is back
//! within a probe interval of libvirtd accepting connections again, however
//! long it was away (the backoff alone would have grown to many seconds).
//!
//! The probe is a plain `connect(2)` on the local Unix socket, closed at
//! once: a missing file (`ENOENT`) or a file nobody listens on
//! (`ECONNREFUSED`, left by a killed daemon) answers in microseconds, with
//! no libvirt call and no RPC. It runs only while the listener waits to
//! reconnect (a connected listener never probes: idle CPU is unchanged). A
//! wait ends early only on a transition to "accepting": the socket did not
//! accept at some probe of this wait, or it is a new file (libvirtd
//! unlinks and binds its socket anew when it starts). While the socket
//! that accepted at the start of the wait is still the same file (a daemon
//! that accepts but refuses us: authentication, limits), the watch only
//! `stat(2)`s it, so such a daemon sees one probe connection per wait and
//! is retried on the backoff's schedule, never at the probe's pace.
//!
//! A remote URI (`qemu+tcp://`, `qemu+tls://`, or `qemu://HOST/` which is
//! TLS) is watched the same way on its TCP port: a `connect(2)` to the
//! server, closed at once. It has no file to `stat`, so a server that
//! accepts at the start of a wait (but refuses us) is retried on the
//! backoff's schedule only; and it is probed at most every
//! [`TCP_PROBE_MIN`], since each probe may resolve a host name.
//!
//! A connection that is accepted by the kernel's backlog while libvirtd
//! still initialises its drivers makes `virConnectOpen` wait until libvirtd
//! serves it: the reconnect then follows libvirtd's first answer directly.

use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::ListenerConfig;

/// The shortest interval between two probes of a TCP port.
pub(crate) const TCP_PROBE_MIN: Duration = Duration::from_millis(500);

/// How long one TCP probe waits for the server to accept.
const TCP_PROBE_TIMEOUT: Duration = Duration::from_millis(300);

/// Where a daemon listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// A local Unix socket.
    Unix(PathBuf),
    /// A server's TCP port: host name (or address) and port.
    Tcp(String, u16),
}

impl Target {
    fn accepting(&self) -> bool {
        match self {
            Target::Unix(p) => UnixStream::connect(p).is_ok(),
            Target::Tcp(host, port) => (host.as_str(), *port)
                .to_socket_addrs()
                .into_iter()
                .flatten()
                .any(|a| TcpStream::connect_timeout(&a, TCP_PROBE_TIMEOUT).is_ok()),
        }
    }
}

/// Where a local libvirt URI's daemon listens, and how often to look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SocketWatch {
    /// The candidate sockets (the monolithic daemon's and the driver's
    /// modular daemon's, or a server's TCP port); the daemon is back when
    /// any of them accepts.
    pub(crate) targets: Vec<Target>,
    /// How often to probe while waiting.
    pub(crate) every: Duration,
}

impl SocketWatch {
    /// The watch for `config`, or `None` when the URI names no local socket
    /// (a remote transport, the `test` driver, embedded mode) or probing is
    /// off (`socket_probe_interval` zero).
    pub(crate) fn for_config(config: &ListenerConfig) -> Option<SocketWatch> {
        if config.socket_probe_interval.is_zero() {
            return None;
        }
        if let Some((host, port)) = tcp_target(&config.uri) {
            return Some(SocketWatch {
                targets: vec![Target::Tcp(host, port)],
                every: config.socket_probe_interval.max(TCP_PROBE_MIN),
            });
        }
        let runtime_dir = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from);
        let paths = socket_paths(&config.uri, config.read_only, runtime_dir.as_deref());
        (!paths.is_empty()).then_some(SocketWatch {
            targets: paths.into_iter().map(Target::Unix).collect(),
            every: config.socket_probe_interval,
        })
    }

    /// Whether any candidate socket accepts a connection now.
    pub(crate) fn accepting(&self) -> bool {
        self.targets.iter().any(Target::accepting)
    }

    /// Which files the candidate paths are now (device, inode and change
    /// time: an inode number may be reused).
    pub(crate) fn files(&self) -> Files {
        self.targets
            .iter()
            .map(|t| match t {
                Target::Unix(p) => std::fs::metadata(p)
                    .ok()
                    .map(|m| (m.dev(), m.ino(), m.ctime(), m.ctime_nsec())),
                // A port is the same "file" for as long as we watch it.
                Target::Tcp(..) => None,
            })
            .collect()
    }

    /// Starts watching for one wait, with one probe now. `files` is what
    /// [`files`](Self::files) said before the last connection attempt: a
    /// socket that is new since then belongs to a daemon that attempt has
    /// not tried.
    pub(crate) fn begin(&self, files: Files) -> Waiting {
        Waiting {
            armed: !self.accepting(),
            files,
            watch: self.clone(),
        }
    }
}

/// What the candidate socket paths are, as files.
pub(crate) type Files = Vec<Option<(u64, u64, i64, i64)>>;

/// One wait's watch: see the module docs.
#[derive(Debug)]
pub(crate) struct Waiting {
    watch: SocketWatch,
    /// A probe of this wait found no daemon accepting.
    armed: bool,
    /// The socket files as last seen.
    files: Files,
}

impl Waiting {
    /// How often to look.
    pub(crate) fn every(&self) -> Duration {
        self.watch.every
    }

    /// Looks once: whether the daemon is back (accepting, after not
    /// accepting or on a new socket file).
    pub(crate) fn back(&mut self) -> bool {
        if !self.armed {
            let files = self.watch.files();
            if files == self.files {
                return false;
            }
            self.files = files;
        }
        if self.watch.accepting() {
            return true;
        }
        self.armed = true;
        false
    }
}

/// The Unix sockets that a libvirt client would connect to for `uri`: the
/// `socket=` parameter when given, else the system (or session) daemon's
/// well-known sockets. Empty for a URI that uses no local socket.
pub(crate) fn socket_paths(uri: &str, read_only: bool, runtime_dir: Option<&Path>) -> Vec<PathBuf> {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return Vec::new();
    };
    let (driver, transport) = scheme.split_once('+').unwrap_or((scheme, ""));
    if !(transport.is_empty() || transport == "unix") || driver.is_empty() || driver == "test" {
        return Vec::new();
    }
    let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
    let Some((host, path)) = before_query.split_once('/') else {
        return Vec::new();
    };
    // A host name means another machine, unless it is a Unix transport
    // (which ignores it).
    if !host.is_empty() && transport != "unix" {
        return Vec::new();
    }
    if let Some(socket) = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find_map(|(k, v)| (k == "socket").then_some(v))
    {
        return percent_decode(socket)
            .map(|s| vec![PathBuf::from(s)])
            .unwrap_or_default();
    }
    let ro = if read_only { "-ro" } else { "" };
    let dir = match path {
        "system" => PathBuf::from("/run/libvirt"),
        // A session daemon's sockets have no read-only twin.
        "session" => match runtime_dir {
            Some(d) => return session_paths(&d.join("libvirt"), driver),
            None => return Vec::new(),
        },
        _ => return Vec::new(),
    };
    vec![
        dir.join(format!("libvirt-sock{ro}")),
        dir.join(format!("virt{driver}d-sock{ro}")),
    ]
}

/// The TCP server a remote libvirt URI connects to: `DRIVER+tcp://HOST`
/// (port 16509 unless given) and `DRIVER+tls://HOST` or `DRIVER://HOST`
/// (16514). `None` for any other URI, or one without a host.
pub(crate) fn tcp_target(uri: &str) -> Option<(String, u16)> {
    let (scheme, _) = uri.split_once("://")?;
    let (driver, transport) = scheme.split_once('+').unwrap_or((scheme, ""));
    let default_port = match transport {
        "tcp" => 16509,
        "tls" | "" => 16514,
        _ => return None,
    };
    if driver.is_empty() || driver == "test" {
        return None;
    }
    let host = crate::credentials::server_of(uri);
    if host.is_empty() {
        return None;
    }
    let port = match crate::credentials::host_port_of(uri).rsplit_once(':') {
        // An IPv6 address without a port has colons too, inside brackets.
        Some((before, port))
            if !port.contains(']') && (!before.starts_with('[') || before.ends_with(']')) =>
        {
            port.parse().ok()?
        }
        _ => default_port,
    };
    Some((host.to_owned(), port))
}

fn session_paths(dir: &Path, driver: &str) -> Vec<PathBuf> {
    vec![
        dir.join("libvirt-sock"),
        dir.join(format!("virt{driver}d-sock")),
    ]
}

/// Decodes `%XX` escapes; `None` for a malformed escape or non-UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(uri: &str, read_only: bool, expected: &[&str]) {
        let got = socket_paths(uri, read_only, Some(Path::new("/run/user/7")));
        let got: Vec<_> = got.iter().map(|p| p.to_str().unwrap()).collect();
        assert_eq!(got, expected, "{uri} read_only={read_only}");
    }

    #[test]
    fn local_uris_name_their_sockets_and_others_none() {
        check(
            "qemu:///system",
            false,
            &["/run/libvirt/libvirt-sock", "/run/libvirt/virtqemud-sock"],
        );
        check(
            "qemu:///system",
            true,
            &[
                "/run/libvirt/libvirt-sock-ro",
                "/run/libvirt/virtqemud-sock-ro",
            ],
        );
        check(
            "qemu+unix:///system?socket=/tmp/a%20b/sock&mode=legacy",
            true,
            &["/tmp/a b/sock"],
        );
        check(
            "lxc:///session",
            false,
            &[
                "/run/user/7/libvirt/libvirt-sock",
                "/run/user/7/libvirt/virtlxcd-sock",
            ],
        );
        for remote in [
            "qemu+ssh://host/system",
            "qemu+tcp://host/system",
            "qemu://host/system",
            "test:///default",
            "qemu:///embed?root=/tmp/x",
            "qemu+unix:///system?socket=%zz",
            "no uri",
        ] {
            check(remote, false, &[]);
        }
    }

    /// A fresh directory, the socket path in it (absent) and its watch.
    fn scratch(name: &str) -> (PathBuf, PathBuf, SocketWatch) {
        let dir = std::env::temp_dir().join(format!("wd-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sock");
        let watch = SocketWatch {
            targets: vec![Target::Unix(path.clone())],
            every: Duration::from_millis(10),
        };
        (dir, path, watch)
    }

    #[test]
    fn the_probe_tells_a_listening_socket_from_a_stale_or_missing_one() {
        let (dir, path, watch) = scratch("sock");
        assert!(!watch.accepting(), "missing");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(watch.accepting(), "listening");
        drop(listener);
        // The file stays behind, as after a killed daemon.
        assert!(path.exists());
        assert!(!watch.accepting(), "stale");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_wait_ends_on_a_return_or_a_new_socket_never_on_the_same_one() {
        let (dir, path, watch) = scratch("wait");
        // Gone at the start, then back.
        let mut wait = watch.begin(watch.files());
        assert!(!wait.back());
        let first = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(wait.back());
        // Accepting at the start (a daemon that refuses us): never back
        // while it is the same socket...
        let mut wait = watch.begin(watch.files());
        assert!(!wait.back());
        assert!(!wait.back());
        // ...but a restarted daemon binds a new one.
        drop(first);
        std::fs::remove_file(&path).unwrap();
        let _second = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(wait.back());
        // A socket that came up between the last attempt and the wait is new.
        let before_attempt = watch.files();
        std::fs::remove_file(&path).unwrap();
        let _third = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(watch.begin(before_attempt).back());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn remote_uris_name_their_tcp_port() {
        for (uri, want) in [
            ("qemu+tcp://compute-1/system", Some(("compute-1", 16509))),
            (
                "qemu+tcp://127.0.0.1:16600/system",
                Some(("127.0.0.1", 16600)),
            ),
            (
                "qemu+tls://nova@compute-1:1/system?x=1",
                Some(("compute-1", 1)),
            ),
            ("qemu://compute-1/system", Some(("compute-1", 16514))),
            ("qemu+tcp://[::1]/system", Some(("::1", 16509))),
            ("qemu+tcp://[::1]:7/system", Some(("::1", 7))),
            ("qemu+tcp://h:notaport/system", None),
            ("qemu:///system", None),
            ("qemu+tcp:///system", None),
            ("qemu+ssh://h/system", None),
            ("test://h/default", None),
        ] {
            let got = tcp_target(uri);
            assert_eq!(got.as_ref().map(|(h, p)| (h.as_str(), *p)), want, "{uri}");
        }
    }

    #[test]
    fn a_tcp_watch_sees_a_port_come_back_and_probes_no_faster_than_its_floor() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let config = ListenerConfig::default().uri(format!("qemu+tcp://127.0.0.1:{port}/system"));
        let watch = SocketWatch::for_config(&config).unwrap();
        assert_eq!(watch.every, TCP_PROBE_MIN);
        assert!(watch.accepting());
        // Accepting at the start of the wait: a server that refuses us is
        // left to the backoff.
        let mut wait = watch.begin(watch.files());
        assert!(!wait.back());
        drop(listener);
        // Gone, then back on the same port.
        let mut wait = watch.begin(watch.files());
        assert!(!wait.back());
        let _again = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        assert!(wait.back());
    }

    #[test]
    fn probing_is_off_for_a_zero_interval_or_a_uri_without_socket() {
        let c = ListenerConfig::default();
        assert!(SocketWatch::for_config(&c).is_some());
        assert!(
            SocketWatch::for_config(&c.clone().socket_probe_interval(Duration::ZERO)).is_none()
        );
        assert!(SocketWatch::for_config(&c.uri("test:///default")).is_none());
    }
}
