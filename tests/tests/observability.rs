//! Observability and operations, end to end: the real `wdguard watch` agent
//! with `--metrics`, real guests under the system libvirtd, a verifying
//! webhook receiver, and `/metrics` read by Prometheus' own OpenMetrics
//! parser (the Python `prometheus_client`, in `target/wd-venv-prom`, made by
//! `cargo xtask test`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use wd_e2e::agent::AgentProcess;
use wd_e2e::ops::{
    OPERATOR_SECRET, OPS, PROJECT_A, SECRET_A, agent_config, get, metrics_addr, write_private,
};

use wd_e2e::receiver::{Received, Receiver};
use wd_e2e::scratch::{RestartLibvirtd, Scratch};
use wd_e2e::virsh::Guest;
use wd_testkit::Libvirtd;
use wd_testkit::guest::{GuestSpec, NovaOwner};

const HOST: &str = "obs-compute-1";

/// Serializes this file's tests under plain `cargo test` (nextest runs the
/// `libvirtd_*` group one at a time anyway).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The samples of an OpenMetrics text, as parsed by Prometheus' Python
/// client: `name{label="v",...}` (labels sorted) to value. Fails the test
/// if the text does not parse.
fn parse_openmetrics(text: &str) -> Option<BTreeMap<String, f64>> {
    let python = wd_testkit::target_dir().join("wd-venv-prom/bin/python3");
    if !python.is_file() {
        return wd_testkit::unavailable(
            "the Prometheus parser venv",
            "run `cargo xtask test`, which creates target/wd-venv-prom",
        );
    }
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
        out[s.name + ("{" + labels + "}" if labels else "")] = s.value
print(json.dumps(out))
"#;
    let mut child = std::process::Command::new(python)
        .args(["-c", SCRIPT])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the OpenMetrics parser refused /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: BTreeMap<String, Value> = serde_json::from_slice(&out.stdout).unwrap();
    Some(
        v.into_iter()
            .map(|(k, v)| (k, v.as_f64().unwrap()))
            .collect(),
    )
}

fn value(m: &BTreeMap<String, f64>, series: &str) -> f64 {
    m.get(series).copied().unwrap_or(0.0)
}

fn of(all: &[Received], path: &str, guest: &Guest) -> Vec<Received> {
    all.iter()
        .filter(|r| r.path == path && r.instance_uuid() == guest.spec.uuid)
        .cloned()
        .collect()
}

fn spec(project: &str, action: &str) -> GuestSpec {
    let name = wd_testkit::unique_name(&format!("wd-obs-{action}"));
    GuestSpec::new(&name, action).with_nova(NovaOwner {
        display_name: format!("obs-{action}"),
        flavor: "m1.tiny".into(),
        user_id: "user-obs".into(),
        project_id: project.to_owned(),
    })
}

