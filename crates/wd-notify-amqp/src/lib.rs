//! Watchdog notifications on the OpenStack message bus.
//!
//! [`AmqpNotifier`] publishes each notification to RabbitMQ exactly as
//! oslo.messaging's `messagingv2` notification driver would: an
//! `{"oslo.version": "2.0", "oslo.message": "<json string>"}` envelope around
//! a message with `message_id`, `publisher_id`, `event_type`
//! (`instance.watchdog`), `priority`, `timestamp` and a Nova-style versioned
//! payload, sent to a topic exchange (`nova` by default) with routing key
//! `<topic>.<priority>` (`versioned_notifications.info`). Existing
//! oslo.messaging notification listeners receive it unchanged.
//! `docs/notifications.md` gives the wire format with a full example.
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
//! let url: AmqpUrl = "amqp://nova:s3cret@rabbit.example:5672/%2f".parse()?;
//! let config = AmqpConfig::new(url).with_priority(Priority::Warn);
//! let notifier = AmqpNotifier::new(config)?; // connects on first use
//! assert_eq!(notifier.routing_key(), "versioned_notifications.warn");
//! assert!(!format!("{notifier:?}").contains("s3cret"));
//! # Ok::<(), wd_notify_amqp::Error>(())
//! ```
#![forbid(unsafe_code)]

mod config;
mod error;
mod message;
mod notifier;

pub use config::{AmqpConfig, AmqpUrl};
pub use error::{Error, Result};
pub use message::{
    ENVELOPE_VERSION, EVENT_TYPE, PAYLOAD_NAME, PAYLOAD_NAMESPACE, PAYLOAD_VERSION, Priority,
    envelope,
};
pub use notifier::AmqpNotifier;
