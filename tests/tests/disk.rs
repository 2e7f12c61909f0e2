//! A full disk, end to end: the real `wdguard watch` agent with its spool
//! on a real, size-limited filesystem (a tmpfs this test mounts, fills,
//! frees and unmounts), real guests under the system libvirtd whose
//! watchdogs fire, and a verifying webhook receiver. I/O errors and a
//! read-only filesystem cannot be made on these machines (no
//! device-mapper; a remount fails while files are open): they go through
//! the spool's filesystem seam (`wd_notify::fault::FaultyFs`), which the
//! debug build of the agent plugs in when `WD_TEST_FAULT=spool-fault=…`
//! is set, active while a flag file exists.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use wd_e2e::agent::AgentProcess;
use wd_e2e::ops::{
    OPERATOR_SECRET, OPS, PROJECT_A, SECRET_A, Tmpfs, agent_config, get, metrics_addr,
    segment_files, write_private,
};
use wd_e2e::receiver::{Received, Receiver};
use wd_e2e::scratch::Scratch;
use wd_e2e::virsh::Guest;
use wd_testkit::guest::{GuestSpec, NovaOwner};

/// Serializes this file's tests under plain `cargo test`.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn spec(project: &str, action: &str) -> GuestSpec {
    let name = wd_testkit::unique_name(&format!("wd-disk-{action}"));
    GuestSpec::new(&name, action).with_nova(NovaOwner {
        display_name: format!("disk-{action}"),
        flavor: "m1.tiny".into(),
        user_id: "user-disk".into(),
        project_id: project.to_owned(),
    })
}

fn of<'a>(all: &'a [Received], path: &str, guest: &Guest) -> Vec<&'a Received> {
    all.iter()
        .filter(|r| r.path == path && r.instance_uuid() == guest.spec.uuid)
        .collect()
}

/// Each event id of `guest` at `path` arrived once.
fn once_each(all: &[Received], path: &str, guest: &Guest) {
    let mut seen: HashMap<&str, u32> = HashMap::new();
    for r in of(all, path, guest) {
        *seen.entry(r.event_id()).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "{path}: delivered more than once: {twice:?}"
    );
}

/// A receiver for the operator and project A, a fresh project id, and the
/// agent's config (spool at `spool`) written into `dir`.
async fn setup(dir: &Scratch, spool: &std::path::Path) -> (Receiver, String, std::path::PathBuf) {
    let receiver = Receiver::start_with(OPERATOR_SECRET, &[(PROJECT_A, SECRET_A)])
        .await
        .unwrap();
    let project = uuid::Uuid::new_v4().simple().to_string();
    let cfg = dir.0.join("wd.toml");
    write_private(
        &cfg,
        agent_config(&receiver, "disk-compute-1", spool, &project),
    );
    (receiver, project, cfg)
}