/// A real guest's watchdog fires; `/metrics` parses as OpenMetrics and its
/// counters moved by the firing and its deliveries to the operator and the
/// project endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libvirtd_metrics_count_a_real_firing_and_its_deliveries() {
    let _serial = SERIAL.lock().await;
    let Some(_libvirtd) = wd_testkit::libvirtd() else {
        return;
    };
    let Some(assets) = wd_testkit::guest::assets() else {
        return;
    };
    let receiver = Receiver::start_with(OPERATOR_SECRET, &[(PROJECT_A, SECRET_A)])
        .await
        .unwrap();
    let dir = Scratch::new("wd-obs-metrics");
    let project = uuid::Uuid::new_v4().simple().to_string();
    let cfg = dir.0.join("wd.toml");
    write_private(
        &cfg,
        agent_config(&receiver, HOST, &dir.0.join("spool"), &project),
    );
    let mut agent = AgentProcess::start(&cfg, OPERATOR_SECRET, &dir.0.join("agent.log")).unwrap();
    let addr = metrics_addr(&mut agent).await;
    agent.wait_ready(Duration::from_secs(60)).await.unwrap();

    let (code, text) = get(&addr, "/metrics").await;
    assert_eq!(code, 200);
    let Some(before) = parse_openmetrics(&text) else {
        return;
    };
    assert_eq!(value(&before, "wd_libvirt_connected"), 1.0, "{text}");
    assert_eq!(
        value(&before, r#"wd_build_info{version="0.1.0"}"#),
        1.0,
        "{text}"
    );

    // Other guests on this shared host may fire too: compare before and
    // after, and require at least this guest's share.
    let guest = Guest::define_and_start(spec(&project, "pause"), &assets, None).unwrap();
    let got = receiver
        .wait_for(Duration::from_secs(90), |all| {
            !of(all, PROJECT_A, &guest).is_empty() && !of(all, OPS, &guest).is_empty()
        })
        .await;
    assert_eq!(of(&got, PROJECT_A, &guest).len(), 1, "{}", agent.log_text());

    // The receiver records a request before the agent has its response:
    // give the agent a moment to count it.
    let wanted = [
        r#"wd_watchdog_firings_total{action="pause"}"#.to_owned(),
        r#"wd_notifications_total{destination="operator",outcome="delivered"}"#.to_owned(),
        r#"wd_notifications_total{destination="project",outcome="delivered"}"#.to_owned(),
        r#"wd_delivery_duration_seconds_count{destination="operator"}"#.to_owned(),
        r#"wd_delivery_duration_seconds_count{destination="project"}"#.to_owned(),
    ];
    let deadline = Instant::now() + Duration::from_secs(20);
    let after = loop {
        let (code, text) = get(&addr, "/metrics").await;
        assert_eq!(code, 200);
        let after = parse_openmetrics(&text).unwrap();
        let moved = wanted
            .iter()
            .all(|series| value(&after, series) - value(&before, series) >= 1.0);
        if moved {
            break after;
        }
        assert!(
            Instant::now() < deadline,
            "these did not all move by at least 1: {wanted:#?}\nbefore: {before:#?}\nafter:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(value(&after, "wd_libvirt_connected"), 1.0);
    // Every series name follows Prometheus' conventions, and no label
    // carries a project or instance id.
    for series in after.keys() {
        assert!(series.starts_with("wd_"), "{series}");
        assert!(!series.contains(&project), "{series}");
        assert!(!series.contains(&guest.spec.uuid), "{series}");
    }
    let (code, health) = get(&addr, "/healthz").await;
    assert_eq!((code, health.as_str()), (200, "ok\n"));
    assert_eq!(agent.terminate(Duration::from_secs(10)).unwrap(), 0);
}

/// `/healthz` answers 503 with the reason while libvirtd is down, and 200
/// again once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libvirtd_healthz_is_503_while_libvirtd_is_down_and_200_after() {
    let _serial = SERIAL.lock().await;
    let Some(libvirtd) = wd_testkit::libvirtd() else {
        return;
    };
    let receiver = Receiver::start(OPERATOR_SECRET).await.unwrap();
    let dir = Scratch::new("wd-obs-health");
    let cfg = dir.0.join("wd.toml");
    write_private(
        &cfg,
        agent_config(&receiver, HOST, &dir.0.join("spool"), "p-health"),
    );
    let mut agent = AgentProcess::start(&cfg, OPERATOR_SECRET, &dir.0.join("agent.log")).unwrap();
    let addr = metrics_addr(&mut agent).await;
    agent.wait_ready(Duration::from_secs(60)).await.unwrap();
    assert_eq!(get(&addr, "/healthz").await, (200, "ok\n".to_owned()));

    let _restart = RestartLibvirtd;
    libvirtd.stop();
    let deadline = Instant::now() + Duration::from_secs(60);
    let (code, why) = loop {
        let (code, body) = get(&addr, "/healthz").await;
        if code != 200 || Instant::now() > deadline {
            break (code, body);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(code, 503, "{}", agent.log_text());
    assert!(
        why.starts_with("libvirt disconnected for ") && why.ends_with(" s\n"),
        "{why:?}"
    );
    let (_, text) = get(&addr, "/metrics").await;
    assert!(text.contains("\nwd_libvirt_connected 0\n"), "{text}");

    Libvirtd::start().unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (code, body) = get(&addr, "/healthz").await;
        if code == 200 {
            assert_eq!(body, "ok\n");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still {code} {body:?} after libvirtd came back; log:\n{}",
            agent.log_text()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (_, text) = get(&addr, "/metrics").await;
    let m = parse_openmetrics(&text).unwrap_or_default();
    if !m.is_empty() {
        assert!(value(&m, "wd_libvirt_reconnects_total") >= 1.0, "{text}");
    }
    assert_eq!(agent.terminate(Duration::from_secs(10)).unwrap(), 0);
}

/// SIGHUP: a project's endpoint added while the agent runs gets that
/// project's next firing; then a broken config is refused, and the agent
/// keeps running and delivering with the configuration it had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libvirtd_sighup_adds_a_project_and_refuses_a_broken_config() {
    let _serial = SERIAL.lock().await;
    let Some(_libvirtd) = wd_testkit::libvirtd() else {
        return;
    };
    let Some(assets) = wd_testkit::guest::assets() else {
        return;
    };
    let receiver = Receiver::start_with(OPERATOR_SECRET, &[(PROJECT_A, SECRET_A)])
        .await
        .unwrap();
    let dir = Scratch::new("wd-obs-reload");
    let project = uuid::Uuid::new_v4().simple().to_string();
    let cfg = dir.0.join("wd.toml");
    let full = agent_config(&receiver, HOST, &dir.0.join("spool"), &project);
    // At start: the operator endpoint only (the project section cut out).
    let (head, rest) = full.split_once("[[webhook.projects]]").unwrap();
    let tail = &rest[rest.find("[queue]").unwrap()..];
    write_private(&cfg, format!("{head}{tail}"));
    let mut agent = AgentProcess::start(&cfg, OPERATOR_SECRET, &dir.0.join("agent.log")).unwrap();
    agent.wait_ready(Duration::from_secs(60)).await.unwrap();
    let hup =
        |agent: &AgentProcess| wd_testkit::run_quiet("kill", &["-HUP", &agent.pid().to_string()]);

    // Add project A's endpoint and reload.
    write_private(&cfg, &full);
    hup(&agent);
    agent
        .wait_log(
            &["configuration reloaded", "webhook project "],
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    let first = Guest::define_and_start(spec(&project, "pause"), &assets, None).unwrap();
    let got = receiver
        .wait_for(Duration::from_secs(90), |all| {
            !of(all, PROJECT_A, &first).is_empty()
        })
        .await;
    assert_eq!(
        of(&got, PROJECT_A, &first).len(),
        1,
        "the added project's endpoint got nothing; log:\n{}",
        agent.log_text()
    );

    // A broken config is refused; the running one stays.
    write_private(&cfg, format!("{full}\nnot toml at all = = =\n"));
    hup(&agent);
    agent
        .wait_log(&["reload refused"], Duration::from_secs(30))
        .await
        .unwrap();
    let second = Guest::define_and_start(spec(&project, "pause"), &assets, None).unwrap();
    let got = receiver
        .wait_for(Duration::from_secs(90), |all| {
            !of(all, PROJECT_A, &second).is_empty() && !of(all, OPS, &second).is_empty()
        })
        .await;
    assert_eq!(
        of(&got, PROJECT_A, &second).len(),
        1,
        "not delivered after a refused reload; log:\n{}",
        agent.log_text()
    );
    assert_eq!(receiver.rejected_signatures(), 0);
    assert_eq!(agent.terminate(Duration::from_secs(10)).unwrap(), 0);
}

/// Another host: a network namespace joined to this one by a veth pair,
/// this side `host_ip`, the namespace's side another address, both outside
/// 127.0.0.0/8. Removed on drop.
struct OtherHost {
    ns: String,
    link: String,
    host_ip: String,
}

impl OtherHost {
    fn create() -> Option<OtherHost> {
        let pid = std::process::id();
        let ns = format!("wdobs{}", pid % 100_000);
        let link = format!("wdobs{}h", pid % 100_000);
        let peer = format!("wdobs{}p", pid % 100_000);
        // 10.254.0.0/16, a /30 per test process.
        let net = format!("10.254.{}.{}", (pid >> 6) % 250, (pid % 60) * 4);
        let base: Vec<u32> = net.split('.').map(|p| p.parse().unwrap()).collect();
        let ip = |n: u32| format!("{}.{}.{}.{}", base[0], base[1], base[2], base[3] + n);
        let _ = wd_testkit::run_quiet("ip", &["netns", "del", &ns]);
        let _ = wd_testkit::run_quiet("ip", &["link", "del", &link]);
        if !wd_testkit::run_quiet("ip", &["netns", "add", &ns]) {
            return wd_testkit::unavailable("a network namespace", "needs root and `ip netns add`");
        }
        let me = OtherHost {
            ns,
            link,
            host_ip: ip(1),
        };
        let ok = |args: &[&str]| assert!(wd_testkit::run_quiet("ip", args), "ip {args:?}");
        ok(&[
            "link", "add", &me.link, "type", "veth", "peer", "name", &peer,
        ]);
        ok(&["link", "set", &peer, "netns", &me.ns]);
        ok(&[
            "addr",
            "add",
            &format!("{}/30", me.host_ip),
            "dev",
            &me.link,
        ]);
        ok(&["link", "set", &me.link, "up"]);
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &me.ns, "ip"];
            all.extend_from_slice(args);
            ok(&all);
        };
        inside(&["addr", "add", &format!("{}/30", ip(2)), "dev", &peer]);
        inside(&["link", "set", &peer, "up"]);
        inside(&["link", "set", "lo", "up"]);
        Some(me)
    }

    /// `GET url` from inside the namespace: the status code and the body.
    fn get(&self, url: &str) -> (u16, String) {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &self.ns, "curl", "-sS", "--max-time", "10"])
            .args(["-w", "\n%{http_code}", url])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "curl {url}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (body, code) = text.rsplit_once('\n').unwrap();
        (code.trim().parse().unwrap(), body.to_owned())
    }
}

