//! The whole owner-alarm path with OpenStack's own services from PyPI:
//! wd's notification → ceilometer-agent-notification (stock event
//! definitions, event pipeline publishing to `notifier://?topic=alarm.all`)
//! → aodh-listener (SQLite) → aodh-notifier → the alarm's HTTP action.
//! `wd_e2e::openstack::OwnerAlarm` runs those services.

use std::time::Duration;

use serde_json::Value;
use wd_e2e::openstack::OwnerAlarm;
use wd_notify::Notifier;
use wd_notify_amqp::{AmqpConfig, AmqpNotifier, AmqpUrl, NotificationFormat};
use wd_testkit::{Node, Vhost};

use super::support::{BROKER, broker_url, name, notification};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_aodh_owner_alarm_fires_for_the_owner_only() {
    let _broker = BROKER.lock().await;
    if broker_url().is_none() {
        return;
    }
    let Some(python) = wd_testkit::openstack::venv_python() else {
        return;
    };
    // A private vhost on the local broker: Ceilometer's and Aodh's queues go
    // with it.
    let vhost = Vhost::create("wd-test-owner-alarm", &[Node::Main]).unwrap();
    let url = vhost.amqp_url(Node::Main);
    let work = wd_testkit::target_dir().join(name("wd-owner-alarm"));
    let n = notification(Some("proj-owner"));
    let instance = n.instance.uuid.to_string();
    // The notification is published right after READY, so the services get
    // time to bind their queues first.
    let services = OwnerAlarm::start(
        &python,
        &work,
        &vhost.transport_url(&[Node::Main]),
        "proj-owner",
        "proj-other",
        &instance,
        Duration::from_secs(15),
    )
    .unwrap();
    services.wait_ready(Duration::from_secs(180)).unwrap();

    let notifier = AmqpNotifier::new(
        AmqpConfig::new(AmqpUrl::new(url.clone()).unwrap())
            .with_format(NotificationFormat::Unversioned)
            .with_reconnect(Duration::from_millis(200), Duration::from_secs(1)),
    )
    .unwrap();
    notifier.notify(&n).await.unwrap();
    notifier.close().await;

    // The owner's alarm fires; then give the other project's alarm time to
    // (wrongly) fire too.
    let posts = services.posts(Duration::from_secs(90), Duration::from_secs(10));
    drop(services);
    drop(vhost);
    let owner: Value = serde_json::from_str(posts.owner.as_deref().unwrap_or_else(|| {
        panic!(
            "the owner's alarm did not fire within 90 s; see {}/*.log",
            work.display()
        )
    }))
    .unwrap();
    let other = posts.other;
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
