//! OpenStack end to end with real guests: the real `wdguard watch` agent,
//! started with `--nova-config` on a nova.conf written here, publishes a real
//! guest's watchdog firing to RabbitMQ, where OpenStack's own services (from
//! the venv `cargo xtask test` creates) or two broker nodes take it.
//!
//! These tests need both the shared libvirtd and RabbitMQ. They are named
//! `libvirtd_*` (serialised with the libvirtd group); everything they put on
//! a broker lives in a private vhost of their own (`wd_testkit::Vhost`),
//! deleted at the end, so no `rabbitmq_*` test, which runs at the same time
//! in its own group, can see or collide with their exchanges and queues.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use serde_json::Value;
use wd_e2e::agent::AgentProcess;
use wd_e2e::openstack::OwnerAlarm;
use wd_e2e::scratch::Scratch;
use wd_e2e::virsh::Guest;
use wd_testkit::guest::{GuestAssets, GuestSpec, NovaOwner};
use wd_testkit::{Node, RabbitMq2, Vhost};

/// Serializes this file's tests under `cargo test` (nextest runs them one at
/// a time in the `libvirtd` group).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The two forms' queues, as oslo listeners on Nova's default topics bind
/// them (priority `info`).
const LEGACY_QUEUE: &str = "notifications.info";
const VERSIONED_QUEUE: &str = "versioned_notifications.info";

