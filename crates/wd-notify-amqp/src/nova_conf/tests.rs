//! Tests of the nova.conf reader: a realistic file, defaults, and broken files.

use super::*;
use crate::config::{Quorum, Versioning};

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
    assert_eq!(bus.format, NotificationFormat::Unversioned);
    assert_eq!(bus.exchange, "nova");
    assert!(!bus.durable);
    assert!(bus.envelope);
    assert_eq!(bus.legacy_topics, ["notifications", "searchlight_indexer"]);
    let routes: Vec<(Versioning, String)> = bus
        .routes()
        .into_iter()
        .map(|r| (r.form, r.routing_key))
        .collect();
    assert_eq!(
        routes,
        [
            (Versioning::Unversioned, "notifications.info".to_owned()),
            (
                Versioning::Unversioned,
                "searchlight_indexer.info".to_owned()
            ),
        ]
    );
    assert!(bus.url.tls(), "[oslo_messaging_rabbit] ssl = true");
    assert_eq!(bus.url.nodes().len(), 3);
    assert_eq!(
        bus.url.node_uri(2).unwrap(),
        "amqps://nova:s3cr%23t@10.0.0.3:5672/%2F"
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
    // Nova's default when notification_format is absent.
    assert_eq!(bus.format, NotificationFormat::Unversioned);
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

/// A compute node's nova.conf as kolla-ansible (2024.1 and later) renders
/// it: quorum queues and the other new oslo.messaging options, the vhost `/`
/// written `//`, and no `notification_format`.
const KOLLA: &str = r#"
[DEFAULT]
debug = False
log_dir = /var/log/kolla/nova
state_path = /var/lib/nova
host = compute01
transport_url = rabbit://openstack:Zx9$$kP@192.0.2.11:5672,openstack:Zx9$$kP@192.0.2.12:5672,openstack:Zx9$$kP@192.0.2.13:5672//

[oslo_messaging_notifications]
transport_url = rabbit://openstack:Zx9$$kP@192.0.2.11:5672,openstack:Zx9$$kP@192.0.2.12:5672,openstack:Zx9$$kP@192.0.2.13:5672//
driver = messagingv2
topics = notifications

[oslo_messaging_rabbit]
heartbeat_in_pthread = false
rabbit_quorum_queue = true
rabbit_transient_quorum_queue = true
rabbit_stream_fanout = true
rabbit_qos_prefetch_count = 1
use_queue_manager = true
"#;

#[test]
fn kolla_ansible() {
    let conf = NovaConf::parse("/etc/nova/nova.conf", KOLLA).unwrap();
    let bus = conf.bus.expect("a bus");
    assert_eq!(
        bus.format,
        NotificationFormat::Unversioned,
        "Nova's default"
    );
    assert_eq!(
        bus.routes().len(),
        1,
        "no versioned route: {:?}",
        bus.routes()
    );
    assert_eq!(bus.routes()[0].routing_key, "notifications.info");
    assert!(
        bus.durable,
        "quorum queues make oslo declare everything durable"
    );
    assert!(!bus.auto_delete);
    assert_eq!(bus.quorum, Some(Quorum::default()));
    assert_eq!(bus.url.vhost().as_deref(), Some("/"));
    assert!(!bus.url.tls());
    assert_eq!(
        bus.url.node_uri(1).unwrap(),
        "amqp://openstack:Zx9$kP@192.0.2.12:5672/%2F",
        "`$$` is oslo.config's literal `$`"
    );
    assert_eq!(bus.heartbeat, Some(60));
    assert_eq!(bus.reconnect_min, std::time::Duration::from_secs(1));
    assert_eq!(bus.reconnect_max, std::time::Duration::from_secs(30));
    assert!(conf.unhonoured.is_empty(), "{:?}", conf.unhonoured);
}

/// OpenStack-Ansible writes TLS and other options into the URL's query, and
/// the vhost `/nova` as `//nova`.
#[test]
fn openstack_ansible() {
    let text = "[DEFAULT]\nhost = c2\n\
        [oslo_messaging_notifications]\ndriver = messagingv2\n\
        transport_url = rabbit://nova:pw@172.29.236.101:5671,nova:pw@172.29.236.102:5671//nova?ssl=1&ssl_version=TLSv1_2&ssl_ca_file=/etc/openstack/ca.pem&amqp_durable_queues=true\n\
        [oslo_messaging_rabbit]\nssl = false\namqp_durable_queues = false\nrabbit_quorum_queue = false\n\
        ssl_cert_file = /etc/nova/client.pem\nssl_key_file = /etc/nova/client.key\n";
    let conf = NovaConf::parse("nova.conf", text).unwrap();
    let bus = conf.bus.unwrap();
    assert!(
        bus.url.tls(),
        "the query's ssl=1 overrides the file's ssl = false"
    );
    assert!(bus.durable, "the query overrides amqp_durable_queues");
    assert_eq!(bus.quorum, None);
    assert_eq!(bus.url.vhost().as_deref(), Some("/nova"));
    assert_eq!(
        bus.url.node_uri(0).unwrap(),
        "amqps://nova:pw@172.29.236.101:5671/%2Fnova"
    );
    assert_eq!(
        bus.tls.ca_file.as_deref(),
        Some(Path::new("/etc/openstack/ca.pem"))
    );
    assert_eq!(
        bus.tls.cert_file.as_deref(),
        Some(Path::new("/etc/nova/client.pem"))
    );
    assert_eq!(
        bus.tls.key_file.as_deref(),
        Some(Path::new("/etc/nova/client.key"))
    );
    assert_eq!(bus.tls.version, Some(crate::TlsVersion::Tls12));

    // And the other way: the query turns TLS off that the file turns on.
    let text = "[oslo_messaging_notifications]\ndriver = messagingv2\n\
        transport_url = rabbit://h/?ssl=0\n[oslo_messaging_rabbit]\nssl = true\n";
    assert!(
        !NovaConf::parse("nova.conf", text)
            .unwrap()
            .bus
            .unwrap()
            .url
            .tls()
    );
}

#[test]
fn declarations_follow_oslo() {
    let bus = |rabbit: &str| {
        let text = format!(
            "[oslo_messaging_notifications]\ndriver = messagingv2\ntransport_url = rabbit://h/\n[oslo_messaging_rabbit]\n{rabbit}"
        );
        NovaConf::parse("nova.conf", &text).map(|c| c.bus.unwrap())
    };
    let b = bus("").unwrap();
    assert!(!b.durable && !b.auto_delete && !b.ha_queues && b.quorum.is_none());
    let b = bus("amqp_durable_queues = true\namqp_auto_delete = yes\n").unwrap();
    assert!(b.durable && b.auto_delete);
    let b = bus("rabbit_ha_queues = true\n").unwrap();
    assert!(b.ha_queues && !b.durable);
    let b = bus(
        "rabbit_quorum_queue = true\namqp_durable_queues = false\nrabbit_quorum_delivery_limit = 5\n\
         rabbit_quorum_max_memory_length = 100\nrabbit_quorum_max_memory_bytes = 1048576\n",
    )
    .unwrap();
    assert!(
        b.durable,
        "oslo ignores amqp_durable_queues with quorum queues"
    );
    let q = b.quorum.unwrap();
    assert_eq!(
        (q.delivery_limit, q.max_memory_length, q.max_memory_bytes),
        (5, 100, 1_048_576)
    );
    let b = bus(
        "rabbit_retry_interval = 2\nrabbit_interval_max = 10\nheartbeat_timeout_threshold = 0\n",
    )
    .unwrap();
    assert_eq!(b.reconnect_min, std::time::Duration::from_secs(2));
    assert_eq!(b.reconnect_max, std::time::Duration::from_secs(10));
    assert_eq!(b.heartbeat, Some(0));
    let e = bus("rabbit_quorum_queue = true\nrabbit_ha_queues = true\n").unwrap_err();
    assert!(
        e.to_string().contains(
            "[oslo_messaging_rabbit] rabbit_quorum_queue: queue settings: quorum queues and HA"
        ),
        "{e}"
    );
    let e = bus("rabbit_quorum_delivery_limit = -1\nrabbit_quorum_queue = 1\n").unwrap_err();
    assert!(
        e.to_string()
            .contains("rabbit_quorum_delivery_limit: `-1` is not a whole number"),
        "{e}"
    );
}

#[test]
fn unhonoured_options_are_named_and_noise_is_not() {
    let text = "[oslo_messaging_notifications]\ndriver = messagingv2\nretry = 3\n\
        transport_url = rabbit://h/?kombu_failover_strategy=shuffle\n\
        [oslo_messaging_rabbit]\nkombu_compression = gzip\nrabbit_login_method = AMQPLAIN\n\
        kombu_reconnect_delay = 1\nheartbeat_rate = 2\nrabbit_qos_prefetch_count = 10\n";
    let conf = NovaConf::parse("nova.conf", text).unwrap();
    let names: Vec<&str> = conf.unhonoured.iter().map(|u| u.option.as_str()).collect();
    assert_eq!(
        names,
        [
            "[oslo_messaging_rabbit] kombu_compression",
            "[oslo_messaging_notifications] transport_url ?kombu_failover_strategy",
            "[oslo_messaging_rabbit] heartbeat_rate",
            "[oslo_messaging_notifications] retry",
        ]
    );
    assert!(
        conf.unhonoured[3].why.contains("drops it"),
        "{:?}",
        conf.unhonoured[3]
    );

    // A query key oslo does not know is an error there, and here.
    let e = NovaConf::parse(
        "nova.conf",
        "[oslo_messaging_notifications]\ndriver = messagingv2\ntransport_url = rabbit://u:hunter2@h/?sll=1\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("transport_url: query option `sll` is not an option of [oslo_messaging_rabbit]"),
        "{e}"
    );
    assert!(!e.contains("hunter2"));
}

#[test]
fn interpolation() {
    let text = "[DEFAULT]\nmy_ip = 10.1.2.3\ntransport_url = rabbit://nova:p$$ss@${my_ip}:5672/\n\
        [oslo_messaging_notifications]\ndriver = messagingv2\n[oslo_messaging_rabbit]\nssl = true\n\
        ca_dir = /etc/ca\nssl_ca_file = $ca_dir/ca.pem\n";
    let bus = NovaConf::parse("nova.conf", text).unwrap().bus.unwrap();
    assert_eq!(
        bus.url.node_uri(0).unwrap(),
        "amqps://nova:p$ss@10.1.2.3:5672/%2F"
    );
    assert_eq!(
        bus.tls.ca_file.as_deref(),
        Some(Path::new("/etc/ca/ca.pem"))
    );
    let e = NovaConf::parse(
        "nova.conf",
        "[DEFAULT]\ntransport_url = rabbit://nova:pa$secret@h/\n[oslo_messaging_notifications]\ndriver = messagingv2\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("[DEFAULT] transport_url: a `$` starts a reference"),
        "{e}"
    );
    assert!(!e.contains("secret"), "{e}");
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
