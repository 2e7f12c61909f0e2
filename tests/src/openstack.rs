//! OpenStack's own services as test fixtures: [`OwnerAlarm`] runs
//! Ceilometer's event pipeline and Aodh's alarm services, and
//! [`CeilometerAgent`] Ceilometer's notification agent with its stock
//! pipelines, from the venv that `wd_testkit::openstack` keeps at
//! `target/wd-venv`. Their Python sides are in `tests/fixtures/openstack/`.

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// OpenStack's owner-alarm path running on this machine with its own code
/// (`tests/fixtures/openstack/owner_alarm.py`, run by the venv's Python):
/// `ceilometer-agent-notification` with an event pipeline publishing to
/// `notifier://?topic=alarm.all`, `aodh-listener` and `aodh-notifier` on
/// SQLite, and a local HTTP receiver as the alarms' action.
///
/// It holds two event alarms on `compute.instance.watchdog`: the owner's
/// (its project, `traits.instance_id == instance`, action path `/owner`) and
/// another project's (no query, so it would match any instance of its
/// project; action path `/other`). Its services are stopped when it is
/// dropped (end of the script's stdin; SIGKILL after 20 s).
pub struct OwnerAlarm {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    lines: std::sync::mpsc::Receiver<String>,
    work: PathBuf,
}

/// What the alarms' HTTP action received: `(path, JSON body)` of each POST.
#[derive(Debug, Default)]
pub struct AlarmPosts {
    /// The owner alarm's first notification, if any.
    pub owner: Option<String>,
    /// Every notification of the other project's alarm.
    pub other: Vec<String>,
}

impl OwnerAlarm {
    /// Starts the services in `work` (created; logs there), on the broker at
    /// the oslo `transport` URL, for the `owner` project's alarm on
    /// `instance` and the `other` project's alarm. They report ready
    /// `settle` later (see [`OwnerAlarm::wait_ready`]).
    pub fn start(
        python: &std::path::Path,
        work: &std::path::Path,
        transport: &str,
        owner: &str,
        other: &str,
        instance: &str,
        settle: std::time::Duration,
    ) -> Result<OwnerAlarm, String> {
        use std::io::{BufRead, BufReader};
        fs::create_dir_all(work).map_err(|e| format!("create {}: {e}", work.display()))?;
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/openstack/owner_alarm.py"
        );
        let log = fs::File::create(work.join("owner_alarm.log"))
            .map_err(|e| format!("create the log in {}: {e}", work.display()))?;
        let mut child = Command::new(python)
            .arg(script)
            .arg(work)
            .args([transport, owner, other, instance])
            .arg(settle.as_secs_f64().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("start {script}: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(OwnerAlarm {
            stdin: child.stdin.take(),
            child,
            lines,
            work: work.to_owned(),
        })
    }

    /// Where the services write their logs.
    pub fn work(&self) -> &std::path::Path {
        &self.work
    }

    /// Waits until every service runs; an error names the service that died
    /// or the timeout, and where the logs are.
    pub fn wait_ready(&self, timeout: std::time::Duration) -> Result<(), String> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = self.lines.recv_timeout(left).map_err(|_| {
                format!(
                    "the OpenStack services did not start within {timeout:?}; see {}/*.log",
                    self.work.display()
                )
            })?;
            if line.starts_with("DIED") {
                return Err(format!("{line}; see {}/*.log", self.work.display()));
            }
            if line == "READY" {
                return Ok(());
            }
        }
    }

    /// Collects the alarms' notifications: waits up to `timeout` for the
    /// owner's, then `settle` more for the other project's alarm to
    /// (wrongly) fire too.
    pub fn posts(&self, timeout: std::time::Duration, settle: std::time::Duration) -> AlarmPosts {
        use std::time::Instant;
        let mut posts = AlarmPosts::default();
        let mut until = Instant::now() + timeout;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let Ok(line) = self.lines.recv_timeout(left) else {
                return posts;
            };
            let Some((path, body)) = line.strip_prefix("POST ").and_then(|r| r.split_once(' '))
            else {
                continue;
            };
            if path == "/owner" && posts.owner.is_none() {
                posts.owner = Some(body.to_owned());
                until = Instant::now() + settle;
            } else if path == "/other" {
                posts.other.push(body.to_owned());
            }
        }
    }
}

