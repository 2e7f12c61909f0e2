//! Hostile webhook endpoints on 127.0.0.1, as a tenant could run them: one
//! that hangs, one that asks to be retried in 18446744073709551615 s, one
//! that is down for good, one that drips its body, one that resets every
//! connection, one with a self-signed TLS certificate, and one that is gone.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How a hostile endpoint behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Accepts connections and never answers.
    Hang,
    /// `503` with `Retry-After: 18446744073709551615` (u64::MAX seconds).
    HugeRetryAfter,
    /// `503`, always, with no `Retry-After`.
    Unavailable,
    /// `200` headers at once, then a 1 MB body one byte every 100 ms.
    SlowBody,
    /// Resets every connection (RST) as soon as the request arrives.
    Reset,
    /// TLS with a self-signed certificate (`openssl s_server`).
    BadTls,
    /// `410 Gone`.
    Gone,
}

impl Behaviour {
    /// Every behaviour.
    pub const ALL: [Behaviour; 7] = [
        Behaviour::Hang,
        Behaviour::HugeRetryAfter,
        Behaviour::Unavailable,
        Behaviour::SlowBody,
        Behaviour::Reset,
        Behaviour::BadTls,
        Behaviour::Gone,
    ];
}

/// A running hostile endpoint; stopped when dropped.
pub struct Hostile {
    /// What it does.
    pub behaviour: Behaviour,
    url: String,
    requests: Arc<AtomicU64>,
    task: Option<tokio::task::JoinHandle<()>>,
    tls: Option<(Child, PathBuf)>,
}

impl Hostile {
    /// Starts an endpoint that behaves as `behaviour`.
    pub async fn start(behaviour: Behaviour) -> anyhow::Result<Hostile> {
        let requests = Arc::new(AtomicU64::new(0));
        if behaviour == Behaviour::BadTls {
            return Self::start_tls(requests);
        }
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let url = format!("http://{}/hook", listener.local_addr()?);
        let seen = requests.clone();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                seen.fetch_add(1, Ordering::SeqCst);
                if behaviour == Behaviour::Hang {
                    // Keep the connection open and silent.
                    held.push(stream);
                    continue;
                }
                tokio::spawn(serve(stream, behaviour));
            }
        });
        Ok(Hostile {
            behaviour,
            url,
            requests,
            task: Some(task),
            tls: None,
        })
    }

    fn start_tls(requests: Arc<AtomicU64>) -> anyhow::Result<Hostile> {
        let dir = std::env::temp_dir().join(wd_testkit::unique_name("wd-bad-tls"));
        std::fs::create_dir_all(&dir)?;
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let status = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=127.0.0.1", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("run openssl req (is openssl installed?)")?;
        if !status.success() {
            bail!("openssl req failed: {status}");
        }
        // A free port: bind, note it, release it for openssl.
        let port = std::net::TcpListener::bind(("127.0.0.1", 0))?
            .local_addr()?
            .port();
        let child = Command::new("openssl")
            .args(["s_server", "-quiet", "-www", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("-cert")
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start openssl s_server")?;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if std::time::Instant::now() > deadline {
                bail!("openssl s_server did not listen on port {port}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Hostile {
            behaviour: Behaviour::BadTls,
            url: format!("https://127.0.0.1:{port}/hook"),
            requests,
            task: None,
            tls: Some((child, dir)),
        })
    }

    /// The endpoint's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Connections accepted so far (not counted for [`Behaviour::BadTls`]).
    pub fn connections(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        if let Some((mut child, dir)) = self.tls.take() {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Reads until the end of the request headers (or 64 KiB, or EOF).
async fn read_head(stream: &mut TcpStream) {
    let mut buf = vec![0u8; 65536];
    let mut len = 0;
    while len < buf.len() {
        match stream.read(&mut buf[len..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => len += n,
        }
        if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
            return;
        }
    }
}

async fn serve(mut stream: TcpStream, behaviour: Behaviour) {
    read_head(&mut stream).await;
    let reply: &[u8] = match behaviour {
        Behaviour::HugeRetryAfter => {
            b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 18446744073709551615\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        }
        Behaviour::Unavailable => {
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        }
        Behaviour::Gone => b"HTTP/1.1 410 Gone\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        Behaviour::SlowBody => {
            if stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
                .await
                .is_err()
            {
                return;
            }
            for _ in 0..1_000_000 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if stream.write_all(b"x").await.is_err() {
                    return;
                }
            }
            return;
        }
        Behaviour::Reset => {
            // SO_LINGER 0: closing sends RST, not FIN.
            let _ = stream.set_zero_linger();
            drop(stream);
            return;
        }
        Behaviour::Hang | Behaviour::BadTls => return,
    };
    let _ = stream.write_all(reply).await;
    let _ = stream.shutdown().await;
}
