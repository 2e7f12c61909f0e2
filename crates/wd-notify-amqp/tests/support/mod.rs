//! What the RabbitMQ tests share: the broker (skipped when unreachable,
//! unless `WD_REQUIRE_REAL=1`), a test-side channel to declare and read what
//! a deployment or an oslo listener would, and a notification to publish.
//!
//! Used by this crate's `rabbitmq` tests and, included by path, by the
//! end-to-end crate's `tests/tests/openstack_bus.rs` (and `docs.rs`, for
//! `unwrap_envelope`); each uses only part of it.
#![allow(dead_code)]

use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use serde_json::Value;
use wd_notify::Notification;
use wd_notify_amqp::{AmqpConfig, AmqpUrl, NotificationFormat};

/// Serializes the tests of this binary under `cargo test`: they share one
/// broker, and one of them restarts it. (nextest runs them one at a time.)
pub static BROKER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

pub fn broker_url() -> Option<String> {
    let url = std::env::var("WD_TEST_AMQP_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned());
    let shown = AmqpUrl::new(url.clone())
        .map(|u| u.redacted())
        .unwrap_or_default();
    let authority = url
        .split_once("://")
        .map_or(url.as_str(), |(_, rest)| rest)
        .split(['/', '?'])
        .next()
        .unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host_port = if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:5672")
    };
    let reachable = host_port
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok());
    if reachable {
        Some(url)
    } else {
        wd_testkit::unavailable(
            &format!("RabbitMQ at {shown}"),
            "start it with `cargo xtask services up` or set WD_TEST_AMQP_URL",
        )
    }
}

/// A test-side channel, for declaring what a deployment or a listener would.
pub async fn admin(url: &str) -> (Connection, Channel) {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    (conn, channel)
}

pub async fn declare_exchange(ch: &Channel, name: &str, durable: bool) {
    ch.exchange_declare(
        name.into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable,
            ..ExchangeDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
}

/// Declares a queue bound to `exchange` with `key`, as an oslo listener does.
pub async fn listen(ch: &Channel, queue: &str, exchange: &str, key: &str, durable: bool) {
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            durable,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        key.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
}

pub async fn cleanup(ch: &Channel, queues: &[&str], exchanges: &[&str]) {
    for q in queues {
        let _ = ch
            .queue_delete((*q).into(), QueueDeleteOptions::default())
            .await;
    }
    for e in exchanges {
        let _ = ch
            .exchange_delete((*e).into(), ExchangeDeleteOptions::default())
            .await;
    }
}

/// Takes every message waiting in `queue` (waiting up to 5 s for the first).
pub async fn drain(ch: &Channel, queue: &str) -> Vec<lapin::message::BasicGetMessage> {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match ch
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            Some(m) => out.push(m),
            None if out.is_empty() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            None => return out,
        }
    }
}

pub fn name(prefix: &str) -> String {
    wd_testkit::unique_name(prefix)
}

/// The versioned form only: most tests here are about the publisher, and
/// one form keeps their queues simple. `rabbitmq_both_forms_*` covers both.
pub fn config(url: &str) -> AmqpConfig {
    AmqpConfig::new(AmqpUrl::new(url).unwrap())
        .with_format(NotificationFormat::Versioned)
        .with_reconnect(Duration::from_millis(200), Duration::from_secs(1))
}

pub fn notification(project: Option<&str>) -> Notification {
    let mut n = wd_notify::testing::fresh_firing("pause", project);
    n.instance.name = Some("some-server".into());
    n.instance.user_id = Some("fake-user".into());
    n.recovered = true;
    n
}

/// The inner message of an oslo 2.0 envelope, checking the envelope itself.
pub fn unwrap_envelope(body: &[u8]) -> Value {
    let outer: Value = serde_json::from_slice(body).unwrap();
    let outer = outer.as_object().unwrap();
    assert_eq!(outer.len(), 2, "{outer:?}");
    assert_eq!(outer["oslo.version"], "2.0");
    serde_json::from_str(
        outer["oslo.message"]
            .as_str()
            .expect("oslo.message is a string"),
    )
    .unwrap()
}
