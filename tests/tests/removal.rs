//! A removed destination, end to end: the real `wdguard watch` agent, its
//! local status socket, a verifying webhook receiver answering 503, and
//! `wdguard status` / `wdguard queue drain|drop` as an operator runs them.
//!
//! The backlogs are written into the projects' queue directories while the
//! agent is stopped (the spool's own format, through `wd_notify::Spool`), so
//! no guest and no libvirtd is needed: `wait = true` lets the agent start
//! and serve without libvirt, and the test waits for nothing from it.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use wd_e2e::agent::{AgentProcess, wdguard_path};
use wd_e2e::ops::{OPERATOR_SECRET, OPS, SECRET_A, write_private};
use wd_e2e::receiver::Receiver;
use wd_e2e::scratch::Scratch;

const HOST: &str = "rm-compute-1";
/// Entries written into each project's queue.
const BACKLOG: usize = 5;
/// The projects: A is removed and dropped while the agent runs (retired),
/// B is removed and dropped after a restart (orphaned), C is dropped
/// offline with the agent stopped.
const PATHS: [&str; 3] = ["/project-a", "/project-b", "/project-c"];

fn config(receiver: &Receiver, spool: &Path, projects: &[(String, &str)]) -> String {
    let mut text = format!(
        r#"host = "{HOST}"
notify = ["{ops}"]
spool = "{spool}"
wait = true

[webhook]
timeout_secs = 5
"#,
        ops = receiver.url(OPS),
        spool = spool.display(),
    );
    for (project, path) in projects {
        text.push_str(&format!(
            "\n[[webhook.projects]]\nproject = \"{project}\"\nurl = \"{}\"\nsecrets = [\"{SECRET_A}\"]\n",
            receiver.url(path)
        ));
    }
    text.push_str(
        "\n[queue]\nretry_min_delay_secs = 0.2\nretry_max_delay_secs = 1\nattempt_timeout_secs = 2\n",
    );
    text
}

fn start(cfg: &Path, socket: &Path, log: &Path) -> AgentProcess {
    AgentProcess::start_with(
        &[
            "--config".as_ref(),
            cfg.as_os_str(),
            "--status-socket".as_ref(),
            socket.as_os_str(),
        ],
        &[("WD_WEBHOOK_SECRET", OPERATOR_SECRET)],
        log,
    )
    .unwrap()
}

fn wdguard(args: &[&str]) -> Output {
    std::process::Command::new(wdguard_path().unwrap())
        .args(args)
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = wdguard(args);
    assert!(
        out.status.success(),
        "wdguard {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `wdguard status --format json` on `socket`: its destinations.
fn destinations(socket: &Path) -> Vec<Value> {
    let text = ok(&[
        "status",
        "--socket",
        socket.to_str().unwrap(),
        "--format",
        "json",
    ]);
    let v: Value = serde_json::from_str(&text).unwrap();
    v["destinations"].as_array().unwrap().clone()
}

fn row<'a>(all: &'a [Value], dir: &str) -> Option<&'a Value> {
    all.iter().find(|d| d["dir"] == dir)
}

/// Writes `BACKLOG` notifications of `project`'s instances into the queue
/// directory `dir` (the agent stopped: the spool is locked by its owner).
async fn seed(dir: &Path, project: &str) {
    struct Down;
    #[async_trait::async_trait]
    impl wd_notify::Notifier for Down {
        async fn notify(&self, _: &wd_notify::Notification) -> Result<(), wd_notify::NotifyError> {
            Err(wd_notify::NotifyError::retryable("seeding"))
        }
    }
    let spool = wd_notify::Spool::open(dir, wd_notify::QueueConfig::default(), Down).unwrap();
    for i in 0..BACKLOG {
        let mut instance = wd_notify::Instance::new(uuid::Uuid::new_v4());
        instance.project_id = Some(project.to_owned());
        let n = wd_notify::Notification::new(
            instance,
            HOST,
            wd_notify::Domain::new(uuid::Uuid::new_v4(), format!("instance-{i}")),
            "pause",
            time::OffsetDateTime::now_utc(),
        );
        wd_notify::Notifier::notify(&spool, &n).await.unwrap();
    }
    spool.shutdown(Duration::ZERO).await;
}

