//! The legacy (unversioned) payload: flat, with the keys and types of Nova's
//! `compute.instance.*` payloads (`nova.notifications.base.info_from_instance`)
//! where wd knows their values, then the watchdog's own.

use std::collections::BTreeMap;

use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;
use wd_notify::Notification;

/// The legacy payload. Nova's keys come first, in Nova's order; a key whose
/// value wd does not know is left out rather than invented (Nova's
/// `instance_type_id` is a database id, and `image_ref_url` a Glance URL,
/// neither of which the compute host's domain metadata holds).
///
/// With the flavor's sizes present, Ceilometer's stock meter definitions
/// (`memory`, `vcpus`, `disk.root.size`, `disk.ephemeral.size` match
/// `compute.instance.*`) make their samples instead of warning that the
/// volume is missing.
#[derive(Serialize)]
pub(super) struct LegacyPayload<'a> {
    tenant_id: Option<&'a str>,
    user_id: Option<&'a str>,
    instance_id: Uuid,
    display_name: Option<&'a str>,
    /// The flavor's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    instance_type: Option<&'a str>,
    /// The flavor's `flavorid` (a string in Nova).
    #[serde(skip_serializing_if = "Option::is_none")]
    instance_flavor_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    memory_mb: Option<u32>,
    /// `root_gb + ephemeral_gb`, as Nova sums them.
    #[serde(skip_serializing_if = "Option::is_none")]
    disk_gb: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    vcpus: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    root_gb: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ephemeral_gb: Option<u32>,
    host: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    power_state: Option<&'static str>,
    /// Nova's `image_meta`: the instance's `image_*` system metadata
    /// without the prefix, so every value is a string, as in Nova.
    #[serde(skip_serializing_if = "Option::is_none")]
    image_meta: Option<BTreeMap<&'static str, String>>,
    domain_name: &'a str,
    action: &'a str,
    event_id: Uuid,
    fired_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    fired_at_bound: Option<&'static str>,
    recovered: bool,
    occurrences: u64,
    first_fired_at: String,
    last_fired_at: String,
}

impl<'a> LegacyPayload<'a> {
    /// The payload of `n`, with timestamps written by `iso`.
    pub(super) fn of(n: &'a Notification, iso: impl Fn(OffsetDateTime) -> String) -> Self {
        let flavor = n.instance.flavor.as_ref();
        let size = |f: fn(&wd_notify::Flavor) -> Option<u32>| flavor.and_then(f);
        LegacyPayload {
            tenant_id: n.instance.project_id.as_deref(),
            user_id: n.instance.user_id.as_deref(),
            instance_id: n.instance.uuid,
            display_name: n.instance.name.as_deref(),
            instance_type: flavor.and_then(|f| f.name.as_deref()),
            instance_flavor_id: flavor.and_then(|f| f.id.as_deref()),
            memory_mb: size(|f| f.memory_mb),
            disk_gb: flavor.and_then(wd_notify::Flavor::disk_gb),
            vcpus: size(|f| f.vcpus),
            root_gb: size(|f| f.root_gb),
            ephemeral_gb: size(|f| f.ephemeral_gb),
            host: &n.host,
            state: vm_state(&n.action),
            power_state: power_state(&n.action),
            image_meta: n.instance.image.as_ref().map(image_meta),
            domain_name: &n.domain.name,
            action: &n.action,
            event_id: n.event_id,
            fired_at: iso(n.fired_at),
            fired_at_bound: n.fired_at_bound.map(wd_notify::FiredAtBound::as_str),
            recovered: n.recovered,
            occurrences: n.occurrences.count,
            first_fired_at: iso(n.occurrences.first_at),
            last_fired_at: iso(n.occurrences.last_at),
        }
    }
}

/// Nova's `image_meta` for `image`: the keys Nova keeps in the instance's
/// system metadata (`image_base_image_ref`, and the inheritable
/// `container_format`, `disk_format`, `min_disk`, `min_ram`), as strings.
fn image_meta(image: &wd_notify::Image) -> BTreeMap<&'static str, String> {
    let mut meta = BTreeMap::new();
    let texts = [
        ("base_image_ref", image.uuid.clone()),
        ("container_format", image.container_format.clone()),
        ("disk_format", image.disk_format.clone()),
        ("min_disk", image.min_disk.map(|v| v.to_string())),
        ("min_ram", image.min_ram.map(|v| v.to_string())),
    ];
    for (key, value) in texts {
        if let Some(value) = value {
            meta.insert(key, value);
        }
    }
    meta
}

