//! Configuration.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::message::Priority;

/// A broker URL, `amqp://user:password@host:port/vhost`. It holds a password,
/// so its `Debug` and `Display` show it without credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct AmqpUrl(String);

impl AmqpUrl {
    /// Checks the scheme and keeps the URL.
    pub fn new(url: impl Into<String>) -> Result<Self> {
        let url = url.into();
        let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        match scheme.as_deref() {
            Some("amqp" | "amqps") => Ok(AmqpUrl(url)),
            Some(other) => Err(Error::InvalidUrl {
                url: redact(&url),
                reason: format!("scheme `{other}` is not amqp or amqps"),
            }),
            None => Err(Error::InvalidUrl {
                url: redact(&url),
                reason: "it has no scheme".into(),
            }),
        }
    }

    /// The full URL, credentials included, for connecting.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL without credentials, query or fragment.
    pub fn redacted(&self) -> String {
        redact(&self.0)
    }
}

impl FromStr for AmqpUrl {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        AmqpUrl::new(s)
    }
}

impl fmt::Debug for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AmqpUrl({})", self.redacted())
    }
}

impl fmt::Display for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// See [`wd_notify::redact_url`].
pub(crate) fn redact(raw: &str) -> String {
    wd_notify::redact_url(raw)
}

/// Where and how notifications are published.
///
/// The defaults match an OpenStack deployment with oslo.messaging's defaults:
/// exchange `nova` (type topic, non-durable), topic `versioned_notifications`,
/// priority `INFO`, so Nova's own versioned-notification listeners receive our
/// events next to Nova's.
#[derive(Debug, Clone)]
pub struct AmqpConfig {
    /// The broker.
    pub url: AmqpUrl,
    /// The topic exchange. Default `nova`.
    pub exchange: String,
    /// The topic; the routing key is `<topic>.<priority lowercased>`.
    /// Default `versioned_notifications`.
    pub topic: String,
    /// The notification priority. Default `INFO`.
    pub priority: Priority,
    /// The service half of `publisher_id` (`<service>:<host>`). Default `wd`.
    pub service: String,
    /// Whether to declare the exchange (type topic) on each connection. When
    /// false, the exchange must already exist: it is only checked (a passive
    /// declare) and then published to. Default true.
    pub declare: bool,
    /// The durability to declare the exchange with. It must match the
    /// deployment's (oslo.messaging's `amqp_durable_queues`, default false):
    /// RabbitMQ refuses a declaration that differs with 406
    /// PRECONDITION_FAILED. Default false.
    pub durable: bool,
    /// Also declare a queue named like the routing key and bind it, as
    /// oslo.messaging's notifier does, so that notifications wait there until
    /// a listener comes. Off by default: without it, a notification no queue
    /// takes is reported as a failed delivery (and retried), not dropped.
    pub declare_queue: bool,
    /// How long to wait for the TCP and AMQP handshake. Default 5 s.
    pub connect_timeout: Duration,
    /// How long to wait for the broker to confirm a publish. Default 10 s.
    pub confirm_timeout: Duration,
    /// The first wait before reconnecting after a failed connection; it
    /// doubles on each further failure. Default 500 ms.
    pub reconnect_min: Duration,
    /// The longest wait between connection attempts. Default 30 s.
    pub reconnect_max: Duration,
}

impl AmqpConfig {
    /// The defaults, publishing to the broker at `url`.
    pub fn new(url: AmqpUrl) -> Self {
        AmqpConfig {
            url,
            exchange: "nova".into(),
            topic: "versioned_notifications".into(),
            priority: Priority::Info,
            service: "wd".into(),
            declare: true,
            durable: false,
            declare_queue: false,
            connect_timeout: Duration::from_secs(5),
            confirm_timeout: Duration::from_secs(10),
            reconnect_min: Duration::from_millis(500),
            reconnect_max: Duration::from_secs(30),
        }
    }

    /// Sets the exchange.
    #[must_use]
    pub fn with_exchange(mut self, exchange: impl Into<String>) -> Self {
        self.exchange = exchange.into();
        self
    }