/// `wdguard queue drop DIR` through the agent on `socket`: it says how
/// many went, and the queue is gone from `wdguard status` and from disk.
fn dropped(socket: &Path, spool: &Path, dir: &str) {
    let said = ok(&["queue", "drop", dir, "--socket", socket.to_str().unwrap()]);
    assert_eq!(said.trim(), format!("{dir}: dropped {BACKLOG} entries"));
    assert!(row(&destinations(socket), dir).is_none());
    assert!(!spool.join("dest").join(dir).exists());
}

/// POSTs to `path` that the receiver refused (it answers 503).
fn posts(receiver: &Receiver, path: &str) -> usize {
    receiver.refused().iter().filter(|r| r.path == path).count()
}

/// Waits until `path` has had more than `than` POSTs: its queue retries.
async fn retried(receiver: &Receiver, agent: &AgentProcess, path: &str, than: usize) {
    for _ in 0..300 {
        if posts(receiver, path) > than {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{path} got no retry in 30 s ({} badly signed); log:\n{}",
        receiver.rejected_signatures(),
        agent.log_text()
    );
}

/// A project whose endpoint answers 503 has a backlog; a reload removes it.
/// Not one more POST reaches its URL; `wdguard status` shows the backlog
/// as retired, `queue drain` of a configured destination is refused and
/// `queue drop` removes the backlog. After a restart, the other removed
/// project's queue is shown as orphaned and dropped the same way; with the
/// agent stopped, `queue drop --spool` deletes a queue directory, and
/// refuses while a running agent holds its lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_destination_sends_nothing_more_and_its_backlog_is_shown_and_dropped() {
    let per_path: Vec<(&str, &str)> = PATHS.iter().map(|p| (*p, SECRET_A)).collect();
    let receiver = Receiver::start_with(OPERATOR_SECRET, &per_path)
        .await
        .unwrap();
    receiver.set_status(503);
    let dir = Scratch::new("wd-removal");
    let spool = dir.0.join("spool");
    let socket = dir.0.join("status.sock");
    let sock = socket.to_str().unwrap();
    let cfg = dir.0.join("wd.toml");
    let log = dir.0.join("agent.log");
    let projects: Vec<(String, &str)> = PATHS
        .iter()
        .map(|p| (uuid::Uuid::new_v4().simple().to_string(), *p))
        .collect();
    write_private(&cfg, config(&receiver, &spool, &projects));

    // A first start names each project's queue directory.
    let mut agent = start(&cfg, &socket, &log);
    agent
        .wait_log(&["on the local socket"], Duration::from_secs(30))
        .await
        .unwrap();
    let all = destinations(&socket);
    let dir_of = |project: &str| -> String {
        all.iter()
            .find(|d| d["name"].as_str().unwrap().contains(project))
            .unwrap_or_else(|| panic!("no row for {project}: {all:?}"))["dir"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let dirs: Vec<String> = projects.iter().map(|(p, _)| dir_of(p)).collect();
    let operator = all.iter().find(|d| d["destination"] == "operator").unwrap()["dir"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(agent.terminate(Duration::from_secs(10)).unwrap(), 0);
    for (d, (project, _)) in dirs.iter().zip(&projects) {
        seed(&spool.join("dest").join(d), project).await;
    }

    // With its backlog, each project's queue retries against the 503.
    let agent = start(&cfg, &socket, &log);
    for (_, path) in &projects {
        retried(&receiver, &agent, path, 0).await;
    }
    // Remove A and B, keep C.
    write_private(&cfg, config(&receiver, &spool, &projects[2..]));
    let reloads = agent.log_count(&["configuration reloaded"]);
    assert!(wd_testkit::run_quiet(
        "kill",
        &["-HUP", &agent.pid().to_string()]
    ));
    for _ in 0..300 {
        if agent.log_count(&["configuration reloaded"]) > reloads {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        agent.log_count(&["configuration reloaded"]) > reloads,
        "no reload; log:\n{}",
        agent.log_text()
    );
    // An attempt already on the wire when the reload landed is answered
    // within milliseconds (the receiver answers 503 at once); after that,
    // C, still configured, retries at least twice while A and B get
    // nothing (their retry delay is at most 1 s).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after: Vec<usize> = PATHS.iter().map(|p| posts(&receiver, p)).collect();
    retried(&receiver, &agent, PATHS[2], after[2] + 2).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(posts(&receiver, PATHS[0]), after[0], "POSTed to removed A");
    assert_eq!(posts(&receiver, PATHS[1]), after[1], "POSTed to removed B");

    // Shown as retired, with the backlog; text too.
    let all = destinations(&socket);
    for d in &dirs[..2] {
        let r = row(&all, d).unwrap_or_else(|| panic!("{d} not shown: {all:?}"));
        assert_eq!(r["state"], "retired", "{r}");
        assert_eq!(r["queue"]["entries"], BACKLOG, "{r}");
    }
    assert_eq!(row(&all, &dirs[2]).unwrap()["state"], "active");
    let text = ok(&["status", "--socket", sock]);
    assert_eq!(text.matches("project (retired)").count(), 2, "{text}");

    // A configured destination is refused, naming what is allowed.
    for name in [&operator, &dirs[2]] {
        let out = wdguard(&["queue", "drain", name, "--socket", sock]);
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("is configured; remove it"), "{err}");
        assert!(err.contains(&dirs[0]) && err.contains(&dirs[1]), "{err}");
    }
    let out = wdguard(&["queue", "drop", "project-nonesuch", "--socket", sock]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such destination"));

    // Drop A: gone from status and from disk.
    dropped(&socket, &spool, &dirs[0]);

    // Offline drop refuses while the agent holds the queue's lock.
    let out = wdguard(&[
        "queue",
        "drop",
        &dirs[2],
        "--socket",
        "/nonexistent/status.sock",
        "--spool",
        spool.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("lock"), "{err}");
    assert!(spool.join("dest").join(&dirs[2]).exists());

    // A restart: B, owned by nothing, is shown as orphaned and sends
    // nothing; dropped, it is gone.
    assert_eq!(agent.terminate(Duration::from_secs(10)).unwrap(), 0);
    let agent = start(&cfg, &socket, &log);
    let starts = 3;
    for _ in 0..300 {
        if agent.log_count(&["on the local socket"]) >= starts {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let c = posts(&receiver, PATHS[2]);
    retried(&receiver, &agent, PATHS[2], c + 1).await;
    let all = destinations(&socket);
    let r = row(&all, &dirs[1]).unwrap_or_else(|| panic!("orphan not shown: {all:?}"));
    assert_eq!(r["state"], "orphaned", "{r}");
    assert_eq!(r["queue"]["entries"], BACKLOG, "{r}");
    assert!(ok(&["status", "--socket", sock]).contains("(orphaned)"));
    assert_eq!(posts(&receiver, PATHS[1]), after[1], "POSTed to orphaned B");
    // An orphan has nowhere to deliver: drain is refused, drop works.
    let out = wdguard(&["queue", "drain", &dirs[1], "--socket", sock]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("orphaned"));
    dropped(&socket, &spool, &dirs[1]);

    // The agent stopped: C's queue is dropped offline.
    assert_eq!(agent.terminate(Duration::from_secs(10)).unwrap(), 0);
    let said = ok(&[
        "queue",
        "drop",
        &dirs[2],
        "--socket",
        "/nonexistent/status.sock",
        "--spool",
        spool.to_str().unwrap(),
    ]);
    assert!(
        said.starts_with(&format!("{}: dropped ", dirs[2])),
        "{said}"
    );
    assert!(!spool.join("dest").join(&dirs[2]).exists());
    assert_eq!(receiver.rejected_signatures(), 0);
}
