//! Tests of the metrics, health and status: exact series values from the text
//! the registry encodes.

use async_trait::async_trait;
use wd_notify::{Destination, Notification, Notifier, NotifyError, Scope};

use super::*;
use wd_notify::testing::until;

fn firing() -> Notification {
    Notification::new(
        wd_notify::Instance::new(uuid::Uuid::from_u128(1)),
        "compute-1",
        wd_notify::Domain::new(uuid::Uuid::from_u128(2), "instance-1"),
        "pause",
        time::OffsetDateTime::now_utc(),
    )
}

/// Fails with `err` while it is set, else succeeds.
struct Scripted(Mutex<Vec<Result<(), NotifyError>>>);

#[async_trait]
impl Notifier for Scripted {
    async fn notify(&self, _: &Notification) -> Result<(), NotifyError> {
        lock(&self.0).pop().unwrap_or(Ok(()))
    }
}

/// The value of the sample line starting with `series ` in `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// A router in memory over `destinations`, watched by `m`; quick retries.
fn router(m: &Metrics, destinations: Vec<Destination>) -> Arc<Router> {
    let defaults = wd_notify::RouterDefaults {
        queue: wd_notify::QueueConfig::default()
            .retry_delays(Duration::from_millis(1), Duration::from_millis(2)),
    };
    let r = Arc::new(Router::open(None, destinations, &defaults).unwrap());
    m.watch(&r);
    r
}

fn dest(name: &str, kind: DestinationKind, n: impl Notifier + 'static) -> Destination {
    Destination::new(name, kind, Scope::All, Arc::new(n))
}

