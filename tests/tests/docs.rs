//! The wire-format examples in `docs/notifications.md` are what the
//! transports send: the webhook example verifies with the documented keys,
//! and the message-bus examples are byte for byte the envelopes of the
//! documented notification. They live here, beside the docs they read,
//! because a packaged transport crate cannot reach the workspace's docs.

// wd-notify-amqp's RabbitMQ test support, for `unwrap_envelope`.
#[path = "../../crates/wd-notify-amqp/tests/support/mod.rs"]
mod support;

use std::time::Duration;

use axum::http::HeaderMap;
use serde_json::Value;
use wd_notify_webhook::{DEFAULT_TOLERANCE, Secret};

use support::unwrap_envelope;

/// The document whose examples these tests hold to the code.
const DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/notifications.md");

/// The body line and the indented inner message documented after `heading`.
fn documented(doc: &str, heading: &str) -> (String, Value) {
    let section = doc
        .split(heading)
        .nth(1)
        .unwrap_or_else(|| panic!("no `{heading}` in docs/notifications.md"));
    let body = section
        .lines()
        .find(|l| l.starts_with(r#"{"oslo.version":"2.0""#))
        .expect("a full envelope example")
        .to_owned();
    let indented = section
        .split("decoded and indented:\n\n```json\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("an indented inner message");
    (body, serde_json::from_str(indented).unwrap())
}

#[test]
fn documented_amqp_examples_match() {
    let doc = std::fs::read_to_string(DOC).unwrap();
    let n = wd_notify::testing::documented();
    if std::env::var_os("WD_PRINT_EXAMPLES").is_some() {
        for body in [
            wd_notify_amqp::envelope(&n, "wd", wd_notify_amqp::Priority::Info),
            wd_notify_amqp::legacy_envelope(&n, "compute", wd_notify_amqp::Priority::Info),
        ] {
            println!("{}", String::from_utf8(body.clone()).unwrap());
            println!(
                "{}",
                serde_json::to_string_pretty(&unwrap_envelope(&body)).unwrap()
            );
        }
    }
    let cases = [
        (
            "#### The versioned form",
            wd_notify_amqp::envelope(&n, "wd", wd_notify_amqp::Priority::Info),
        ),
        (
            "#### The legacy form",
            wd_notify_amqp::legacy_envelope(&n, "compute", wd_notify_amqp::Priority::Info),
        ),
    ];
    for (heading, ours) in cases {
        let (body, indented) = documented(&doc, heading);
        assert_eq!(body.as_bytes(), ours.as_slice(), "{heading}");
        assert_eq!(indented, unwrap_envelope(&ours), "{heading}");
    }
}

#[test]
fn documented_webhook_example_verifies() {
    let doc = std::fs::read_to_string(DOC).unwrap();
    let block = doc
        .split("```http\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("an http example");
    let (head, body) = block.split_once("\n\n").expect("headers, blank line, body");
    let mut headers = HeaderMap::new();
    for line in head.lines().skip(1) {
        let (name, value) = line.split_once(": ").unwrap();
        headers.insert(
            axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    assert_eq!(headers["content-type"], wd_notify_webhook::CONTENT_TYPE);
    let n = wd_notify::testing::documented();
    assert_eq!(
        body.as_bytes(),
        wd_notify_webhook::body(&n, "wd"),
        "the documented body is what we send"
    );
    assert!(doc.contains(&format!("({} bytes", body.len())));

    let at = std::time::UNIX_EPOCH + Duration::from_secs(1_795_634_060);
    let old = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
    let new = Secret::parse("whsec_6L2Yx8x6tqW3eYtqJ0s7dDcGnh2N1kqVAnRQXbzQ5wA=").unwrap();
    for key in [old, new] {
        let v =
            wd_notify_webhook::verify_at(&headers, body.as_bytes(), &[key], DEFAULT_TOLERANCE, at)
                .unwrap();
        assert_eq!(v.id, n.event_id.to_string());
    }
}
