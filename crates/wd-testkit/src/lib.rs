//! Test support for the `wd` workspace: real services, started and stopped by
//! process id, and domain XML for a guest whose watchdog really fires.
//!
//! Architecture invariant: this crate uses only the standard library. `xtask`
//! depends on it to set up a fresh machine, before libvirt exists there, so it
//! must never depend on `virt` or on any other `wd` crate.
//!
//! Services record their pids under `target/wd-services/`, so the process that
//! started a service (usually `cargo xtask test`) and a test that restarts it
//! agree on exactly which process to stop.
#![forbid(unsafe_code)]

pub mod container;
pub mod guest;
pub mod openstack;
mod process;
mod rabbit2;
mod rabbit_tls;
pub mod sasl;
mod services;
pub mod vhost;

use std::path::{Path, PathBuf};

pub use process::{daemon_command, pid_alive, run_quiet, stop_pid};
pub use rabbit_tls::{Pki, RabbitMqTls};
pub use rabbit2::RabbitMq2;
pub use sasl::{SaslUser, libvirtd_tcp};
pub use services::{Libvirtd, RabbitMq, libvirtd, rabbitmq};
pub use vhost::{Node, Vhost};

/// The environment variable that makes tests fail, rather than skip, when a
/// real service they need is missing. `cargo xtask test` sets it to `1`.
pub const REQUIRE_REAL_ENV: &str = "WD_REQUIRE_REAL";

/// Whether missing real services are failures (`WD_REQUIRE_REAL=1`).
pub fn require_real() -> bool {
    std::env::var(REQUIRE_REAL_ENV).is_ok_and(|v| v == "1")
}

/// Skips the calling test (returns `None`) with a message on stderr, or
/// panics when [`require_real`] says real services are mandatory.
pub fn unavailable<T>(what: &str, hint: &str) -> Option<T> {
    if require_real() {
        panic!("{what} is not available and {REQUIRE_REAL_ENV}=1: {hint}");
    }
    eprintln!("skipped: {what} is not available ({hint})");
    None
}

/// The workspace root: the nearest ancestor of the running package's
/// directory (cargo's `CARGO_MANIFEST_DIR` at run time, else the current
/// directory) whose `Cargo.toml` declares `[workspace]`; failing that, the
/// one above where wd-testkit was built (for a binary such as `wd-e2e`'s
/// `bench-live`, started directly from `target/`, outside the tree).
///
/// It is looked up at run time first, not compiled in, so a binary built in
/// one checkout and run from another (a shared target directory, a CI clone)
/// still finds its own workspace. Any depth works: `crates/<name>`, `xtask`.
pub fn workspace_root() -> PathBuf {
    let is_root = |dir: &Path| {
        std::fs::read_to_string(dir.join("Cargo.toml"))
            .is_ok_and(|t| t.lines().any(|l| l.trim() == "[workspace]"))
    };
    let built_in = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let start = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::current_dir().ok());
    start
        .iter()
        .chain(std::iter::once(&built_in))
        .find_map(|s| s.ancestors().find(|d| is_root(d)).map(Path::to_path_buf))
        .unwrap_or_else(|| built_in.join("../.."))
}

/// The cargo target directory (honours `CARGO_TARGET_DIR`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => workspace_root().join("target"),
    }
}

/// A name unique to this process and call, for domains, queues and files.
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{}-{:05x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        nanos & 0xfffff
    )
}