/// Nova's `vm_state` as Nova's next `compute.instance.*` notification
/// will say it, where that is certain. A guest its watchdog paused stays
/// `active` for Nova (its power-state sync ignores an unexpected pause), as
/// after `reset`, `none` or `inject-nmi`; after `poweroff` the sync stops the
/// instance, so `stopped`. `shutdown` (a request the guest may ignore) and
/// `debug` (a dump) leave it unknown, and the key is left out.
pub(super) fn vm_state(action: &str) -> Option<&'static str> {
    match action {
        "pause" | "reset" | "none" | "inject-nmi" => Some("active"),
        "poweroff" => Some("stopped"),
        _ => None,
    }
}

/// The hypervisor's state the action leaves the guest in, in Nova's
/// `power_state` names (`nova.compute.power_state.STATE_MAP`).
pub(super) fn power_state(action: &str) -> Option<&'static str> {
    match action {
        "pause" => Some("paused"),
        "reset" | "none" | "inject-nmi" => Some("running"),
        "poweroff" => Some("shutdown"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};
    use wd_notify::{Flavor, Image};

    use super::*;

    fn payload(n: &Notification) -> Value {
        serde_json::to_value(LegacyPayload::of(n, |_| "t".to_owned())).unwrap()
    }

    #[test]
    fn the_flavor_and_image_use_novas_keys_and_types() {
        let mut n = wd_notify::testing::fresh_firing("pause", Some("p-1"));
        n.instance.flavor = Some(Flavor {
            name: Some("m1.small".into()),
            id: Some("2".into()),
            memory_mb: Some(2048),
            vcpus: Some(1),
            root_gb: Some(20),
            ephemeral_gb: Some(5),
            swap_mb: Some(512),
        });
        n.instance.image = Some(Image {
            uuid: Some("c0ffee00-1234-4567-89ab-cdef01234567".into()),
            container_format: Some("bare".into()),
            disk_format: Some("qcow2".into()),
            min_disk: Some(20),
            min_ram: Some(0),
        });
        let p = payload(&n);
        for (key, value) in [
            ("instance_type", json!("m1.small")),
            ("instance_flavor_id", json!("2")),
            ("memory_mb", json!(2048)),
            ("disk_gb", json!(25)),
            ("vcpus", json!(1)),
            ("root_gb", json!(20)),
            ("ephemeral_gb", json!(5)),
            (
                "image_meta",
                json!({
                    "base_image_ref": "c0ffee00-1234-4567-89ab-cdef01234567",
                    "container_format": "bare",
                    "disk_format": "qcow2",
                    "min_disk": "20",
                    "min_ram": "0",
                }),
            ),
        ] {
            assert_eq!(p[key], value, "{key}: {p}");
        }
        // Swap is not in Nova's legacy payload, nor are the ids wd cannot
        // know.
        for key in ["swap", "instance_type_id", "image_ref_url"] {
            assert!(p.get(key).is_none(), "{key}: {p}");
        }
    }

    #[test]
    fn unknown_sizes_are_left_out_not_invented() {
        let mut n = wd_notify::testing::fresh_firing("reset", Some("p-1"));
        let sizes = [
            "instance_type",
            "instance_flavor_id",
            "memory_mb",
            "disk_gb",
            "vcpus",
            "root_gb",
            "ephemeral_gb",
            "image_meta",
        ];
        let p = payload(&n);
        for key in sizes {
            assert!(p.get(key).is_none(), "{key}: {p}");
        }
        // Part of a flavor: what is known, and no disk_gb without both
        // disks. A volume-booted instance's image is Nova's empty ref.
        n.instance.flavor = Some(Flavor {
            root_gb: Some(u32::MAX),
            vcpus: Some(4),
            ..Flavor::default()
        });
        n.instance.image = Some(Image {
            uuid: Some(String::new()),
            ..Image::default()
        });
        let p = payload(&n);
        assert_eq!(p["vcpus"], 4);
        assert_eq!(p["root_gb"], u32::MAX);
        assert!(p.get("disk_gb").is_none(), "{p}");
        assert!(p.get("memory_mb").is_none(), "{p}");
        assert_eq!(p["image_meta"], json!({"base_image_ref": ""}));
        // Both disks at their largest: no overflow.
        n.instance.flavor = Some(Flavor {
            root_gb: Some(u32::MAX),
            ephemeral_gb: Some(u32::MAX),
            ..Flavor::default()
        });
        assert_eq!(payload(&n)["disk_gb"], 2 * u64::from(u32::MAX));
    }
}
