//! Remote libvirt, as kolla-ansible connects masakari-instancemonitor: the
//! agent opens `qemu+tcp://` with SASL (a DIGEST-MD5 user made with
//! `saslpasswd2`), its credentials from libvirt's `auth.conf`
//! (`LIBVIRT_AUTH_FILE`) or the config file's `[connect_auth]`, never the
//! command line.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use wd_e2e::agent::AgentProcess;
use wd_testkit::{Libvirtd, SaslUser};

use super::world::*;

/// Writes `body` to `dir/name` with mode 0600.
fn secret_file(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// An `auth.conf` as kolla writes it, for the server 127.0.0.1.
fn auth_conf(user: &str, password: &str) -> String {
    format!(
        "[credentials-wd]\nauthname={user}\npassword={password}\n\n[auth-libvirt-127.0.0.1]\ncredentials=wd\n"
    )
}

/// Starts `wdguard watch --config CONFIG --connect qemu+tcp://…` with
/// `LIBVIRT_AUTH_FILE=auth` and stdin closed (`/dev/null`).
fn agent(w: &World, auth: &Path, log: &str) -> AgentProcess {
    agent_with(&w.config, w, auth, log)
}

/// [`agent`] with another config file.
fn agent_with(config: &Path, w: &World, auth: &Path, log: &str) -> AgentProcess {
    let uri = Libvirtd::tcp_uri();
    AgentProcess::start_with(
        &[
            "--config".as_ref(),
            config.as_os_str(),
            "--connect".as_ref(),
            uri.as_ref(),
        ],
        &[
            ("WD_WEBHOOK_SECRET", OPERATOR_SECRET),
            ("LIBVIRT_AUTH_FILE", auth.to_str().unwrap()),
        ],
        &w.dir.0.join(log),
    )
    .unwrap()
}

/// Runs an agent that must fail at startup: exit 2 within 60 s (no
/// prompt, no hang), its log naming the URI and `needle`. Its config is the
/// world's without `wait = true`, which would keep it retrying.
async fn refused(w: &World, auth: &Path, log: &str, needle: &str, password: &str) -> String {
    let text = std::fs::read_to_string(&w.config).unwrap();
    assert!(text.contains("wait = true\n"), "{text}");
    let config = secret_file(
        &w.dir.0,
        "nowait.toml",
        &text.replace("wait = true\n", "wait = false\n"),
    );
    let mut a = agent_with(&config, w, auth, log);
    let code = a.wait_exit(Duration::from_secs(60)).unwrap();
    let text = a.log_text();
    assert_eq!(code, Some(2), "did not fail at startup:\n{text}");
    assert!(text.contains(&Libvirtd::tcp_uri()), "{text}");
    assert!(text.contains(needle), "{needle:?} not in:\n{text}");
    assert!(!text.contains(password), "password in the log:\n{text}");
    text
}

/// The agent connects over TCP with SASL, its credentials from `auth.conf`,
/// and a real guest's firing reaches its owner; the password is nowhere in
/// the agent's log or command line. A wrong password and missing
/// credentials each fail the start at once with a clear error (stdin is
/// closed: nothing can prompt). The config file's `[connect_auth]` works
/// where `auth.conf` has nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libvirtd_qemu_tcp_sasl_with_auth_conf_notifies_the_owner() {
    let _serial = SERIAL.lock().await;
    let Some(_libvirtd) = wd_testkit::libvirtd() else {
        return;
    };
    let Some(assets) = wd_testkit::guest::assets() else {
        return;
    };
    let Some(_tcp) = wd_testkit::libvirtd_tcp() else {
        return;
    };
    let user = SaslUser::create("wde2e").unwrap();
    let w = World::new(4.0).await;
    let auth = secret_file(
        &w.dir.0,
        "auth.conf",
        &auth_conf(&user.name, &user.password),
    );

    let mut a = agent(&w, &auth, "agent.log");
    a.wait_ready(Duration::from_secs(60)).await.unwrap();
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", a.pid())).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(cmdline.contains("qemu+tcp://127.0.0.1"), "{cmdline}");
    assert!(!cmdline.contains(&user.password), "password in `ps`");

    let guest = start(w.spec("pause"), &assets);
    let got = w
        .receiver
        .wait_for(Duration::from_secs(90), |all| {
            !of(all, PROJECT_A, &guest).is_empty()
        })
        .await;
    let mine = of(&got, PROJECT_A, &guest);
    assert!(
        !mine.is_empty(),
        "nothing delivered; log:\n{}",
        a.log_text()
    );
    check_notification(&mine[0], &guest, "pause", false);
    assert_eq!(w.receiver.rejected_signatures(), 0);
    assert_eq!(a.terminate(Duration::from_secs(10)).unwrap(), 0);
    let text = std::fs::read_to_string(w.dir.0.join("agent.log")).unwrap();
    assert!(text.contains("qemu+tcp://127.0.0.1"), "{text}");
    assert!(!text.contains(&user.password), "password in the log");

    // A wrong password: libvirt's refusal, at once.
    let wrong = secret_file(
        &w.dir.0,
        "wrong.conf",
        &auth_conf(&user.name, "not-the-password"),
    );
    let text = refused(
        &w,
        &wrong,
        "wrong.log",
        "authentication failed",
        "not-the-password",
    )
    .await;
    eprintln!("a wrong password: {}", text.lines().last().unwrap_or(""));
    // Nothing for this server: the error names what is missing and where
    // libvirt looked.
    let empty = secret_file(&w.dir.0, "empty.conf", "");
    let text = refused(
        &w,
        &empty,
        "missing.log",
        &format!(
            "asks for a user name (`authname`) and a password (`password`), which neither libvirt's auth.conf (LIBVIRT_AUTH_FILE={}) nor the configured credentials give: add them to auth.conf as `[credentials-NAME]` with `authname=` and `password=`, and `[auth-libvirt-127.0.0.1]` with `credentials=NAME`; or give `[connect_auth]` username and password in the config file",
            empty.display()
        ),
        &user.password,
    )
    .await;
    eprintln!("no credentials: {}", text.lines().last().unwrap_or(""));

    // The config file's [connect_auth], where auth.conf has nothing.
    let mut config = std::fs::read_to_string(&w.config).unwrap();
    config.push_str(&format!(
        "\n[connect_auth]\nusername = \"{}\"\npassword = \"{}\"\n",
        user.name, user.password
    ));
    std::fs::write(&w.config, config).unwrap();
    let mut a = agent(&w, &empty, "config.log");
    a.wait_ready(Duration::from_secs(60)).await.unwrap();
    assert!(
        !a.log_text().contains(&user.password),
        "password in the log"
    );
    assert_eq!(a.terminate(Duration::from_secs(10)).unwrap(), 0);
}