#[tokio::test]
async fn outcomes_durations_and_last_errors_are_the_routers() {
    let m = Metrics::new();
    let cert = NotifyError::retryable("webhook https://h/x: certificate error").with_source(
        wd_notify::CertificateError::new("invalid peer certificate: UnknownIssuer", None),
    );
    // Popped from the end: 503, certificate, then ok.
    let r = router(
        &m,
        vec![
            dest(
                "webhook operator",
                DestinationKind::Operator,
                Scripted(Mutex::new(vec![
                    Ok(()),
                    Err(cert),
                    Err(NotifyError::retryable("503")),
                ])),
            ),
            dest(
                "log",
                DestinationKind::Log,
                Scripted(Mutex::new(vec![Err(NotifyError::permanent("no"))])),
            ),
        ],
    );
    r.notify(&firing()).await.unwrap();
    until("delivered and refused", || {
        let s = r.status();
        s[0].delivered == 1 && s[1].dropped_permanent == 1
    })
    .await;

    let text = m.encode();
    let check =
        |series: &str, v: f64| assert_eq!(sample(&text, series), Some(v), "{series} in\n{text}");
    check(
        r#"wd_notifications_total{destination="operator",outcome="delivered"}"#,
        1.0,
    );
    check(
        r#"wd_notifications_total{destination="operator",outcome="failed"}"#,
        1.0,
    );
    check(
        r#"wd_notifications_total{destination="operator",outcome="certificate"}"#,
        1.0,
    );
    check(
        r#"wd_notifications_total{destination="log",outcome="rejected"}"#,
        1.0,
    );
    check(
        r#"wd_delivery_duration_seconds_count{destination="operator"}"#,
        3.0,
    );
    check(r#"wd_queue_dropped_total{destination="log"}"#, 1.0);
    check(r#"wd_build_info{version="0.1.0"}"#, 1.0);
    assert!(text.ends_with("# EOF\n"), "{text}");

    // `/status` is the router's status, in its JSON form.
    let status = serde_json::to_value(m.status()).unwrap();
    let op = &status["destinations"][1];
    assert_eq!(op["name"], "webhook operator", "{status}");
    assert_eq!(
        (op["delivered"].as_u64(), op["failed"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(op["state"], "active");
    assert_eq!(op["destination"], "operator");
    assert_eq!(op["queue"]["entries"], 0);
    // The certificate failure was the last one.
    assert_eq!(op["last_error"]["kind"], "certificate", "{status}");
    let message = op["last_error"]["message"].as_str().unwrap();
    assert!(message.contains("UnknownIssuer"), "{message}");
    r.shutdown(Duration::ZERO).await;
}

/// A refused configuration (or certificate) makes `/healthz` name the
/// destination and the cause while notifications wait for it; an ordinary
/// failure does not, nor does a tenant's own endpoint.
#[tokio::test]
async fn a_refused_configuration_is_unhealthy_until_delivered() {
    use std::sync::atomic::{AtomicU8, Ordering};
    /// 0: fails with 503; 1: refused by configuration; 2: delivers.
    struct Broker(Arc<AtomicU8>);
    #[async_trait]
    impl Notifier for Broker {
        async fn notify(&self, _: &Notification) -> Result<(), NotifyError> {
            match self.0.load(Ordering::SeqCst) {
                0 => Err(NotifyError::retryable("503")),
                1 => Err(
                    NotifyError::retryable("amqp exchange `nova`: 406 PRECONDITION_FAILED")
                        .with_source(wd_notify::ConfigurationError::new(
                            "PRECONDITION_FAILED - inequivalent arg 'durable'",
                            None,
                        )),
                ),
                _ => Ok(()),
            }
        }
    }
    /// A tenant's endpoint whose certificate is bad, forever.
    struct BadCert;
    #[async_trait]
    impl Notifier for BadCert {
        async fn notify(&self, _: &Notification) -> Result<(), NotifyError> {
            Err(
                NotifyError::retryable("webhook https://tenant/x").with_source(
                    wd_notify::CertificateError::new(
                        "invalid peer certificate: UnknownIssuer",
                        None,
                    ),
                ),
            )
        }
    }
    let m = Metrics::new();
    m.libvirt_connected(1);
    let mode = Arc::new(AtomicU8::new(0));
    let r = router(
        &m,
        vec![
            dest("amqp bus", DestinationKind::Bus, Broker(mode.clone())),
            dest("webhook project p", DestinationKind::Project, BadCert),
        ],
    );
    r.notify(&firing()).await.unwrap();
    until("an ordinary failure and the tenant's", || {
        let s = r.status();
        s.iter().all(|d| d.failed >= 1)
    })
    .await;
    assert_eq!(
        m.health(),
        Ok(()),
        "an ordinary failure, or a tenant's certificate, is not a health matter"
    );
    mode.store(1, Ordering::SeqCst);
    until("refused", || m.health().is_err()).await;
    let why = m.health().unwrap_err();
    assert!(
        why.starts_with("destination amqp bus refused: configuration: amqp exchange `nova`: 406")
            && why.contains("inequivalent arg 'durable'"),
        "{why}"
    );
    let text = m.encode();
    assert!(
        sample(
            &text,
            r#"wd_notifications_total{destination="bus",outcome="configuration"}"#
        )
        .is_some_and(|v| v >= 1.0),
        "{text}"
    );
    mode.store(2, Ordering::SeqCst);
    until("fixed: delivered", || m.health().is_ok()).await;
    assert_eq!(r.status()[0].delivered, 1);
    r.shutdown(Duration::ZERO).await;
}

#[test]
fn firings_are_bounded_by_action_and_catch_up_counted_apart() {
    let m = Metrics::new();
    m.firing("pause", false);
    m.firing("pause", true);
    m.firing("unknown-42", false);
    m.firing("<script>", false);
    let text = m.encode();
    assert_eq!(
        sample(&text, r#"wd_watchdog_firings_total{action="pause"}"#),
        Some(2.0)
    );
    assert_eq!(
        sample(&text, r#"wd_watchdog_firings_total{action="unknown"}"#),
        Some(2.0)
    );
    assert_eq!(sample(&text, "wd_catchup_firings_total"), Some(1.0));
    assert!(!text.contains("script"), "{text}");
}

#[tokio::test]
async fn queue_gauges_are_summed_per_destination_kind() {
    struct Down;
    #[async_trait]
    impl Notifier for Down {
        async fn notify(&self, _: &Notification) -> Result<(), NotifyError> {
            Err(NotifyError::retryable("503"))
        }
    }
    let m = Metrics::new();
    let project = |p: &str| {
        Destination::new(
            format!("webhook project {p}"),
            DestinationKind::Project,
            Scope::Project(p.into()),
            Arc::new(Down),
        )
    };
    let r = router(
        &m,
        vec![
            project("p1"),
            project("p2"),
            dest("amqp", DestinationKind::Bus, Down),
        ],
    );
    let mut n = firing();
    for p in ["p1", "p2", "p2"] {
        n.instance.project_id = Some(p.into());
        n.event_id = uuid::Uuid::new_v4();
        r.notify(&n).await.unwrap();
    }
    let text = m.encode();
    let check =
        |series: &str, v: f64| assert_eq!(sample(&text, series), Some(v), "{series} in\n{text}");
    check(r#"wd_queue_entries{destination="project"}"#, 3.0);
    check(r#"wd_queue_entries{destination="bus"}"#, 3.0);
    check(r#"wd_queue_dropped_total{destination="project"}"#, 0.0);
    // Project ids never become labels.
    assert!(!text.contains("p1"), "{text}");
    // Status shows each queue by name.
    assert_eq!(m.status().destinations.len(), 3);
    r.shutdown(Duration::ZERO).await;
}

#[test]
fn health_needs_libvirt_and_every_worker() {
    let m = Metrics::new();
    let err = m.health().unwrap_err();
    assert!(err.starts_with("libvirt not connected yet ("), "{err}");
    m.libvirt_connected(1);
    let guard = m.worker("pipeline");
    assert_eq!(m.health(), Ok(()));
    m.libvirt_disconnected();
    let err = m.health().unwrap_err();
    assert!(
        err.starts_with("libvirt disconnected for ") && err.ends_with(" s"),
        "{err}"
    );
    m.libvirt_connected(2);
    assert_eq!(
        sample(&m.encode(), "wd_libvirt_reconnects_total"),
        Some(1.0)
    );
    assert_eq!(sample(&m.encode(), "wd_libvirt_connected"), Some(1.0));
    drop(guard);
    assert_eq!(m.health(), Err("worker stopped: pipeline".to_owned()));
}

#[tokio::test]
async fn an_attempt_cut_off_by_a_deadline_counts_as_failed() {
    struct Hang;
    #[async_trait]
    impl Notifier for Hang {
        async fn notify(&self, _: &Notification) -> Result<(), NotifyError> {
            std::future::pending().await
        }
    }
    let m = Metrics::new();
    let r =
        router(
            &m,
            vec![dest("amqp", DestinationKind::Bus, Hang).queue(
                wd_notify::QueueConfig::default().attempt_timeout(Duration::from_millis(20)),
            )],
        );
    r.notify(&firing()).await.unwrap();
    until("an abandoned attempt", || r.status()[0].failed > 0).await;
    let text = m.encode();
    assert!(
        sample(
            &text,
            r#"wd_notifications_total{destination="bus",outcome="failed"}"#
        )
        .is_some_and(|v| v >= 1.0),
        "{text}"
    );
    let last = r.status()[0].last_error.clone().unwrap();
    assert!(last.contains("abandoned"), "{last}");
    r.shutdown(Duration::ZERO).await;
}
