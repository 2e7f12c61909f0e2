//! TLS to RabbitMQ, with oslo.messaging's semantics.
//!
//! oslo.messaging (`impl_rabbit.Connection._fetch_ssl_params`, through
//! py-amqp's `SSLTransport`) connects like this, and so does wd:
//!
//! | settings                               | trusted roots        | host name checked        |
//! |----------------------------------------|----------------------|--------------------------|
//! | `ssl = true`, no `ssl_ca_file`         | the system store     | no                       |
//! | `ssl = true`, `ssl_ca_file`            | that file only       | when the URL names one host |
//!
//! `ssl_cert_file` (and `ssl_key_file`, or the key inside the certificate
//! file when it is not set) is the client certificate for mutual TLS;
//! `ssl_version` pins the protocol version.
//!
//! A certificate that fails verification is reported with a
//! [`wd_notify::CertificateError`] cause, so metrics, `/healthz` and
//! `wdguard status` name it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::error::{Error, Result};

/// The most bytes read from one PEM file.
const MAX_PEM_BYTES: u64 = 4 * 1024 * 1024;

/// A TLS protocol version oslo's `ssl_version` can pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsVersion {
    /// `TLSv1_2`.
    Tls12,
    /// `TLSv1_3`.
    Tls13,
}

impl TlsVersion {
    /// Parses oslo's spelling (case-insensitive). `SSLv23` and `TLS` mean
    /// "negotiate", which is `None`.
    pub fn parse_oslo(value: &str) -> Result<Option<TlsVersion>, String> {
        match value.trim().to_ascii_lowercase().as_str() {
            "" | "sslv23" | "tls" => Ok(None),
            "tlsv1_2" => Ok(Some(TlsVersion::Tls12)),
            "tlsv1_3" => Ok(Some(TlsVersion::Tls13)),
            "tlsv1" | "tlsv1_1" | "sslv2" | "sslv3" => Err(format!(
                "`{value}` is a protocol version wd refuses as insecure; allowed: TLSv1_2, TLSv1_3, SSLv23 (negotiate)"
            )),
            _ => Err(format!(
                "`{value}` is not an SSL version; allowed: TLSv1_2, TLSv1_3, SSLv23 (negotiate)"
            )),
        }
    }
}

/// TLS settings for the broker connection (oslo's `ssl_*` options). The
/// default trusts the system store and presents no client certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsSettings {
    /// `ssl_ca_file`: the only CAs trusted, instead of the system store.
    pub ca_file: Option<PathBuf>,
    /// `ssl_cert_file`: the client certificate (chain), PEM.
    pub cert_file: Option<PathBuf>,
    /// `ssl_key_file`: the client key, PEM (default: inside `cert_file`).
    pub key_file: Option<PathBuf>,
    /// `ssl_version`; `None` negotiates TLS 1.2 or 1.3.
    pub version: Option<TlsVersion>,
}

impl TlsSettings {
    /// Sets [`TlsSettings::ca_file`].
    #[must_use]
    pub fn with_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// Sets the client certificate and key.
    #[must_use]
    pub fn with_client_identity(
        mut self,
        cert: impl Into<PathBuf>,
        key: Option<impl Into<PathBuf>>,
    ) -> Self {
        self.cert_file = Some(cert.into());
        self.key_file = key.map(Into::into);
        self
    }

    /// The rustls client configuration; `hosts` is how many hosts the URL
    /// names (oslo checks the host name only when it is one and a CA file
    /// is given).
    pub(crate) fn client_config(&self, hosts: usize) -> Result<Arc<ClientConfig>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions: &[&rustls::SupportedProtocolVersion] = match self.version {
            None => rustls::ALL_VERSIONS,
            Some(TlsVersion::Tls12) => &[&rustls::version::TLS12],
            Some(TlsVersion::Tls13) => &[&rustls::version::TLS13],
        };
        let mut roots = RootCertStore::empty();
        let check_name = match &self.ca_file {
            Some(path) => {
                let pem = read_pem("ssl_ca_file", path)?;
                let mut added = 0usize;
                for cert in CertificateDer::pem_slice_iter(&pem) {
                    let cert = cert.map_err(|e| bad_file("ssl_ca_file", path, e.to_string()))?;
                    roots
                        .add(cert)
                        .map_err(|e| bad_file("ssl_ca_file", path, e.to_string()))?;
                    added += 1;
                }
                if added == 0 {
                    return Err(bad_file(
                        "ssl_ca_file",
                        path,
                        "it holds no PEM certificate".into(),
                    ));
                }
                hosts == 1
            }
            None => {
                let loaded = rustls_native_certs::load_native_certs();
                for cert in loaded.certs {
                    // One unparsable system certificate does not stop the others.
                    let _ = roots.add(cert);
                }
                false
            }
        };
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .map_err(|e| Error::Tls {
            reason: format!("cannot build the certificate verifier: {e}"),
        })?;
        let verifier = Arc::new(Verifier { inner, check_name });
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .map_err(|e| Error::Tls {
                reason: format!("ssl_version: {e}"),
            })?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match (&self.cert_file, &self.key_file) {
            (None, None) => builder.with_no_client_auth(),
            (None, Some(key)) => {
                return Err(bad_file(
                    "ssl_key_file",
                    key,
                    "is set without ssl_cert_file; set both for mutual TLS".into(),
                ));
            }
            (Some(cert), key) => {
                let pem = read_pem("ssl_cert_file", cert)?;
                let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
                    .collect::<std::result::Result<_, _>>()
                    .map_err(|e| bad_file("ssl_cert_file", cert, e.to_string()))?;
                if chain.is_empty() {
                    return Err(bad_file(
                        "ssl_cert_file",
                        cert,
                        "it holds no PEM certificate".into(),
                    ));
                }
                let (what, key_path, key_pem) = match key {
                    Some(k) => ("ssl_key_file", k, read_pem("ssl_key_file", k)?),
                    None => ("ssl_cert_file", cert, pem.clone()),
                };
                // The parser's error names no key material.
                let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
                    bad_file(what, key_path, format!("no usable PEM private key: {e}"))
                })?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| bad_file(what, key_path, e.to_string()))?
            }
        };
        Ok(Arc::new(config))
    }
}

