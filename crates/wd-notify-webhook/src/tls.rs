//! TLS settings for webhook endpoints: trust and client identity.
//!
//! Every endpoint trusts the system trust store (on Debian,
//! `/etc/ssl/certs` from `ca-certificates`, or whatever `SSL_CERT_FILE` /
//! `SSL_CERT_DIR` name). The store is read once per process and shared by
//! every endpoint, at start and at every reload: [`TlsCache`] gives each
//! distinct TLS setting one rustls configuration, whose certificate
//! verifier every endpoint with that setting shares (a restart picks up a
//! changed `ca-certificates`). A `ca_file` adds a private CA on top, the usual
//! case for OpenStack clouds that sign their own endpoints. A client
//! certificate and key give mutual TLS. Settings are global
//! ([`WebhookConfig::tls`](crate::WebhookConfig)) and may be overridden per
//! endpoint ([`Endpoint::tls`](crate::Endpoint)); each field of an
//! endpoint's settings that is set wins over the global one.
//!
//! A failed certificate check is reported as a
//! [`wd_notify::CertificateError`] cause, so logs, metrics and `wdguard
//! status` show `certificate`, not a generic failure.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
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

/// The system trust store, read on first use and kept for the life of the
/// process. Certificates that do not parse are skipped, as every TLS
/// client does; an empty store leaves only `ca_file` CAs to trust.
fn system_roots() -> &'static Arc<rustls::RootCertStore> {
    static ROOTS: OnceLock<Arc<rustls::RootCertStore>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let loaded = rustls_native_certs::load_native_certs();
        for e in &loaded.errors {
            tracing::warn!(error = %e, "system trust store: a certificate source could not be read");
        }
        let mut roots = rustls::RootCertStore::empty();
        let (_, skipped) = roots.add_parsable_certificates(loaded.certs);
        if skipped > 0 {
            tracing::debug!(skipped, "system trust store: certificates that do not parse");
        }
        Arc::new(roots)
    })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// How long a connection is idle before TCP keepalive probes start.
const TCP_KEEPALIVE: Duration = Duration::from_secs(30);

/// One rustls configuration per distinct [`TlsConfig`]: clones share the
/// certificate verifier (and its roots) and the client identity, so a
/// thousand endpoints with the same settings hold one copy of the trust
/// store, not a thousand.
#[derive(Default)]
pub(crate) struct TlsCache {
    configs: HashMap<TlsConfig, rustls::ClientConfig>,
}

impl TlsCache {
    /// The HTTP client for one endpoint with settings `tls`: its own
    /// connection pool, the shared TLS configuration.
    pub(crate) fn client(&mut self, tls: &TlsConfig, timeout: Duration) -> Result<reqwest::Client> {
        let config = match self.configs.get(tls) {
            Some(c) => c.clone(),
            None => {
                let c = rustls_config(tls)?;
                self.configs.insert(tls.clone(), c.clone());
                c
            }
        };
        reqwest::Client::builder()
            .use_preconfigured_tls(config)
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            // Each read is bounded too: a server that stalls mid-answer.
            .read_timeout(timeout)
            // The specification advises against following redirects: a
            // moved endpoint should be reconfigured, not chased.
            .redirect(reqwest::redirect::Policy::none())
            // Connections ready (issue 19): an endpoint's connection is
            // kept while idle, however long, so a firing after a quiet week
            // pays no TCP or TLS handshake; keepalive probes find a peer
            // that vanished (the pool then connects again), and the server
            // may close it at any time (the queue retries).
            .pool_idle_timeout(None)
            .tcp_keepalive(TCP_KEEPALIVE)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| Error::BuildClient(e.without_url()))
    }
}

/// Builds the HTTP client for one set of TLS settings, alone (no sharing
/// with other endpoints but the system trust store).
#[cfg(test)]
pub(crate) fn client(tls: &TlsConfig, timeout: Duration) -> Result<reqwest::Client> {
    TlsCache::default().client(tls, timeout)
}

/// The rustls configuration for `tls`: the shared system roots (plus the
/// `ca_file` CAs) and the client identity, if any.
fn rustls_config(tls: &TlsConfig) -> Result<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let invalid = |what: &'static str, path: &Path, reason: String| Error::InvalidTlsFile {
        what,
        path: path.to_owned(),
        reason,
    };
    let roots = match &tls.ca_file {
        None => system_roots().clone(),
        Some(path) => {
            let pem = read_pem("ca_file", path)?;
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<_, _>>()
                .map_err(|e| invalid("ca_file", path, e.to_string()))?;
            if certs.is_empty() {
                return Err(invalid(
                    "ca_file",
                    path,
                    "it holds no PEM certificate".into(),
                ));
            }
            let mut roots = rustls::RootCertStore::clone(system_roots());
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| invalid("ca_file", path, e.to_string()))?;
            }
            Arc::new(roots)
        }
    };
    let provider = provider();
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| Error::InvalidTls(e.to_string()))?;
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::InvalidTls(e.to_string()))?
        .with_webpki_verifier(verifier);
    let mut config = match (&tls.client_cert, &tls.client_key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let what = "client_cert/client_key";
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(&read_pem("client_cert", cert)?)
                    .collect::<Result<_, _>>()
                    .map_err(|e| invalid(what, cert, e.to_string()))?;
            if chain.is_empty() {
                return Err(invalid(
                    what,
                    cert,
                    "client_cert holds no PEM certificate".into(),
                ));
            }
            // The key's own error text names no key material.
            let key_der = PrivateKeyDer::from_pem_slice(&read_pem("client_key", key)?)
                .map_err(|e| invalid(what, cert, format!("client_key: {e}")))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| invalid(what, cert, e.to_string()))?
        }
        _ => return Err(Error::IncompleteClientIdentity),
    };
    // reqwest is built for HTTP/1 only here.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
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
