//! `wdguard status`: each delivery destination's backlog, oldest entry and
//! last error.
//!
//! It asks the running agent first: on its local socket (`--socket`,
//! default /run/wd/status.sock, which the packaged unit serves), else with
//! `GET /status` on its metrics address (from `--metrics` or the config
//! file's `metrics`; the agent answers `/status` to loopback peers only). When no agent answers,
//! it reads the spool directory instead: read-only, taking no lock, so it is
//! safe beside a running agent (a segment removed while it reads is read
//! again). Only the agent knows the last error of each destination; the
//! spool alone tells the backlog and the oldest entry's age.

use std::io::{Read as _, Write as _};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use clap::ValueEnum;
use serde_json::{Value, json};

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusFormat {
    /// A table, one destination per line.
    Text,
    /// One JSON object (the agent's `/status`, plus `source`).
    Json,
}

/// `wdguard status` flags.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The agent's metrics address (as given to `wdguard watch --metrics`).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
    /// The agent's local status socket (`wdguard watch --status-socket`).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// The agent's config file, for its `metrics` address and `spool`.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The spool directory, read when the agent does not answer.
    #[arg(long, value_name = "DIR")]
    spool: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = StatusFormat::Text)]
    format: StatusFormat,
}

/// The most bytes read from the agent's `/status`.
const MAX_STATUS_BYTES: u64 = 4 * 1024 * 1024;

/// Where the packaged agent serves its local status socket.
pub(crate) const DEFAULT_SOCKET: &str = "/run/wd/status.sock";

/// `GET /status` from the agent at `addr`.
fn ask_agent(addr: &str) -> Result<Value> {
    let sock = addr
        .to_socket_addrs()
        .with_context(|| format!("metrics address `{addr}`"))?
        .next()
        .ok_or_else(|| anyhow!("metrics address `{addr}` resolves to nothing"))?;
    let timeout = Duration::from_secs(5);
    let s = TcpStream::connect_timeout(&sock, timeout)
        .with_context(|| format!("no agent answers on {addr}"))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    exchange(s, addr, "GET /status")
}

/// `GET /status` from the agent's local socket at `path`.
fn ask_socket(path: &Path) -> Result<Value> {
    ask_socket_for(path, "GET /status")
}

/// `request` (`METHOD /path?query`, no body) to the agent's local socket
/// at `path`: its JSON answer, or its one-line refusal as the error.
pub(crate) fn ask_socket_for(path: &Path, request: &str) -> Result<Value> {
    let timeout = Duration::from_secs(5);
    let s = UnixStream::connect(path)
        .with_context(|| format!("no agent answers on `{}`", path.display()))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    exchange(s, &path.display().to_string(), request)
}

fn exchange(
    mut s: impl std::io::Read + std::io::Write,
    addr: &str,
    request: &str,
) -> Result<Value> {
    write!(
        s,
        "{request} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let what = request.split(['?', ' ']).nth(1).unwrap_or(request);
    let mut raw = Vec::new();
    s.take(MAX_STATUS_BYTES)
        .read_to_end(&mut raw)
        .with_context(|| format!("read {what} from {addr}"))?;
    let raw = String::from_utf8_lossy(&raw);
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("{addr} sent no HTTP response"))?;
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        bail!("{addr} answered {what} with {status}: {}", body.trim());
    }
    serde_json::from_str(body).with_context(|| format!("{addr} sent a {what} that is not JSON"))
}

