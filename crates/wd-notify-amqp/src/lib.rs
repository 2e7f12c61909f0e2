//! Watchdog notifications on the OpenStack message bus.
//!
//! [`AmqpNotifier`] publishes each notification to RabbitMQ exactly as
//! oslo.messaging's `messagingv2` notification driver would: an
//! `{"oslo.version": "2.0", "oslo.message": "<json string>"}` envelope around
//! a message with `message_id`, `publisher_id`, `event_type`, `priority`,
//! `timestamp`, a payload, and the owner in the oslo request context
//! (`_context_project_id`, `_context_user_id`, …), sent to a topic exchange
//! (`nova` by default) with routing key `<topic>.<priority>`. Like Nova, it
//! follows `notification_format` ([`NotificationFormat`]): the legacy form
//! (`compute.instance.watchdog`, flat payload, topic `notifications`, which
//! Ceilometer turns into events for Aodh's owner alarms), the versioned form
//! (`instance.watchdog`, `nova_object` payload, topic
//! `versioned_notifications`), or both (the default). Existing oslo.messaging
//! notification listeners receive them unchanged. `docs/notifications.md`
//! gives the wire formats with full examples.
//!
//! Brokers are given as AMQP URIs or as oslo transport URLs naming a cluster
//! (`rabbit://user:pass@host1:5672,user:pass@host2:5672/vhost?ssl=1`): see
//! [`AmqpUrl`]. [`NovaConf`] reads these settings from Nova's own `nova.conf`.
//!
//! Publishes are persistent, `mandatory`, and confirmed by the broker; the
//! connection is reopened lazily after a broker restart.
//!
//! Architecture invariant: this crate implements [`wd_notify::Notifier`] and
//! knows nothing of libvirt, of the event listener, or of other transports.
//! It must never depend on `virt`, `wd-events` or `wd-compute`.
//!
//! ```
//! use wd_notify_amqp::{AmqpConfig, AmqpNotifier, AmqpUrl, Priority};
//!
//! let url: AmqpUrl = "rabbit://nova:s3cret@rabbit1:5672,nova:s3cret@rabbit2:5672/".parse()?;
//! let config = AmqpConfig::new(url).with_priority(Priority::Warn);
//! let notifier = AmqpNotifier::new(config)?; // connects on first use
//! assert_eq!(
//!     notifier.routing_keys(),
//!     ["versioned_notifications.warn", "notifications.warn"]
//! );
//! assert!(!format!("{notifier:?}").contains("s3cret"));
//! # Ok::<(), wd_notify_amqp::Error>(())
//! ```
#![forbid(unsafe_code)]

mod config;
mod error;
mod message;
mod notifier;
pub mod nova_conf;
pub mod settings;
mod tls;
mod topology;
mod transport;

pub use config::{AmqpConfig, NotificationFormat, Publication, Quorum, Versioning};
pub use error::{Error, Result};
pub use message::{
    ENVELOPE_VERSION, EVENT_TYPE, FLAVOR_PAYLOAD_VERSION, LEGACY_EVENT_TYPE, PAYLOAD_NAME,
    PAYLOAD_NAMESPACE, PAYLOAD_VERSION, Priority, envelope, legacy_envelope, message,
};
pub use notifier::AmqpNotifier;
pub use nova_conf::NovaConf;
pub use settings::{AmqpSettings, PASSWORD_ENV};
pub use tls::{TlsSettings, TlsVersion};
pub use transport::{AmqpUrl, Node};
