//! wd's bus notifications read by OpenStack's own consumer code: an
//! oslo.messaging notification listener, and Ceilometer's event converter
//! with its stock event definitions, from the venv `cargo xtask test`
//! creates (`target/wd-venv`).

use std::time::Duration;

use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use wd_e2e::openstack::OsloListener as Listener;
use wd_notify::Notifier;
use wd_notify_amqp::{AmqpConfig, AmqpNotifier, AmqpUrl, NotificationFormat};
use wd_testkit::{Node, Vhost};

use super::support::{
    BROKER, admin, broker_url, cleanup, declare_exchange, drain, name, notification,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_ceilometer_turns_the_legacy_form_into_an_event_with_the_owner() {
    let _broker = BROKER.lock().await;
    if broker_url().is_none() {
        return;
    }
    let Some(python) = wd_testkit::openstack::venv_python() else {
        return;
    };
    // A private vhost: the listener's queues (oslo's `notifications.info`
    // beside the pool's) are deleted with it.
    let vhost = Vhost::create("wd-test-ceilometer", &[Node::Main]).unwrap();
    let url = vhost.amqp_url(Node::Main);
    // Ceilometer's defaults: exchange `nova`, topic `notifications`.
    let pool = name("wd-test-ceilometer");
    let listener = Listener::start(&python, &url, "nova", "notifications", &pool);

    // A listener on the versioned topic too, so both forms are routed.
    let (_conn, ch) = admin(&url).await;
    declare_exchange(&ch, "nova", false).await;
    let versioned = name("wd-test-ceilometer-v");
    ch.queue_declare(
        versioned.as_str().into(),
        QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        versioned.as_str().into(),
        "nova".into(),
        "versioned_notifications.info".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();

    let config = AmqpConfig::new(AmqpUrl::new(url.clone()).unwrap())
        .with_reconnect(Duration::from_millis(200), Duration::from_secs(1));
    assert_eq!(
        config.format,
        NotificationFormat::Both,
        "both forms by default"
    );
    let notifier = AmqpNotifier::new(config).unwrap();
    let n = notification(Some("6f70656e737461636b"));
    notifier.notify(&n).await.unwrap();
    let id = n.event_id.to_string();

    let got = listener.events_for(&id, 1, Duration::from_secs(30));
    let versioned_got = drain(&ch, &versioned).await;
    cleanup(&ch, &[&pool], &[]).await;
    notifier.close().await;
    drop(listener);

    assert_eq!(got.len(), 1, "one legacy notification for {id}: {got:?}");
    let m = &got[0];
    assert_eq!(m["event_type"], "compute.instance.watchdog");
    assert_eq!(m["publisher_id"], "compute.compute-1");
    // The oslo context came through as a context, not as payload keys.
    assert_eq!(m["ctxt"]["project_id"], "6f70656e737461636b");
    assert_eq!(m["ctxt"]["user_id"], "fake-user");
    assert_eq!(m["ctxt"]["request_id"], format!("req-{id}"));

    let event = &m["event"];
    assert_eq!(event["event_type"], "compute.instance.watchdog");
    assert_eq!(event["message_id"], id);
    let traits = &event["traits"];
    let instance = n.instance.uuid.to_string();
    for (trait_name, expected) in [
        ("project_id", "6f70656e737461636b"),
        ("tenant_id", "6f70656e737461636b"),
        ("user_id", "fake-user"),
        ("instance_id", instance.as_str()),
        ("resource_id", instance.as_str()),
        ("display_name", "some-server"),
        ("host", "compute-1"),
        ("service", "compute"),
        ("state", "active"),
        ("request_id", &format!("req-{id}")),
    ] {
        assert_eq!(traits[trait_name], expected, "trait {trait_name}: {traits}");
    }

    // The versioned form went out too, with the same message_id.
    let ids: Vec<String> = versioned_got
        .iter()
        .filter_map(|m| {
            m.delivery
                .properties
                .message_id()
                .as_ref()
                .map(|s| s.to_string())
        })
        .collect();
    assert!(ids.contains(&id), "versioned form missing: {ids:?}");
}

/// Without the context, Ceilometer would still find the project in the
/// payload; without both, no owner's alarm could match. This checks that the
/// context alone is enough: an event whose payload lost `tenant_id`
/// (an instance wd could not attribute) has no project at all, and so no
/// owner's alarm can match it by accident.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_ceilometer_an_unattributed_instance_has_no_project() {
    let _broker = BROKER.lock().await;
    if broker_url().is_none() {
        return;
    }
    let Some(python) = wd_testkit::openstack::venv_python() else {
        return;
    };
    // A private vhost: the listener's queues (oslo's `notifications.info`
    // beside the pool's) are deleted with it.
    let vhost = Vhost::create("wd-test-ceilometer", &[Node::Main]).unwrap();
    let url = vhost.amqp_url(Node::Main);
    let pool = name("wd-test-ceilometer-none");
    let listener = Listener::start(&python, &url, "nova", "notifications", &pool);
    let config = AmqpConfig::new(AmqpUrl::new(url.clone()).unwrap())
        .with_format(NotificationFormat::Unversioned)
        .with_reconnect(Duration::from_millis(200), Duration::from_secs(1));
    let notifier = AmqpNotifier::new(config).unwrap();
    let mut n = notification(None);
    n.instance.user_id = None;
    notifier.notify(&n).await.unwrap();
    let got = listener.events_for(&n.event_id.to_string(), 1, Duration::from_secs(30));
    let (_conn, ch) = admin(&url).await;
    cleanup(&ch, &[&pool], &[]).await;
    notifier.close().await;
    drop(listener);
    assert_eq!(got.len(), 1, "{got:?}");
    let traits = &got[0]["event"]["traits"];
    assert!(traits.get("project_id").is_none(), "{traits}");
    assert!(traits.get("user_id").is_none(), "{traits}");
    assert_eq!(traits["instance_id"], n.instance.uuid.to_string());
}
