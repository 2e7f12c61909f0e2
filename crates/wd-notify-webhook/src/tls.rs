//! TLS settings for webhook endpoints: trust and client identity.
//!
//! Every endpoint trusts the system trust store (on Debian,
//! `/etc/ssl/certs` from `ca-certificates`, or whatever `SSL_CERT_FILE` /
//! `SSL_CERT_DIR` name). A `ca_file` adds a private CA on top, the usual
//! case for OpenStack clouds that sign their own endpoints. A client
//! certificate and key give mutual TLS. Settings are global
//! ([`WebhookConfig::tls`](crate::WebhookConfig)) and may be overridden per
//! endpoint ([`Endpoint::tls`](crate::Endpoint)); each field of an
//! endpoint's settings that is set wins over the global one.
//!
//! A failed certificate check is reported as a
//! [`wd_notify::CertificateError`] cause, so logs, metrics and `wdguard
//! status` show `certificate`, not a generic failure.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};

/// TLS settings. All fields are optional; the default trusts the system
/// store and presents no client certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// A PEM file of extra CA certificates to trust (besides the system
    /// store).
    pub ca_file: Option<PathBuf>,
    /// A PEM file with the client certificate (chain) for mutual TLS.
    pub client_cert: Option<PathBuf>,
    /// The PEM private key of `client_cert`.
    pub client_key: Option<PathBuf>,
}

impl TlsConfig {
    /// Sets [`TlsConfig::ca_file`].
    #[must_use]
    pub fn with_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// Sets the client certificate and key for mutual TLS.
    #[must_use]
    pub fn with_client_identity(
        mut self,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Self {
        self.client_cert = Some(cert.into());
        self.client_key = Some(key.into());
        self
    }

    /// `self` with every field that `over` sets replaced by `over`'s.
    #[must_use]
    pub fn overridden_by(&self, over: &TlsConfig) -> TlsConfig {
        TlsConfig {
            ca_file: over.ca_file.clone().or_else(|| self.ca_file.clone()),
            client_cert: over
                .client_cert
                .clone()
                .or_else(|| self.client_cert.clone()),
            client_key: over.client_key.clone().or_else(|| self.client_key.clone()),
        }
    }

    /// Whether nothing is set.
    pub fn is_default(&self) -> bool {
        *self == TlsConfig::default()
    }
}

/// The most bytes read from one PEM file: certificates and keys are a few
/// KiB; a bundle of every public CA is about 200 KiB.
const MAX_PEM_BYTES: u64 = 4 * 1024 * 1024;

fn read_pem(what: &'static str, path: &Path) -> Result<Vec<u8>> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).map_err(|source| Error::ReadTlsFile {
        what,
        path: path.to_owned(),
        source,
    })?;
    let mut buf = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|source| Error::ReadTlsFile {
            what,
            path: path.to_owned(),
            source,
        })?;
    if buf.len() as u64 > MAX_PEM_BYTES {
        return Err(Error::InvalidTlsFile {
            what,
            path: path.to_owned(),
            reason: format!("larger than {MAX_PEM_BYTES} bytes"),
        });
    }
    Ok(buf)
}

/// Builds the HTTP client for one set of TLS settings.
pub(crate) fn client(tls: &TlsConfig, timeout: Duration) -> Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_native_certs(true)
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        // Each read is bounded too: a server that stalls mid-answer.
        .read_timeout(timeout)
        // The specification advises against following redirects: a moved
        // endpoint should be reconfigured, not chased.
        .redirect(reqwest::redirect::Policy::none());
    if let Some(path) = &tls.ca_file {
        let pem = read_pem("ca_file", path)?;
        let certs =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| Error::InvalidTlsFile {
                what: "ca_file",
                path: path.clone(),
                reason: e.to_string(),
            })?;
        if certs.is_empty() {
            return Err(Error::InvalidTlsFile {
                what: "ca_file",
                path: path.clone(),
                reason: "it holds no PEM certificate".into(),
            });
        }
        for c in certs {
            builder = builder.add_root_certificate(c);
        }
    }
    match (&tls.client_cert, &tls.client_key) {
        (None, None) => {}
        (Some(cert), Some(key)) => {
            let mut pem = read_pem("client_cert", cert)?;
            pem.push(b'\n');
            pem.extend(read_pem("client_key", key)?);
            let identity =
                reqwest::Identity::from_pem(&pem).map_err(|e| Error::InvalidTlsFile {
                    what: "client_cert/client_key",
                    path: cert.clone(),
                    // reqwest's message names no key material.
                    reason: e.to_string(),
                })?;
            builder = builder.identity(identity);
        }
        _ => return Err(Error::IncompleteClientIdentity),
    }
    builder
        .build()
        .map_err(|e| Error::BuildClient(e.without_url()))
}

/// If `err` (a request error) failed on a TLS certificate, on either side,
/// what was wrong.
pub(crate) fn certificate_problem(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cause = Some(err);
    // Bounded: cause chains are short, but a buggy one must not loop.
    for _ in 0..32 {
        let c = cause?;
        if let Some(r) = c.downcast_ref::<rustls::Error>() {
            return rustls_problem(r);
        }
        // `io::Error::source` skips the error an io::Error wraps (often
        // another io::Error around the rustls one): step into it instead.
        cause = match c.downcast_ref::<std::io::Error>() {
            Some(io) => match io.get_ref() {
                Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
                None => c.source(),
            },
            None => c.source(),
        };
    }
    None
}

fn rustls_problem(e: &rustls::Error) -> Option<String> {
    use rustls::AlertDescription as A;
    match e {
        rustls::Error::InvalidCertificate(_) => Some(e.to_string()),
        rustls::Error::AlertReceived(
            A::BadCertificate
            | A::UnsupportedCertificate
            | A::CertificateRevoked
            | A::CertificateExpired
            | A::CertificateUnknown
            | A::UnknownCA
            | A::CertificateRequired
            | A::AccessDenied,
        ) => Some(format!("the server refused our client certificate ({e})")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_settings_override_field_by_field() {
        let global = TlsConfig::default()
            .with_ca_file("/etc/wd/ca.pem")
            .with_client_identity("/etc/wd/c.pem", "/etc/wd/k.pem");
        let over = TlsConfig::default().with_ca_file("/etc/wd/other-ca.pem");
        let got = global.overridden_by(&over);
        assert_eq!(
            got.ca_file.as_deref(),
            Some(Path::new("/etc/wd/other-ca.pem"))
        );
        assert_eq!(got.client_cert.as_deref(), Some(Path::new("/etc/wd/c.pem")));
        assert!(TlsConfig::default().is_default());
    }

    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let check = |tls: TlsConfig, expected: &str| {
            let err = client(&tls, Duration::from_secs(1))
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{err:?} lacks {expected:?}");
        };
        check(
            TlsConfig::default().with_ca_file(dir.path().join("missing.pem")),
            "cannot read tls ca_file",
        );
        check(
            TlsConfig::default().with_ca_file(&empty),
            "holds no PEM certificate",
        );
        check(
            TlsConfig {
                client_cert: Some(empty.clone()),
                ..TlsConfig::default()
            },
            "client_cert and client_key go together",
        );
        check(
            TlsConfig::default().with_client_identity(&empty, &empty),
            "tls client_cert/client_key",
        );
    }
}