    /// Sets the topic.
    #[must_use]
    pub fn with_topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = topic.into();
        self
    }

    /// Sets the priority.
    #[must_use]
    pub fn with_priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }

    /// Sets the service half of `publisher_id`.
    #[must_use]
    pub fn with_service(mut self, service: impl Into<String>) -> Self {
        self.service = service.into();
        self
    }

    /// Sets whether the exchange is declared (true) or must already exist.
    #[must_use]
    pub fn with_declare(mut self, declare: bool) -> Self {
        self.declare = declare;
        self
    }

    /// Sets the durability the exchange is declared with.
    #[must_use]
    pub fn with_durable(mut self, durable: bool) -> Self {
        self.durable = durable;
        self
    }

    /// Sets whether oslo's default queue is declared too.
    #[must_use]
    pub fn with_declare_queue(mut self, declare_queue: bool) -> Self {
        self.declare_queue = declare_queue;
        self
    }

    /// Sets the confirm timeout.
    #[must_use]
    pub fn with_confirm_timeout(mut self, timeout: Duration) -> Self {
        self.confirm_timeout = timeout;
        self
    }

    /// Sets the reconnect backoff bounds.
    #[must_use]
    pub fn with_reconnect(mut self, min: Duration, max: Duration) -> Self {
        self.reconnect_min = min;
        self.reconnect_max = max.max(min);
        self
    }

    /// The routing key: `<topic>.<priority lowercased>`, as oslo's messaging
    /// driver builds it.
    pub fn routing_key(&self) -> String {
        format!(
            "{}.{}",
            self.topic,
            self.priority.as_str().to_ascii_lowercase()
        )
    }

    /// Checks names before any connection is made.
    pub(crate) fn validate(&self) -> Result<()> {
        for (what, value) in [
            ("exchange", &self.exchange),
            ("topic", &self.topic),
            ("service", &self.service),
        ] {
            let ok = !value.is_empty()
                && value.len() <= 255
                && value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
            if !ok {
                return Err(Error::InvalidName {
                    what,
                    value: value.clone(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let cases = [
            (
                "amqp://guest:guest@127.0.0.1:5672/%2f",
                Ok("amqp://***@127.0.0.1:5672/%2f"),
            ),
            (
                "amqps://u:p%40ss@rabbit.example/vh?cacertfile=/x",
                Ok("amqps://***@rabbit.example/vh?***"),
            ),
            ("amqp://rabbit", Ok("amqp://rabbit")),
            (
                "http://u:hunter2@h/",
                Err(
                    "broker url `http://***@h/` is not valid: scheme `http` is not amqp or amqps; expected amqp://user:password@host:port/vhost or amqps://…",
                ),
            ),
            (
                "u:hunter2@h",
                Err(
                    "broker url `***@h` is not valid: it has no scheme; expected amqp://user:password@host:port/vhost or amqps://…",
                ),
            ),
        ];
        for (input, expected) in cases {
            match (AmqpUrl::new(input), expected) {
                (Ok(url), Ok(shown)) => {
                    assert_eq!(url.to_string(), shown);
                    assert_eq!(format!("{url:?}"), format!("AmqpUrl({shown})"));
                    assert_eq!(url.expose(), input);
                }
                (Err(e), Err(msg)) => assert_eq!(e.to_string(), msg),
                (got, expected) => panic!("{input}: got {got:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn routing_keys() {
        let url = AmqpUrl::new("amqp://h").unwrap();
        let cases = [
            (AmqpConfig::new(url.clone()), "versioned_notifications.info"),
            (
                AmqpConfig::new(url.clone()).with_priority(Priority::Error),
                "versioned_notifications.error",
            ),
            (
                AmqpConfig::new(url)
                    .with_topic("notifications")
                    .with_priority(Priority::Warn),
                "notifications.warn",
            ),
        ];
        for (config, expected) in cases {
            assert_eq!(config.routing_key(), expected);
        }
    }

    #[test]
    fn names_are_validated() {
        let url = AmqpUrl::new("amqp://h").unwrap();
        let cases = [
            (AmqpConfig::new(url.clone()), Ok(())),
            (
                AmqpConfig::new(url.clone()).with_exchange(""),
                Err("exchange `` is not valid; allowed: 1 to 255 bytes of A-Z a-z 0-9 - _ . :"),
            ),
            (
                AmqpConfig::new(url.clone()).with_topic("a b"),
                Err("topic `a b` is not valid; allowed: 1 to 255 bytes of A-Z a-z 0-9 - _ . :"),
            ),
            (
                AmqpConfig::new(url).with_service("wd/x"),
                Err("service `wd/x` is not valid; allowed: 1 to 255 bytes of A-Z a-z 0-9 - _ . :"),
            ),
        ];
        for (config, expected) in cases {
            assert_eq!(
                config.validate().map_err(|e| e.to_string()),
                expected.map_err(str::to_owned)
            );
        }
    }
}
