//! Tests of the nova.conf reader: a realistic file, defaults, and broken files.

use super::*;
use crate::config::Form;

/// A compute node's nova.conf as deployment tools write it: many sections,
/// comments of both kinds, a three-node transport URL with a password that
/// needs percent-encoding, and settings wd does not read.
const REALISTIC: &str = r#"
# nova.conf written by the deployment tool. Do not edit.
[DEFAULT]
# The compute host name Nova registers with.
host = compute-7.example.org
my_ip = 10.0.0.17
state_path = /var/lib/nova
transport_url = rabbit://nova:s3cr%23t@10.0.0.1:5672,nova:s3cr%23t@10.0.0.2:5672,nova:s3cr%23t@10.0.0.3:5672/
compute_driver = libvirt.LibvirtDriver
; semicolon comments are comments too
log_dir = /var/log/nova

[api_database]
connection = mysql+pymysql://nova:dbpass@10.0.0.5/nova_api

[libvirt]
virt_type = kvm
cpu_mode = host-model

[notifications]
notify_on_state_change = vm_and_task_state
notification_format = unversioned

[oslo_messaging_notifications]
driver = messagingv2
topics = notifications,
   searchlight_indexer

[oslo_messaging_rabbit]
amqp_durable_queues = false
ssl = true

[keystone_authtoken]
password = "not-this-one"
"#;

#[test]
fn a_realistic_nova_conf() {
    let conf = NovaConf::parse("/etc/nova/nova.conf", REALISTIC).unwrap();
    assert_eq!(conf.drivers, [Driver::MessagingV2]);
    assert_eq!(conf.host.as_deref(), Some("compute-7.example.org"));
    assert!(!conf.logs());
    let bus = conf.bus.expect("a bus");
    assert_eq!(bus.format, Format::Unversioned);
    assert_eq!(bus.exchange, "nova");
    assert!(!bus.durable);
    assert!(bus.envelope);
    assert_eq!(bus.legacy_topics, ["notifications", "searchlight_indexer"]);
    let routes: Vec<(Form, String)> = bus
        .routes()
        .into_iter()
        .map(|r| (r.form, r.routing_key))
        .collect();
    assert_eq!(
        routes,
        [
            (Form::Unversioned, "notifications.info".to_owned()),
            (Form::Unversioned, "searchlight_indexer.info".to_owned()),
        ]
    );
    assert!(bus.url.tls(), "[oslo_messaging_rabbit] ssl = true");
    assert_eq!(bus.url.nodes().len(), 3);
    assert_eq!(
        bus.url.node_uri(2).unwrap(),
        "amqps://nova:s3cr%23t@10.0.0.3:5672/%2f"
    );
    assert!(!format!("{:?}", bus).contains("s3cr"));
}

#[test]
fn defaults_and_fallbacks() {
    // The notification section's own transport_url wins over [DEFAULT]'s.
    let conf = NovaConf::parse(
        "nova.conf",
        "[DEFAULT]\ntransport_url = rabbit://rpc@h1/\ncontrol_exchange = openstack\n\
         [oslo_messaging_notifications]\ndriver = messaging\ntransport_url = rabbit://n:p@h2:5673/notify\n",
    )
    .unwrap();
    let bus = conf.bus.unwrap();
    assert_eq!(bus.url.node_uri(0).unwrap(), "amqp://n:p@h2:5673/notify");
    assert_eq!(bus.format, Format::Both);
    assert_eq!(bus.topics, ["versioned_notifications"]);
    assert_eq!(bus.legacy_topics, ["notifications"]);
    assert_eq!(bus.exchange, "openstack");
    assert!(!bus.envelope, "driver messaging is oslo's 1.0 format");
    assert_eq!(conf.host, None);

    // A repeated multi-valued driver key keeps every value.
    let conf = NovaConf::parse(
        "nova.conf",
        "[oslo_messaging_notifications]\ndriver = log\ndriver = messagingv2\n[DEFAULT]\ntransport_url = rabbit://h/\n",
    )
    .unwrap();
    assert_eq!(conf.drivers, [Driver::Log, Driver::MessagingV2]);
    assert!(conf.logs());
    assert!(conf.bus.is_some());

    // No driver, or noop: Nova sends nothing, and no broker is needed.
    for text in [
        "[DEFAULT]\nhost = c1\n",
        "[oslo_messaging_notifications]\ndriver = noop\n",
    ] {
        let conf = NovaConf::parse("nova.conf", text).unwrap();
        assert!(conf.bus.is_none(), "{text}");
    }
}

