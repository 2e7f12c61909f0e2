//! The e2e tests' world: a receiver with an operator endpoint and two
//! project endpoints, the agent's config, and the checks every test makes of
//! a delivered notification.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use wd_e2e::agent::AgentProcess;
use wd_e2e::receiver::{Received, Receiver};
use wd_e2e::scratch::Scratch;
use wd_e2e::virsh::Guest;
use wd_testkit::guest::{GuestAssets, GuestSpec, NovaOwner};

/// The operator endpoint's secret, given to the agent in `WD_WEBHOOK_SECRET`.
pub(crate) const OPERATOR_SECRET: &str = "whsec_d2QtZTJlIG9wZXJhdG9yIHNlY3JldCAzMiBieXRlcyE=";
/// Project A's endpoint secret, in the agent's config file.
pub(crate) const SECRET_A: &str = "whsec_d2QtZTJlIHByb2plY3QgQSBzZWNyZXQgMzIgYnl0ZXM=";
/// Project B's endpoint secret.
pub(crate) const SECRET_B: &str = "whsec_d2QtZTJlIHByb2plY3QgQiBzZWNyZXQgMzIgYnl0ZXM=";
pub(crate) const OPS: &str = "/ops";
pub(crate) const PROJECT_A: &str = "/project-a";
pub(crate) const PROJECT_B: &str = "/project-b";
pub(crate) const HOST: &str = "e2e-compute-1";

/// Serializes this file's tests under `cargo test`, which runs them on
/// threads of one process: they share libvirtd, and one of them restarts it.
/// (nextest runs each in its own process, one at a time, in the `libvirtd`
/// group, so there the lock is never contended.)
pub(crate) static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One test's world: a receiver with an operator endpoint and two project
/// endpoints (each with its own secret), and the agent's config file.
pub(crate) struct World {
    pub(crate) receiver: Receiver,
    pub(crate) dir: Scratch,
    pub(crate) project_a: String,
    pub(crate) config: PathBuf,
}

impl World {
    /// A receiver and a config whose coalescing window is `window_secs`.
    pub(crate) async fn new(window_secs: f64) -> World {
        let receiver = Receiver::start_with(
            OPERATOR_SECRET,
            &[(PROJECT_A, SECRET_A), (PROJECT_B, SECRET_B)],
        )
        .await
        .unwrap();
        let dir = Scratch::new("wd-e2e");
        let project_a = uuid::Uuid::new_v4().simple().to_string();
        let project_b = uuid::Uuid::new_v4().simple().to_string();
        let config = dir.0.join("wd.toml");
        // Short retries so that an outage's end is noticed within seconds.
        let text = format!(
            r#"host = "{HOST}"
notify = ["{ops}"]
spool = "{spool}"
wait = true

[webhook]
timeout_secs = 5

[[webhook.projects]]
project = "{project_a}"
url = "{url_a}"
secrets = ["{SECRET_A}"]

[[webhook.projects]]
project = "{project_b}"
url = "{url_b}"
secrets = ["{SECRET_B}"]

[coalesce]
window_secs = {window_secs}

[queue]
retry_min_delay_secs = 0.2
retry_max_delay_secs = 1
attempt_timeout_secs = 2
"#,
            ops = receiver.url(OPS),
            spool = dir.0.join("spool").display(),
            url_a = receiver.url(PROJECT_A),
            url_b = receiver.url(PROJECT_B),
        );
        std::fs::write(&config, text).unwrap();
        // It holds project secrets: the agent refuses it readable by others.
        std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        World {
            receiver,
            dir,
            project_a,
            config,
        }
    }

    /// Starts the agent, logging to `log` (a name in the scratch dir), and
    /// waits until it has done its catch-up listing.
    pub(crate) async fn agent(&self, log: &str) -> AgentProcess {
        let mut agent =
            AgentProcess::start(&self.config, OPERATOR_SECRET, &self.dir.0.join(log)).unwrap();
        agent.wait_ready(Duration::from_secs(60)).await.unwrap();
        agent
    }

    /// The spec of a guest of project A with watchdog `action`.
    pub(crate) fn spec(&self, action: &str) -> GuestSpec {
        let name = wd_testkit::unique_name(&format!("wd-e2e-{action}"));
        GuestSpec::new(&name, action).with_nova(NovaOwner {
            display_name: format!("web-{action}"),
            flavor: "m1.tiny".into(),
            user_id: format!("user-{action}-{}", &self.project_a[..8]),
            project_id: self.project_a.clone(),
        })
    }

    /// What endpoint `path` accepted for `guest`.
    pub(crate) fn got(&self, path: &str, guest: &Guest) -> Vec<Received> {
        of(&self.receiver.accepted(), path, guest)
    }
}

pub(crate) fn of(all: &[Received], path: &str, guest: &Guest) -> Vec<Received> {
    all.iter()
        .filter(|r| r.path == path && r.instance_uuid() == guest.spec.uuid)
        .cloned()
        .collect()
}

pub(crate) fn event_ids(got: &[Received]) -> BTreeSet<String> {
    got.iter().map(|r| r.event_id().to_owned()).collect()
}

pub(crate) fn start(spec: GuestSpec, assets: &GuestAssets) -> Guest {
    Guest::define_and_start(spec, assets, None).unwrap()
}

pub(crate) fn str_of<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// Checks one delivered CloudEvent against the guest it is about: the
/// envelope, the owner from the guest's Nova metadata, the action, and that
/// the signed `webhook-id` is the event id.
pub(crate) fn check_notification(r: &Received, guest: &Guest, action: &str, recovered: bool) {
    let e = &r.event;
    let owner = guest.spec.nova.as_ref().unwrap();
    let what = format!("{} notification {e:#}", guest.spec.name);
    assert_eq!(str_of(e, "/specversion"), "1.0", "{what}");
    assert_eq!(
        str_of(e, "/type"),
        "io.wd.compute.instance.watchdog",
        "{what}"
    );
    assert_eq!(str_of(e, "/source"), format!("urn:wd:{HOST}:wd"), "{what}");
    assert_eq!(str_of(e, "/subject"), guest.spec.uuid, "{what}");
    assert_eq!(str_of(e, "/id"), r.event_id(), "{what}");
    assert_eq!(r.webhook_id, r.event_id(), "{what}");
    assert_eq!(str_of(e, "/data/action"), action, "{what}");
    assert_eq!(str_of(e, "/data/host"), HOST, "{what}");
    assert_eq!(str_of(e, "/data/instance/uuid"), guest.spec.uuid, "{what}");
    assert_eq!(str_of(e, "/data/domain/uuid"), guest.spec.uuid, "{what}");
    assert_eq!(str_of(e, "/data/domain/name"), guest.spec.name, "{what}");
    assert_eq!(
        str_of(e, "/data/instance/project_id"),
        owner.project_id,
        "{what}"
    );
    assert_eq!(str_of(e, "/data/instance/user_id"), owner.user_id, "{what}");
    assert_eq!(
        str_of(e, "/data/instance/name"),
        owner.display_name,
        "{what}"
    );
    assert_eq!(
        e.pointer("/data/recovered").and_then(Value::as_bool),
        Some(recovered),
        "{what}"
    );
    assert!(r.count() >= 1, "{what}");
}
