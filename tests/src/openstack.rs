//! OpenStack's own services as test fixtures: [`OwnerAlarm`] runs
//! Ceilometer's event pipeline and Aodh's alarm services, and
//! [`CeilometerAgent`] Ceilometer's notification agent with its stock
//! pipelines, from the venv that `wd_testkit::openstack` keeps at
//! `target/wd-venv`. Their Python sides are in `tests/fixtures/openstack/`.

use std::path::PathBuf;

use script::Script;

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
    script: Script,
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
        let settle = settle.as_secs_f64().to_string();
        let args = [work.as_os_str()]
            .into_iter()
            .chain([transport, owner, other, instance, &settle].map(std::ffi::OsStr::new))
            .collect::<Vec<_>>();
        let script = Script::start(
            python,
            "owner_alarm.py",
            &args,
            script::log_in(work, "owner_alarm.log")?,
        )?;
        Ok(OwnerAlarm {
            script,
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
            let line = self.script.lines.recv_timeout(left).map_err(|_| {
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
            let Ok(line) = self.script.lines.recv_timeout(left) else {
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

mod listener {
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    use serde_json::Value;

    use super::Script;

    /// An oslo.messaging notification listener handing what it receives to
    /// Ceilometer's event converter with its stock definitions
    /// (`fixtures/openstack/ceilometer_events.py` in this crate, run by the venv's
    /// Python): one JSON line per notification (`event_type`, `publisher_id`,
    /// `ctxt`, `metadata_message_id`, and the converted `event`). Stopped when
    /// dropped.
    pub struct OsloListener {
        script: Script,
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
            let args = [transport, exchange, topic, pool]
                .map(std::ffi::OsStr::new)
                .into_iter()
                .chain(config.map(std::path::Path::as_os_str))
                .collect::<Vec<_>>();
            let script = Script::start(python, "ceilometer_events.py", &args, Stdio::inherit())
                .expect("start the Ceilometer listener");
            let listener = OsloListener { script };
            let ready = listener
                .script
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
                let Ok(line) = self.script.lines.recv_timeout(left) else {
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
}

pub use listener::OsloListener;

mod ceilometer_agent;
mod script;

pub use ceilometer_agent::{CeilometerAgent, is_warning_or_worse};
