//! Configuration.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::message::Priority;
use crate::tls::TlsSettings;
use crate::transport::AmqpUrl;

/// Quorum queues, as oslo's `rabbit_quorum_queue` declares them: queues with
/// `x-queue-type: quorum` and the limits set (0 leaves a limit out).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Quorum {
    /// `rabbit_quorum_delivery_limit`: `x-delivery-limit`.
    pub delivery_limit: u64,
    /// `rabbit_quorum_max_memory_length`: `x-max-in-memory-length`.
    pub max_memory_length: u64,
    /// `rabbit_quorum_max_memory_bytes`: `x-max-in-memory-bytes`.
    pub max_memory_bytes: u64,
}

/// Which of Nova's notification forms are published, as Nova's
/// `[notifications] notification_format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum NotificationFormat {
    /// Only the legacy form: `compute.instance.watchdog` with a flat payload,
    /// on the legacy topics (`notifications`), which Ceilometer reads.
    Unversioned,
    /// Only the versioned form: `instance.watchdog` with a `nova_object`
    /// payload, on the versioned topics (`versioned_notifications`).
    Versioned,
    /// Both forms, each on its own topics. The default.
    #[default]
    Both,
}

impl NotificationFormat {
    /// Nova's spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            NotificationFormat::Unversioned => "unversioned",
            NotificationFormat::Versioned => "versioned",
            NotificationFormat::Both => "both",
        }
    }

    /// Whether the legacy form is published.
    pub const fn unversioned(self) -> bool {
        matches!(
            self,
            NotificationFormat::Unversioned | NotificationFormat::Both
        )
    }

    /// Whether the versioned form is published.
    pub const fn versioned(self) -> bool {
        matches!(
            self,
            NotificationFormat::Versioned | NotificationFormat::Both
        )
    }
}

impl fmt::Display for NotificationFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for NotificationFormat {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "unversioned" => Ok(NotificationFormat::Unversioned),
            "versioned" => Ok(NotificationFormat::Versioned),
            "both" => Ok(NotificationFormat::Both),
            other => Err(Error::ParseFormat {
                value: other.to_owned(),
            }),
        }
    }
}

/// One form on one topic: what a single publish goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    /// The form published.
    pub form: Versioning,
    /// `<topic>.<priority lowercased>`.
    pub routing_key: String,
}

/// One of the two notification forms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Versioning {
    /// `compute.instance.watchdog`, flat payload.
    Unversioned,
    /// `instance.watchdog`, `nova_object` payload.
    Versioned,
}

