//! Helpers for this crate's unit tests.

use time::OffsetDateTime;
use uuid::Uuid;

use crate::model::{Domain, Instance, Notification};

/// A firing of instance `k` at a fixed base time plus `secs`.
pub(crate) fn firing_at(k: u128, secs: i64) -> Notification {
    let at = time::macros::datetime!(2026-01-01 00:00 UTC) + time::Duration::seconds(secs);
    firing_on(k, at)
}

/// A firing of instance `k` at a fixed base time.
pub(crate) fn firing(k: u128) -> Notification {
    firing_at(k, 0)
}

fn firing_on(k: u128, at: OffsetDateTime) -> Notification {
    let mut instance = Instance::new(Uuid::from_u128(k));
    instance.project_id = Some(format!("project-{k}"));
    Notification::new(
        instance,
        "compute-1",
        Domain::new(Uuid::from_u128(k), format!("instance-{k:08x}")),
        "reset",
        at,
    )
}