/// Each broken file fails with an error naming the file, section and key.
#[test]
fn broken_nova_confs_name_the_key() {
    let base = "[DEFAULT]\ntransport_url = rabbit://nova:hunter2@h1:5672,nova:hunter2@h2:5672/\n";
    let cases: &[(&str, &str)] = &[
        (
            "[oslo_messaging_notifications]\ndriver = messagingv2\n[DEFAULT]\ntransport_url =\n",
            "/etc/nova/nova.conf [DEFAULT] transport_url: is not set, nor [oslo_messaging_notifications] transport_url",
        ),
        (
            "[oslo_messaging_notifications]\ndriver = kafka\n",
            "/etc/nova/nova.conf [oslo_messaging_notifications] driver: driver `kafka` is not supported; allowed: messagingv2, messaging, log, noop",
        ),
        (
            "[oslo_messaging_notifications]\ndriver = messaging\ndriver = messagingv2\n",
            "/etc/nova/nova.conf [oslo_messaging_notifications] driver: both `messaging` and `messagingv2`",
        ),
        (
            "[DEFAULT]\ntransport_url = amqp://nova:hunter2@h1/\n[oslo_messaging_notifications]\ndriver = messagingv2\n",
            "/etc/nova/nova.conf [DEFAULT] transport_url: `amqp://***@h1/`: oslo's amqp:// is its AMQP 1.0 driver",
        ),
        (
            "[oslo_messaging_notifications]\ndriver = messagingv2\ntransport_url = rabbit://nova:hunter2@h1:notaport/\n",
            "/etc/nova/nova.conf [oslo_messaging_notifications] transport_url: `rabbit://***@h1:notaport/`: node 1 (`h1:notaport`) is not host[:port]",
        ),
        (
            "[oslo_messaging_notifications]\ndriver = messagingv2\n[notifications]\nnotification_format = all\n",
            "/etc/nova/nova.conf [notifications] notification_format: unknown notification format `all`; allowed: unversioned, versioned, both",
        ),
        (
            "[oslo_messaging_notifications]\ndriver = messagingv2\ntopics = ,\n",
            "/etc/nova/nova.conf [oslo_messaging_notifications] topics: is empty",
        ),
        (
            "[oslo_messaging_notifications]\ndriver = messagingv2\ntopics = bad topic\n",
            "/etc/nova/nova.conf [oslo_messaging_notifications] topics: legacy topic `bad topic` is not valid",
        ),
        (
            "[oslo_messaging_notifications]\ndriver = messagingv2\n[oslo_messaging_rabbit]\nssl = maybe\n",
            "/etc/nova/nova.conf [oslo_messaging_rabbit] ssl: `maybe` is not a boolean",
        ),
        (
            "[oslo_messaging_notifications]\ndriver = messagingv2\n[oslo_messaging_rabbit]\namqp_durable_queues = sometimes\n",
            "/etc/nova/nova.conf [oslo_messaging_rabbit] amqp_durable_queues: `sometimes` is not a boolean",
        ),
        (
            "[DEFAULT]\nhost =\n",
            "/etc/nova/nova.conf [DEFAULT] host: is empty",
        ),
        (
            "[oslo_messaging_notifications]\ndriver = messagingv2\n[DEFAULT]\ncontrol_exchange = a/b\n",
            "/etc/nova/nova.conf [DEFAULT] control_exchange: exchange `a/b` is not valid",
        ),
        (
            "[DEFAULT\nhost = x\n",
            "cannot read nova config `/etc/nova/nova.conf`: not INI at line",
        ),
    ];
    for (extra, expected) in cases {
        let text = format!("{base}{extra}");
        let e = NovaConf::parse("/etc/nova/nova.conf", &text)
            .map(|c| format!("no error: {c:?}"))
            .unwrap_or_else(|e| e.to_string());
        assert!(
            e.starts_with(expected),
            "{extra}\ngot:      {e}\nexpected: {expected}"
        );
        assert!(!e.contains("hunter2"), "{e}");
    }
}

#[test]
fn an_unreadable_file_names_it() {
    let e = NovaConf::load(Path::new("/nonexistent/nova.conf")).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("cannot read nova config `/nonexistent/nova.conf`: "),
        "{e}"
    );
}
