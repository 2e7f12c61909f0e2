//! TLS to RabbitMQ as OpenStack-Ansible configures it: a private CA named
//! only in `ssl_ca_file` (not in the system store), options in the
//! transport URL's query, mutual TLS with a client certificate, and a wrong
//! CA refused as a certificate failure. The broker is a node of its own
//! (`wd_testkit::RabbitMqTls`, 127.0.0.1:5674), started with its private PKI
//! and stopped at the end; the shared nodes are not touched.

use std::path::Path;
use std::time::Duration;

use wd_notify::{FailureKind, Notifier, NotifyError};
use wd_notify_amqp::{AmqpNotifier, NovaConf};
use wd_testkit::RabbitMqTls;

use super::support::{BROKER, admin, broker_url, declare_exchange, name, notification};
use wd_e2e::openstack::OsloListener as Listener;

/// The bus of an OpenStack-Ansible style nova.conf: TLS in the URL's
/// query, the vhost `/` written `//`, `extra` in `[oslo_messaging_rabbit]`.
fn bus(query: &str, extra: &str) -> wd_notify_amqp::AmqpConfig {
    let text = format!(
        "[oslo_messaging_notifications]\ndriver = messagingv2\n\
         transport_url = rabbit://guest:guest@localhost:{}//?{query}\n\
         [oslo_messaging_rabbit]\n{extra}",
        RabbitMqTls::TLS_PORT
    );
    NovaConf::parse("nova.conf", &text)
        .unwrap()
        .bus
        .unwrap()
        .with_reconnect(Duration::from_millis(100), Duration::from_millis(500))
}

async fn send(config: wd_notify_amqp::AmqpConfig) -> Result<(), NotifyError> {
    let notifier = AmqpNotifier::new(config).unwrap();
    let r = notifier.notify(&notification(Some("p-tls"))).await;
    notifier.close().await;
    r
}

fn show(p: &Path) -> String {
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_tls_private_ca_mutual_tls_and_a_wrong_ca() {
    let _broker = BROKER.lock().await;
    if broker_url().is_none() {
        return;
    }
    let Some(python) = wd_testkit::openstack::venv_python() else {
        return;
    };
    let node = match tokio::task::spawn_blocking(RabbitMqTls::start)
        .await
        .unwrap()
    {
        Ok(n) => n,
        Err(e) => {
            let _: Option<()> = wd_testkit::unavailable("a RabbitMQ node with TLS (5674)", &e);
            return;
        }
    };
    let pki = node.pki();
    let (_conn, ch) = admin(&node.admin_url()).await;
    declare_exchange(&ch, "nova", false).await;

    // OpenStack's own listener, configured the same way, over TLS.
    let dir = std::env::temp_dir().join(name("wd-osa"));
    std::fs::create_dir_all(&dir).unwrap();
    let ceilometer_conf = dir.join("ceilometer.conf");
    std::fs::write(
        &ceilometer_conf,
        format!(
            "[oslo_messaging_rabbit]\nssl = true\nssl_ca_file = {}\n",
            show(&pki.ca)
        ),
    )
    .unwrap();
    let transport = format!("rabbit://guest:guest@localhost:{}//", RabbitMqTls::TLS_PORT);
    let listener = Listener::start_with(
        &python,
        &transport,
        "nova",
        "notifications",
        &name("wd-osa-pool"),
        Some(&ceilometer_conf),
    );

    // 1. The private CA, named only in the query's ssl_ca_file.
    let config = bus(
        &format!("ssl=1&ssl_version=TLSv1_2&ssl_ca_file={}", show(&pki.ca)),
        "",
    );
    assert!(config.url.tls());
    let notifier = AmqpNotifier::new(config).unwrap();
    let n = notification(Some("p-osa"));
    notifier.notify(&n).await.expect("TLS with the private CA");
    notifier.close().await;
    let got = listener.events_for(&n.event_id.to_string(), 1, Duration::from_secs(30));
    drop(listener);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["ctxt"]["project_id"], "p-osa");

    // 2. Mutual TLS: the client certificate from the file's options.
    send(bus(
        "ssl=1",
        &format!(
            "ssl_ca_file = {}\nssl_cert_file = {}\nssl_key_file = {}\n",
            show(&pki.ca),
            show(&pki.client_cert),
            show(&pki.client_key)
        ),
    ))
    .await
    .expect("mutual TLS");
    // A client certificate the broker does not trust is refused: the
    // certificate is really presented and checked.
    let err = send(bus(
        &format!(
            "ssl=1&ssl_ca_file={}&ssl_cert_file={}&ssl_key_file={}",
            show(&pki.ca),
            show(&pki.other_client_cert),
            show(&pki.other_client_key)
        ),
        "",
    ))
    .await
    .unwrap_err();
    assert!(err.is_retryable(), "{err}");

    // 3. The wrong CA: refused, as a certificate failure (what metrics and
    // /healthz show), retryable so nothing is dropped.
    let err = send(bus(
        &format!("ssl=1&ssl_ca_file={}", show(&pki.other_ca)),
        "",
    ))
    .await
    .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert_eq!(FailureKind::of(&err), FailureKind::Certificate, "{err:?}");
    // The system store does not know the private CA either.
    let err = send(bus("ssl=1", "")).await.unwrap_err();
    assert_eq!(FailureKind::of(&err), FailureKind::Certificate, "{err:?}");

    drop(ch);
    let _ = std::fs::remove_dir_all(&dir);
    drop(node);
}
