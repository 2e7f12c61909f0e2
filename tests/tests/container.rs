//! The container image (`cargo xtask image`), run with podman the way
//! kolla-ansible runs a service: host network, the host's libvirt socket
//! mounted read-only from `/run/libvirt`, the configuration and the spool
//! as volumes, never as root. A real guest on the host's libvirtd fires,
//! and its owner (and the operator) are notified from inside the container;
//! its healthcheck passes. `cargo xtask test` builds the image before the
//! tests run; alone, a test builds it from the newest `.deb` under
//! `target/debian/` (`cargo xtask package --profile dev`).
//!
//! podman runs with runc (crun refuses these machines' hybrid cgroups) and
//! with limits that fit the machine's hard limits (see RECIPES.md).

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;
use std::time::Duration;

use wd_e2e::container::{self, Container, HostUser, Volume, podman, proc_ids};
use wd_e2e::ops::{OPERATOR_SECRET, OPS, PROJECT_A, SECRET_A, agent_config, get};
use wd_e2e::receiver::{Received, Receiver};
use wd_e2e::scratch::Scratch;
use wd_e2e::virsh::Guest;
use wd_testkit::Libvirtd;
use wd_testkit::guest::{GuestAssets, GuestSpec, NovaOwner};

/// The compute host's name in the notifications.
const HOST: &str = "container-compute-1";

/// `podman run` options every test container gets.
const RUN: &[&str] = &[
    "--network",
    "host",
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1024:1024",
    "--volume",
    "/run/libvirt:/run/libvirt:ro",
];

/// What a container test needs: libvirtd (letting read-only clients in
/// without polkit), the guest, the image, and its uid known to the host.
/// Also the webhook receiver, with the operator's endpoint and the owner's
/// project's, and that project.
struct Setup {
    assets: GuestAssets,
    image: String,
    uid: u32,
    receiver: Receiver,
    project: String,
    _host_user: HostUser,
}

async fn setup() -> Option<Setup> {
    wd_testkit::libvirtd()?;
    let Some(assets) = wd_testkit::guest::assets() else {
        return wd_testkit::unavailable("guest assets", "cargo xtask guest");
    };
    let (image, uid) = container::image()?;
    assert_ne!(uid, 0, "the image must not run as root");
    if Libvirtd::allow_read_only_clients().unwrap() {
        Libvirtd.restart().unwrap();
    }
    Some(Setup {
        assets,
        image,
        uid,
        receiver: Receiver::start_with(OPERATOR_SECRET, &[(PROJECT_A, SECRET_A)])
            .await
            .unwrap(),
        project: uuid::Uuid::new_v4().simple().to_string(),
        _host_user: HostUser::ensure(uid).unwrap(),
    })
}

/// The agent's configuration: the operator endpoint (its secret in the
/// file), the owner's project endpoint, the spool in the volume, metrics
/// on a free loopback port (host network).
fn config(receiver: &Receiver, project: &str) -> String {
    agent_config(receiver, HOST, Path::new("/var/lib/wd/spool"), project).replace(
        "[webhook]\n",
        &format!("[webhook]\nsecrets = [\"{OPERATOR_SECRET}\"]\n"),
    )
}