/// Where and how notifications are published.
///
/// The defaults match an OpenStack deployment with oslo.messaging's defaults:
/// exchange `nova` (type topic, non-durable), both forms (the legacy one on
/// topic `notifications`, which Ceilometer reads, the versioned one on
/// `versioned_notifications`), priority `INFO`, so Nova's own notification
/// listeners receive our events next to Nova's.
#[derive(Debug, Clone)]
pub struct AmqpConfig {
    /// The broker.
    pub url: AmqpUrl,
    /// The topic exchange. Default `nova`.
    pub exchange: String,
    /// Which forms are published. Default [`NotificationFormat::Both`].
    pub format: NotificationFormat,
    /// The topics of the versioned form (Nova's
    /// `[notifications] versioned_notifications_topics`); each routing key is
    /// `<topic>.<priority lowercased>`. Default `versioned_notifications`.
    pub topics: Vec<String>,
    /// The topics of the legacy form (oslo's
    /// `[oslo_messaging_notifications] topics`). Default `notifications`.
    pub legacy_topics: Vec<String>,
    /// The notification priority. Default `INFO`: Ceilometer's event
    /// endpoint handles only `info` and `error`.
    pub priority: Priority,
    /// The service half of the versioned form's `publisher_id`
    /// (`<service>:<host>`). Default `wd`.
    pub service: String,
    /// The service half of the legacy form's `publisher_id`
    /// (`<service>.<host>`, as Nova's `compute.<host>`): Ceilometer's stock
    /// `compute.instance.*` definition takes the `service` and `host` traits
    /// from it. Default `compute`.
    pub legacy_service: String,
    /// Wrap messages in oslo's 2.0 envelope (driver `messagingv2`, the
    /// default) or publish the bare message (driver `messaging`, 1.0).
    pub envelope: bool,
    /// Whether to declare the exchange (type topic) on each connection. When
    /// false, the exchange must already exist: it is only checked (a passive
    /// declare) and then published to. Default true.
    pub declare: bool,
    /// The durability to declare the exchange with. It must match the
    /// deployment's (oslo.messaging's `amqp_durable_queues`, default false):
    /// RabbitMQ refuses a declaration that differs with 406
    /// PRECONDITION_FAILED. Default false.
    pub durable: bool,
    /// Whether the exchange and queues are declared auto-delete (oslo's
    /// `amqp_auto_delete`). Default false.
    pub auto_delete: bool,
    /// Declare queues as quorum queues (oslo's `rabbit_quorum_queue`),
    /// which are always durable. Default none: classic queues.
    pub quorum: Option<Quorum>,
    /// Declare queues with `x-ha-policy: all` (oslo's `rabbit_ha_queues`).
    /// Default false.
    pub ha_queues: bool,
    /// TLS settings, used when the URL asks for TLS.
    pub tls: TlsSettings,
    /// Try the URL's nodes in a random order, chosen once per notifier, as
    /// oslo.messaging shuffles its hosts, so that a fleet of compute hosts
    /// spreads over the cluster. Default true.
    pub shuffle: bool,
    /// Also declare a queue named like the routing key and bind it, as
    /// oslo.messaging's notifier does, so that notifications wait there until
    /// a listener comes. Off by default: without it, a notification no queue
    /// takes is reported as a failed delivery (and retried), not dropped.
    pub declare_queue: bool,
    /// The AMQP heartbeat to ask for, in seconds (oslo's
    /// `heartbeat_timeout_threshold`); `None` takes the broker's. Default
    /// none.
    pub heartbeat: Option<u16>,
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
            format: NotificationFormat::Both,
            topics: vec!["versioned_notifications".into()],
            legacy_topics: vec!["notifications".into()],
            priority: Priority::Info,
            service: "wd".into(),
            legacy_service: "compute".into(),
            envelope: true,
            declare: true,
            durable: false,
            auto_delete: false,
            quorum: None,
            ha_queues: false,
            tls: TlsSettings::default(),
            shuffle: true,
            declare_queue: false,
            heartbeat: None,
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

    /// Sets the versioned form's one topic.
    #[must_use]
    pub fn with_topic(mut self, topic: impl Into<String>) -> Self {
        self.topics = vec![topic.into()];
        self
    }

    /// Sets the versioned form's topics.
    #[must_use]
    pub fn with_topics(mut self, topics: Vec<String>) -> Self {
        self.topics = topics;
        self
    }

    /// Sets the legacy form's topics.
    #[must_use]
    pub fn with_legacy_topics(mut self, topics: Vec<String>) -> Self {
        self.legacy_topics = topics;
        self
    }

    /// Sets which forms are published.
    #[must_use]
    pub fn with_format(mut self, format: NotificationFormat) -> Self {
        self.format = format;
        self
    }

    /// Sets the service half of the legacy `publisher_id`.
    #[must_use]
    pub fn with_legacy_service(mut self, service: impl Into<String>) -> Self {
        self.legacy_service = service.into();
        self
    }

