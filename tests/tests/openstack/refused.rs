//! A configuration the broker refuses loses nothing: the agent's nova.conf
//! says classic queues where the deployment has quorum queues, RabbitMQ
//! answers 406, the real guest's notification waits in the agent's queue,
//! `/healthz` names the cause; nova.conf fixed and SIGHUP, it arrives once.

use std::time::{Duration, Instant};

use lapin::options::{BasicGetOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use wd_e2e::agent::AgentProcess;
use wd_e2e::scratch::Scratch;
use wd_e2e::virsh::Guest;
use wd_testkit::guest::GuestSpec;
use wd_testkit::{Node, Vhost};

use super::{SERIAL, guest_services, owner};

fn write_conf(path: &std::path::Path, transport: &str, quorum: bool) {
    let text = format!(
        "[DEFAULT]\nhost = e2e-refused\n\n[oslo_messaging_notifications]\ndriver = messagingv2\n\
         transport_url = {transport}\n\n[oslo_messaging_rabbit]\nrabbit_quorum_queue = {quorum}\n"
    );
    std::fs::write(path, text).unwrap();
}

fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    (
        head.split_whitespace().nth(1).unwrap().parse().unwrap(),
        body.to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libvirtd_a_406_holds_the_notification_until_nova_conf_is_fixed_and_reloaded() {
    let _serial = SERIAL.lock().await;
    let Some((_libvirtd, assets)) = guest_services() else {
        return;
    };
    let dir = Scratch::new("wd-e2e-refused");
    let vhost = Vhost::create("wd-e2e-refused", &[Node::Main]).unwrap();
    let transport = vhost.transport_url(&[Node::Main]);
    // The deployment: quorum queues (a durable exchange), as its listener
    // declared them.
    let conn = lapin::Connection::connect(
        &vhost.amqp_url(Node::Main),
        lapin::ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.exchange_declare(
        "nova".into(),
        lapin::ExchangeKind::Topic,
        lapin::options::ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    ch.queue_declare(
        "notifications.info".into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .unwrap();
    ch.queue_bind(
        "notifications.info".into(),
        "nova".into(),
        "notifications.info".into(),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();

    let conf = dir.0.join("nova.conf");
    write_conf(&conf, &transport, false);
    let metrics = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let spool = dir.0.join("spool");
    let mut agent = AgentProcess::start_with(
        &[
            "--nova-config".as_ref(),
            conf.as_os_str(),
            "--spool".as_ref(),
            spool.as_os_str(),
            "--metrics".as_ref(),
            metrics.as_ref(),
        ],
        &[],
        &dir.0.join("agent.log"),
    )
    .unwrap();
    agent.wait_ready(Duration::from_secs(60)).await.unwrap();
    let owner = owner("web-refused");
    let spec = GuestSpec::new(&wd_testkit::unique_name("wd-e2e-refused"), "pause")
        .with_nova(owner.clone());
    let uuid = spec.uuid.clone();
    let guest = Guest::define_and_start(spec, &assets, None).unwrap();
    let state = guest
        .wait_state_async("paused", Duration::from_secs(90))
        .await;
    assert!(state.starts_with("paused (watchdog)"), "{state}");
    agent
        .wait_log(&["PRECONDITION_FAILED"], Duration::from_secs(60))
        .await
        .unwrap();
    // The firing reached the agent's queue (no delivery is possible before
    // the fix, so anything later still proves the hold).
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The attempt is recorded as it returns, just after its log line.
    let mut health = http_get(&metrics, "/healthz");
    let deadline = Instant::now() + Duration::from_secs(30);
    while health.0 == 200 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        health = http_get(&metrics, "/healthz");
    }
    let (code, health) = health;
    let (_, scrape) = http_get(&metrics, "/metrics");

    // Fix nova.conf and reload.
    write_conf(&conf, &transport, true);
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &agent.pid().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let _ = conn.close(200, "set up".into()).await;
    // Read on fresh connections, reconnecting if the shared broker drops
    // one (other tests may restart it); the quorum queue keeps the message.
    let url = vhost.amqp_url(Node::Main);
    let get = || async {
        let conn = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
            .await
            .ok()?;
        let ch = conn.create_channel().await.ok()?;
        let mut out = Vec::new();
        while let Ok(Some(m)) = ch
            .basic_get(
                "notifications.info".into(),
                BasicGetOptions { no_ack: true },
            )
            .await
        {
            out.push(m);
        }
        let _ = conn.close(200, "read".into()).await;
        Some(out)
    };
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    // Only this test's guest counts: the agent also catches up on paused
    // guests other tests left on the shared libvirtd.
    let mine = |m: &lapin::message::BasicGetMessage| {
        String::from_utf8_lossy(&m.delivery.data).contains(uuid.as_str())
    };
    while !got.iter().any(mine) && Instant::now() < deadline {
        got.extend(get().await.unwrap_or_default());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // A duplicate would come right after.
    tokio::time::sleep(Duration::from_secs(3)).await;
    got.extend(get().await.unwrap_or_default());
    let (code_after, health_after) = http_get(&metrics, "/healthz");
    let log = agent.log_text();
    let exit = agent.terminate(Duration::from_secs(15)).unwrap();
    drop(guest);
    drop(vhost);

    assert_eq!(code, 503, "{health}");
    assert!(
        health.contains("refused: configuration") && health.contains("406"),
        "{health}"
    );
    assert!(
        scrape.contains(r#"outcome="configuration""#),
        "no configuration outcome in /metrics"
    );
    let bodies: Vec<String> = got
        .iter()
        .filter(|m| mine(m))
        .map(|m| String::from_utf8_lossy(&m.delivery.data).into_owned())
        .collect();
    assert_eq!(
        bodies.len(),
        1,
        "delivered once after the reload: {bodies:?}\nagent log:\n{log}"
    );
    assert!(bodies[0].contains(&uuid), "{}", bodies[0]);
    assert_eq!(
        code_after, 200,
        "healthy again after the delivery: {health_after}\nagent log:\n{log}"
    );
    assert_eq!(exit, 0);
}