/// Writes `text` to `path`, owned by `uid:gid` with `mode`.
fn write_owned(path: &Path, text: &str, uid: u32, gid: u32, mode: u32) {
    std::fs::write(path, text).unwrap();
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A directory owned by `uid:gid` with `mode`.
fn own_dir(dir: &Path, uid: u32, gid: u32, mode: u32) {
    std::os::unix::fs::chown(dir, Some(uid), Some(gid)).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn spec(project: &str) -> GuestSpec {
    GuestSpec::new(&wd_testkit::unique_name("wd-ctr"), "pause").with_nova(NovaOwner {
        display_name: "ctr-1".into(),
        flavor: "m1.tiny".into(),
        user_id: "user-container".into(),
        project_id: project.to_owned(),
    })
}

/// Starts a guest of the project whose watchdog fires, and waits until both
/// the owner's endpoint and the operator's were notified of it; returns
/// what arrived for it.
async fn fire_and_wait(setup: &Setup, log: &dyn Fn() -> String) -> (Guest, Vec<Received>) {
    let (receiver, project) = (&setup.receiver, setup.project.as_str());
    let guest = Guest::define_and_start(spec(project), &setup.assets, None).unwrap();
    let uuid = guest.spec.uuid.clone();
    let got = receiver
        .wait_for(Duration::from_secs(90), |r| {
            [PROJECT_A, OPS]
                .iter()
                .all(|p| r.iter().any(|x| x.instance_uuid() == uuid && x.path == *p))
        })
        .await;
    let mine: Vec<Received> = got
        .into_iter()
        .filter(|r| r.instance_uuid() == uuid)
        .collect();
    for path in [PROJECT_A, OPS] {
        assert!(
            mine.iter().any(|r| r.path == path),
            "no notification on {path} for guest {uuid} (state {}); got {:?}; log:\n{}",
            guest.state(),
            mine.iter().map(|r| &r.path).collect::<Vec<_>>(),
            log()
        );
    }
    for r in &mine {
        assert_eq!(r.data()["host"], HOST, "{:?}", r.event);
        assert_eq!(r.data()["instance"]["project_id"], project, "{:?}", r.event);
        assert_eq!(r.data()["action"], "pause", "{:?}", r.event);
    }
    assert_eq!(receiver.rejected_signatures(), 0);
    (guest, mine)
}

/// The container's main process runs as `uid:uid` (real, effective, saved,
/// filesystem), not root.
fn assert_runs_as(ctr: &Container, uid: u32) {
    let pid = ctr.pid().unwrap();
    assert_eq!(proc_ids(pid, "Uid"), [uid; 4], "uids of pid {pid}");
    assert_eq!(proc_ids(pid, "Gid"), [uid; 4], "gids of pid {pid}");
}

/// `podman healthcheck run` exits 0, and says why if not.
fn assert_healthy(ctr: &Container) {
    let out = podman(&["healthcheck", "run", &ctr.id]).unwrap();
    assert!(
        out.status.success(),
        "podman healthcheck run: {}; {}{}; log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        ctr.inspect("{{json .State.Health}}").unwrap_or_default(),
        ctr.logs()
    );
}

/// The metrics address the agent logged in `log` (it binds port 0).
fn metrics_addr(log: &str) -> String {
    log.lines()
        .filter(|l| l.contains("serving /metrics"))
        .find_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("addr=")))
        .unwrap_or_else(|| panic!("no metrics address in the log:\n{log}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libvirtd_container_notifies_the_owner_as_non_root_and_is_healthy() {
    let Some(setup) = setup().await else {
        return;
    };
    let (uid, receiver, project) = (setup.uid, &setup.receiver, &setup.project);

    // /etc/wd: the operator's file, readable by the container's user only
    // (it holds secrets), mounted read-only.
    let config_dir = Scratch::new("wd-ctr-config");
    own_dir(&config_dir.0, uid, uid, 0o700);
    write_owned(
        &config_dir.0.join("wd.toml"),
        &config(receiver, project),
        uid,
        uid,
        0o600,
    );
    // The spool: a named volume, which podman fills from the image's
    // /var/lib/wd (owned by the container's user, 0700).
    let spool = Volume::create("wd-ctr-spool").unwrap();
    let etc = format!("{}:/etc/wd:ro", config_dir.0.display());
    let var = format!("{}:/var/lib/wd", spool.name);
    let mut args = RUN.to_vec();
    args.extend(["--volume", &etc, "--volume", &var, &setup.image]);
    let ctr = Container::run(&args).unwrap();
    ctr.wait_for("catch-up listing done", None, Duration::from_secs(60))
        .await
        .unwrap();
    assert_runs_as(&ctr, uid);

    let (_guest, _) = fire_and_wait(&setup, &|| ctr.logs()).await;

    // Healthy, by the image's HEALTHCHECK and by /healthz itself.
    assert_healthy(&ctr);
    let addr = metrics_addr(&ctr.logs());
    assert_eq!(get(&addr, "/healthz").await, (200, "ok\n".to_owned()));
    // The spool is the volume's, private to the container's user.
    let data = spool.mountpoint().unwrap();
    let meta = std::fs::metadata(&data).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (uid, 0o700), "{data:?}");
    assert!(data.join("spool").is_dir(), "no spool in {data:?}");

    // `podman stop` (SIGTERM) ends the agent cleanly.
    container::podman_ok(&["stop", "--time", "30", &ctr.id]).unwrap();
    assert_eq!(
        ctr.inspect("{{.State.ExitCode}}").unwrap(),
        "0",
        "{}",
        ctr.logs()
    );
    assert!(
        ctr.logs().contains("wdguard watch stopped"),
        "{}",
        ctr.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libvirtd_container_follows_kolla_config_json_and_logs_to_a_file() {
    let Some(setup) = setup().await else {
        return;
    };
    let (uid, receiver, project) = (setup.uid, &setup.receiver, &setup.project);

    // /etc/kolla/wdguard as kolla-ansible renders a service's files: owned
    // by root, readable by the service's group (here the container's).
    let kolla = Scratch::new("wd-ctr-kolla");
    own_dir(&kolla.0, 0, uid, 0o750);
    write_owned(
        &kolla.0.join("wd.toml"),
        &config(receiver, project),
        0,
        uid,
        0o640,
    );
    let config_json = |owner: &str| {
        serde_json::json!({
            "command": "wdguard watch --config /etc/wd/wd.toml",
            "config_files": [{
                "source": "/var/lib/kolla/config_files/wd.toml",
                "dest": "/etc/wd/wd.toml",
                "owner": owner,
                "perm": "0600",
            }],
            "permissions": [{"path": "/var/log/kolla/wdguard", "owner": "wd:wd", "recurse": true}],
        })
        .to_string()
    };
    let logs = Scratch::new("wd-ctr-logs");
    own_dir(&logs.0, uid, uid, 0o750);
    let spool = Volume::create("wd-ctr-kolla-spool").unwrap();
    let kolla_mount = format!("{}:/var/lib/kolla/config_files:ro", kolla.0.display());
    let log_mount = format!("{}:/var/log/kolla/wdguard", logs.0.display());
    let var = format!("{}:/var/lib/wd", spool.name);
    let mut args = RUN.to_vec();
    args.extend([
        "--volume",
        &kolla_mount,
        "--volume",
        &log_mount,
        "--volume",
        &var,
        "--env",
        "KOLLA_CONFIG_STRATEGY=COPY_ALWAYS",
    ]);

    // A file kolla_start would give to root: refused, saying why, before
    // the agent starts (the container never has root to give it).
    write_owned(
        &kolla.0.join("config.json"),
        &config_json("root"),
        0,
        uid,
        0o640,
    );
    let mut refused = vec!["run", "--rm"];
    refused.extend(&args);
    refused.push(&setup.image);
    let out = podman(&refused).unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("wd-start: config_files: /etc/wd/wd.toml: owner `root`")
            && said.contains("cannot give files to another user"),
        "{said}"
    );

    // kolla's own form: copied to /etc/wd/wd.toml, the agent's log appended
    // to /var/log/kolla/wdguard/wdguard.log for fluentd.
    write_owned(
        &kolla.0.join("config.json"),
        &config_json("wd"),
        0,
        uid,
        0o640,
    );
    args.extend([
        "--env",
        "WD_LOG_FILE=/var/log/kolla/wdguard/wdguard.log",
        &setup.image,
    ]);
    let ctr = Container::run(&args).unwrap();
    let log_file = logs.0.join("wdguard.log");
    ctr.wait_for(
        "catch-up listing done",
        Some(&log_file),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    let log = || std::fs::read_to_string(&log_file).unwrap_or_default();
    assert!(
        log().contains(
            "wd-start: copied /var/lib/kolla/config_files/wd.toml to /etc/wd/wd.toml (0600)"
        ),
        "{}",
        log()
    );
    assert_runs_as(&ctr, uid);
    let copied =
        container::podman_ok(&["exec", &ctr.id, "stat", "-c", "%u %a", "/etc/wd/wd.toml"]).unwrap();
    assert_eq!(copied, format!("{uid} 600"));

    let (_guest, got) = fire_and_wait(&setup, &log).await;
    assert_healthy(&ctr);
    // The agent's log is in the file (the firing, with the id its owner
    // got), not in the container's output.
    let event_id = got[0].event_id().to_owned();
    assert!(
        log()
            .lines()
            .any(|l| l.contains("watchdog fired") && l.contains(&event_id)),
        "no `watchdog fired` with {event_id} in the log file:\n{}",
        log()
    );
    let output = ctr.logs();
    assert!(!output.contains("watchdog fired"), "{output}");
}
