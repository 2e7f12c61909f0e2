//! Shared [`Notification`] fixtures for tests (feature `mock`), so that the
//! tests of `wd-notify` and of both transports build their notifications in
//! one place rather than each by hand.
//!
//! - [`documented`]: the notification behind the examples in
//!   `docs/notifications.md` (both the webhook and the bus examples).
//! - [`fresh_firing`]: a live firing with fresh random ids, for tests that
//!   send several and tell them apart.
//! - [`firing`], [`firing_at`]: deterministic firings of instance `k`.
//! - [`until`]: waits for a condition a background worker makes true.
//!
//! ```
//! let n = wd_notify::testing::documented();
//! assert_eq!(n.event_id.to_string(), "0b6c2d3e-8f41-4c55-9a7e-1f2d3c4b5a69");
//! let a = wd_notify::testing::fresh_firing("reset", Some("p-a"));
//! let b = wd_notify::testing::fresh_firing("reset", Some("p-a"));
//! assert_ne!(a.event_id, b.event_id);
//! assert_eq!(a.instance.project_id.as_deref(), Some("p-a"));
//! ```

use time::OffsetDateTime;
use uuid::Uuid;

use crate::model::{Domain, Flavor, Image, Instance, Notification};

/// The host of every fixture.
pub const HOST: &str = "compute-1";

/// The notification behind the examples in `docs/notifications.md`: a live
/// `pause` of `web-1` (domain `instance-0000002a`) on `compute-1`, at
/// 2026-11-25 19:14:19.482913 UTC, owned by project
/// `6f70656e737461636b20342065766572`, of flavor `m1.small` (id `2`: 2048
/// MiB, 1 vCPU, 20 GiB root, no ephemeral disk or swap) booted from image
/// `c0ffee00-1234-4567-89ab-cdef01234567` (bare qcow2). The documentation
/// tests render it with each transport and compare byte for byte.
pub fn documented() -> Notification {
    let at = time::macros::datetime!(2026-11-25 19:14:19.482913 UTC);
    let uuid = Uuid::from_u128(0x178b0921_8f85_4257_88b6_2e743b5a975c);
    let mut n = Notification::new(
        Instance {
            uuid,
            name: Some("web-1".into()),
            project_id: Some("6f70656e737461636b20342065766572".into()),
            user_id: Some("2e4b1c7d9a8f4e3b8c1d0f9e8d7c6b5a".into()),
            flavor: Some(Flavor {
                name: Some("m1.small".into()),
                id: Some("2".into()),
                memory_mb: Some(2048),
                vcpus: Some(1),
                root_gb: Some(20),
                ephemeral_gb: Some(0),
                swap_mb: Some(0),
            }),
            image: Some(Image {
                uuid: Some("c0ffee00-1234-4567-89ab-cdef01234567".into()),
                container_format: Some("bare".into()),
                disk_format: Some("qcow2".into()),
                min_disk: Some(20),
                min_ram: Some(0),
            }),
        },
        HOST,
        Domain::new(uuid, "instance-0000002a"),
        "pause",
        at,
    );
    n.event_id = Uuid::from_u128(0x0b6c2d3e_8f41_4c55_9a7e_1f2d3c4b5a69);
    n
}

/// A live single firing of `action`, now, on [`HOST`]: fresh random event,
/// instance and domain UUIDs; instance `web-1` (user `u-1`) in `project`
/// (`None`: no known owner), domain `instance-0000002a`.
pub fn fresh_firing(action: &str, project: Option<&str>) -> Notification {
    Notification::new(
        Instance {
            uuid: Uuid::new_v4(),
            name: Some("web-1".into()),
            project_id: project.map(str::to_owned),
            user_id: Some("u-1".into()),
            flavor: None,
            image: None,
        },
        HOST,
        Domain::new(Uuid::new_v4(), "instance-0000002a"),
        action,
        OffsetDateTime::now_utc(),
    )
}

/// A `reset` of instance `k` (UUID `k`, project `project-{k}`, domain
/// `instance-{k:08x}`) at 2026-01-01 00:00 UTC plus `secs`. The event id is
/// random.
pub fn firing_at(k: u128, secs: i64) -> Notification {
    let at = time::macros::datetime!(2026-01-01 00:00 UTC) + time::Duration::seconds(secs);
    let mut instance = Instance::new(Uuid::from_u128(k));
    instance.project_id = Some(format!("project-{k}"));
    Notification::new(
        instance,
        HOST,
        Domain::new(Uuid::from_u128(k), format!("instance-{k:08x}")),
        "reset",
        at,
    )
}

/// [`firing_at`] with `secs` 0.
pub fn firing(k: u128) -> Notification {
    firing_at(k, 0)
}

/// Waits until `done` holds, checking every 2 ms; panics naming `what`
/// after 10 s (a worker that never gets there is a failure, not a hang).
pub async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let t0 = std::time::Instant::now();
    while !done() {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
}
