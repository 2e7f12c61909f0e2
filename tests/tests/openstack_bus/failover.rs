//! Both forms, partial deliveries, and failover between two RabbitMQ nodes.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;
use wd_notify::Notifier;
use wd_notify_amqp::{AmqpConfig, AmqpNotifier, AmqpUrl, Versioning};
use wd_testkit::RabbitMq2;

use super::support::{
    BROKER, admin, broker_url, cleanup, declare_exchange, drain, listen, name, notification,
    unwrap_envelope,
};

/// The versioned form confirmed and the legacy one refused (no queue bound
/// for it): the retry publishes only the legacy form, so the versioned
/// listener gets the notification exactly once, and the legacy one gets it
/// once it binds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_both_forms_a_retry_publishes_only_the_missing_form() {
    let _broker = BROKER.lock().await;
    let Some(url) = broker_url() else { return };
    let (_conn, ch) = admin(&url).await;
    let exchange = name("wd-test-forms");
    declare_exchange(&ch, &exchange, false).await;
    let vq = name("wd-test-forms-v");
    listen(&ch, &vq, &exchange, "versioned_notifications.info", false).await;

    let notifier = AmqpNotifier::new(
        AmqpConfig::new(AmqpUrl::new(url.clone()).unwrap())
            .with_exchange(&exchange)
            .with_reconnect(Duration::from_millis(100), Duration::from_millis(500)),
    )
    .unwrap();
    let n = notification(Some("p-forms"));
    let err = notifier.notify(&n).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(err.to_string().contains("notifications.info"), "{err}");
    assert!(err.to_string().contains("312 NO_ROUTE"), "{err}");

    let lq = name("wd-test-forms-l");
    listen(&ch, &lq, &exchange, "notifications.info", false).await;
    notifier.notify(&n).await.unwrap();
    // A further (spurious) retry of a fully delivered notification republishes
    // both forms with the same ids: at-least-once, never a new id.
    let versioned = drain(&ch, &vq).await;
    let legacy = drain(&ch, &lq).await;
    cleanup(&ch, &[&vq, &lq], &[&exchange]).await;
    notifier.close().await;

    assert_eq!(versioned.len(), 1, "the versioned form was not republished");
    assert_eq!(legacy.len(), 1);
    let v = unwrap_envelope(&versioned[0].delivery.data);
    let l = unwrap_envelope(&legacy[0].delivery.data);
    assert_eq!(v["event_type"], "instance.watchdog");
    assert_eq!(l["event_type"], "compute.instance.watchdog");
    for m in [&v, &l] {
        assert_eq!(m["message_id"], n.event_id.to_string());
        assert_eq!(m["_context_project_id"], "p-forms");
    }
    for m in versioned.iter().chain(&legacy) {
        assert_eq!(
            m.delivery
                .properties
                .message_id()
                .as_ref()
                .map(|s| s.as_str()),
            Some(n.event_id.to_string().as_str())
        );
    }
}

/// Passes notifications through, counting failures.
struct Counting {
    inner: std::sync::Arc<AmqpNotifier>,
    failures: std::sync::atomic::AtomicU32,
}

#[async_trait::async_trait]
impl Notifier for Counting {
    async fn notify(&self, n: &wd_notify::Notification) -> Result<(), wd_notify::NotifyError> {
        let r = self.inner.notify(n).await;
        if r.is_err() {
            self.failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        r
    }
}

/// Two independent RabbitMQ nodes in one oslo transport URL; the node in use
/// is stopped while notifications flow. Every notification arrives exactly
/// once per form, the later ones through the other node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_failover_to_the_other_node_loses_and_duplicates_nothing() {
    let _broker = BROKER.lock().await;
    let Some(main_url) = broker_url() else { return };
    if !RabbitMq2::is_up() {
        match tokio::task::spawn_blocking(RabbitMq2::start).await.unwrap() {
            Ok(_) => {}
            Err(e) => {
                let _: Option<()> = wd_testkit::unavailable(
                    "the second RabbitMQ node (127.0.0.1:5673)",
                    &format!("`cargo xtask services up` starts it as root: {e}"),
                );
                return;
            }
        }
    }
    // rabbit://<node 2>,<main>/ : node 2 first, so it is the one in use.
    let main_netloc = main_url
        .split_once("://")
        .map_or(main_url.as_str(), |(_, r)| r)
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let transport = format!(
        "rabbit://guest:guest@127.0.0.1:{},{main_netloc}/",
        RabbitMq2::PORT
    );
    let exchange = name("wd-test-failover");
    let keys = [
        (Versioning::Versioned, "versioned_notifications.info"),
        (Versioning::Unversioned, "notifications.info"),
    ];
    // Durable topology on both nodes, so what node 2 confirmed survives its
    // stop and is read after it comes back.
    let queue = |node: usize, form: usize| format!("{exchange}-n{node}-f{form}");
    for (node, url) in [(0, RabbitMq2::URL), (1, main_url.as_str())] {
        let (conn, ch) = admin(url).await;
        declare_exchange(&ch, &exchange, true).await;
        for (f, (_, key)) in keys.iter().enumerate() {
            listen(&ch, &queue(node, f), &exchange, key, true).await;
        }
        let _ = conn.close(200, "setup done".into()).await;
    }