    /// Sets whether messages are wrapped in oslo's 2.0 envelope.
    #[must_use]
    pub fn with_envelope(mut self, envelope: bool) -> Self {
        self.envelope = envelope;
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

    /// Sets whether the exchange and queues are auto-delete.
    #[must_use]
    pub fn with_auto_delete(mut self, auto_delete: bool) -> Self {
        self.auto_delete = auto_delete;
        self
    }

    /// Declares queues as quorum queues (and everything durable), as oslo's
    /// `rabbit_quorum_queue`; `None` for classic queues.
    #[must_use]
    pub fn with_quorum(mut self, quorum: Option<Quorum>) -> Self {
        if quorum.is_some() {
            self.durable = true;
        }
        self.quorum = quorum;
        self
    }

    /// Sets `x-ha-policy: all` on declared queues.
    #[must_use]
    pub fn with_ha_queues(mut self, ha: bool) -> Self {
        self.ha_queues = ha;
        self
    }

    /// Sets the TLS settings.
    #[must_use]
    pub fn with_tls(mut self, tls: TlsSettings) -> Self {
        self.tls = tls;
        self
    }

    /// Sets whether the nodes are tried in a random order.
    #[must_use]
    pub fn with_shuffle(mut self, shuffle: bool) -> Self {
        self.shuffle = shuffle;
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

    /// Every publish one notification makes: each published form on each of
    /// its topics, versioned first. Routing keys are
    /// `<topic>.<priority lowercased>`, as oslo's messaging driver builds them.
    pub fn routes(&self) -> Vec<Publication> {
        let priority = self.priority.as_str().to_ascii_lowercase();
        let mut routes = Vec::new();
        let forms = [
            (Versioning::Versioned, self.format.versioned(), &self.topics),
            (
                Versioning::Unversioned,
                self.format.unversioned(),
                &self.legacy_topics,
            ),
        ];
        for (form, on, topics) in forms {
            if on {
                for topic in topics {
                    routes.push(Publication {
                        form,
                        routing_key: format!("{topic}.{priority}"),
                    });
                }
            }
        }
        routes
    }

    /// Checks names before any connection is made.
    pub(crate) fn validate(&self) -> Result<()> {
        if self.quorum.is_some() && self.ha_queues {
            // oslo.messaging refuses this too (`_get_queue_arguments`).
            return Err(Error::Queues {
                reason: "quorum queues and HA (mirrored) queues are both enabled; a queue is one or the other".into(),
            });
        }
        let mut names = vec![
            ("exchange", &self.exchange),
            ("service", &self.service),
            ("legacy_service", &self.legacy_service),
        ];
        names.extend(self.topics.iter().map(|t| ("topic", t)));
        names.extend(self.legacy_topics.iter().map(|t| ("legacy topic", t)));
        if self.format.versioned() && self.topics.is_empty() {
            return Err(Error::InvalidName {
                what: "topic",
                value: String::new(),
            });
        }
        if self.format.unversioned() && self.legacy_topics.is_empty() {
            return Err(Error::InvalidName {
                what: "legacy topic",
                value: String::new(),
            });
        }
        if self.routes().len() > 32 {
            return Err(Error::InvalidName {
                what: "topic list",
                value: format!("{} routes", self.routes().len()),
            });
        }
        for (what, value) in names {
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
    fn routing_keys() {
        let url = AmqpUrl::new("amqp://h").unwrap();
        let keys = |c: AmqpConfig| -> Vec<(Versioning, String)> {
            c.routes()
                .into_iter()
                .map(|r| (r.form, r.routing_key))
                .collect()
        };
        let v = |k: &str| (Versioning::Versioned, k.to_owned());
        let u = |k: &str| (Versioning::Unversioned, k.to_owned());
        let cases = [
            (
                AmqpConfig::new(url.clone()),
                vec![v("versioned_notifications.info"), u("notifications.info")],
            ),
            (
                AmqpConfig::new(url.clone())
                    .with_priority(Priority::Error)
                    .with_format(NotificationFormat::Versioned),
                vec![v("versioned_notifications.error")],
            ),
            (
                AmqpConfig::new(url)
                    .with_format(NotificationFormat::Unversioned)
                    .with_legacy_topics(vec!["notifications".into(), "searchlight".into()])
                    .with_priority(Priority::Warn),
                vec![u("notifications.warn"), u("searchlight.warn")],
            ),
        ];
        for (config, expected) in cases {
            assert_eq!(keys(config), expected);
        }
    }

    #[test]
    fn formats() {
        for (text, format) in [
            ("unversioned", NotificationFormat::Unversioned),
            ("versioned", NotificationFormat::Versioned),
            ("both", NotificationFormat::Both),
        ] {
            assert_eq!(text.parse::<NotificationFormat>().unwrap(), format);
            assert_eq!(format.to_string(), text);
        }
        assert_eq!(
            "Both"
                .parse::<NotificationFormat>()
                .unwrap_err()
                .to_string(),
            "unknown notification format `Both`; allowed: unversioned, versioned, both"
        );
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
                AmqpConfig::new(url.clone()).with_service("wd/x"),
                Err("service `wd/x` is not valid; allowed: 1 to 255 bytes of A-Z a-z 0-9 - _ . :"),
            ),
            (
                AmqpConfig::new(url).with_legacy_topics(vec![]),
                Err("legacy topic `` is not valid; allowed: 1 to 255 bytes of A-Z a-z 0-9 - _ . :"),
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
