//! The crate's one error type.

use std::path::PathBuf;

/// What went wrong in the composition.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Resolving the flavor, image and operator policy failed.
    #[error("resolve the watchdog policy")]
    Policy(#[source] wd_policy::Error),
    /// Rendering or patching the domain XML failed.
    #[error("build the watchdog device XML")]
    Xml(#[source] wd_xml::Error),
    /// Opening the durable spool failed.
    #[error("open the notification spool")]
    Spool(#[source] wd_notify::Error),
    /// Starting the libvirt listener failed.
    #[error("start the libvirt listener")]
    Listen(#[source] wd_events::Error),
    /// Reading or writing the episode ledger failed.
    #[error("episode ledger {}", path.display())]
    Ledger {
        /// The ledger file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
