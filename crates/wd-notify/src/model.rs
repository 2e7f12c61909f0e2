//! The notification model and its versioned JSON form.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::{Error, Result};

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
    /// When the firing was observed (UTC, RFC 3339 with sub-second
    /// precision): the firing itself for a live one. For a firing found by
    /// a catch-up, the moment the catch-up found it: the firing happened at
    /// or before then, and [`Notification::fired_at_bound`] says so.
    #[serde(with = "time::serde::rfc3339")]
    pub fired_at: OffsetDateTime,
    /// Present when `fired_at` is only a bound on when the guest fired
    /// (a firing found by a catch-up: it happened while nobody listened).
    /// Absent from the JSON form when `fired_at` is exact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fired_at_bound: Option<FiredAtBound>,
    /// True when the firing was found by catch-up after a reconnect or
    /// restart rather than seen live.
    pub recovered: bool,
    /// How many firings this notification stands for, and the window they
    /// cover.
    pub occurrences: Occurrences,
}

/// How `fired_at` bounds the moment the guest fired, when it is not exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FiredAtBound {
    /// The guest fired at or before `fired_at` (JSON: `"at_or_before"`).
    AtOrBefore,
}

impl FiredAtBound {
    /// The JSON spelling: `at_or_before`.
    pub fn as_str(self) -> &'static str {
        match self {
            FiredAtBound::AtOrBefore => "at_or_before",
        }
    }
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
    /// The instance's flavor, when its metadata names one. Absent from the
    /// JSON form when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flavor: Option<Flavor>,
    /// The image the instance was booted from, when its metadata names one.
    /// Absent from the JSON form when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<Image>,
}

/// An instance's flavor, as Nova's domain metadata gives it (Nova's
/// `Flavor` names and units). Each field is absent from the JSON form when
/// unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flavor {
    /// The flavor's name (Nova's `instance_type`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The flavor's id (Nova's `flavorid`, a string).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Memory, in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u32>,
    /// Virtual CPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u32>,
    /// The root disk, in GiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_gb: Option<u32>,
    /// The ephemeral disk, in GiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ephemeral_gb: Option<u32>,
    /// Swap, in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_mb: Option<u32>,
}

impl Flavor {
    /// Root plus ephemeral disk, in GiB (Nova's `disk_gb`), when both are
    /// known.
    pub fn disk_gb(&self) -> Option<u64> {
        Some(u64::from(self.root_gb?) + u64::from(self.ephemeral_gb?))
    }
}

/// The image an instance was booted from, as Nova's domain metadata gives
/// it. Each field is absent from the JSON form when unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// The image id; empty for an instance booted from a volume (as Nova
    /// writes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// The image's container format, e.g. `bare`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_format: Option<String>,
    /// The image's disk format, e.g. `qcow2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_format: Option<String>,
    /// The smallest root disk the image needs, in GiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_disk: Option<u32>,
    /// The least memory the image needs, in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_ram: Option<u32>,
}

/// The libvirt domain a notification concerns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Domain {
    /// The domain UUID.
    pub uuid: Uuid,
    /// The domain name.
    pub name: String,
    /// libvirt's runtime id of the domain (`virDomainGetID`) when it fired,
    /// if known. It changes on every start, so it tells one *run* of a
    /// domain from the next (a hard reboot is a destroy and a start): a
    /// firing of a new run is never folded into the last run's episode.
    /// Absent from the JSON form when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u32>,
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

impl Instance {
    /// An instance known only by its UUID: no name and no known owner.
    pub fn new(uuid: Uuid) -> Self {
        Instance {
            uuid,
            name: None,
            project_id: None,
            user_id: None,
            flavor: None,
            image: None,
        }
    }
}

impl Domain {
    /// A domain with this UUID and name.
    pub fn new(uuid: Uuid, name: impl Into<String>) -> Self {
        Domain {
            uuid,
            name: name.into(),
            id: None,
        }
    }

    /// Sets [`Domain::id`], the domain's runtime id.
    #[must_use]
    pub fn with_id(mut self, id: u32) -> Self {
        self.id = Some(id);
        self
    }
}

impl Notification {
    /// A live, single firing with a fresh random event id.
    pub fn new(
        instance: Instance,
        host: impl Into<String>,
        domain: Domain,
        action: impl Into<String>,
        fired_at: OffsetDateTime,
    ) -> Self {
        Notification {
            version: SCHEMA_VERSION,
            event_id: Uuid::new_v4(),
            instance,
            host: host.into(),
            domain,
            action: action.into(),
            fired_at,
            fired_at_bound: None,
            recovered: false,
            occurrences: Occurrences::single(fired_at),
        }
    }

