//! nova.conf as the deployment tools write it, against a real broker and a
//! real oslo.messaging notification listener (Ceilometer's, from the venv),
//! configured the same way.

use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use wd_notify::{FailureKind, Notifier};
use wd_notify_amqp::{AmqpNotifier, NovaConf};
use wd_testkit::{Node, Vhost};

use super::support::{BROKER, admin, broker_url, name, notification};
use wd_e2e::openstack::OsloListener as Listener;

/// A compute node's nova.conf as kolla-ansible renders it: quorum queues
/// (and the other options kolla sets with them), no `notification_format`,
/// and the vhost written after a `/` (kolla's `…:5672//` for the vhost `/`;
/// here a private vhost `/wd-kolla-…`, written `…:5672//wd-kolla-…`, so the
/// test owns its exchange).
fn kolla_conf(transport_url: &str) -> String {
    format!(
        "[DEFAULT]\nhost = kolla-compute\ntransport_url = {transport_url}\n\n\
         [oslo_messaging_notifications]\ntransport_url = {transport_url}\ndriver = messagingv2\ntopics = notifications\n\n\
         [oslo_messaging_rabbit]\nheartbeat_in_pthread = false\nrabbit_quorum_queue = true\n\
         rabbit_transient_quorum_queue = true\nrabbit_stream_fanout = true\nrabbit_qos_prefetch_count = 1\n\
         use_queue_manager = true\n"
    )
}

/// Whether queue `queue` exists in the vhost (a passive declare on a
/// channel of its own, which a 404 closes).
async fn queue_exists(url: &str, queue: &str) -> bool {
    let (conn, ch) = admin(url).await;
    let found = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .is_ok();
    let _ = conn.close(200, "checked".into()).await;
    found
}

/// kolla-ansible: the listener declares its quorum queue first (as
/// Ceilometer does); wd, reading the same nova.conf, declares the same
/// topology without a 406, publishes only the legacy form (Nova's default
/// `notification_format`), and the listener receives it. No versioned queue
/// appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_kolla_quorum_queues_reach_an_oslo_listener_configured_the_same() {
    let _broker = BROKER.lock().await;
    if broker_url().is_none() {
        return;
    }
    let Some(python) = wd_testkit::openstack::venv_python() else {
        return;
    };
    let vhost = Vhost::create("/wd-kolla", &[Node::Main]).unwrap();
    let transport = format!("rabbit://guest:guest@127.0.0.1:5672/{}", vhost.name());
    assert!(transport.ends_with(&format!("5672//{}", &vhost.name()[1..])));
    let dir = std::env::temp_dir().join(name("wd-kolla"));
    std::fs::create_dir_all(&dir).unwrap();
    let conf_path = dir.join("nova.conf");
    std::fs::write(&conf_path, kolla_conf(&transport)).unwrap();

    let pool = name("wd-kolla-pool");
    let listener = Listener::start_with(
        &python,
        &transport,
        "nova",
        "notifications",
        &pool,
        Some(&conf_path),
    );
    let admin_url = format!(
        "amqp://guest:guest@127.0.0.1:5672/{}",
        vhost.name().replace('/', "%2F")
    );
    let conf = NovaConf::load(&conf_path).unwrap();
    assert!(conf.unhonoured.is_empty(), "{:?}", conf.unhonoured);
    let bus = conf.bus.unwrap().with_declare_queue(true);
    let notifier = AmqpNotifier::new(bus).unwrap();
    let n = notification(Some("6b6f6c6c61"));
    notifier
        .notify(&n)
        .await
        .expect("no 406 with quorum queues");
    let got = listener.events_for(&n.event_id.to_string(), 1, Duration::from_secs(30));
    let versioned = queue_exists(&admin_url, "versioned_notifications.info").await;
    let legacy = queue_exists(&admin_url, "notifications.info").await;
    notifier.close().await;
    drop(listener);
    drop(vhost);
    let _ = std::fs::remove_dir_all(&dir);

    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["event_type"], "compute.instance.watchdog");
    assert_eq!(got[0]["publisher_id"], "compute.compute-1");
    assert_eq!(got[0]["ctxt"]["project_id"], "6b6f6c6c61");
    assert!(legacy, "oslo's notifications.info quorum queue");
    assert!(
        !versioned,
        "no versioned queue: Nova's default is unversioned"
    );
}

/// A durability setting that does not match the deployment's exchange: the
/// broker answers 406, which holds the notification (a retryable failure
/// marked as configuration) instead of dropping it; with the setting fixed,
/// a new notifier (what SIGHUP builds) delivers it, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_a_406_holds_the_notification_until_the_configuration_is_fixed() {
    let _broker = BROKER.lock().await;
    if broker_url().is_none() {
        return;
    }
    let vhost = Vhost::create("wd-406", &[Node::Main]).unwrap();
    let url = vhost.amqp_url(Node::Main);
    let transport = vhost.transport_url(&[Node::Main]);
    // The deployment: quorum queues, so a durable exchange.
    let (_conn, ch) = admin(&url).await;
    super::support::declare_exchange(&ch, "nova", true).await;
    let conf = |quorum: bool| {
        let text = format!(
            "[oslo_messaging_notifications]\ndriver = messagingv2\ntransport_url = {transport}\n\
             [oslo_messaging_rabbit]\nrabbit_quorum_queue = {quorum}\n"
        );
        NovaConf::parse("nova.conf", &text)
            .unwrap()
            .bus
            .unwrap()
            .with_declare_queue(true)
    };
    let wrong = AmqpNotifier::new(conf(false)).unwrap();
    let n = notification(Some("p-406"));
    let err = wrong.notify(&n).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert_eq!(FailureKind::of(&err), FailureKind::Configuration, "{err}");
    let text = format!("{err}");
    assert!(
        text.contains("406 PRECONDITION_FAILED") && text.contains("rabbit_quorum_queue"),
        "{text}"
    );
    wrong.close().await;

    let fixed = AmqpNotifier::new(conf(true)).unwrap();
    fixed.notify(&n).await.unwrap();
    let got = super::support::drain(&ch, "notifications.info").await;
    let ids: Vec<String> = got
        .iter()
        .filter_map(|m| {
            m.delivery
                .properties
                .message_id()
                .as_ref()
                .map(|s| s.to_string())
        })
        .collect();
    fixed.close().await;
    drop(vhost);
    assert_eq!(ids, [n.event_id.to_string()], "delivered once");
}