impl Drop for OwnerAlarm {
    fn drop(&mut self) {
        use std::time::{Duration, Instant};
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

mod listener {
    use std::io::{BufRead, BufReader};
    use std::process::{Child, ChildStdin, Command, Stdio};
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    use serde_json::Value;

    /// An oslo.messaging notification listener handing what it receives to
    /// Ceilometer's event converter with its stock definitions
    /// (`fixtures/openstack/ceilometer_events.py` in this crate, run by the venv's
    /// Python): one JSON line per notification (`event_type`, `publisher_id`,
    /// `ctxt`, `metadata_message_id`, and the converted `event`). Stopped when
    /// dropped.
    pub struct OsloListener {
        child: Child,
        stdin: Option<ChildStdin>,
        lines: mpsc::Receiver<String>,
    }

    impl OsloListener {
        /// Starts the listener on `exchange`/`topic` with its own queue `pool`,
        /// and waits until it has bound the queue.
        pub fn start(
            python: &std::path::Path,
            url: &str,
            exchange: &str,
            topic: &str,
            pool: &str,
        ) -> Self {
            let transport = url.replacen("amqp://", "rabbit://", 1).replace("/%2f", "/");
            Self::start_with(python, &transport, exchange, topic, pool, None)
        }

        /// Starts the listener on oslo transport URL `transport`, configured by
        /// `config` (read as Ceilometer reads its own file) if given.
        pub fn start_with(
            python: &std::path::Path,
            transport: &str,
            exchange: &str,
            topic: &str,
            pool: &str,
            config: Option<&std::path::Path>,
        ) -> Self {
            let script = concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/fixtures/openstack/ceilometer_events.py"
            );
            let mut child = Command::new(python)
                .args([script, transport, exchange, topic, pool])
                .args(config)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start the Ceilometer listener");
            let stdout = child.stdout.take().unwrap();
            let stdin = child.stdin.take();
            let (tx, lines) = mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            let listener = OsloListener {
                child,
                stdin,
                lines,
            };
            let ready = listener
                .lines
                .recv_timeout(Duration::from_secs(120))
                .expect("the listener starts within 120 s");
            assert_eq!(ready, "READY");
            listener
        }

        /// The converted notifications whose message_id is `id`, waiting up to
        /// `wait` for `count` of them.
        pub fn events_for(&self, id: &str, count: usize, wait: Duration) -> Vec<Value> {
            self.wait_for(count, wait, |v| v["metadata_message_id"] == id)
        }

        /// The received notifications `pred` accepts, waiting up to `wait` for
        /// `count` of them.
        pub fn wait_for(
            &self,
            count: usize,
            wait: Duration,
            pred: impl Fn(&Value) -> bool,
        ) -> Vec<Value> {
            let mut got = Vec::new();
            let deadline = Instant::now() + wait;
            while got.len() < count {
                let left = deadline.saturating_duration_since(Instant::now());
                let Ok(line) = self.lines.recv_timeout(left) else {
                    break;
                };
                let v: Value =
                    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
                if pred(&v) {
                    got.push(v);
                }
            }
            got
        }
    }

    impl Drop for OsloListener {
        fn drop(&mut self) {
            // End of stdin stops it; then make sure.
            drop(self.stdin.take());
            let deadline = Instant::now() + Duration::from_secs(10);
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
}

pub use listener::OsloListener;

mod ceilometer_agent;

pub use ceilometer_agent::{CeilometerAgent, is_warning_or_worse};