/// Polls `/healthz` until its status is `code`; returns the body.
async fn wait_health(addr: &str, code: u16, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let (c, body) = get(addr, "/healthz").await;
        if c == code {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/healthz stayed {c} ({body:?}), wanted {code}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The value of an un-labelled series in `/metrics`.
async fn metric(addr: &str, series: &str) -> f64 {
    let (_, text) = get(addr, "/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// The disk fills up under a running agent; `reset`, `poweroff` and
/// `pause` guests fire. Every queue must start a segment, which the full
/// disk refuses: the firings are held, `/healthz` says 503 naming the
/// spool and the error. Space is freed: each firing arrives once at the
/// operator and at the project, and the agent is healthy again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libvirtd_a_full_disk_holds_firings_and_each_arrives_once_when_space_is_freed() {
    let _serial = SERIAL.lock().await;
    let Some(_libvirtd) = wd_testkit::libvirtd() else {
        return;
    };
    let Some(assets) = wd_testkit::guest::assets() else {
        return;
    };
    let dir = Scratch::new("wd-disk-full");
    let fs = Tmpfs::mount(&dir.0.join("var"), 16).unwrap();
    let spool = fs.dir.join("spool");
    let (receiver, project, cfg) = setup(&dir, &spool).await;
    let mut agent = AgentProcess::start(&cfg, OPERATOR_SECRET, &dir.0.join("agent.log")).unwrap();
    let addr = metrics_addr(&mut agent).await;
    agent.wait_ready(Duration::from_secs(60)).await.unwrap();
    assert_eq!(
        wait_health(&addr, 200, Duration::from_secs(20)).await,
        "ok\n"
    );

    fs.fill().unwrap();
    let guests: Vec<Guest> = ["reset", "poweroff", "pause"]
        .iter()
        .map(|a| Guest::define_and_start(spec(&project, a), &assets, None).unwrap())
        .collect();
    // The first firing of each guest is held (a domain's later ones wait
    // behind it). Other guests on this shared host may fire too; only
    // these are checked.
    let deadline = Instant::now() + Duration::from_secs(120);
    for g in &guests {
        while agent.log_count(&["holding the firing", &g.spec.uuid]) == 0 {
            assert!(
                Instant::now() < deadline,
                "{}'s firing was not held: {}",
                g.spec.name,
                agent.log_text()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    assert!(metric(&addr, "wd_firings_held").await >= 3.0);
    let reason = wait_health(&addr, 503, Duration::from_secs(10)).await;
    assert!(
        reason.contains(&spool.display().to_string()) && reason.contains("No space left"),
        "{reason}"
    );
    // The project's queue never had a segment: it must grow, and cannot.
    // (The operator's queue may still fit a few entries in the last block
    // of its segment, which other guests' firings started before the disk
    // filled up: only queues that must grow are affected.)
    for g in &guests {
        assert!(
            of(&receiver.accepted(), PROJECT_A, g).is_empty(),
            "{} was delivered from a full disk: {}",
            g.spec.name,
            agent.log_text()
        );
    }

    fs.free().unwrap();
    let got = receiver
        .wait_for(Duration::from_secs(90), |all| {
            guests
                .iter()
                .all(|g| !of(all, OPS, g).is_empty() && !of(all, PROJECT_A, g).is_empty())
        })
        .await;
    for g in &guests {
        assert!(
            !of(&got, OPS, g).is_empty() && !of(&got, PROJECT_A, g).is_empty(),
            "{} was not delivered after space was freed: {}",
            g.spec.name,
            agent.log_text()
        );
    }
    assert_eq!(
        wait_health(&addr, 200, Duration::from_secs(30)).await,
        "ok\n"
    );
    assert_eq!(metric(&addr, "wd_firings_held").await, 0.0);
    // Late repeats of the reset guest may still arrive: settle, then check.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = receiver.accepted();
    for g in &guests {
        once_each(&got, OPS, g);
        once_each(&got, PROJECT_A, g);
    }
    assert_eq!(agent.terminate(Duration::from_secs(10)).unwrap(), 0);
    drop(guests);
    drop(fs);
}

/// `/var` is already full when the agent starts, and its spool holds a
/// backlog (a paused guest's notifications, refused by the endpoints).
/// The agent starts, listens and says 503 naming the spool; the restart
/// adds no segment file; once space is freed and the endpoints answer,
/// the backlog arrives once, and the catch-up does not announce the pause
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libvirtd_a_full_disk_at_start_starts_says_503_and_delivers_once_space_is_freed() {
    let _serial = SERIAL.lock().await;
    let Some(_libvirtd) = wd_testkit::libvirtd() else {
        return;
    };
    let Some(assets) = wd_testkit::guest::assets() else {
        return;
    };
    let dir = Scratch::new("wd-disk-start");
    let fs = Tmpfs::mount(&dir.0.join("var"), 16).unwrap();
    let spool = fs.dir.join("spool");
    let receiver = Receiver::start_with(OPERATOR_SECRET, &[(PROJECT_A, SECRET_A)])
        .await
        .unwrap();
    receiver.set_status(503);
    let project = uuid::Uuid::new_v4().simple().to_string();
    let cfg = dir.0.join("wd.toml");
    write_private(
        &cfg,
        agent_config(&receiver, "disk-compute-1", &spool, &project),
    );
    let mut agent = AgentProcess::start(&cfg, OPERATOR_SECRET, &dir.0.join("agent-1.log")).unwrap();
    agent.wait_ready(Duration::from_secs(60)).await.unwrap();
    let guest = Guest::define_and_start(spec(&project, "pause"), &assets, None).unwrap();
    let refused = receiver
        .wait_for_refused(Duration::from_secs(90), |all| {
            !of(all, OPS, &guest).is_empty() && !of(all, PROJECT_A, &guest).is_empty()
        })
        .await;
    assert!(
        !of(&refused, PROJECT_A, &guest).is_empty(),
        "the pause never reached the endpoints: {}",
        agent.log_text()
    );
    let event_id = of(&refused, OPS, &guest)[0].event_id().to_owned();
    assert_eq!(agent.terminate(Duration::from_secs(10)).unwrap(), 0);

    fs.fill().unwrap();
    let before = segment_files(&spool);
    assert!(!before.is_empty());
    let mut agent = AgentProcess::start(&cfg, OPERATOR_SECRET, &dir.0.join("agent-2.log")).unwrap();
    let addr = metrics_addr(&mut agent).await;
    agent.wait_ready(Duration::from_secs(60)).await.unwrap();
    let reason = wait_health(&addr, 503, Duration::from_secs(20)).await;
    assert!(
        reason.contains(&spool.display().to_string()) && reason.contains("No space left"),
        "{reason}"
    );
    assert_eq!(
        segment_files(&spool),
        before,
        "the restart added segment files"
    );

    fs.free().unwrap();
    receiver.set_status(200);
    let got = receiver
        .wait_for(Duration::from_secs(60), |all| {
            !of(all, OPS, &guest).is_empty() && !of(all, PROJECT_A, &guest).is_empty()
        })
        .await;
    for path in [OPS, PROJECT_A] {
        let ids: Vec<&str> = of(&got, path, &guest)
            .iter()
            .map(|r| r.event_id())
            .collect();
        assert_eq!(ids, [event_id.as_str()], "{path}: {}", agent.log_text());
    }
    assert_eq!(
        wait_health(&addr, 200, Duration::from_secs(30)).await,
        "ok\n"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = receiver.accepted();
    once_each(&got, OPS, &guest);
    once_each(&got, PROJECT_A, &guest);
    assert_eq!(agent.terminate(Duration::from_secs(10)).unwrap(), 0);
    drop(guest);
    drop(fs);
}

/// The event id of the firing of `uuid` the agent logged as held.
fn held_event_id(agent: &AgentProcess, uuid: &str) -> Option<String> {
    let log = agent.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("holding the firing") && l.contains(uuid))?;
    let at = line.find("event_id=")? + "event_id=".len();
    line.get(at..at + 36).map(str::to_owned)
}

/// EIO on every queue write, then (a fresh agent) EROFS on every fsync,
/// through the filesystem seam of the real `wdguard watch` process: a
/// `pause` guest fires; its firing is held; `/healthz` says 503 naming the
/// spool and the error; `wd_write_failures_total{target="queue"}` counts.
/// The flag file is removed (the disk heals): the firing arrives once at
/// the operator and at the project, with the id it was held with, and the
/// agent is healthy again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libvirtd_eio_on_write_and_erofs_on_fsync_hold_the_firing_until_the_disk_heals() {
    let _serial = SERIAL.lock().await;
    let Some(_libvirtd) = wd_testkit::libvirtd() else {
        return;
    };
    let Some(assets) = wd_testkit::guest::assets() else {
        return;
    };
    let faults = [
        ("eio", "write", "Input/output error"),
        ("erofs", "fsync", "Read-only file system"),
    ];
    for (errno, call, os) in faults {
        let dir = Scratch::new(&format!("wd-disk-{errno}"));
        let spool = dir.0.join("spool");
        let flag = dir.0.join("disk-fails");
        let (receiver, project, cfg) = setup(&dir, &spool).await;
        let fault = format!("spool-fault={errno}:{call}:{}", flag.display());
        let mut agent = AgentProcess::start_with(
            &["--config".as_ref(), cfg.as_os_str()],
            &[
                ("WD_WEBHOOK_SECRET", OPERATOR_SECRET),
                ("WD_TEST_FAULT", &fault),
            ],
            &dir.0.join("agent.log"),
        )
        .unwrap();
        let addr = metrics_addr(&mut agent).await;
        agent.wait_ready(Duration::from_secs(60)).await.unwrap();
        assert_eq!(
            wait_health(&addr, 200, Duration::from_secs(20)).await,
            "ok\n"
        );
        let failures = r#"wd_write_failures_total{target="queue"}"#;
        assert_eq!(metric(&addr, failures).await, 0.0);

        std::fs::write(&flag, b"").unwrap();
        let guest = Guest::define_and_start(spec(&project, "pause"), &assets, None).unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        let held = loop {
            if let Some(id) = held_event_id(&agent, &guest.spec.uuid) {
                break id;
            }
            assert!(
                Instant::now() < deadline,
                "{errno}:{call}: the firing was not held: {}",
                agent.log_text()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let reason = wait_health(&addr, 503, Duration::from_secs(10)).await;
        assert!(
            reason.contains(&spool.display().to_string()) && reason.contains(os),
            "{errno}:{call}: {reason}"
        );
        assert!(metric(&addr, failures).await >= 1.0);
        assert!(metric(&addr, "wd_firings_held").await >= 1.0);
        assert!(
            of(&receiver.accepted(), PROJECT_A, &guest).is_empty(),
            "{errno}:{call}: delivered from a failing disk: {}",
            agent.log_text()
        );

        std::fs::remove_file(&flag).unwrap();
        // Checked below, once late duplicates would have arrived too.
        let _ = receiver
            .wait_for(Duration::from_secs(60), |all| {
                !of(all, OPS, &guest).is_empty() && !of(all, PROJECT_A, &guest).is_empty()
            })
            .await;
        assert_eq!(
            wait_health(&addr, 200, Duration::from_secs(30)).await,
            "ok\n",
            "{errno}:{call}: {}",
            agent.log_text()
        );
        assert_eq!(metric(&addr, "wd_firings_held").await, 0.0);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let got = receiver.accepted();
        for path in [OPS, PROJECT_A] {
            let ids: Vec<&str> = of(&got, path, &guest)
                .iter()
                .map(|r| r.event_id())
                .collect();
            assert_eq!(
                ids,
                [held.as_str()],
                "{errno}:{call} {path}: {}",
                agent.log_text()
            );
        }
        assert_eq!(agent.terminate(Duration::from_secs(10)).unwrap(), 0);
        drop(guest);
    }
}
