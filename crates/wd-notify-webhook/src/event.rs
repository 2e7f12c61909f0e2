//! The CloudEvents 1.0 body, in structured mode.

use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;
use wd_notify::Notification;

use crate::error::{Error, Result};

/// The CloudEvents `type` of every event this crate sends.
pub const EVENT_TYPE: &str = "io.wd.compute.instance.watchdog";
/// The `Content-Type` of the request: a structured-mode CloudEvent in JSON.
pub const CONTENT_TYPE: &str = "application/cloudevents+json";
/// The CloudEvents `specversion`.
pub const SPEC_VERSION: &str = "1.0";

/// The structured-mode event. Field order is fixed, so the body (and hence
/// its signature) is the same for the same notification and attempt.
#[derive(Serialize)]
struct CloudEvent<'a> {
    specversion: &'static str,
    id: Uuid,
    source: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    subject: String,
    #[serde(with = "time::serde::rfc3339")]
    time: OffsetDateTime,
    datacontenttype: &'static str,
    data: &'a Notification,
}

/// Checks a service name for use in the `source` URN.
pub(crate) fn check_service(service: &str) -> Result<()> {
    let ok = !service.is_empty()
        && service.len() <= 64
        && service
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidService {
            service: service.to_owned(),
        })
    }
}

/// The CloudEvents `source` for events from `host`: `urn:wd:<host>:<service>`.
///
/// A URN is an absolute URI, so it is a valid CloudEvents URI-reference. Any
/// byte of the host name outside `A-Z a-z 0-9 - . _` is percent-encoded, so a
/// strange host name cannot break the URN's structure.
pub fn source(host: &str, service: &str) -> String {
    let mut out = String::from("urn:wd:");
    for b in host.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out.push(':');
    out.push_str(service);
    out
}

/// The request body for `n`: a CloudEvent whose `data` is the notification's
/// JSON form.
pub fn body(n: &Notification, service: &str) -> Vec<u8> {
    let source = source(&n.host, service);
    let event = CloudEvent {
        specversion: SPEC_VERSION,
        id: n.event_id,
        source: &source,
        kind: EVENT_TYPE,
        subject: n.instance.uuid.to_string(),
        time: n.fired_at,
        datacontenttype: "application/json",
        data: n,
    };
    // Plain data with string keys always serializes.
    serde_json::to_vec(&event).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    #[test]
    fn sources() {
        let cases = [
            ("compute-1", "wd", "urn:wd:compute-1:wd"),
            (
                "cn1.example.org",
                "wdguard",
                "urn:wd:cn1.example.org:wdguard",
            ),
            ("odd host:1/é", "wd", "urn:wd:odd%20host%3A1%2F%C3%A9:wd"),
        ];
        for (host, service, expected) in cases {
            assert_eq!(source(host, service), expected);
        }
    }

    #[test]
    fn service_names() {
        for (service, ok) in [
            ("wd", true),
            ("wd-compute_2.x", true),
            ("", false),
            ("a:b", false),
            ("a b", false),
        ] {
            assert_eq!(check_service(service).is_ok(), ok, "{service}");
        }
    }

    #[test]
    fn body_is_a_structured_cloud_event() {
        let n = wd_notify::testing::documented();
        let body: Value = serde_json::from_slice(&body(&n, "wd")).unwrap();
        let data: Value = serde_json::from_str(&n.to_json()).unwrap();
        assert_eq!(
            body,
            json!({
                "specversion": "1.0",
                "id": "0b6c2d3e-8f41-4c55-9a7e-1f2d3c4b5a69",
                "source": "urn:wd:compute-1:wd",
                "type": "io.wd.compute.instance.watchdog",
                "subject": "178b0921-8f85-4257-88b6-2e743b5a975c",
                "time": "2026-11-25T19:14:19.482913Z",
                "datacontenttype": "application/json",
                "data": data,
            })
        );
        assert_eq!(
            body["data"]["instance"]["project_id"],
            "6f70656e737461636b20342065766572"
        );
        assert_eq!(body["data"]["action"], "pause");
    }
}