/// One queue directory's backlog and oldest entry's age, read without
/// locking it. A running agent may remove a segment between the listing and
/// the read: read again.
fn read_queue(dir: &std::path::Path) -> Result<(usize, Option<f64>)> {
    let mut last = None;
    for _ in 0..3 {
        match wd_notify::scan(dir) {
            Ok(report) => {
                let now = time::OffsetDateTime::now_utc();
                let oldest = report
                    .pending
                    .iter()
                    .map(|(_, n)| n.fired_at)
                    .min()
                    .map(|at| (now - at).as_seconds_f64().max(0.0));
                return Ok((report.pending.len(), oldest));
            }
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(anyhow::Error::new(last.expect("three attempts")))
        .with_context(|| format!("cannot read the queue `{}`", dir.display()))
}

/// What the spool directory holds: one queue per destination under
/// `dest/<kind>-<id>/`.
fn read_spool(dir: &std::path::Path) -> Result<Value> {
    let queue = |name: String, kind: &str, (entries, oldest): (usize, Option<f64>)| {
        json!({
            "name": name,
            "destination": kind,
            "queue": {"entries": entries, "bytes": null, "oldest_age_secs": oldest, "dropped": null},
            "last_error": null,
        })
    };
    let mut destinations = Vec::new();
    let per = dir.join("dest");
    if let Ok(listing) = std::fs::read_dir(&per) {
        let mut names: Vec<String> = listing
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .collect();
        names.sort();
        for name in names {
            let kind = name.split('-').next().unwrap_or("?").to_owned();
            destinations.push(queue(name.clone(), &kind, read_queue(&per.join(&name))?));
        }
    }
    Ok(json!({"health": "agent not answering", "destinations": destinations}))
}

fn age(secs: Option<f64>) -> String {
    match secs {
        None => "-".into(),
        Some(s) if s < 120.0 => format!("{s:.0}s"),
        Some(s) if s < 7200.0 => format!("{:.0}m", s / 60.0),
        Some(s) => format!("{:.1}h", s / 3600.0),
    }
}

/// The table `--format text` prints.
fn render_text(v: &Value) -> String {
    let mut out = String::new();
    let source = v["source"].as_str().unwrap_or("?");
    out.push_str(&format!(
        "source: {source}; health: {}\n",
        v["health"].as_str().unwrap_or("?")
    ));
    out.push_str(&format!(
        "{:<28} {:<9} {:>8} {:>7} {:>9} {:>7}  {}\n",
        "DESTINATION", "KIND", "BACKLOG", "OLDEST", "DELIVERED", "FAILED", "LAST ERROR"
    ));
    let empty = Vec::new();
    for d in v["destinations"].as_array().unwrap_or(&empty) {
        let num = |x: &Value| x.as_u64().map_or("-".into(), |n| n.to_string());
        let last = match &d["last_error"] {
            Value::Object(e) => format!(
                "{} [{}] {}",
                e.get("at").and_then(Value::as_str).unwrap_or(""),
                e.get("kind").and_then(Value::as_str).unwrap_or(""),
                e.get("message").and_then(Value::as_str).unwrap_or("")
            ),
            _ => "-".into(),
        };
        // A removed destination's backlog is shown with its state.
        let kind = match d["state"].as_str() {
            Some(state) if state != "active" => {
                format!("{} ({state})", d["destination"].as_str().unwrap_or("?"))
            }
            _ => d["destination"].as_str().unwrap_or("?").to_owned(),
        };
        out.push_str(&format!(
            "{:<28} {:<9} {:>8} {:>7} {:>9} {:>7}  {}\n",
            d["name"].as_str().unwrap_or("?"),
            kind,
            num(&d["queue"]["entries"]),
            age(d["queue"]["oldest_age_secs"].as_f64()),
            num(&d["delivered"]),
            num(&d["failed"]),
            last
        ));
    }
    out
}

/// Runs `wdguard status`.
pub fn run(args: Args) -> Result<()> {
    let cfg = match &args.config {
        Some(path) => crate::watch::load_config(path)?,
        None => crate::watch::WatchSettings::default(),
    };
    let addr = args.metrics.clone().or(cfg.metrics.clone());
    let spool = args.spool.clone().or(cfg.agent.spool.clone());
    let mut agent_error = None;
    let mut status = None;
    if args.socket.exists() {
        match ask_socket(&args.socket) {
            Ok(mut v) => {
                v["source"] = json!(format!("agent {}", args.socket.display()));
                status = Some(v);
            }
            Err(e) => agent_error = Some(e),
        }
    }
    if let Some(addr) = addr.as_ref().filter(|_| status.is_none()) {
        match ask_agent(addr) {
            Ok(mut v) => {
                v["source"] = json!(format!("agent {addr}"));
                status = Some(v);
            }
            Err(e) => agent_error = Some(e),
        }
    }
    let status = match (status, &spool) {
        (Some(v), _) => v,
        (None, Some(dir)) => {
            let mut v = read_spool(dir)?;
            v["source"] = json!(format!("spool {}", dir.display()));
            if let Some(e) = &agent_error {
                v["health"] = json!(format!("agent not answering ({})", crate::one_line(e)));
            }
            v
        }
        (None, None) => match agent_error {
            Some(e) => bail!(
                "{}; and no spool directory to read instead (--spool, or `spool` in --config)",
                crate::one_line(&e)
            ),
            None => bail!(
                "nothing to read: give --metrics ADDR, --spool DIR, or --config with `metrics` or `spool`"
            ),
        },
    };
    let out = match args.format {
        StatusFormat::Json => format!("{status}\n"),
        StatusFormat::Text => render_text(&status),
    };
    std::io::stdout()
        .write_all(out.as_bytes())
        .context("write to stdout")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_backlog_age_and_last_error() {
        let v = json!({
            "source": "agent 127.0.0.1:9187",
            "health": "ok",
            "destinations": [
                {"name": "webhook operator", "destination": "operator", "queue": null,
                 "delivered": 3, "failed": 1,
                 "last_error": {"at": "2026-12-02T15:00:00Z", "kind": "certificate",
                                "message": "tls certificate error: invalid peer certificate: UnknownIssuer"}},
                {"name": "webhook project p1", "destination": "project", "state": "retired",
                 "queue": {"entries": 4, "oldest_age_secs": 300.0, "dropped": 0},
                 "delivered": 0, "failed": 0, "last_error": null}
            ]
        });
        let text = render_text(&v);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "source: agent 127.0.0.1:9187; health: ok");
        assert!(lines[2].starts_with("webhook operator"), "{text}");
        assert!(
            lines[2].contains("[certificate] tls certificate error"),
            "{text}"
        );
        assert!(lines[3].contains("       4      5m"), "{text}");
        assert!(lines[3].contains("project (retired)"), "{text}");
    }

    #[test]
    fn a_spool_in_use_shows_its_backlog_and_oldest_age() {
        struct Down;
        #[async_trait::async_trait]
        impl wd_notify::Notifier for Down {
            async fn notify(
                &self,
                _: &wd_notify::Notification,
            ) -> Result<(), wd_notify::NotifyError> {
                Err(wd_notify::NotifyError::retryable("down"))
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let queue = dir.path().join("dest/project-00ff");
            let spool =
                wd_notify::Spool::open(&queue, wd_notify::QueueConfig::default(), Down).unwrap();
            let fired = time::OffsetDateTime::now_utc() - time::Duration::seconds(90);
            for _ in 0..2 {
                let n = wd_notify::Notification::new(
                    wd_notify::Instance::new(uuid::Uuid::new_v4()),
                    "compute-1",
                    wd_notify::Domain::new(uuid::Uuid::new_v4(), "instance-1"),
                    "pause",
                    fired,
                );
                wd_notify::Notifier::notify(&spool, &n).await.unwrap();
            }
            // Read while the spool is open (and locked) by its owner.
            let v = read_spool(dir.path()).unwrap();
            let q = &v["destinations"][0]["queue"];
            assert_eq!(q["entries"], 2);
            let age = q["oldest_age_secs"].as_f64().unwrap();
            assert!((89.0..200.0).contains(&age), "{age}");
            let row = render_text(&v).lines().nth(2).unwrap().to_owned();
            assert!(
                row.starts_with("project-00ff") && row.contains(" 2 "),
                "{row}"
            );
            spool.shutdown(Duration::from_millis(10)).await;
        });
    }

    #[test]
    fn per_destination_queues_are_listed_by_kind() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("dest/project-00ff")).unwrap();
        let v = read_spool(dir.path()).unwrap();
        assert_eq!(v["destinations"].as_array().unwrap().len(), 1, "{v}");
        assert_eq!(v["destinations"][0]["name"], "project-00ff");
        assert_eq!(v["destinations"][0]["destination"], "project");
        assert_eq!(v["destinations"][0]["queue"]["entries"], 0);
    }

    #[test]
    fn an_empty_or_missing_spool_is_an_empty_backlog() {
        let dir = tempfile::tempdir().unwrap();
        let v = read_spool(&dir.path().join("none")).unwrap();
        assert_eq!(v["destinations"], json!([]));
    }
}
