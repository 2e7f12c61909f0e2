//! The watchdog notification model and the [`Notifier`] interface.
//!
//! Architecture invariant: this crate knows nothing of libvirt or of any
//! network transport. Backends (webhooks, the OpenStack message bus) live in
//! their own crates and implement [`Notifier`].
#![forbid(unsafe_code)]

mod model;
mod notifier;

pub use model::{Domain, Instance, Notification, Occurrences, SCHEMA_VERSION};
#[cfg(feature = "mock")]
pub use notifier::MockNotifier;
pub use notifier::{BoxError, Notifier, NotifyError};