fn bad_file(what: &'static str, path: &Path, reason: String) -> Error {
    Error::TlsFile {
        what,
        path: path.display().to_string(),
        reason,
    }
}

fn read_pem(what: &'static str, path: &Path) -> Result<Vec<u8>> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).map_err(|e| bad_file(what, path, e.to_string()))?;
    let mut buf = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| bad_file(what, path, e.to_string()))?;
    if buf.len() as u64 > MAX_PEM_BYTES {
        return Err(bad_file(
            what,
            path,
            format!("larger than {MAX_PEM_BYTES} bytes"),
        ));
    }
    Ok(buf)
}

/// WebPKI verification, with the host name check only where oslo makes it.
#[derive(Debug)]
struct Verifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    check_name: bool,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            // The chain is valid; only the name differs, which oslo does
            // not check here (see the module docs).
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Whether `e` (an I/O error from a TLS handshake) is a certificate
/// failure, and its text if so.
pub(crate) fn certificate_failure(e: &std::io::Error) -> Option<String> {
    let inner = e.get_ref()?;
    let rustls_err = inner.downcast_ref::<rustls::Error>()?;
    match rustls_err {
        rustls::Error::InvalidCertificate(_)
        | rustls::Error::NoCertificatesPresented
        | rustls::Error::AlertReceived(
            rustls::AlertDescription::BadCertificate
            | rustls::AlertDescription::UnknownCA
            | rustls::AlertDescription::CertificateRequired
            | rustls::AlertDescription::CertificateUnknown
            | rustls::AlertDescription::CertificateExpired
            | rustls::AlertDescription::CertificateRevoked
            | rustls::AlertDescription::UnsupportedCertificate
            | rustls::AlertDescription::HandshakeFailure,
        ) => Some(rustls_err.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        for (text, v) in [
            ("TLSv1_2", Ok(Some(TlsVersion::Tls12))),
            ("tlsv1_3", Ok(Some(TlsVersion::Tls13))),
            ("SSLv23", Ok(None)),
            ("", Ok(None)),
        ] {
            assert_eq!(TlsVersion::parse_oslo(text), v, "{text}");
        }
        assert!(
            TlsVersion::parse_oslo("TLSv1")
                .unwrap_err()
                .contains("insecure")
        );
        assert!(
            TlsVersion::parse_oslo("foo")
                .unwrap_err()
                .contains("allowed: TLSv1_2")
        );
    }

    #[test]
    fn bad_files_are_named() {
        let dir = std::env::temp_dir().join(format!("wd-amqp-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not pem").unwrap();
        let cases = [
            (
                TlsSettings::default().with_ca_file(dir.join("missing.pem")),
                "ssl_ca_file",
            ),
            (
                TlsSettings::default().with_ca_file(&empty),
                "no PEM certificate",
            ),
            (
                TlsSettings::default().with_client_identity(&empty, None::<PathBuf>),
                "ssl_cert_file",
            ),
            (
                TlsSettings {
                    key_file: Some(empty.clone()),
                    ..TlsSettings::default()
                },
                "without ssl_cert_file",
            ),
        ];
        for (settings, needle) in cases {
            let e = settings.client_config(1).unwrap_err().to_string();
            assert!(e.contains(needle), "{needle}: {e}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
        // The system store alone builds.
        TlsSettings::default().client_config(3).unwrap();
    }
}
