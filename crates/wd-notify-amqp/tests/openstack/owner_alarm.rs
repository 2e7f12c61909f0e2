//! The whole owner-alarm path with OpenStack's own services from PyPI:
//! wd's notification → ceilometer-agent-notification (stock event
//! definitions, event pipeline publishing to `notifier://?topic=alarm.all`)
//! → aodh-listener (SQLite) → aodh-notifier → the alarm's HTTP action.
//! `owner_alarm.py` beside this file runs those services.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use wd_notify::Notifier;
use wd_notify_amqp::{AmqpConfig, AmqpNotifier, AmqpUrl, Format};

use super::{BROKER, broker_url, name, notification};

struct Services {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Drop for Services {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_aodh_owner_alarm_fires_for_the_owner_only() {
    let _broker = BROKER.lock().await;
    let Some(url) = broker_url() else { return };
    let Some(python) = wd_testkit::openstack::venv_python() else {
        return;
    };
    let work = wd_testkit::target_dir().join(name("wd-owner-alarm"));
    let transport = url.replacen("amqp://", "rabbit://", 1).replace("/%2f", "/");
    let n = notification(Some("proj-owner"));
    let instance = n.instance.uuid.to_string();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/openstack/owner_alarm.py"
    );
    let log = std::fs::File::create(format!("{}.log", work.display())).unwrap();
    let mut child = Command::new(&python)
        .args([script, &work.display().to_string(), &transport])
        .args(["proj-owner", "proj-other", &instance])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("start the OpenStack services");
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let services = Services {
        stdin: child.stdin.take(),
        child,
        lines,
    };
    // Lines before READY are the services' own chatter (or a death).
    let started = Instant::now() + Duration::from_secs(180);
    loop {
        let left = started.saturating_duration_since(Instant::now());
        let line = services
            .lines
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("the services did not start; see {}.log", work.display()));
        assert!(
            !line.starts_with("DIED"),
            "{line}; see {}/*.log",
            work.display()
        );
        if line == "READY" {
            break;
        }
    }

    let notifier = AmqpNotifier::new(
        AmqpConfig::new(AmqpUrl::new(url.clone()).unwrap())
            .with_format(Format::Unversioned)
            .with_reconnect(Duration::from_millis(200), Duration::from_secs(1)),
    )
    .unwrap();
    notifier.notify(&n).await.unwrap();
    notifier.close().await;

    // The owner's alarm fires; then give the other project's alarm time to
    // (wrongly) fire too.
    let mut owner = None;
    let mut other = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut settle: Option<Instant> = None;
    while Instant::now() < settle.unwrap_or(deadline) {
        let left = settle
            .unwrap_or(deadline)
            .saturating_duration_since(Instant::now());
        let Ok(line) = services.lines.recv_timeout(left) else {
            break;
        };
        let Some(rest) = line.strip_prefix("POST ") else {
            assert!(!line.starts_with("DIED"), "{line}");
            continue;
        };
        let (path, body) = rest.split_once(' ').unwrap();
        let body: Value = serde_json::from_str(body).unwrap();
        if path == "/owner" && owner.is_none() {
            owner = Some(body);
            settle = Some(Instant::now() + Duration::from_secs(10));
        } else if path == "/other" {
            other.push(body);
        }
    }
    drop(services);
    let owner = owner.unwrap_or_else(|| {
        panic!(
            "the owner's alarm did not fire within 90 s; see {}/*.log",
            work.display()
        )
    });
    eprintln!("the owner's alarm action received: {owner}");
    assert!(other.is_empty(), "another project's alarm fired: {other:?}");
    assert_eq!(owner["alarm_name"], "owner-watchdog");
    assert_eq!(owner["current"], "alarm");
    assert_eq!(owner["reason_data"]["type"], "event");
    let event = &owner["reason_data"]["event"];
    assert_eq!(event["event_type"], "compute.instance.watchdog");
    assert_eq!(event["message_id"], n.event_id.to_string());
    let traits: Vec<(String, String)> = event["traits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t[0].as_str().unwrap().to_owned(),
                t[2].to_string().trim_matches('"').to_owned(),
            )
        })
        .collect();
    for (k, v) in [
        ("instance_id", instance.as_str()),
        ("project_id", "proj-owner"),
        ("display_name", "some-server"),
        ("host", "compute-1"),
    ] {
        assert!(
            traits.iter().any(|(tk, tv)| tk == k && tv == v),
            "trait {k}={v} missing: {traits:?}"
        );
    }
    let _ = std::fs::remove_dir_all(&work);
}
