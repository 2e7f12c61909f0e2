//! The crate's one error type.

/// What went wrong while configuring the notifier or verifying a webhook.
///
/// Delivery failures are not here: [`wd_notify::Notifier::notify`] reports
/// them as [`wd_notify::NotifyError`]. No variant ever carries a secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A signing secret that is not `whsec_` followed by base64.
    #[error(
        "signing secret is not valid: {reason}; expected `whsec_` followed by the base64 of 24 to 64 random bytes"
    )]
    ParseSecret {
        /// What is wrong with it (never the secret itself).
        reason: &'static str,
    },

    /// An endpoint URL that does not parse or is not http(s).
    #[error(
        "webhook url `{url}` for {owner} is not valid: {reason}; expected an absolute http:// or https:// URL"
    )]
    InvalidUrl {
        /// The URL with any credentials removed.
        url: String,
        /// Whose endpoint it is: `project <id>` or `the operator`.
        owner: String,
        /// What is wrong with it.
        reason: String,
    },

    /// An endpoint configured without any signing secret.
    #[error(
        "webhook endpoint `{url}` for {owner} has no signing secret; give at least one `whsec_` secret"
    )]
    NoSecret {
        /// The URL with any credentials removed.
        url: String,
        /// Whose endpoint it is: `project <id>` or `the operator`.
        owner: String,
    },

    /// A project id that is empty or has surrounding whitespace.
    #[error(
        "project id `{project}` is not valid; project ids must be non-empty with no surrounding whitespace"
    )]
    InvalidProject {
        /// The project id given.
        project: String,
    },

    /// A service name that cannot be used in the CloudEvents `source`.
    #[error("service name `{service}` is not valid; allowed: 1 to 64 of A-Z a-z 0-9 - . _")]
    InvalidService {
        /// The service name given.
        service: String,
    },

    /// [`WebhookNotifier::new`](crate::WebhookNotifier::new) given a
    /// configuration without exactly one endpoint.
    #[error(
        "a webhook notifier delivers to exactly one endpoint, not {count}; allowed: one endpoint, or WebhookNotifier::split for several"
    )]
    EndpointCount {
        /// How many endpoints the configuration had.
        count: usize,
    },

    /// A request timeout of zero.
    #[error("webhook timeout must be more than zero; the specification recommends 15 to 30 s")]
    InvalidTimeout,

    /// A TLS file (CA, client certificate or key) could not be read.
    #[error("cannot read tls {what} `{}`", path.display())]
    ReadTlsFile {
        /// Which setting: `ca_file`, `client_cert` or `client_key`.
        what: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A TLS file that does not hold what it should.
    #[error("tls {what} `{}` is not valid: {reason}; expected PEM", path.display())]
    InvalidTlsFile {
        /// Which setting.
        what: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it (never key material).
        reason: String,
    },

    /// Only one of a client certificate and its key.
    #[error("tls client_cert and client_key go together; give both or neither")]
    IncompleteClientIdentity,

    /// The TLS configuration could not be built (for example, no usable
    /// trust anchor at all).
    #[error("cannot set up tls: {0}")]
    InvalidTls(String),

    /// The HTTP client could not be built (for example, no TLS roots).
    #[error("cannot build the webhook http client")]
    BuildClient(#[source] reqwest::Error),

    /// A webhook request is missing one of the Standard Webhooks headers.
    #[error(
        "webhook request has no `{header}` header; required: webhook-id, webhook-timestamp, webhook-signature"
    )]
    MissingHeader {
        /// The missing header's name.
        header: &'static str,
    },

    /// A `webhook-timestamp` that is not integer Unix seconds.
    #[error("webhook-timestamp `{value}` is not integer unix seconds")]
    InvalidTimestamp {
        /// The header value, truncated.
        value: String,
    },

    /// A `webhook-timestamp` too far from now: a replay or a skewed clock.
    #[error(
        "webhook-timestamp {timestamp} is {skew_secs} s away from now; allowed: at most {tolerance_secs} s"
    )]
    TimestampOutOfTolerance {
        /// The header's timestamp.
        timestamp: i64,
        /// How far it is from now, in seconds.
        skew_secs: u64,
        /// The tolerance allowed.
        tolerance_secs: u64,
    },

    /// No `v1` signature in `webhook-signature` matches any of the secrets.
    #[error("no v1 signature in webhook-signature matches any of the {secrets} configured secrets")]
    NoMatchingSignature {
        /// How many secrets were tried.
        secrets: usize,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
