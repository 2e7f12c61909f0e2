//! Watchdog notifications as signed webhooks.
//!
//! Each notification is POSTed as a [CloudEvents 1.0] event in structured
//! mode (`Content-Type: application/cloudevents+json`), signed as the
//! [Standard Webhooks] specification says (`webhook-id`, `webhook-timestamp`,
//! `webhook-signature`), to the endpoints of the project that owns the
//! instance and to any operator-wide endpoints. `docs/notifications.md` gives
//! the wire format with a full example.
//!
//! Receivers (and our tests) verify requests with [`verify`].
//!
//! Architecture invariant: this crate implements [`wd_notify::Notifier`] and
//! knows nothing of libvirt, of the event listener, or of other transports.
//! It must never depend on `virt`, `wd-events` or `wd-compute`.
//!
//! ```
//! use wd_notify_webhook::{Endpoint, Secret, WebhookConfig, WebhookNotifier};
//!
//! let key: Secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".parse()?;
//! let config = WebhookConfig::default()
//!     .with_operator(Endpoint::new("https://ops.example/watchdog", [key.clone()]))
//!     .with_project("6f70656e737461636b", Endpoint::new("https://tenant.example/hook", [key]));
//! // One notifier per endpoint: each is its own destination, with its own
//! // queue, in a `wd_notify::Router` that routes by owner.
//! let endpoints = WebhookNotifier::split(config)?;
//! assert_eq!(endpoints[1].project.as_deref(), Some("6f70656e737461636b"));
//! // The secret never shows in Debug output.
//! assert!(!format!("{endpoints:?}").contains("MfKQ9r8G"));
//! # Ok::<(), wd_notify_webhook::Error>(())
//! ```
//!
//! [CloudEvents 1.0]: https://github.com/cloudevents/spec/blob/v1.0.2/cloudevents/spec.md
//! [Standard Webhooks]: https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md
#![forbid(unsafe_code)]

mod config;
mod error;
mod event;
mod notifier;
pub mod settings;
mod signing;
mod tls;

pub use config::{Endpoint, WebhookConfig, display_url, url_holds_secret};
pub use error::{Error, Result};
pub use event::{CONTENT_TYPE, EVENT_TYPE, SPEC_VERSION, body, source};
pub use notifier::{WebhookEndpoint, WebhookNotifier};
pub use settings::{ProjectSettings, SECRET_ENV, WebhookSettings};
pub use signing::{
    DEFAULT_TOLERANCE, HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, Secret, Verified, sign,
    verify, verify_at,
};
pub use tls::TlsConfig;