/// A realistic nova.conf for a compute host: the sections and comments Nova
/// has, with wd reading only the bus settings and `[DEFAULT] host`.
fn nova_conf(dir: &Path, host: &str, transport_url: &str, durable: bool) -> PathBuf {
    let text = format!(
        r#"# nova.conf of a compute host (written by the wd-e2e OpenStack tests)
[DEFAULT]
host = {host}
my_ip = 127.0.0.1
state_path = /var/lib/nova
compute_driver = libvirt.LibvirtDriver
# The RPC bus; notifications use their own transport_url below.
transport_url = {transport_url}
log_dir = /var/log/nova

[api]
auth_strategy = keystone

[libvirt]
virt_type = kvm
cpu_mode = host-passthrough

[notifications]
notify_on_state_change = vm_and_task_state
notification_format = both

[oslo_concurrency]
lock_path = /var/lib/nova/tmp

[oslo_messaging_notifications]
driver = messagingv2
transport_url = {transport_url}
topics = notifications

[oslo_messaging_rabbit]
amqp_durable_queues = {durable}
rabbit_ha_queues = false
"#
    );
    let path = dir.join("nova.conf");
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts `wdguard watch --nova-config NOVA_CONF --spool DIR/spool` and waits
/// for its catch-up listing.
async fn agent(dir: &Path, nova_conf: &Path) -> AgentProcess {
    let spool = dir.join("spool");
    let mut agent = AgentProcess::start_with(
        &[
            "--nova-config".as_ref(),
            nova_conf.as_os_str(),
            "--spool".as_ref(),
            spool.as_os_str(),
        ],
        &[],
        &dir.join("agent.log"),
    )
    .unwrap();
    agent.wait_ready(Duration::from_secs(60)).await.unwrap();
    agent
}

/// What these tests need from the machine: the shared libvirtd (the guard
/// is held for the test), RabbitMQ, and the guest assets; `None` (the test
/// is skipped, or fails under `WD_REQUIRE_REAL=1`) when one is missing.
fn guest_services() -> Option<(wd_testkit::Libvirtd, GuestAssets)> {
    let libvirtd = wd_testkit::libvirtd()?;
    wd_testkit::rabbitmq()?;
    Some((libvirtd, wd_testkit::guest::assets()?))
}

/// A pause-action guest with Nova's metadata naming `owner`.
fn guest(prefix: &str, owner: &NovaOwner, assets: &GuestAssets) -> Guest {
    let spec = GuestSpec::new(&wd_testkit::unique_name(prefix), "pause").with_nova(owner.clone());
    Guest::define_and_start(spec, assets, None).unwrap()
}

fn owner(display_name: &str) -> NovaOwner {
    NovaOwner {
        display_name: display_name.into(),
        flavor: "m1.tiny".into(),
        user_id: uuid::Uuid::new_v4().simple().to_string(),
        project_id: uuid::Uuid::new_v4().simple().to_string(),
    }
}

/// The whole owner path with a real guest: its watchdog fires, the agent
/// (configured by nova.conf alone) publishes both forms, Ceilometer's
/// notification agent turns the legacy one into an event and publishes it to
/// `alarm.all`, `aodh-listener` matches it against the owner's event alarm
/// on that instance, and `aodh-notifier` POSTs to the alarm's action. An
/// alarm of another project (matching any instance) does not fire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libvirtd_a_real_guest_fires_its_owners_aodh_alarm_via_nova_conf() {
    let _serial = SERIAL.lock().await;
    let Some((_libvirtd, assets)) = guest_services() else {
        return;
    };
    let Some(python) = wd_testkit::openstack::venv_python() else {
        return;
    };
    let t0 = Instant::now();
    let host = "e2e-compute-aodh";
    let dir = Scratch::new("wd-e2e-aodh");
    let vhost = Vhost::create("wd-e2e-aodh", &[Node::Main]).unwrap();
    let transport = vhost.transport_url(&[Node::Main]);
    let owner = owner("web-aodh");
    let other_project = uuid::Uuid::new_v4().simple().to_string();
    let name = wd_testkit::unique_name("wd-e2e-aodh");
    let spec = GuestSpec::new(&name, "pause").with_nova(owner.clone());
    let uuid = spec.uuid.clone();

    // The services start while the agent and the guest do: the agent
    // declares Ceilometer's queue (`notifications.info`, as oslo's notifier
    // does), so the notification waits there for Ceilometer, and
    // Ceilometer's notifier likewise declares Aodh's.
    let services = OwnerAlarm::start(
        &python,
        &dir.0.join("openstack"),
        &transport,
        &owner.project_id,
        &other_project,
        &uuid,
        Duration::from_secs(3),
    )
    .unwrap();
    let conf = nova_conf(&dir.0, host, &transport, false);
    let agent = agent(&dir.0, &conf).await;
    let guest = Guest::define_and_start(spec, &assets, None).unwrap();
    let state = guest
        .wait_state_async("paused", Duration::from_secs(60))
        .await;
    assert!(state.starts_with("paused (watchdog)"), "{name}: {state}");
    let fired = t0.elapsed();
    services.wait_ready(Duration::from_secs(180)).unwrap();
    let ready = t0.elapsed();

    let posts = services.posts(Duration::from_secs(90), Duration::from_secs(8));
    let alarmed = t0.elapsed();
    let code = agent.terminate(Duration::from_secs(15)).unwrap();
    drop(guest);
    drop(services);
    drop(vhost);
    eprintln!(
        "aodh path: guest paused by its watchdog at {:.1} s, services ready at {:.1} s, \
         owner's alarm action called by {:.1} s, all cleaned up at {:.1} s",
        fired.as_secs_f64(),
        ready.as_secs_f64(),
        alarmed.as_secs_f64() - 8.0,
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(code, 0, "wdguard watch exit code");

    let body = posts.owner.unwrap_or_else(|| {
        panic!(
            "the owner's alarm did not fire within 90 s; see {}",
            dir.0.display()
        )
    });
    assert!(
        posts.other.is_empty(),
        "another project's alarm fired: {:?}",
        posts.other
    );
    let body: Value = serde_json::from_str(&body).unwrap();
    eprintln!("the owner's alarm action received: {body}");
    assert_eq!(body["alarm_name"], "owner-watchdog");
    assert_eq!(body["current"], "alarm");
    assert_eq!(body["reason_data"]["type"], "event");
    let event = &body["reason_data"]["event"];
    assert_eq!(event["event_type"], "compute.instance.watchdog");
    let id = event["message_id"].as_str().unwrap_or_default();
    assert!(uuid::Uuid::parse_str(id).is_ok(), "message_id {id:?}");
    let traits: BTreeMap<String, String> = event["traits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t[0].as_str().unwrap_or_default().to_owned(),
                t[2].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let request_id = format!("req-{id}");
    for (k, v) in [
        ("instance_id", uuid.as_str()),
        ("resource_id", uuid.as_str()),
        ("project_id", owner.project_id.as_str()),
        ("tenant_id", owner.project_id.as_str()),
        ("user_id", owner.user_id.as_str()),
        ("display_name", owner.display_name.as_str()),
        ("host", host),
        ("service", "compute"),
        ("state", "active"),
        ("request_id", request_id.as_str()),
    ] {
        assert_eq!(
            traits.get(k).map(String::as_str),
            Some(v),
            "trait {k}: {traits:?}"
        );
    }
}

/// A test-side connection to `vhost` on `node`.
async fn admin(vhost: &Vhost, node: Node) -> (Connection, Channel) {
    let conn = Connection::connect(&vhost.amqp_url(node), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    (conn, ch)
}

/// Declares exchange `nova` and the two forms' durable queues, as a
/// deployment with `amqp_durable_queues = true` and its listeners have them.
async fn declare_topology(ch: &Channel) {
    ch.exchange_declare(
        "nova".into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    for q in [LEGACY_QUEUE, VERSIONED_QUEUE] {
        ch.queue_declare(
            q.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.queue_bind(
            q.into(),
            "nova".into(),
            q.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    }
}

/// One message taken from a node: its form (queue), the event id, and the
/// instance it concerns.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Got {
    node: &'static str,
    queue: &'static str,
    id: String,
    instance: String,
}

/// Takes every message now waiting in the two forms' queues.
async fn take(ch: &Channel, node: &'static str, out: &mut Vec<Got>) {
    for queue in [LEGACY_QUEUE, VERSIONED_QUEUE] {
        while let Some(m) = ch
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            let outer: Value = serde_json::from_slice(&m.delivery.data).unwrap();
            let inner: Value =
                serde_json::from_str(outer["oslo.message"].as_str().unwrap()).unwrap();
            let payload = &inner["payload"];
            let instance = payload["instance_id"]
                .as_str()
                .or(payload["nova_object.data"]["uuid"].as_str())
                .unwrap_or_default()
                .to_owned();
            out.push(Got {
                node,
                queue,
                id: inner["message_id"].as_str().unwrap_or_default().to_owned(),
                instance,
            });
        }
    }
}

/// Takes messages from `ch` until both forms of a notification about
/// `instance` are there, or `timeout`.
async fn take_until_both(
    ch: &Channel,
    node: &'static str,
    instance: &str,
    out: &mut Vec<Got>,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    loop {
        take(ch, node, out).await;
        let forms: BTreeSet<&str> = out
            .iter()
            .filter(|g| g.instance == instance)
            .map(|g| g.queue)
            .collect();
        if forms.len() == 2 || Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts the second node again when dropped, should the test fail while it
/// is down (and before the vhost, declared earlier, is deleted from it).
struct RestartNode2;

impl Drop for RestartNode2 {
    fn drop(&mut self) {
        if !RabbitMq2::is_up()
            && let Err(e) = RabbitMq2::start()
        {
            eprintln!("could not start {} again: {e}", RabbitMq2::NODE);
        }
    }
}

/// Failover with real guests: `wdguard watch` publishes to a nova.conf
/// transport URL listing two RabbitMQ nodes, the second node first, so it is
/// the one in use. A guest fires and its notification goes through that
/// node; then the node is stopped as a second guest starts, whose firing goes
/// through the other node. Every form of every id arrives exactly once over
/// both nodes (the stopped node is started again and read too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libvirtd_broker_failover_with_real_guests_delivers_each_id_once() {
    let _serial = SERIAL.lock().await;
    let Some((_libvirtd, assets)) = guest_services() else {
        return;
    };
    if !RabbitMq2::is_up()
        && let Err(e) = tokio::task::spawn_blocking(RabbitMq2::start).await.unwrap()
    {
        let _: Option<()> = wd_testkit::unavailable(
            "the second RabbitMQ node (127.0.0.1:5673)",
            &format!("`cargo xtask services up` starts it as root: {e}"),
        );
        return;
    }
    let t0 = Instant::now();
    let dir = Scratch::new("wd-e2e-failover");
    // The agent tries the URL's nodes in a random order, as oslo does. The
    // vhost exists on node 2 only at first, so the main node refuses the
    // agent (530 NOT_ALLOWED, a configuration failure: it moves on) and
    // guest 1's firing goes through node 2, whatever the order.
    let vhost = Vhost::create("wd-e2e-failover", &[Node::Second]).unwrap();
    let _restart = RestartNode2;
    {
        let (conn, ch) = admin(&vhost, Node::Second).await;
        declare_topology(&ch).await;
        let _ = conn.close(200, "declared".into()).await;
    }
    let transport = vhost.transport_url(&[Node::Second, Node::Main]);
    let conf = nova_conf(&dir.0, "e2e-compute-failover", &transport, true);
    let agent = agent(&dir.0, &conf).await;
    let owner = owner("web-failover");
    let mut got = Vec::new();

    // Guest 1 fires while node 2 is up: through node 2.
    let g1 = guest("wd-e2e-failover-1", &owner, &assets);
    let (conn2, ch2) = admin(&vhost, Node::Second).await;
    take_until_both(
        &ch2,
        "node2",
        &g1.spec.uuid,
        &mut got,
        Duration::from_secs(60),
    )
    .await;
    let _ = conn2.close(200, "read".into()).await;
    let first = t0.elapsed();
    assert!(
        got.iter().filter(|g| g.instance == g1.spec.uuid).count() >= 2,
        "guest 1's notification did not arrive through node 2: {got:?}; see {}",
        agent.log.display()
    );

    // Now the main node serves the vhost too.
    let vhost = vhost.add_nodes(&[Node::Main]).unwrap();
    {
        let (conn, ch) = admin(&vhost, Node::Main).await;
        declare_topology(&ch).await;
        let _ = conn.close(200, "declared".into()).await;
    }

    // Guest 2 starts (it fires about 6 s later) as node 2 stops.
    let g2 = guest("wd-e2e-failover-2", &owner, &assets);
    tokio::task::spawn_blocking(RabbitMq2::stop).await.unwrap();
    let stopped = t0.elapsed();
    let (conn, ch) = admin(&vhost, Node::Main).await;
    take_until_both(
        &ch,
        "main",
        &g2.spec.uuid,
        &mut got,
        Duration::from_secs(60),
    )
    .await;
    let second = t0.elapsed();
    let state = g2.state();
    assert!(state.starts_with("paused (watchdog)"), "guest 2: {state}");
    // Anything more (a duplicate) would come within a retry or two.
    tokio::time::sleep(Duration::from_secs(2)).await;
    take(&ch, "main", &mut got).await;
    let _ = conn.close(200, "read".into()).await;
    let code = agent.terminate(Duration::from_secs(15)).unwrap();

    // Node 2 back; whatever it kept is read too.
    tokio::task::spawn_blocking(RabbitMq2::start)
        .await
        .unwrap()
        .unwrap();
    let (conn2, ch2) = admin(&vhost, Node::Second).await;
    take(&ch2, "node2", &mut got).await;
    let _ = conn2.close(200, "read".into()).await;
    let log = std::fs::read_to_string(dir.0.join("agent.log")).unwrap_or_default();
    let connected: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("connected to the amqp broker"))
        .collect();
    let (uuid1, uuid2) = (g1.spec.uuid.clone(), g2.spec.uuid.clone());
    drop(g1);
    drop(g2);
    drop(vhost);
    eprintln!(
        "failover: guest 1 through node 2 by {:.1} s, node 2 stopped by {:.1} s, \
         guest 2 through the main node by {:.1} s, done at {:.1} s; {} messages, \
         agent connections: {connected:?}",
        first.as_secs_f64(),
        stopped.as_secs_f64(),
        second.as_secs_f64(),
        t0.elapsed().as_secs_f64(),
        got.len()
    );
    assert_eq!(code, 0, "wdguard watch exit code");
    assert!(
        connected.len() >= 2
            && connected[0].contains(":5673")
            && connected.last().is_some_and(|l| l.contains(":5672")),
        "the agent connected to node 2, then to the main node: {connected:?}"
    );

    // Exactly once per id and form, over both nodes.
    let mut per: BTreeMap<(&str, &str), Vec<&Got>> = BTreeMap::new();
    for g in &got {
        per.entry((g.id.as_str(), g.queue)).or_default().push(g);
    }
    for ((id, queue), v) in &per {
        assert_eq!(
            v.len(),
            1,
            "{id} on {queue} arrived {} times: {v:?}",
            v.len()
        );
    }
    let ids_of = |instance: &str| -> BTreeSet<&str> {
        got.iter()
            .filter(|g| g.instance == instance)
            .map(|g| g.id.as_str())
            .collect()
    };
    for (instance, node) in [(&uuid1, "node2"), (&uuid2, "main")] {
        let ids = ids_of(instance);
        assert!(!ids.is_empty(), "no notification about {instance}: {got:?}");
        for id in ids {
            for queue in [LEGACY_QUEUE, VERSIONED_QUEUE] {
                let v = per.get(&(id, queue)).cloned().unwrap_or_default();
                assert_eq!(v.len(), 1, "{id} on {queue}: {v:?}");
                assert_eq!(
                    v[0].node, node,
                    "{id} on {queue} came through {}",
                    v[0].node
                );
            }
        }
    }
}

#[path = "openstack/kolla.rs"]
mod kolla;

#[path = "openstack/refused.rs"]
mod refused;

#[path = "openstack/ceilometer_meters.rs"]
mod ceilometer_meters;
