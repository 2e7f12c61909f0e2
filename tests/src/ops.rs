//! What the operations tests share: the agent's HTTP endpoints, private
//! config files, and a small filesystem that can be filled up.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::agent::AgentProcess;
use crate::receiver::Receiver;

/// The operator endpoint's signing secret in the operations tests.
pub const OPERATOR_SECRET: &str = "whsec_d2QtZTJlIG9wZXJhdG9yIHNlY3JldCAzMiBieXRlcyE=";
/// Project A's signing secret.
pub const SECRET_A: &str = "whsec_d2QtZTJlIHByb2plY3QgQSBzZWNyZXQgMzIgYnl0ZXM=";
/// The operator endpoint's path on the receiver.
pub const OPS: &str = "/ops";
/// Project A's endpoint's path on the receiver.
pub const PROJECT_A: &str = "/project-a";

/// An agent config for compute host `host`: the operator endpoint,
/// project `project_a`'s endpoint, the spool at `spool`, metrics on an
/// ephemeral port, quick retries.
pub fn agent_config(receiver: &Receiver, host: &str, spool: &Path, project_a: &str) -> String {
    format!(
        r#"host = "{host}"
notify = ["{ops}"]
spool = "{spool}"
wait = true
metrics = "127.0.0.1:0"

[webhook]
timeout_secs = 5

[[webhook.projects]]
project = "{project_a}"
url = "{url_a}"
secrets = ["{SECRET_A}"]

[queue]
retry_min_delay_secs = 0.2
retry_max_delay_secs = 1
attempt_timeout_secs = 2
"#,
        ops = receiver.url(OPS),
        spool = spool.display(),
        url_a = receiver.url(PROJECT_A),
    )
}

/// Writes a config file holding secrets as the agent requires: 0600.
pub fn write_private(path: &Path, text: impl AsRef<[u8]>) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
}

/// The metrics address the agent logged (it binds port 0).
pub async fn metrics_addr(agent: &mut AgentProcess) -> String {
    agent
        .wait_log(&["serving /metrics"], Duration::from_secs(30))
        .await
        .unwrap();
    let log = agent.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("serving /metrics"))
        .unwrap();
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .unwrap()
        .to_owned()
}

/// `GET path` over plain HTTP/1.1 (the server closes each connection);
/// returns the status code and the body.
pub async fn get(addr: &str, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, body.to_owned())
}

/// A size-limited tmpfs mounted by this test, unmounted and removed when
/// dropped (also when the test fails). Drop the agent that writes to it
/// first: a busy filesystem is detached lazily.
#[derive(Debug)]
pub struct Tmpfs {
    /// Where it is mounted.
    pub dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `mib` MiB on `dir` (created).
    pub fn mount(dir: &Path, mib: u32) -> anyhow::Result<Tmpfs> {
        std::fs::create_dir_all(dir).context("create the mount point")?;
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .output()
            .context("run mount")?;
        if !out.status.success() {
            bail!(
                "mount a tmpfs on {}: {}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(Tmpfs {
            dir: dir.to_owned(),
        })
    }

    /// Fills the filesystem with `ballast` until a write fails with
    /// `ENOSPC` (large writes, then single blocks, so that no block is left).
    pub fn fill(&self) -> anyhow::Result<()> {
        let mut f = std::fs::File::create(self.ballast())?;
        for chunk in [1 << 20, 4096, 1] {
            let buf = vec![0xa5u8; chunk];
            loop {
                match f.write_all(&buf) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(28) => break,
                    Err(e) => return Err(e).context("fill the filesystem"),
                }
            }
        }
        // Anything else that still fits: small files, until none does.
        for i in 0.. {
            if std::fs::write(self.dir.join(format!("ballast-{i}")), [0u8; 64]).is_err() {
                break;
            }
        }
        Ok(())
    }

    /// Frees what [`Tmpfs::fill`] took.
    pub fn free(&self) -> anyhow::Result<()> {
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("ballast"))
            {
                std::fs::remove_file(path)?;
            }
        }
        Ok(())
    }

    fn ballast(&self) -> PathBuf {
        self.dir.join("ballast")
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Every segment file under `spool`, sorted (`dest/<name>/seg-*.wal`).
pub fn segment_files(spool: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(dests) = std::fs::read_dir(spool.join("dest")) else {
        return out;
    };
    for d in dests.flatten() {
        if let Ok(files) = std::fs::read_dir(d.path()) {
            for f in files.flatten() {
                if f.file_name().to_string_lossy().starts_with("seg-") {
                    out.push(f.path());
                }
            }
        }
    }
    out.sort();
    out
}
