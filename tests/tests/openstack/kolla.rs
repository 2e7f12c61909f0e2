//! kolla-ansible's nova.conf, unchanged, with a real guest: quorum queues,
//! the vhost after `//`, no `notification_format`. OpenStack's own
//! notification listener (Ceilometer's oslo.messaging listener, configured
//! by the same file, so it declares its quorum queue first) receives the
//! owner's legacy notification; no versioned queue is created.

use std::path::Path;
use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use wd_e2e::openstack::OsloListener;
use wd_testkit::guest::GuestSpec;
use wd_testkit::{Node, Vhost};

use super::{SERIAL, agent, guest_services, owner};
use wd_e2e::scratch::Scratch;
use wd_e2e::virsh::Guest;

/// nova.conf as kolla-ansible renders it for a compute host (the options it
/// sets with quorum queues included; the vhost is the test's own, written
/// after `//` as kolla writes its `/`).
fn kolla_nova_conf(dir: &Path, host: &str, transport_url: &str) -> std::path::PathBuf {
    let text = format!(
        "[DEFAULT]\ndebug = False\nstate_path = /var/lib/nova\n\
         host = {host}\ntransport_url = {transport_url}\n\n\
         [libvirt]\nconnection_uri = qemu:///system\nvirt_type = qemu\n\n\
         [oslo_messaging_notifications]\ntransport_url = {transport_url}\ndriver = messagingv2\n\
         topics = notifications\n\n\
         [oslo_messaging_rabbit]\nheartbeat_in_pthread = false\nrabbit_quorum_queue = true\n\
         rabbit_transient_quorum_queue = true\nrabbit_stream_fanout = true\n\
         rabbit_qos_prefetch_count = 1\nuse_queue_manager = true\n"
    );
    let path = dir.join("nova.conf");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libvirtd_kolla_nova_conf_a_real_guest_reaches_an_oslo_listener() {
    let _serial = SERIAL.lock().await;
    let Some((_libvirtd, assets)) = guest_services() else {
        return;
    };
    let Some(python) = wd_testkit::openstack::venv_python() else {
        return;
    };
    let host = "e2e-kolla-compute";
    let dir = Scratch::new("wd-e2e-kolla");
    let vhost = Vhost::create("/wd-e2e-kolla", &[Node::Main]).unwrap();
    let transport = format!("rabbit://guest:guest@127.0.0.1:5672/{}", vhost.name());
    let conf = kolla_nova_conf(&dir.0, host, &transport);
    let listener = OsloListener::start_with(
        &python,
        &transport,
        "nova",
        "notifications",
        &wd_testkit::unique_name("wd-e2e-kolla-pool"),
        Some(&conf),
    );
    let agent = agent(&dir.0, &conf).await;
    let owner = owner("web-kolla");
    let spec =
        GuestSpec::new(&wd_testkit::unique_name("wd-e2e-kolla"), "pause").with_nova(owner.clone());
    let uuid = spec.uuid.clone();
    let guest = Guest::define_and_start(spec, &assets, None).unwrap();
    let got = listener.wait_for(1, Duration::from_secs(90), |v| {
        v["event"]["traits"]["instance_id"] == uuid.as_str()
    });
    // Whatever else would come (a versioned form) comes with it.
    std::thread::sleep(Duration::from_secs(2));
    let admin = format!(
        "amqp://guest:guest@127.0.0.1:5672/{}",
        vhost.name().replace('/', "%2F")
    );
    let conn = lapin::Connection::connect(&admin, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let versioned = ch
        .queue_declare(
            "versioned_notifications.info".into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await;
    let _ = conn.close(200, "checked".into()).await;
    let code = agent.terminate(Duration::from_secs(15)).unwrap();
    let log = std::fs::read_to_string(dir.0.join("agent.log")).unwrap_or_default();
    drop(guest);
    drop(listener);
    drop(vhost);
    assert_eq!(code, 0, "wdguard watch exit code");
    assert_eq!(
        got.len(),
        1,
        "no legacy notification for {uuid}; see {}",
        dir.0.display()
    );
    let m = &got[0];
    assert_eq!(m["event_type"], "compute.instance.watchdog");
    assert_eq!(m["publisher_id"], format!("compute.{host}"));
    assert_eq!(m["ctxt"]["project_id"], owner.project_id.as_str());
    let traits = &m["event"]["traits"];
    assert_eq!(traits["project_id"], owner.project_id.as_str());
    assert_eq!(traits["display_name"], owner.display_name.as_str());
    assert!(
        versioned.is_err(),
        "a versioned queue was created, though Nova's default format is unversioned"
    );
    assert!(
        !log.contains("PRECONDITION_FAILED"),
        "a 406 in the agent log"
    );
    assert!(
        !log.contains("not honoured"),
        "kolla's options are all honoured or without effect: {log}"
    );
}