    /// The notification's versioned JSON form.
    pub fn to_json(&self) -> String {
        // Serializing plain data with string keys cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads the JSON form, accepting only `version` [`SCHEMA_VERSION`].
    ///
    /// Unknown fields are ignored, because new optional fields do not change
    /// the version.
    pub fn from_json(text: &str) -> Result<Notification> {
        #[derive(Deserialize)]
        struct Versioned {
            version: u32,
        }
        let v: Versioned =
            serde_json::from_str(text).map_err(|source| Error::ParseNotification { source })?;
        if v.version != SCHEMA_VERSION {
            return Err(Error::UnsupportedVersion { version: v.version });
        }
        serde_json::from_str(text).map_err(|source| Error::ParseNotification { source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Notification {
        let at = time::macros::datetime!(2026-11-25 19:14:30.123456789 UTC);
        let mut n = Notification::new(
            Instance {
                uuid: Uuid::from_u128(0x1111_1111_1111_4111_8111_1111_1111_1111),
                name: Some("web-1".into()),
                project_id: Some("p1".into()),
                user_id: None,
                flavor: None,
                image: None,
            },
            "compute-1",
            Domain::new(
                Uuid::from_u128(0x2222_2222_2222_4222_8222_2222_2222_2222),
                "instance-0000002a",
            ),
            "reset",
            at,
        );
        n.event_id = Uuid::from_u128(0x3333_3333_3333_4333_8333_3333_3333_3333);
        n
    }

    #[test]
    fn json_round_trips() {
        let mut folded = sample();
        folded.recovered = true;
        folded.fired_at_bound = Some(FiredAtBound::AtOrBefore);
        folded.occurrences = Occurrences {
            count: 7,
            first_at: time::macros::datetime!(2026-11-25 19:14:31 UTC),
            last_at: time::macros::datetime!(2026-11-25 19:15:30.5 UTC),
        };
        let mut run = sample();
        run.domain = run.domain.with_id(42);
        let mut sized = sample();
        sized.instance.flavor = Some(Flavor {
            name: Some("m1.small".into()),
            memory_mb: Some(2048),
            ..Flavor::default()
        });
        sized.instance.image = Some(Image {
            uuid: Some(String::new()),
            ..Image::default()
        });
        for n in [sample(), folded, run, sized] {
            let text = n.to_json();
            assert_eq!(Notification::from_json(&text).unwrap(), n, "{text}");
            let value: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(serde_json::from_value::<Notification>(value).unwrap(), n);
        }
    }

    #[test]
    fn json_form_is_stable() {
        // The exact wire form consumers rely on; changing it is a new version.
        let expected = r#"{"version":1,"event_id":"33333333-3333-4333-8333-333333333333","instance":{"uuid":"11111111-1111-4111-8111-111111111111","name":"web-1","project_id":"p1","user_id":null},"host":"compute-1","domain":{"uuid":"22222222-2222-4222-8222-222222222222","name":"instance-0000002a"},"action":"reset","fired_at":"2026-11-25T19:14:30.123456789Z","recovered":false,"occurrences":{"count":1,"first_at":"2026-11-25T19:14:30.123456789Z","last_at":"2026-11-25T19:14:30.123456789Z"}}"#;
        assert_eq!(sample().to_json(), expected);
        // A known runtime id is one more field of `domain`, after `name`.
        let mut run = sample();
        run.domain.id = Some(7);
        assert_eq!(
            run.to_json(),
            expected.replace(
                r#""name":"instance-0000002a"}"#,
                r#""name":"instance-0000002a","id":7}"#
            )
        );
        // A known flavor and image are objects of `instance`, after
        // `user_id`, with only their known fields.
        let mut sized = sample();
        sized.instance.flavor = Some(Flavor {
            name: Some("m1.small".into()),
            id: Some("2".into()),
            memory_mb: Some(2048),
            vcpus: Some(1),
            root_gb: Some(20),
            ephemeral_gb: Some(0),
            swap_mb: None,
        });
        sized.instance.image = Some(Image {
            uuid: Some("c0ffee00-1234-4567-89ab-cdef01234567".into()),
            disk_format: Some("qcow2".into()),
            ..Image::default()
        });
        assert_eq!(
            sized.to_json(),
            expected.replace(
                r#""user_id":null}"#,
                r#""user_id":null,"flavor":{"name":"m1.small","id":"2","memory_mb":2048,"vcpus":1,"root_gb":20,"ephemeral_gb":0},"image":{"uuid":"c0ffee00-1234-4567-89ab-cdef01234567","disk_format":"qcow2"}}"#
            )
        );
        assert_eq!(sized.instance.flavor.unwrap().disk_gb(), Some(20));
        let big = Flavor {
            root_gb: Some(u32::MAX),
            ephemeral_gb: Some(u32::MAX),
            ..Flavor::default()
        };
        assert_eq!(big.disk_gb(), Some(2 * u64::from(u32::MAX)), "no overflow");
        assert_eq!(Flavor::default().disk_gb(), None);
    }

    fn check(text: &str, expected: std::result::Result<(), &str>) {
        match (Notification::from_json(text), expected) {
            (Ok(_), Ok(())) => {}
            (Err(e), Err(msg)) => assert_eq!(e.to_string(), msg, "{text}"),
            (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn from_json_checks_version_and_shape() {
        let good = sample().to_json();
        check(&good, Ok(()));
        // An unknown extra field is a compatible addition.
        check(&good.replacen("{", r#"{"extra":true,"#, 1), Ok(()));
        check(
            &good.replace(r#""version":1"#, r#""version":2"#),
            Err("notification version 2 is not supported; allowed: 1"),
        );
        let invalid = "notification json is invalid; expected the version 1 form described in the wd-notify docs";
        check("not json", Err(invalid));
        check(r#"{"version":1}"#, Err(invalid));
        check(&good.replace(r#""count":1"#, r#""count":-1"#), Err(invalid));
    }
}
