//! Publishing to a real RabbitMQ broker, read back the way an oslo.messaging
//! notification listener reads it.
//!
//! The broker comes from `WD_TEST_AMQP_URL` (default the local `guest`
//! account). When it is unreachable the tests are skipped, unless
//! `WD_REQUIRE_REAL=1`. The restart test needs the local broker that
//! `wd-testkit` manages. The OpenStack consumers' view of the same bus (and
//! failover between two nodes) is tested end to end in
//! `tests/tests/openstack_bus.rs`.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use time::OffsetDateTime;
use wd_notify::{Notification, Notifier, NotifyError};
use wd_notify_amqp::AmqpNotifier;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_oslo_listener_receives_the_envelope_with_every_field() {
    let _broker = BROKER.lock().await;
    let Some(url) = broker_url() else { return };
    let (_conn, ch) = admin(&url).await;
    // What an oslo listener on Nova's versioned notifications declares.
    declare_exchange(&ch, "nova", false).await;
    let queue = name("wd-test-listener");
    listen(&ch, &queue, "nova", "versioned_notifications.info", false).await;

    let notifier = AmqpNotifier::new(config(&url)).unwrap();
    let n = notification(Some("6f70656e737461636b"));
    notifier.notify(&n).await.unwrap();

    let got = drain(&ch, &queue).await;
    cleanup(&ch, &[&queue], &[]).await;
    let m = got
        .iter()
        .find(|m| {
            m.delivery
                .properties
                .message_id()
                .as_ref()
                .map(|s| s.as_str())
                == Some(&n.event_id.to_string())
        })
        .expect("the listener got the notification");
    assert_eq!(m.delivery.exchange.as_str(), "nova");
    assert_eq!(
        m.delivery.routing_key.as_str(),
        "versioned_notifications.info"
    );
    let props = &m.delivery.properties;
    assert_eq!(*props.delivery_mode(), Some(2), "persistent");
    assert_eq!(
        props.content_type().as_ref().map(|s| s.as_str()),
        Some("application/json")
    );
    assert_eq!(
        props.content_encoding().as_ref().map(|s| s.as_str()),
        Some("utf-8")
    );

    let inner = unwrap_envelope(&m.delivery.data);
    assert_eq!(inner["message_id"], n.event_id.to_string());
    assert_eq!(inner["publisher_id"], "wd:compute-1");
    assert_eq!(inner["event_type"], "instance.watchdog");
    assert_eq!(inner["priority"], "INFO");
    assert_eq!(inner["_unique_id"], n.event_id.simple().to_string());
    let ts = inner["timestamp"].as_str().unwrap();
    let parsed = time::PrimitiveDateTime::parse(
        ts,
        time::macros::format_description!(
            "[year]-[month]-[day] [hour]:[minute]:[second].[subsecond digits:6]"
        ),
    )
    .unwrap();
    assert_eq!(
        parsed.assume_utc().unix_timestamp(),
        n.fired_at.unix_timestamp()
    );
    let payload = &inner["payload"];
    assert_eq!(payload["nova_object.name"], "InstanceWatchdogPayload");
    assert_eq!(payload["nova_object.namespace"], "wd");
    assert_eq!(payload["nova_object.version"], "1.1");
    let data = &payload["nova_object.data"];
    assert_eq!(data["uuid"], n.instance.uuid.to_string());
    assert_eq!(data["display_name"], "some-server");
    assert_eq!(data["tenant_id"], "6f70656e737461636b");
    assert_eq!(data["user_id"], "fake-user");
    assert_eq!(data["host"], "compute-1");
    assert_eq!(data["domain_name"], "instance-0000002a");
    assert_eq!(data["action"], "pause");
    assert_eq!(data["recovered"], true);
    assert_eq!(data["occurrences"], 1);
    for key in ["fired_at", "first_fired_at", "last_fired_at"] {
        let at = OffsetDateTime::parse(
            data[key].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        assert_eq!(at.unix_timestamp(), n.fired_at.unix_timestamp(), "{key}");
    }
    assert_eq!(data.as_object().unwrap().len(), 12, "{data}");
    notifier.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_no_route_is_a_failed_delivery() {
    let _broker = BROKER.lock().await;
    let Some(url) = broker_url() else { return };
    let exchange = name("wd-test-noroute");
    let notifier = AmqpNotifier::new(config(&url).with_exchange(&exchange)).unwrap();
    let n = notification(None);

    let err = notifier.notify(&n).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(err.to_string().contains("312 NO_ROUTE"), "{err}");
    assert!(err.to_string().contains(&exchange), "{err}");

    // Once a listener binds its queue, the retry is delivered.
    let (_conn, ch) = admin(&url).await;
    let queue = name("wd-test-noroute-q");
    listen(
        &ch,
        &queue,
        &exchange,
        "versioned_notifications.info",
        false,
    )
    .await;
    notifier.notify(&n).await.unwrap();
    assert_eq!(drain(&ch, &queue).await.len(), 1);
    cleanup(&ch, &[&queue], &[&exchange]).await;
    notifier.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_interop_with_an_existing_non_durable_exchange_and_the_406_case() {
    let _broker = BROKER.lock().await;
    let Some(url) = broker_url() else { return };
    let (_conn, ch) = admin(&url).await;
    // The deployment's exchange, declared as oslo.messaging does by default.
    let exchange = name("wd-test-oslo");
    declare_exchange(&ch, &exchange, false).await;
    let queue = name("wd-test-oslo-q");
    listen(
        &ch,
        &queue,
        &exchange,
        "versioned_notifications.info",
        false,
    )
    .await;

    let matching = AmqpNotifier::new(config(&url).with_exchange(&exchange)).unwrap();
    matching.notify(&notification(None)).await.unwrap();

    let mismatched =
        AmqpNotifier::new(config(&url).with_exchange(&exchange).with_durable(true)).unwrap();
    let err = mismatched.notify(&notification(None)).await.unwrap_err();
    // Never a drop: retried until the configuration is fixed, and named.
    assert!(err.is_retryable(), "kept for a retry: {err}");
    assert_eq!(
        wd_notify::FailureKind::of(&err),
        wd_notify::FailureKind::Configuration,
        "{err}"
    );
    let text = err.to_string();
    for needle in [
        "406 PRECONDITION_FAILED",
        &exchange,
        "durable=true",
        "amqp_durable_queues",
        "declare = false",
    ] {
        assert!(text.contains(needle), "`{needle}` missing from: {text}");
    }

    // The mismatch did not disturb the exchange or the matching publisher.
    matching.notify(&notification(None)).await.unwrap();
    assert_eq!(drain(&ch, &queue).await.len(), 2);
    cleanup(&ch, &[&queue], &[&exchange]).await;
    matching.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_publish_without_declaring() {
    let _broker = BROKER.lock().await;
    let Some(url) = broker_url() else { return };
    let exchange = name("wd-test-passive");
    let notifier =
        AmqpNotifier::new(config(&url).with_exchange(&exchange).with_declare(false)).unwrap();

    // The exchange does not exist yet, and we must not create it.
    let err = notifier.notify(&notification(None)).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(err.to_string().contains("does not exist"), "{err}");
    assert!(err.to_string().contains("404 NOT_FOUND"), "{err}");

    // The deployment creates it durable; we publish without declaring, so
    // our (default, non-durable) setting does not matter.
    let (_conn, ch) = admin(&url).await;
    declare_exchange(&ch, &exchange, true).await;
    let queue = name("wd-test-passive-q");
    listen(
        &ch,
        &queue,
        &exchange,
        "versioned_notifications.info",
        false,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1100)).await; // past the reconnect backoff
    let n = notification(None);
    notifier.notify(&n).await.unwrap();
    let got = drain(&ch, &queue).await;
    assert_eq!(got.len(), 1);
    assert_eq!(
        unwrap_envelope(&got[0].delivery.data)["message_id"],
        n.event_id.to_string()
    );
    cleanup(&ch, &[&queue], &[&exchange]).await;
    notifier.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_declare_queue_keeps_notifications_until_a_listener_comes() {
    let _broker = BROKER.lock().await;
    let Some(url) = broker_url() else { return };
    let exchange = name("wd-test-defq");
    let topic = name("wd_test_topic");
    let notifier = AmqpNotifier::new(
        config(&url)
            .with_exchange(&exchange)
            .with_topic(&topic)
            .with_declare_queue(true),
    )
    .unwrap();
    let n = notification(None);
    notifier.notify(&n).await.unwrap();

    // oslo's default queue is named like the routing key.
    let (_conn, ch) = admin(&url).await;
    let queue = notifier.routing_keys()[0].to_owned();
    let got = drain(&ch, &queue).await;
    assert_eq!(got.len(), 1);
    assert_eq!(
        unwrap_envelope(&got[0].delivery.data)["message_id"],
        n.event_id.to_string()
    );
    cleanup(&ch, &[&queue], &[&exchange]).await;
    notifier.close().await;
}

/// Passes notifications through, remembering every failure as
/// (retryable, message).
struct Recording {
    inner: AmqpNotifier,
    failures: std::sync::Mutex<Vec<(bool, String)>>,
}

#[async_trait::async_trait]
impl Notifier for Recording {
    async fn notify(&self, n: &Notification) -> Result<(), NotifyError> {
        let result = self.inner.notify(n).await;
        if let Err(e) = &result {
            self.failures
                .lock()
                .unwrap()
                .push((e.is_retryable(), e.to_string()));
        }
        result
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_a_broker_restart_mid_stream_loses_nothing() {
    let _broker = BROKER.lock().await;
    let Some(url) = broker_url() else { return };
    if std::env::var("WD_TEST_AMQP_URL").is_ok_and(|u| u != DEFAULT_URL) {
        eprintln!("skipped: the restart test needs the local broker that wd-testkit manages");
        return;
    }
    let Some(rabbit) = wd_testkit::rabbitmq() else {
        return;
    };

    // Durable topology and persistent messages survive the restart.
    let exchange = name("wd-test-restart");
    let queue = name("wd-test-restart-q");
    {
        let (conn, ch) = admin(&url).await;
        declare_exchange(&ch, &exchange, true).await;
        listen(&ch, &queue, &exchange, "versioned_notifications.info", true).await;
        let _ = conn.close(200, "setup done".into()).await;
    }
    // The destination's queue over the notifier, as the router wires it: its
    // worker is the one retry loop.
    let recording = std::sync::Arc::new(Recording {
        inner: AmqpNotifier::new(config(&url).with_exchange(&exchange).with_durable(true)).unwrap(),
        failures: std::sync::Mutex::new(Vec::new()),
    });
    let queue_of = wd_notify::Spool::memory(
        "amqp restart",
        wd_notify::QueueConfig::default()
            .retry_delays(Duration::from_millis(100), Duration::from_secs(1)),
        recording.clone(),
    )
    .unwrap();

    let stream: Vec<Notification> = (0..30).map(|_| notification(Some("p-1"))).collect();
    let mut restart = None;
    for (i, n) in stream.iter().enumerate() {
        if i == 10 {
            // Stop the broker mid-stream and wait until it is down; bring it
            // back in the background while the stream goes on.
            tokio::task::spawn_blocking(move || rabbit.stop())
                .await
                .unwrap();
            assert!(!wd_testkit::RabbitMq::is_up(), "the broker is down");
            restart = Some(tokio::task::spawn_blocking(|| {
                std::thread::sleep(Duration::from_secs(1));
                wd_testkit::RabbitMq::start()
            }));
        }
        queue_of.notify(n).await.unwrap();
    }
    let started = restart.expect("restarted").await.unwrap();
    assert!(started.is_ok(), "broker restart failed: {started:?}");
    let left = queue_of.shutdown(Duration::from_secs(120)).await;
    assert_eq!(left.pending, 0, "the queue delivered everything: {left:?}");
    let failures = recording.failures.lock().unwrap().clone();
    assert!(!failures.is_empty(), "the outage was seen as failures");
    assert!(
        failures.iter().all(|(retryable, _)| *retryable),
        "{failures:?}"
    );

    let (_conn, ch) = admin(&url).await;
    let got = drain(&ch, &queue).await;
    let ids: HashSet<String> = got
        .iter()
        .map(|m| {
            unwrap_envelope(&m.delivery.data)["message_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let missing: Vec<String> = stream
        .iter()
        .map(|n| n.event_id.to_string())
        .filter(|id| !ids.contains(id))
        .collect();
    cleanup(&ch, &[&queue], &[&exchange]).await;
    recording.inner.close().await;
    assert!(
        missing.is_empty(),
        "lost {} of 30: {missing:?}",
        missing.len()
    );
    eprintln!(
        "restart: {} retryable failures during the outage, {} messages for 30 events",
        failures.len(),
        got.len()
    );
}
