//! TLS against a real HTTPS receiver on 127.0.0.1 whose certificate comes
//! from a private CA made in the test (with the `openssl` command line, as
//! an operator would): trusted with `ca_file`, a clear certificate error
//! without it, and mutual TLS with a client certificate.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::StatusCode;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;
use wd_notify::{Domain, FailureKind, Instance, Notification, Notifier};
use wd_notify_webhook::{Endpoint, Secret, TlsConfig, WebhookConfig, WebhookNotifier};

/// A private CA, a server certificate for 127.0.0.1 and a client
/// certificate, all signed by it, in a scratch directory.
struct Pki {
    dir: tempfile::TempDir,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the `openssl` command (Debian package openssl, installed by cargo xtask test)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let ca = [
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=wd test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        ]
        .concat();
        openssl(d, &ca);
        for (name, usage, san) in [
            (
                "server",
                "serverAuth",
                "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
            ),
            ("client", "clientAuth", ""),
        ] {
            let (key, csr, subj) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("/CN=wd test {name}"),
            );
            let csr = [
                &["req"][..],
                &ec,
                &["-keyout", &key, "-out", &csr, "-subj", &subj],
            ]
            .concat();
            openssl(d, &csr);
            std::fs::write(
                d.join(format!("{name}.ext")),
                format!("basicConstraints=CA:FALSE\nextendedKeyUsage={usage}\n{san}"),
            )
            .unwrap();
            openssl(
                d,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &format!("{name}.csr"),
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-days",
                    "2",
                    "-out",
                    &format!("{name}.pem"),
                    "-extfile",
                    &format!("{name}.ext"),
                ],
            );
        }
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// An HTTPS receiver that answers 204 and counts requests; with
/// `client_ca`, it demands a client certificate signed by that CA.
async fn https_receiver(pki: &Pki, client_ca: bool) -> (String, Arc<Mutex<u32>>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(pki.path("server.pem"))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(pki.path("server.key")).unwrap();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let config = if client_ca {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(pki.path("ca.pem")).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    }
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "https://127.0.0.1:{}/hook",
        listener.local_addr().unwrap().port()
    );
    let hits = Arc::new(Mutex::new(0u32));
    let counted = hits.clone();
    let app = Router::new().fallback(move || {
        let counted = counted.clone();
        async move {
            *counted.lock().unwrap() += 1;
            StatusCode::NO_CONTENT
        }
    });
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let app = app.clone();
            tokio::spawn(async move {
                // A handshake the client aborts (untrusted CA) ends here.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), TowerToHyperService::new(app))
                    .await;
            });
        }
    });
    (url, hits)
}

fn key() -> Secret {
    Secret::from_bytes(&[7u8; 32]).unwrap()
}

fn firing() -> Notification {
    Notification::new(
        Instance::new(uuid::Uuid::new_v4()),
        "compute-1",
        Domain::new(uuid::Uuid::new_v4(), "instance-0000002a"),
        "pause",
        OffsetDateTime::now_utc(),
    )
}

fn notifier(url: &str, global: TlsConfig, endpoint: TlsConfig) -> WebhookNotifier {
    WebhookNotifier::new(
        WebhookConfig::default()
            .with_timeout(std::time::Duration::from_secs(5))
            .with_tls(global)
            .with_operator(Endpoint::new(url, [key()]).with_tls(endpoint)),
    )
    .unwrap()
}

#[tokio::test]
async fn a_private_ca_works_with_ca_file_and_is_a_certificate_error_without() {
    let pki = Pki::new();
    let (url, hits) = https_receiver(&pki, false).await;

    // The system trust store alone does not know the private CA.
    let err = notifier(&url, TlsConfig::default(), TlsConfig::default())
        .notify(&firing())
        .await
        .unwrap_err();
    assert_eq!(FailureKind::of(&err), FailureKind::Certificate, "{err:?}");
    assert!(
        err.is_retryable(),
        "a fixable configuration problem keeps the entry"
    );
    let text = err.to_string();
    assert!(
        text.contains("tls certificate error: invalid peer certificate: UnknownIssuer"),
        "{text}"
    );
    assert_eq!(*hits.lock().unwrap(), 0);

    // The CA given globally…
    let ca = TlsConfig::default().with_ca_file(pki.path("ca.pem"));
    notifier(&url, ca.clone(), TlsConfig::default())
        .notify(&firing())
        .await
        .unwrap();
    // …or for this endpoint only.
    notifier(&url, TlsConfig::default(), ca)
        .notify(&firing())
        .await
        .unwrap();
    assert_eq!(*hits.lock().unwrap(), 2);
}

#[tokio::test]
async fn mutual_tls_presents_the_client_certificate() {
    let pki = Pki::new();
    let (url, hits) = https_receiver(&pki, true).await;
    let ca = TlsConfig::default().with_ca_file(pki.path("ca.pem"));

    let err = notifier(&url, ca.clone(), TlsConfig::default())
        .notify(&firing())
        .await
        .unwrap_err();
    assert_eq!(FailureKind::of(&err), FailureKind::Certificate, "{err:?}");
    assert!(
        err.to_string().contains("refused our client certificate"),
        "{err}"
    );
    assert_eq!(*hits.lock().unwrap(), 0);

    let mtls =
        TlsConfig::default().with_client_identity(pki.path("client.pem"), pki.path("client.key"));
    notifier(&url, ca, mtls).notify(&firing()).await.unwrap();
    assert_eq!(*hits.lock().unwrap(), 1);
}
