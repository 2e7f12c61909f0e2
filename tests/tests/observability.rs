//! Observability and operations, end to end: the real `wdguard watch` agent
//! with `--metrics`, real guests under the system libvirtd, a verifying
//! webhook receiver, and `/metrics` read by Prometheus' own OpenMetrics
//! parser (the Python `prometheus_client`, in `target/wd-venv-prom`, made by
//! `cargo xtask test`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use wd_e2e::agent::Agent;
use wd_e2e::guest::Guest;
use wd_e2e::ops::{
    OPERATOR_SECRET, OPS, PROJECT_A, SECRET_A, agent_config, get, metrics_addr, write_private,
};

const HOST: &str = "obs-compute-1";
use wd_e2e::receiver::{Received, Receiver};
use wd_e2e::scratch::{RestartLibvirtd, Scratch};
use wd_testkit::Libvirtd;
use wd_testkit::guest::{GuestSpec, NovaOwner};

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
    let mut agent = Agent::start(&cfg, OPERATOR_SECRET, &dir.0.join("agent.log")).unwrap();
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
    let mut agent = Agent::start(&cfg, OPERATOR_SECRET, &dir.0.join("agent.log")).unwrap();
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
    let tail = &rest[rest.find("[retry]").unwrap()..];
    write_private(&cfg, format!("{head}{tail}"));
    let mut agent = Agent::start(&cfg, OPERATOR_SECRET, &dir.0.join("agent.log")).unwrap();
    agent.wait_ready(Duration::from_secs(60)).await.unwrap();
    let hup = |agent: &Agent| wd_testkit::run_quiet("kill", &["-HUP", &agent.pid().to_string()]);

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
