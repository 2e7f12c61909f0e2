//! Nova's own code as the oracle for what wd puts in the oslo context:
//! `nova.context.RequestContext.from_dict` (from `target/wd-venv-nova`)
//! parses the `_context_*` keys of both forms, timestamp included; and
//! Nova's `FlavorPayload` takes the versioned payload's `flavor`.

use std::io::Write as _;
use std::process::{Command, Stdio};

use serde_json::Value;
use wd_notify_amqp::{AmqpConfig, AmqpNotifier, AmqpUrl, Versioning};

use super::support::{notification, unwrap_envelope};

#[test]
fn nova_request_context_from_dict_accepts_both_forms() {
    let Some(python) = wd_testkit::openstack::nova_python() else {
        return;
    };
    let notifier = AmqpNotifier::new(AmqpConfig::new(AmqpUrl::new("amqp://h").unwrap())).unwrap();
    let mut n = notification(Some("6f70656e737461636b"));
    // The documented flavor: m1.small, id 2, 2048 MiB, 1 vCPU, 20 GiB root.
    n.instance.flavor = wd_notify::testing::documented().instance.flavor;
    let messages: Vec<Value> = [Versioning::Versioned, Versioning::Unversioned]
        .into_iter()
        .map(|f| unwrap_envelope(&notifier.body(&n, f)))
        .collect();
    let script = wd_testkit::workspace_root().join("tests/fixtures/openstack/nova_context.py");
    let mut child = Command::new(python)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    {
        let mut stdin = child.stdin.take().unwrap();
        for m in &messages {
            writeln!(stdin, "{m}").unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let parsed: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(parsed.len(), 2, "{parsed:?}");
    let fired = n
        .fired_at
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    for (form, ctx) in ["versioned", "legacy"].iter().zip(&parsed) {
        assert!(
            ctx.get("error").is_none(),
            "{form}: Nova refused the context: {ctx}"
        );
        assert_eq!(ctx["project_id"], "6f70656e737461636b", "{form}");
        assert_eq!(ctx["user_id"], "fake-user", "{form}");
        assert_eq!(ctx["request_id"], format!("req-{}", n.event_id), "{form}");
        assert_eq!(ctx["read_deleted"], "no", "{form}");
        assert_eq!(ctx["is_admin"], false, "{form}");
        if *form == "versioned" {
            assert!(ctx.get("flavor_error").is_none(), "{ctx}");
            assert_eq!(
                ctx["flavor"],
                serde_json::json!({"flavorid": "2", "name": "m1.small", "memory_mb": 2048,
                    "vcpus": 1, "root_gb": 20, "ephemeral_gb": 0, "swap": 0}),
                "Nova's FlavorPayload fields: {ctx}"
            );
        } else {
            assert!(
                ctx.get("flavor").is_none(),
                "the legacy form is flat: {ctx}"
            );
        }
        // Nova's naive UTC timestamp is the firing time.
        let ts = ctx["timestamp"].as_str().unwrap();
        assert_eq!(&ts[..19], &fired[..19], "{form}: {ts} vs {fired}");
    }
}
