//! The crate's one error type.

/// What is wrong with an AMQP notifier's configuration.
///
/// Delivery failures are not here: [`wd_notify::Notifier::notify`] reports
/// them as [`wd_notify::NotifyError`]. No variant ever carries a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A broker URL that is not a valid `amqp://`, `amqps://` or oslo
    /// `rabbit://` transport URL.
    #[error(
        "broker url `{url}` is not valid: {reason}; expected amqp://user:password@host:port/vhost, amqps://… or rabbit://user:password@host1:port,user:password@host2:port/vhost"
    )]
    InvalidUrl {
        /// The URL with its credentials removed.
        url: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A name that AMQP cannot carry or oslo.messaging would not produce.
    #[error("{what} `{value}` is not valid; allowed: 1 to 255 bytes of A-Z a-z 0-9 - _ . :")]
    InvalidName {
        /// Which setting: `exchange`, `topic` or `service`.
        what: &'static str,
        /// The value given.
        value: String,
    },

    /// Text that is not one of Nova's notification formats.
    #[error("unknown notification format `{value}`; allowed: unversioned, versioned, both")]
    ParseFormat {
        /// The text given.
        value: String,
    },

    /// A setting of Nova's configuration file that is missing or unusable.
    #[error("{path} [{section}] {key}: {reason}")]
    NovaConf {
        /// The file.
        path: String,
        /// The INI section.
        section: String,
        /// The key.
        key: String,
        /// What is wrong, and what is allowed. Never holds a password.
        reason: String,
    },

    /// Nova's configuration file cannot be read or is not INI.
    #[error("cannot read nova config `{path}`: {reason}")]
    ReadNovaConf {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },

    /// A TLS file (`ssl_ca_file`, `ssl_cert_file`, `ssl_key_file`) that
    /// cannot be read or used.
    #[error("tls {what} `{path}`: {reason}")]
    TlsFile {
        /// Which option.
        what: &'static str,
        /// The file.
        path: String,
        /// What is wrong with it; never key material.
        reason: String,
    },

    /// Queue settings that cannot be put together.
    #[error("queue settings: {reason}")]
    Queues {
        /// Why.
        reason: String,
    },

    /// TLS settings that cannot be put together.
    #[error("tls settings: {reason}")]
    Tls {
        /// Why.
        reason: String,
    },

    /// Text that is not one of oslo.messaging's notification priorities.
    #[error(
        "unknown notification priority `{value}`; allowed: audit, debug, info, warn, error, critical, sample"
    )]
    ParsePriority {
        /// The text given.
        value: String,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
