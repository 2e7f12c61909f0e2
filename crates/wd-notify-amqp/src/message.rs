//! The oslo.messaging 2.0 envelope and the versioned notification inside it.
//!
//! oslo.messaging's `serialize_msg` wraps the notification dict as
//! `{"oslo.version": "2.0", "oslo.message": json.dumps(msg)}`: the inner
//! message is a JSON *string*, not an object. The inner message has the keys
//! `Notifier._notify` builds (`message_id`, `publisher_id`, `event_type`,
//! `priority`, `payload`, `timestamp`) plus the `_unique_id` the AMQP driver
//! adds for duplicate detection. The payload follows Nova's versioned
//! notification form (`nova_object.name`, `.namespace`, `.version`, `.data`).

use std::fmt;
use std::str::FromStr;

use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::FormatItem;
use time::macros::format_description;
use uuid::Uuid;
use wd_notify::Notification;

use crate::error::Error;

/// The `event_type` of every notification this crate publishes.
pub const EVENT_TYPE: &str = "instance.watchdog";
/// The envelope version oslo.messaging writes and accepts (`2.0`).
pub const ENVELOPE_VERSION: &str = "2.0";
/// `nova_object.name` of the payload.
pub const PAYLOAD_NAME: &str = "InstanceWatchdogPayload";
/// `nova_object.namespace` of the payload: ours, not Nova's.
pub const PAYLOAD_NAMESPACE: &str = "wd";
/// `nova_object.version` of the payload. The minor number grows when fields
/// are added; the major when a field changes meaning or is removed.
pub const PAYLOAD_VERSION: &str = "1.0";

/// oslo's `str(datetime)` form, always with microseconds.
const OSLO_TIMESTAMP: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day] [hour]:[minute]:[second].[subsecond digits:6]");
/// oslo.versionedobjects' ISO 8601 form, with microseconds and `Z`.
const ISO_TIMESTAMP: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");

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
struct Inner<'a> {
    message_id: Uuid,
    publisher_id: &'a str,
    event_type: &'static str,
    priority: &'static str,
    payload: Payload<'a>,
    timestamp: String,
    #[serde(rename = "_unique_id")]
    unique_id: String,
}

#[derive(Serialize)]
struct Payload<'a> {
    #[serde(rename = "nova_object.name")]
    name: &'static str,
    #[serde(rename = "nova_object.namespace")]
    namespace: &'static str,
    #[serde(rename = "nova_object.version")]
    version: &'static str,
    #[serde(rename = "nova_object.data")]
    data: Data<'a>,
}

/// `nova_object.data`. Field names follow Nova's `InstancePayload` where one
/// exists (`uuid`, `display_name`, `tenant_id`, `user_id`, `host`).
#[derive(Serialize)]
struct Data<'a> {
    uuid: Uuid,
    display_name: Option<&'a str>,
    tenant_id: Option<&'a str>,
    user_id: Option<&'a str>,
    host: &'a str,
    domain_name: &'a str,
    action: &'a str,
    fired_at: String,
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

/// The body published for `n`: the oslo 2.0 envelope around the inner
/// message. `publisher_id` is `<service>:<host>`.
///
/// The bytes depend only on `n`, `service` and `priority`, so a retried
/// publish of the same notification is byte-identical. For that reason
/// `timestamp` is the firing time rather than the publish time.
pub fn envelope(n: &Notification, service: &str, priority: Priority) -> Vec<u8> {
    let publisher_id = format!("{service}:{}", n.host);
    let inner = Inner {
        message_id: n.event_id,
        publisher_id: &publisher_id,
        event_type: EVENT_TYPE,
        priority: priority.as_str(),
        payload: Payload {
            name: PAYLOAD_NAME,
            namespace: PAYLOAD_NAMESPACE,
            version: PAYLOAD_VERSION,
            data: Data {
                uuid: n.instance.uuid,
                display_name: n.instance.name.as_deref(),
                tenant_id: n.instance.project_id.as_deref(),
                user_id: n.instance.user_id.as_deref(),
                host: &n.host,
                domain_name: &n.domain.name,
                action: &n.action,
                fired_at: format(n.fired_at, ISO_TIMESTAMP),
                recovered: n.recovered,
                occurrences: n.occurrences.count,
                first_fired_at: format(n.occurrences.first_at, ISO_TIMESTAMP),
                last_fired_at: format(n.occurrences.last_at, ISO_TIMESTAMP),
            },
        },
        timestamp: format(n.fired_at, OSLO_TIMESTAMP),
        // oslo's drivers use `uuid4().hex`; reusing the event id makes a
        // redelivered event look like the duplicate it is to oslo listeners.
        unique_id: n.event_id.simple().to_string(),
    };
    // Plain data with string keys always serializes.
    let inner = serde_json::to_string(&inner).unwrap_or_default();
    serde_json::to_vec(&Envelope {
        version: ENVELOPE_VERSION,
        message: &inner,
    })
    .unwrap_or_default()
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
            },
            host: "compute".into(),
            domain: Domain {
                uuid: Uuid::parse_str("178b0921-8f85-4257-88b6-2e743b5a975c").unwrap(),
                name: "instance-00000001".into(),
                id: None,
            },
            action: "pause".into(),
            fired_at: datetime!(2026-11-25 21:14:19.1234567 +02:00),
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
                    "nova_object.version": "1.0",
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
            })
        );
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
