//! What kind of failure a delivery error is, for metrics, logs and status.
//!
//! A [`NotifyError`] says whether retrying may help. Operators need one more
//! distinction: a TLS certificate problem (an unknown CA, an expired or
//! mismatched certificate, a client certificate the server refused) is fixed
//! by configuration, not by waiting, and must not hide among "request
//! failed". A transport marks such a failure by putting a
//! [`CertificateError`] in the error's cause chain; [`FailureKind::of`] finds
//! it anywhere in the chain.
//!
//! A destination's own configuration that its server refuses (a broker
//! answering 406 PRECONDITION_FAILED to a declaration, 403 ACCESS_REFUSED,
//! 404 for a missing exchange) is marked the same way, with a
//! [`ConfigurationError`] cause. Such a failure is retryable, never a drop:
//! the notification waits in its queue until the configuration is fixed and
//! reloaded.

use std::fmt;

use crate::notifier::{BoxError, NotifyError};

/// The cause a transport attaches to a [`NotifyError`] when TLS certificate
/// verification failed, on either side.
#[derive(Debug)]
pub struct CertificateError {
    detail: String,
    source: Option<BoxError>,
}

impl CertificateError {
    /// A certificate failure described by `detail` (for example
    /// `invalid peer certificate: UnknownIssuer`), with its underlying cause.
    pub fn new(detail: impl Into<String>, source: Option<BoxError>) -> Self {
        CertificateError {
            detail: detail.into(),
            source,
        }
    }

    /// What was wrong with the certificate.
    pub fn detail(&self) -> &str {
        &self.detail
    }
}

impl fmt::Display for CertificateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tls certificate error: {}", self.detail)
    }
}

impl std::error::Error for CertificateError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// The cause a transport attaches to a retryable [`NotifyError`] when the
/// server refused the destination's configuration (not the notification).
#[derive(Debug)]
pub struct ConfigurationError {
    detail: String,
    source: Option<BoxError>,
}

impl ConfigurationError {
    /// A configuration refused as `detail` says (for example
    /// `406 PRECONDITION_FAILED - inequivalent arg 'durable'`).
    pub fn new(detail: impl Into<String>, source: Option<BoxError>) -> Self {
        ConfigurationError {
            detail: detail.into(),
            source,
        }
    }

    /// What the server refused.
    pub fn detail(&self) -> &str {
        &self.detail
    }
}

impl fmt::Display for ConfigurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "configuration refused: {}", self.detail)
    }
}

impl std::error::Error for ConfigurationError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// The kind of a delivery failure, as metrics and `wdguard status` show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureKind {
    /// A failure that may pass (timeout, 5xx, broker down): retried.
    Retryable,
    /// Refused for good (4xx, rejected): not retried.
    Permanent,
    /// TLS certificate verification failed: fix the CA or the certificates.
    Certificate,
    /// The server refused the destination's configuration (retried until
    /// the configuration is fixed and reloaded).
    Configuration,
}

impl FailureKind {
    /// Classifies `err`, looking through its cause chain for a
    /// [`CertificateError`].
    pub fn of(err: &NotifyError) -> FailureKind {
        if has_cause::<CertificateError>(err) {
            FailureKind::Certificate
        } else if has_cause::<ConfigurationError>(err) {
            FailureKind::Configuration
        } else if err.is_retryable() {
            FailureKind::Retryable
        } else {
            FailureKind::Permanent
        }
    }

    /// The label used in metrics and status output: `failed`, `rejected`,
    /// `certificate` or `configuration`.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Retryable => "failed",
            FailureKind::Permanent => "rejected",
            FailureKind::Certificate => "certificate",
            FailureKind::Configuration => "configuration",
        }
    }

    /// Whether only a change of configuration (CA, certificates, the
    /// destination's settings) ends this failure: `/healthz` reports it.
    pub fn needs_operator(self) -> bool {
        matches!(self, FailureKind::Certificate | FailureKind::Configuration)
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How deep a cause chain is followed; chains are short, but a cycle-free
/// bound keeps a hostile or buggy `source()` from looping.
const MAX_DEPTH: usize = 32;

fn has_cause<T: std::error::Error + 'static>(err: &NotifyError) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    for _ in 0..MAX_DEPTH {
        let Some(c) = cause else { return false };
        if c.is::<T>() {
            return true;
        }
        cause = c.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_follow_the_cause_chain() {
        let check = |err: NotifyError, expected: FailureKind| {
            assert_eq!(FailureKind::of(&err), expected, "{err:?}");
        };
        check(NotifyError::retryable("x"), FailureKind::Retryable);
        check(NotifyError::permanent("x"), FailureKind::Permanent);
        let io = std::io::Error::other("unknown issuer");
        check(
            NotifyError::retryable("x").with_source(CertificateError::new(
                "invalid peer certificate: UnknownIssuer",
                Some(Box::new(io)),
            )),
            FailureKind::Certificate,
        );
        // Deeper in the chain, under another cause.
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] CertificateError);
        check(
            NotifyError::retryable("x").with_source(Outer(CertificateError::new("expired", None))),
            FailureKind::Certificate,
        );
        assert_eq!(
            CertificateError::new("expired", None).to_string(),
            "tls certificate error: expired"
        );
        assert_eq!(FailureKind::Certificate.to_string(), "certificate");
        check(
            NotifyError::retryable("x").with_source(ConfigurationError::new("406", None)),
            FailureKind::Configuration,
        );
        assert!(FailureKind::Configuration.needs_operator());
        assert!(!FailureKind::Retryable.needs_operator());
        assert_eq!(
            ConfigurationError::new("406 PRECONDITION_FAILED", None).to_string(),
            "configuration refused: 406 PRECONDITION_FAILED"
        );
    }
}