impl Drop for OtherHost {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the pair, and so both.
        let _ = wd_testkit::run_quiet("ip", &["netns", "del", &self.ns]);
        let _ = wd_testkit::run_quiet("ip", &["link", "del", &self.link]);
    }
}

/// With the metrics address bound off loopback, a client on another host
/// (a network namespace behind a veth pair) sees no project id and no URL path of any tenant endpoint: not
/// in `/metrics`, `/healthz` or `/status` (403); the local socket still
/// gives the operator every detail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_off_host_scrape_shows_no_tenant_details() {
    let _serial = SERIAL.lock().await;
    let Some(net) = OtherHost::create() else {
        return;
    };
    let receiver = Receiver::start_with(OPERATOR_SECRET, &[(PROJECT_A, SECRET_A)])
        .await
        .unwrap();
    let dir = Scratch::new("wd-obs-offhost");
    let project = uuid::Uuid::new_v4().simple().to_string();
    // A second tenant endpoint whose path is a token (it never answers:
    // its last error shows in /status).
    let token_path = "/services/T0AAAAAAA/B0BBBBBBB/tokenPart0123456789abcd";
    let text = agent_config(&receiver, HOST, &dir.0.join("spool"), &project)
        .replace("127.0.0.1:0", &format!("{}:0", net.host_ip))
        .replace("host = ", "connect = \"test:///default\"\nhost = ")
        + &format!(
            "\n[[webhook.projects]]\nproject = \"{project}-b\"\nurl = \"http://127.0.0.1:9{token_path}\"\nsecrets = [\"{SECRET_A}\"]\n"
        );
    let cfg = dir.0.join("wd.toml");
    write_private(&cfg, text);
    let socket = dir.0.join("status.sock");
    let mut agent = AgentProcess::start_with(
        &[
            "--config".as_ref(),
            cfg.as_os_str(),
            "--status-socket".as_ref(),
            socket.as_os_str(),
        ],
        &[("WD_WEBHOOK_SECRET", OPERATOR_SECRET)],
        &dir.0.join("agent.log"),
    )
    .unwrap();
    let addr = metrics_addr(&mut agent).await;
    assert!(addr.starts_with(&net.host_ip), "{addr}");
    agent.wait_ready(Duration::from_secs(60)).await.unwrap();

    let tenant = [project.as_str(), PROJECT_A, token_path, "tokenPart"];
    for path in ["/metrics", "/healthz", "/status"] {
        let (code, body) = net.get(&format!("http://{addr}{path}"));
        for secret in tenant {
            assert!(
                !body.contains(secret),
                "{path} ({code}) shows {secret}:\n{body}"
            );
        }
        if path == "/status" {
            assert_eq!(code, 403, "{body}");
        } else {
            assert!(code == 200 || code == 503, "{path}: {code}");
        }
    }
    // The operator's own view, on the local socket, has the details (so
    // the checks above could fail): destination names with the project
    // and the endpoint's host and short hash, never its path.
    let out = std::process::Command::new(wd_e2e::agent::wdguard_path().unwrap())
        .args(["status", "--format", "json", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{status} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        status.contains(&format!("webhook project {project}")),
        "{status}"
    );
    assert!(
        !status.contains(token_path) && !status.contains(PROJECT_A),
        "{status}"
    );
    assert!(
        !agent.log_text().contains("tokenPart"),
        "{}",
        agent.log_text()
    );
    assert_eq!(agent.terminate(Duration::from_secs(10)).unwrap(), 0);
}
