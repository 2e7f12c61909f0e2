//! The oslo.messaging 2.0 envelope and the two notification forms inside it.
//!
//! oslo.messaging's `serialize_msg` wraps the notification dict as
//! `{"oslo.version": "2.0", "oslo.message": json.dumps(msg)}`: the inner
//! message is a JSON *string*, not an object. The inner message has the keys
//! `Notifier._notify` builds (`message_id`, `publisher_id`, `event_type`,
//! `priority`, `payload`, `timestamp`), the `_unique_id` the AMQP driver adds
//! for duplicate detection, and the request context flattened by the driver's
//! `pack_context` as `_context_<key>` for each key of `RequestContext.to_dict()`
//! (oslo.context's keys, then the ones Nova's context adds).
//!
//! The versioned payload follows Nova's versioned notification form
//! (`nova_object.name`, `.namespace`, `.version`, `.data`); the legacy
//! payload is flat, like Nova's `compute.instance.*` payloads.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::FormatItem;
use time::macros::format_description;
use uuid::Uuid;
use wd_notify::Notification;

use crate::config::Versioning;
use crate::error::Error;

mod flavor;
mod legacy;

use flavor::FlavorData;

/// The `event_type` of the versioned form.
pub const EVENT_TYPE: &str = "instance.watchdog";
/// The `event_type` of the legacy (unversioned) form.
pub const LEGACY_EVENT_TYPE: &str = "compute.instance.watchdog";
/// The envelope version oslo.messaging writes and accepts (`2.0`).
pub const ENVELOPE_VERSION: &str = "2.0";
/// `nova_object.name` of the payload.
pub const PAYLOAD_NAME: &str = "InstanceWatchdogPayload";
/// `nova_object.namespace` of the payload: ours, not Nova's.
pub const PAYLOAD_NAMESPACE: &str = "wd";
/// `nova_object.version` of the payload. The minor number grows when fields
/// are added; the major when a field changes meaning or is removed.
pub const PAYLOAD_VERSION: &str = "1.1";
/// `nova_object.version` of the flavor inside the versioned payload: Nova's
/// own `FlavorPayload`, the object of Nova's `InstancePayload.flavor`.
pub const FLAVOR_PAYLOAD_VERSION: &str = "1.4";

/// oslo's `str(datetime)` form, always with microseconds.
const OSLO_TIMESTAMP: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day] [hour]:[minute]:[second].[subsecond digits:6]");
/// oslo.versionedobjects' ISO 8601 form, with microseconds and `Z`.
const ISO_TIMESTAMP: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");
/// Nova's `RequestContext.to_dict` form (`oslo_utils.timeutils.strtime`):
/// ISO 8601 without a zone, which `RequestContext.from_dict` parses back
/// (`parse_strtime` refuses a trailing `Z`).
const CONTEXT_TIMESTAMP: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]");

/// An oslo.messaging notification priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Priority {
    /// `AUDIT`
    Audit,
    /// `DEBUG`
    Debug,
    /// `INFO`, the default.
    #[default]
    Info,
    /// `WARN`
    Warn,
    /// `ERROR`
    Error,
    /// `CRITICAL`
    Critical,
    /// `SAMPLE`
    Sample,
}

impl Priority {
    /// The spelling in the message (`INFO`); the routing key uses it
    /// lowercased.
    pub const fn as_str(self) -> &'static str {
        match self {
            Priority::Audit => "AUDIT",
            Priority::Debug => "DEBUG",
            Priority::Info => "INFO",
            Priority::Warn => "WARN",
            Priority::Error => "ERROR",
            Priority::Critical => "CRITICAL",
            Priority::Sample => "SAMPLE",
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Priority {
    type Err = Error;

    /// Accepts any case, and `warning` for `WARN` as oslo does.
    fn from_str(s: &str) -> Result<Self, Error> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "audit" => Priority::Audit,
            "debug" => Priority::Debug,
            "info" => Priority::Info,
            "warn" | "warning" => Priority::Warn,
            "error" => Priority::Error,
            "critical" => Priority::Critical,
            "sample" => Priority::Sample,
            _ => {
                return Err(Error::ParsePriority {
                    value: s.to_owned(),
                });
            }
        })
    }
}

#[derive(Serialize)]
struct Envelope<'a> {
    #[serde(rename = "oslo.version")]
    version: &'static str,
    #[serde(rename = "oslo.message")]
    message: &'a str,
}