    let notifier = std::sync::Arc::new(
        AmqpNotifier::new(
            AmqpConfig::new(AmqpUrl::new(transport).unwrap())
                .with_exchange(&exchange)
                .with_durable(true)
                // The test needs node 2 first, not oslo's random order.
                .with_shuffle(false)
                .with_reconnect(Duration::from_millis(100), Duration::from_secs(1)),
        )
        .unwrap(),
    );
    let counting = std::sync::Arc::new(Counting {
        inner: notifier.clone(),
        failures: std::sync::atomic::AtomicU32::new(0),
    });
    // The destination's queue, as the router wires it: its worker is the
    // one retry loop.
    let queue_of = wd_notify::Spool::memory(
        "amqp failover",
        wd_notify::QueueConfig::default()
            .retry_delays(Duration::from_millis(100), Duration::from_secs(1)),
        counting.clone(),
    )
    .unwrap();

    let stream: Vec<_> = (0..40).map(|_| notification(Some("p-failover"))).collect();
    let mut stop = None;
    for (i, n) in stream.iter().enumerate() {
        if i == 1 {
            wd_notify::testing::until("the first delivery", || queue_of.stats().delivered >= 1)
                .await;
            assert_eq!(notifier.connected_node().await, Some(0), "node 2 in use");
        }
        if i == 12 {
            // Stop the node in use while the stream goes on.
            stop = Some(tokio::task::spawn_blocking(RabbitMq2::stop));
        }
        queue_of.notify(n).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.expect("stopped").await.unwrap();
    let done = queue_of.shutdown(Duration::from_secs(120)).await;
    assert_eq!((done.delivered, done.pending), (40, 0), "{done:?}");
    assert_eq!(
        notifier.connected_node().await,
        Some(1),
        "failed over to the main node"
    );
    notifier.close().await;
    let failures = counting.failures.load(std::sync::atomic::Ordering::Relaxed);

    // Bring node 2 back and read what it kept.
    let restarted = tokio::task::spawn_blocking(RabbitMq2::start).await.unwrap();
    assert!(restarted.is_ok(), "node 2 restart: {restarted:?}");
    let mut seen: HashMap<(String, usize), Vec<usize>> = HashMap::new();
    for (node, url) in [(0, RabbitMq2::URL), (1, main_url.as_str())] {
        let (_conn, ch) = admin(url).await;
        for f in 0..keys.len() {
            for m in drain(&ch, &queue(node, f)).await {
                let inner: Value = unwrap_envelope(&m.delivery.data);
                let id = inner["message_id"].as_str().unwrap().to_owned();
                seen.entry((id, f)).or_default().push(node);
            }
        }
        let queues: Vec<String> = (0..keys.len()).map(|f| queue(node, f)).collect();
        let queues: Vec<&str> = queues.iter().map(String::as_str).collect();
        cleanup(&ch, &queues, &[&exchange]).await;
    }

    let mut per_node = [0usize; 2];
    for n in &stream {
        for f in 0..keys.len() {
            let nodes = seen
                .get(&(n.event_id.to_string(), f))
                .cloned()
                .unwrap_or_default();
            assert_eq!(
                nodes.len(),
                1,
                "event {} form {f}: delivered {} times (nodes {nodes:?})",
                n.event_id,
                nodes.len()
            );
            per_node[nodes[0]] += 1;
        }
    }
    eprintln!(
        "failover: {} retryable failures during the switch; form deliveries per node: node2 {}, main {}",
        failures, per_node[0], per_node[1]
    );
    assert!(
        per_node[0] >= 2 * 12,
        "the first 12 went through node 2: {per_node:?}"
    );
    assert!(
        per_node[1] > 0,
        "later ones through the main node: {per_node:?}"
    );
}
