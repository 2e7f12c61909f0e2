//! The crate's one error type.

/// What went wrong while talking to libvirt or parsing one of its values.
///
/// Errors that happen while the listener runs are not fatal: they arrive as
/// [`Item::ConnectFailed`](crate::Item::ConnectFailed) or
/// [`Item::Error`](crate::Item::Error) and the listener recovers by itself.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Text that names no value of a libvirt enum.
    #[error("unknown value `{value}`; allowed: {allowed}, unknown-N for an unlisted N")]
    ParseEnum {
        /// The text given.
        value: String,
        /// The known spellings, comma-separated.
        allowed: String,
    },

    /// `virEventRegisterDefaultImpl` failed, so no connection can deliver
    /// events in this process.
    #[error("cannot register libvirt's default event loop")]
    EventLoop(#[source] virt::error::Error),

    /// Opening the connection failed.
    #[error("cannot connect to libvirt at `{uri}`")]
    Connect {
        /// The connection URI.
        uri: String,
        /// libvirt's error.
        #[source]
        source: virt::error::Error,
    },

    /// The server asked for credentials (SASL) that neither libvirt's
    /// `auth.conf` nor the configured [`Credentials`](crate::Credentials)
    /// hold. The listener never prompts for them.
    #[error(
        "libvirt at `{uri}` asks for {missing}, which neither libvirt's auth.conf ({auth_file}) nor the configured credentials give: add them to auth.conf as `[credentials-NAME]` with `authname=` and `password=`, and `[auth-libvirt-{server}]` with `credentials=NAME`"
    )]
    Credentials {
        /// The connection URI.
        uri: String,
        /// What was asked for and not found, e.g. ``a password (`password`)``.
        missing: String,
        /// The auth.conf libvirt read, or where it looked.
        auth_file: String,
        /// The server name auth.conf sections are looked up under.
        server: String,
        /// libvirt's error (boxed: this variant is the largest).
        #[source]
        source: Box<virt::error::Error>,
    },

    /// A read-write connection (`read_only = false`) failed where a
    /// read-only one succeeds: this user lacks read-write access.
    #[error(
        "libvirt at `{uri}` refuses this user a read-write connection (read_only = false), though it allows a read-only one; the agent only listens, so keep read_only = true (the default), or grant read-write access, which is root-equivalent: membership of group `libvirt` (`systemctl edit wdguard`: [Service] SupplementaryGroups=libvirt) or a polkit rule allowing org.libvirt.unix.manage"
    )]
    ReadWriteRefused {
        /// The connection URI.
        uri: String,
        /// libvirt's error for the read-write open.
        #[source]
        source: virt::error::Error,
    },

    /// Registering for a domain event or the close callback failed.
    #[error("cannot register for libvirt {what} on `{uri}`")]
    Register {
        /// Which registration: `watchdog events`, `lifecycle events` or
        /// `the close callback`.
        what: &'static str,
        /// The connection URI.
        uri: String,
        /// libvirt's error.
        #[source]
        source: virt::error::Error,
    },

    /// Listing the domains (the catch-up after a connect) failed.
    #[error("cannot list the domains on `{uri}`")]
    ListDomains {
        /// The connection URI.
        uri: String,
        /// libvirt's error.
        #[source]
        source: virt::error::Error,
    },

    /// Reading one domain's state or XML failed.
    #[error("cannot read the {what} of domain {domain}")]
    Domain {
        /// What was read: `state`, `xml`, ...
        what: &'static str,
        /// The domain's UUID (or name, when the UUID is not known).
        domain: String,
        /// libvirt's error.
        #[source]
        source: virt::error::Error,
    },

    /// The local libvirt library would not say its version.
    #[error("cannot ask the local libvirt library for its version")]
    Version(#[source] virt::error::Error),

    /// The listener's supervisor thread could not be started.
    #[error("cannot start the listener thread `{name}`")]
    Spawn {
        /// The thread's name.
        name: &'static str,
        /// The OS error, shared because `io::Error` is not `Clone`.
        #[source]
        source: std::sync::Arc<std::io::Error>,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