#[derive(Serialize)]
struct Inner<'a, P> {
    message_id: Uuid,
    publisher_id: &'a str,
    event_type: &'static str,
    priority: &'static str,
    payload: P,
    timestamp: String,
    #[serde(rename = "_unique_id")]
    unique_id: String,
    #[serde(flatten)]
    context: Context<'a>,
}

/// The request context as oslo.messaging's `pack_context` flattens a Nova
/// `RequestContext.to_dict()`: oslo.context's keys in its order, then Nova's.
/// The owner is the context's user and project, so consumers that read the
/// context (Ceilometer's default `project_id` and `user_id` traits) find it.
#[derive(Serialize)]
struct Context<'a> {
    #[serde(rename = "_context_user")]
    user: Option<&'a str>,
    #[serde(rename = "_context_project_id")]
    project_id: Option<&'a str>,
    #[serde(rename = "_context_system_scope")]
    system_scope: Option<&'a str>,
    #[serde(rename = "_context_project")]
    project: Option<&'a str>,
    #[serde(rename = "_context_domain")]
    domain: Option<&'a str>,
    #[serde(rename = "_context_user_domain")]
    user_domain: Option<&'a str>,
    #[serde(rename = "_context_project_domain")]
    project_domain: Option<&'a str>,
    #[serde(rename = "_context_is_admin")]
    is_admin: bool,
    #[serde(rename = "_context_read_only")]
    read_only: bool,
    #[serde(rename = "_context_show_deleted")]
    show_deleted: bool,
    #[serde(rename = "_context_auth_token")]
    auth_token: Option<&'a str>,
    #[serde(rename = "_context_request_id")]
    request_id: String,
    #[serde(rename = "_context_global_request_id")]
    global_request_id: Option<&'a str>,
    #[serde(rename = "_context_resource_uuid")]
    resource_uuid: Option<&'a str>,
    #[serde(rename = "_context_roles")]
    roles: [&'a str; 0],
    #[serde(rename = "_context_user_identity")]
    user_identity: String,
    #[serde(rename = "_context_is_admin_project")]
    is_admin_project: bool,
    #[serde(rename = "_context_user_id")]
    user_id: Option<&'a str>,
    #[serde(rename = "_context_read_deleted")]
    read_deleted: &'a str,
    #[serde(rename = "_context_remote_address")]
    remote_address: Option<&'a str>,
    #[serde(rename = "_context_timestamp")]
    timestamp: String,
    #[serde(rename = "_context_quota_class")]
    quota_class: Option<&'a str>,
    #[serde(rename = "_context_user_name")]
    user_name: Option<&'a str>,
    #[serde(rename = "_context_service_catalog")]
    service_catalog: [&'a str; 0],
    #[serde(rename = "_context_project_name")]
    project_name: Option<&'a str>,
}

impl<'a> Context<'a> {
    fn of(n: &'a Notification) -> Self {
        let user = n.instance.user_id.as_deref();
        let project = n.instance.project_id.as_deref();
        Context {
            user,
            project_id: project,
            system_scope: None,
            project,
            domain: None,
            user_domain: None,
            project_domain: None,
            is_admin: false,
            read_only: false,
            show_deleted: false,
            auth_token: None,
            // oslo's form, `req-<uuid>`; derived from the event id so that a
            // retried publish is byte-identical.
            request_id: format!("req-{}", n.event_id),
            global_request_id: None,
            resource_uuid: None,
            roles: [],
            // oslo.context's default `user_idt_format`.
            user_identity: format!("{} {} - - -", user.unwrap_or("-"), project.unwrap_or("-")),
            is_admin_project: true,
            user_id: user,
            read_deleted: "no",
            remote_address: None,
            timestamp: format(n.fired_at, CONTEXT_TIMESTAMP),
            quota_class: None,
            user_name: None,
            service_catalog: [],
            project_name: None,
        }
    }
}

/// A versioned object's primitive, as oslo.versionedobjects writes it: the
/// payload itself, and the flavor inside it.
#[derive(Serialize)]
struct NovaObject<D> {
    #[serde(rename = "nova_object.name")]
    name: &'static str,
    #[serde(rename = "nova_object.namespace")]
    namespace: &'static str,
    #[serde(rename = "nova_object.version")]
    version: &'static str,
    #[serde(rename = "nova_object.data")]
    data: D,
}

/// `nova_object.data`. Field names follow Nova's `InstancePayload` where one
/// exists (`uuid`, `display_name`, `tenant_id`, `user_id`, `host`,
/// `image_uuid`, `flavor`).
#[derive(Serialize)]
struct Data<'a> {
    uuid: Uuid,
    display_name: Option<&'a str>,
    tenant_id: Option<&'a str>,
    user_id: Option<&'a str>,
    host: &'a str,
    /// Since 1.1, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    image_uuid: Option<&'a str>,
    /// Since 1.1, when known: Nova's `FlavorPayload`.
    #[serde(skip_serializing_if = "Option::is_none")]
    flavor: Option<NovaObject<FlavorData<'a>>>,
    domain_name: &'a str,
    action: &'a str,
    fired_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    fired_at_bound: Option<&'static str>,
    recovered: bool,
    occurrences: u64,
    first_fired_at: String,
    last_fired_at: String,
}

