//! The crate's one error type, for operations other than delivery.
//!
//! Delivery failures are [`NotifyError`](crate::NotifyError), because they
//! carry whether a retry may help; everything else (reading the JSON form,
//! opening or scanning a spool) fails with [`Error`].

use std::path::PathBuf;

/// What went wrong while reading a notification or working a spool.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Text that is not a notification in its JSON form.
    #[error(
        "notification json is invalid; expected the version 1 form described in the wd-notify docs"
    )]
    ParseNotification {
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },

    /// A notification in a JSON form this version does not read.
    #[error("notification version {version} is not supported; allowed: 1")]
    UnsupportedVersion {
        /// The version given.
        version: u32,
    },

    /// The spool directory could not be created, listed or locked.
    #[error("cannot open spool directory {}", path.display())]
    OpenSpool {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A spool file could not be read, written or removed.
    #[error("cannot access spool file {}", path.display())]
    SpoolIo {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// Another process (or another `Spool` in this one) holds the spool
    /// directory: two writers would deliver everything twice.
    #[error("spool directory {} is in use by another process (lock file {})", dir.display(), lock.display())]
    SpoolLocked {
        /// The spool directory.
        dir: PathBuf,
        /// Its lock file.
        lock: PathBuf,
    },

    /// A spool opened outside a Tokio runtime.
    #[error("spool needs a tokio runtime for its delivery task; open it inside one")]
    NoRuntime,

    /// A spool configuration value out of range.
    #[error("spool setting {name}={value} is invalid; allowed: {allowed}")]
    QueueConfig {
        /// The field of [`QueueConfig`](crate::QueueConfig).
        name: &'static str,
        /// The value given.
        value: String,
        /// What is allowed.
        allowed: &'static str,
    },

    /// A queue named for [`Router::drain`](crate::Router::drain) or
    /// [`Router::drop_backlog`](crate::Router::drop_backlog) that is not
    /// there, or not in a state that allows it.
    #[error("destination `{name}`: {problem}; allowed: {allowed}")]
    Destination {
        /// The name given.
        name: String,
        /// What is wrong with it.
        problem: &'static str,
        /// What may be named.
        allowed: String,
    },
}

/// An error and its causes on one line: the workspace's one way to flatten
/// an error chain (for logs, status and a command's last line). Causes are
/// `: `-separated; a cause whose text is already in the line (some libraries
/// repeat their source in their own message) is left out, and runs of
/// whitespace, newlines included, become one space.
///
/// ```
/// let io = std::io::Error::other("no such file");
/// let e = wd_notify::Error::OpenSpool { path: "/x".into(), source: io };
/// assert_eq!(wd_notify::error_chain(&e), "cannot open spool directory /x: no such file");
/// ```
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let c = cause.to_string();
        if !c.is_empty() && !text.contains(&c) {
            text.push_str(": ");
            text.push_str(&c);
        }
        source = cause.source();
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
