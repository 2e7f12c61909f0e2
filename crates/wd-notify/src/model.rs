//! The notification model and its versioned JSON form.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// The version of the JSON form, carried in every notification as `version`.
/// It changes only when a field changes meaning or is removed; new optional
/// fields do not change it.
pub const SCHEMA_VERSION: u32 = 1;

/// One watchdog firing (or a folded run of repeated firings), addressed to the
/// owner of one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// The version of this JSON form: [`SCHEMA_VERSION`].
    pub version: u32,
    /// Stable across retries and restarts: the idempotency key consumers
    /// deduplicate on.
    pub event_id: Uuid,
    /// The instance and its owner.
    pub instance: Instance,
    /// The compute host the guest runs on.
    pub host: String,
    /// The libvirt domain.
    pub domain: Domain,
    /// The action libvirt reported, in libvirt's spelling: `none`, `pause`,
    /// `reset`, `poweroff`, `shutdown`, `debug`, `inject-nmi`, or `unknown-N`
    /// for a value this version does not know.
    pub action: String,
    /// When the firing was seen (UTC, RFC 3339 with sub-second precision).
    #[serde(with = "time::serde::rfc3339")]
    pub fired_at: OffsetDateTime,
    /// True when the firing was found by catch-up after a reconnect or
    /// restart rather than seen live.
    pub recovered: bool,
    /// How many firings this notification stands for, and the window they
    /// cover.
    pub occurrences: Occurrences,
}

/// The instance a notification concerns, and its owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// The instance UUID (for Nova, the domain UUID).
    pub uuid: Uuid,
    /// The display name, when known.
    pub name: Option<String>,
    /// The owning project (tenant) id. `None` when the owner is unknown:
    /// such a notification goes only to operator channels.
    pub project_id: Option<String>,
    /// The owning user id, when known.
    pub user_id: Option<String>,
}

/// The libvirt domain a notification concerns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Domain {
    /// The domain UUID.
    pub uuid: Uuid,
    /// The domain name.
    pub name: String,
}

/// The run of firings a notification stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Occurrences {
    /// The number of firings; 1 for a single firing.
    pub count: u64,
    /// The first firing in the window.
    #[serde(with = "time::serde::rfc3339")]
    pub first_at: OffsetDateTime,
    /// The last firing in the window.
    #[serde(with = "time::serde::rfc3339")]
    pub last_at: OffsetDateTime,
}

impl Occurrences {
    /// A single firing at `at`.
    pub fn single(at: OffsetDateTime) -> Self {
        Occurrences {
            count: 1,
            first_at: at,
            last_at: at,
        }
    }
}

impl Notification {
    /// The notification's versioned JSON form.
    pub fn to_json(&self) -> String {
        // Serializing plain data with string keys cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}