fn format(at: OffsetDateTime, format: &[FormatItem<'static>]) -> String {
    at.to_offset(time::UtcOffset::UTC)
        .format(format)
        .unwrap_or_default()
}

/// The `_unique_id` of a form. oslo's drivers use `uuid4().hex`, and oslo
/// listeners drop a message whose `_unique_id` they have just seen. Deriving
/// it from the event id makes a redelivered form look like the duplicate it
/// is; the legacy form's differs (a fixed mask) so that one listener on both
/// topics keeps both forms.
fn unique_id(n: &Notification, form: Versioning) -> String {
    const LEGACY_MASK: u128 = 0x6c65_6761_6379_0000_0000_0000_0000_0000;
    match form {
        Versioning::Versioned => n.event_id.simple().to_string(),
        Versioning::Unversioned => Uuid::from_u128(n.event_id.as_u128() ^ LEGACY_MASK)
            .simple()
            .to_string(),
    }
}

fn inner<P: Serialize>(
    n: &Notification,
    form: Versioning,
    publisher_id: &str,
    event_type: &'static str,
    priority: Priority,
    payload: P,
) -> String {
    let inner = Inner {
        message_id: n.event_id,
        publisher_id,
        event_type,
        priority: priority.as_str(),
        payload,
        timestamp: format(n.fired_at, OSLO_TIMESTAMP),
        unique_id: unique_id(n, form),
        context: Context::of(n),
    };
    // Plain data with string keys always serializes.
    serde_json::to_string(&inner).unwrap_or_default()
}

/// The inner message of `form` for `n`, as a JSON string. The versioned
/// form's `publisher_id` is `<service>:<host>`, the legacy form's
/// `<service>.<host>` (as Nova's `nova-compute:<host>` and
/// `compute.<host>`).
pub fn message(n: &Notification, form: Versioning, service: &str, priority: Priority) -> String {
    match form {
        Versioning::Versioned => {
            let publisher_id = format!("{service}:{}", n.host);
            let payload = NovaObject {
                name: PAYLOAD_NAME,
                namespace: PAYLOAD_NAMESPACE,
                version: PAYLOAD_VERSION,
                data: Data {
                    uuid: n.instance.uuid,
                    display_name: n.instance.name.as_deref(),
                    tenant_id: n.instance.project_id.as_deref(),
                    user_id: n.instance.user_id.as_deref(),
                    host: &n.host,
                    image_uuid: n.instance.image.as_ref().and_then(|i| i.uuid.as_deref()),
                    flavor: n.instance.flavor.as_ref().map(flavor::payload),
                    domain_name: &n.domain.name,
                    action: &n.action,
                    fired_at: format(n.fired_at, ISO_TIMESTAMP),
                    fired_at_bound: n.fired_at_bound.map(wd_notify::FiredAtBound::as_str),
                    recovered: n.recovered,
                    occurrences: n.occurrences.count,
                    first_fired_at: format(n.occurrences.first_at, ISO_TIMESTAMP),
                    last_fired_at: format(n.occurrences.last_at, ISO_TIMESTAMP),
                },
            };
            inner(n, form, &publisher_id, EVENT_TYPE, priority, payload)
        }
        Versioning::Unversioned => {
            let publisher_id = format!("{service}.{}", n.host);
            let payload = legacy::LegacyPayload::of(n, |at| format(at, ISO_TIMESTAMP));
            inner(n, form, &publisher_id, LEGACY_EVENT_TYPE, priority, payload)
        }
    }
}

/// Wraps an inner message in oslo's 2.0 envelope.
fn wrap(inner: &str) -> Vec<u8> {
    serde_json::to_vec(&Envelope {
        version: ENVELOPE_VERSION,
        message: inner,
    })
    .unwrap_or_default()
}

/// The body published for the versioned form of `n`: the oslo 2.0 envelope
/// around the inner message. `publisher_id` is `<service>:<host>`.
///
/// The bytes depend only on `n`, `service` and `priority`, so a retried
/// publish of the same notification is byte-identical. For that reason
/// `timestamp` is the firing time rather than the publish time.
pub fn envelope(n: &Notification, service: &str, priority: Priority) -> Vec<u8> {
    wrap(&message(n, Versioning::Versioned, service, priority))
}

/// The body published for the legacy form of `n` (`compute.instance.watchdog`,
/// flat payload): the oslo 2.0 envelope around the inner message.
/// `publisher_id` is `<service>.<host>`. Byte-identical across retries, as
/// [`envelope`].
pub fn legacy_envelope(n: &Notification, service: &str, priority: Priority) -> Vec<u8> {
    wrap(&message(n, Versioning::Unversioned, service, priority))
}

/// The body for `form`: enveloped (driver `messagingv2`) or bare (driver
/// `messaging`, oslo's 1.0 format).
pub(crate) fn body(
    n: &Notification,
    form: Versioning,
    service: &str,
    priority: Priority,
    envelope: bool,
) -> Vec<u8> {
    let inner = message(n, form, service, priority);
    if envelope {
        wrap(&inner)
    } else {
        inner.into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};
    use time::macros::datetime;
    use wd_notify::{Domain, Instance, Occurrences, SCHEMA_VERSION};

    use super::*;

    fn notification() -> Notification {
        Notification {
            version: SCHEMA_VERSION,
            event_id: Uuid::parse_str("6f1c9a34-2f0e-4b8e-9d43-0d5a3c1b7e21").unwrap(),
            instance: Instance {
                uuid: Uuid::parse_str("178b0921-8f85-4257-88b6-2e743b5a975c").unwrap(),
                name: Some("some-server".into()),
                project_id: Some("6f70656e737461636b20342065766572".into()),
                user_id: Some("fake".into()),
                flavor: None,
                image: None,
            },
            host: "compute".into(),
            domain: Domain {
                uuid: Uuid::parse_str("178b0921-8f85-4257-88b6-2e743b5a975c").unwrap(),
                name: "instance-00000001".into(),
                id: None,
            },
            action: "pause".into(),
            fired_at: datetime!(2026-11-25 21:14:19.1234567 +02:00),
            fired_at_bound: None,
            recovered: false,
            occurrences: Occurrences {
                count: 3,
                first_at: datetime!(2026-11-25 19:14:10 UTC),
                last_at: datetime!(2026-11-25 19:14:19.1234567 UTC),
            },
        }
    }

    #[test]
    fn envelope_wraps_the_inner_message_as_a_json_string() {
        let outer: Value =
            serde_json::from_slice(&envelope(&notification(), "wd", Priority::Info)).unwrap();
        let outer = outer.as_object().unwrap();
        assert_eq!(outer.len(), 2);
        assert_eq!(outer["oslo.version"], "2.0");
        let inner: Value = serde_json::from_str(outer["oslo.message"].as_str().unwrap()).unwrap();
        assert_eq!(
            inner,
            json!({
                "message_id": "6f1c9a34-2f0e-4b8e-9d43-0d5a3c1b7e21",
                "publisher_id": "wd:compute",
                "event_type": "instance.watchdog",
                "priority": "INFO",
                "payload": {
                    "nova_object.name": "InstanceWatchdogPayload",
                    "nova_object.namespace": "wd",
                    "nova_object.version": "1.1",
                    "nova_object.data": {
                        "uuid": "178b0921-8f85-4257-88b6-2e743b5a975c",
                        "display_name": "some-server",
                        "tenant_id": "6f70656e737461636b20342065766572",
                        "user_id": "fake",
                        "host": "compute",
                        "domain_name": "instance-00000001",
                        "action": "pause",
                        "fired_at": "2026-11-25T19:14:19.123456Z",
                        "recovered": false,
                        "occurrences": 3,
                        "first_fired_at": "2026-11-25T19:14:10.000000Z",
                        "last_fired_at": "2026-11-25T19:14:19.123456Z",
                    }
                },
                "timestamp": "2026-11-25 19:14:19.123456",
                "_unique_id": "6f1c9a342f0e4b8e9d430d5a3c1b7e21",
                "_context_user": "fake",
                "_context_project_id": "6f70656e737461636b20342065766572",
                "_context_system_scope": null,
                "_context_project": "6f70656e737461636b20342065766572",
                "_context_domain": null,
                "_context_user_domain": null,
                "_context_project_domain": null,
                "_context_is_admin": false,
                "_context_read_only": false,
                "_context_show_deleted": false,
                "_context_auth_token": null,
                "_context_request_id": "req-6f1c9a34-2f0e-4b8e-9d43-0d5a3c1b7e21",
                "_context_global_request_id": null,
                "_context_resource_uuid": null,
                "_context_roles": [],
                "_context_user_identity": "fake 6f70656e737461636b20342065766572 - - -",
                "_context_is_admin_project": true,
                "_context_user_id": "fake",
                "_context_read_deleted": "no",
                "_context_remote_address": null,
                "_context_timestamp": "2026-11-25T19:14:19.123456",
                "_context_quota_class": null,
                "_context_user_name": null,
                "_context_service_catalog": [],
                "_context_project_name": null,
            })
        );
    }

    #[test]
    fn the_legacy_form_is_flat_with_the_same_ids_and_context() {
        let n = notification();
        let outer: Value =
            serde_json::from_slice(&legacy_envelope(&n, "compute", Priority::Info)).unwrap();
        assert_eq!(outer["oslo.version"], "2.0");
        let inner: Value = serde_json::from_str(outer["oslo.message"].as_str().unwrap()).unwrap();
        let versioned: Value = serde_json::from_str(
            serde_json::from_slice::<Value>(&envelope(&n, "wd", Priority::Info)).unwrap()
                ["oslo.message"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(inner["message_id"], "6f1c9a34-2f0e-4b8e-9d43-0d5a3c1b7e21");
        assert_eq!(inner["publisher_id"], "compute.compute");
        assert_eq!(inner["event_type"], "compute.instance.watchdog");
        assert_eq!(inner["priority"], "INFO");
        assert_eq!(inner["timestamp"], versioned["timestamp"]);
        assert_eq!(
            inner["payload"],
            json!({
                "tenant_id": "6f70656e737461636b20342065766572",
                "user_id": "fake",
                "instance_id": "178b0921-8f85-4257-88b6-2e743b5a975c",
                "display_name": "some-server",
                "host": "compute",
                "state": "active",
                "power_state": "paused",
                "domain_name": "instance-00000001",
                "action": "pause",
                "event_id": "6f1c9a34-2f0e-4b8e-9d43-0d5a3c1b7e21",
                "fired_at": "2026-11-25T19:14:19.123456Z",
                "recovered": false,
                "occurrences": 3,
                "first_fired_at": "2026-11-25T19:14:10.000000Z",
                "last_fired_at": "2026-11-25T19:14:19.123456Z",
            })
        );
        // The same context as the versioned form; a different _unique_id,
        // so that one oslo listener on both topics keeps both.
        for (key, value) in versioned.as_object().unwrap() {
            if key.starts_with("_context_") {
                assert_eq!(&inner[key], value, "{key}");
            }
        }
        assert_ne!(inner["_unique_id"], versioned["_unique_id"]);
        assert_eq!(inner["_unique_id"].as_str().unwrap().len(), 32);
        assert_eq!(
            legacy_envelope(&n, "compute", Priority::Info),
            legacy_envelope(&n, "compute", Priority::Info),
            "retries are byte-identical"
        );
        // oslo's 1.0 format (driver `messaging`) is the bare inner message.
        let bare: Value = serde_json::from_slice(&body(
            &n,
            Versioning::Unversioned,
            "compute",
            Priority::Info,
            false,
        ))
        .unwrap();
        assert_eq!(bare, inner);
    }

    #[test]
    fn states_follow_the_action_where_certain() {
        for (action, state, power) in [
            ("pause", Some("active"), Some("paused")),
            ("reset", Some("active"), Some("running")),
            ("none", Some("active"), Some("running")),
            ("inject-nmi", Some("active"), Some("running")),
            ("poweroff", Some("stopped"), Some("shutdown")),
            ("shutdown", None, None),
            ("debug", None, None),
            ("unknown-9", None, None),
        ] {
            assert_eq!(legacy::vm_state(action), state, "{action}");
            assert_eq!(legacy::power_state(action), power, "{action}");
            let mut n = notification();
            n.action = action.into();
            let inner: Value = serde_json::from_str(&message(
                &n,
                Versioning::Unversioned,
                "compute",
                Priority::Info,
            ))
            .unwrap();
            assert_eq!(inner["payload"].get("state").and_then(Value::as_str), state);
            assert_eq!(
                inner["payload"].get("power_state").and_then(Value::as_str),
                power
            );
        }
    }

    #[test]
    fn inner_keys_keep_olsos_order_and_bytes_are_stable() {
        let a = envelope(&notification(), "wd", Priority::Warn);
        assert_eq!(
            a,
            envelope(&notification(), "wd", Priority::Warn),
            "retries are byte-identical"
        );
        let outer: Value = serde_json::from_slice(&a).unwrap();
        let inner = outer["oslo.message"].as_str().unwrap();
        let order = [
            "message_id",
            "publisher_id",
            "event_type",
            "priority",
            "payload",
            "timestamp",
            "_unique_id",
        ];
        let positions: Vec<usize> = order
            .iter()
            .map(|k| inner.find(&format!("\"{k}\"")).unwrap())
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{inner}");
        assert!(inner.contains(r#""priority":"WARN""#));
    }

    #[test]
    fn the_versioned_form_has_novas_flavor_payload_and_image_uuid() {
        let mut n = notification();
        n.instance.flavor = Some(wd_notify::Flavor {
            name: Some("m1.small".into()),
            id: Some("2".into()),
            memory_mb: Some(2048),
            vcpus: Some(1),
            root_gb: Some(20),
            ephemeral_gb: None,
            swap_mb: Some(0),
        });
        n.instance.image = Some(wd_notify::Image {
            uuid: Some("c0ffee00-1234-4567-89ab-cdef01234567".into()),
            ..wd_notify::Image::default()
        });
        let outer: Value = serde_json::from_slice(&envelope(&n, "wd", Priority::Info)).unwrap();
        let inner: Value = serde_json::from_str(outer["oslo.message"].as_str().unwrap()).unwrap();
        let data = &inner["payload"]["nova_object.data"];
        assert_eq!(data["image_uuid"], "c0ffee00-1234-4567-89ab-cdef01234567");
        // An unknown size is unset, not null.
        assert_eq!(
            data["flavor"],
            json!({
                "nova_object.name": "FlavorPayload",
                "nova_object.namespace": "nova",
                "nova_object.version": "1.4",
                "nova_object.data": {
                    "flavorid": "2",
                    "name": "m1.small",
                    "memory_mb": 2048,
                    "vcpus": 1,
                    "root_gb": 20,
                    "swap": 0,
                }
            })
        );
        // Unknown: both left out (the 1.0 fields unchanged).
        let outer: Value =
            serde_json::from_slice(&envelope(&notification(), "wd", Priority::Info)).unwrap();
        let inner: Value = serde_json::from_str(outer["oslo.message"].as_str().unwrap()).unwrap();
        let data = inner["payload"]["nova_object.data"].as_object().unwrap();
        assert!(!data.contains_key("flavor") && !data.contains_key("image_uuid"));
    }

    #[test]
    fn unknown_owner_is_null() {
        let mut n = notification();
        n.instance.project_id = None;
        n.instance.user_id = None;
        n.instance.name = None;
        let outer: Value = serde_json::from_slice(&envelope(&n, "wd", Priority::Info)).unwrap();
        let inner: Value = serde_json::from_str(outer["oslo.message"].as_str().unwrap()).unwrap();
        let data = &inner["payload"]["nova_object.data"];
        for key in ["tenant_id", "user_id", "display_name"] {
            assert_eq!(data[key], Value::Null, "{key}");
        }
        assert_eq!(inner["_context_project_id"], Value::Null);
        assert_eq!(inner["_context_user_identity"], "- - - - -");
    }

    #[test]
    fn priorities() {
        let cases = [
            ("info", Ok(Priority::Info)),
            ("INFO", Ok(Priority::Info)),
            ("warning", Ok(Priority::Warn)),
            ("Warn", Ok(Priority::Warn)),
            ("sample", Ok(Priority::Sample)),
            ("critical", Ok(Priority::Critical)),
            ("loud", Err("unknown notification priority `loud`; allowed: audit, debug, info, warn, error, critical, sample".to_owned())),
        ];
        for (input, expected) in cases {
            let got = input.parse::<Priority>().map_err(|e| e.to_string());
            assert_eq!(got, expected, "{input}");
            if let Ok(p) = got {
                assert_eq!(p.to_string().parse::<Priority>().unwrap(), p, "round-trips");
            }
        }
    }
}
