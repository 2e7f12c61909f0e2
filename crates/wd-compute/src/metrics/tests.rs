//! Tests of the metrics, health and status: exact series values from the text
//! the registry encodes.

use super::*;

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

#[tokio::test]
async fn metered_outcomes_durations_and_last_errors_are_counted() {
    let m = Metrics::new();
    let cert = NotifyError::retryable("webhook https://h/x: certificate error").with_source(
        wd_notify::CertificateError::new("invalid peer certificate: UnknownIssuer", None),
    );
    // Popped from the end: ok, 503, certificate.
    let n = m.meter(
        "webhook operator",
        Destination::Operator,
        Scripted(Mutex::new(vec![
            Err(cert),
            Err(NotifyError::retryable("503")),
            Ok(()),
        ])),
    );
    for _ in 0..3 {
        let _ = n.notify(&firing()).await;
    }
    let log = m.meter(
        "log",
        Destination::Log,
        Scripted(Mutex::new(vec![Err(NotifyError::permanent("no"))])),
    );
    let _ = log.notify(&firing()).await;

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
    check(r#"wd_build_info{version="0.1.0"}"#, 1.0);
    assert!(text.ends_with("# EOF\n"), "{text}");

    let status = m.status();
    let op = status
        .destinations
        .iter()
        .find(|d| d.name == "webhook operator")
        .unwrap();
    assert_eq!((op.record.delivered, op.record.failed), (1, 2));
    let last = op.record.last_error.as_ref().unwrap();
    assert_eq!(last.kind, "certificate");
    assert!(last.message.contains("UnknownIssuer"), "{}", last.message);
}

/// A refused configuration (or certificate) makes `/healthz` name the
/// destination and the cause until an attempt succeeds; an ordinary failure
/// does not.
#[tokio::test]
async fn a_refused_configuration_is_unhealthy_until_delivered() {
    let m = Metrics::new();
    m.libvirt_connected(1);
    let refused = NotifyError::retryable("amqp exchange `nova`: 406 PRECONDITION_FAILED")
        .with_source(wd_notify::ConfigurationError::new(
            "PRECONDITION_FAILED - inequivalent arg 'durable'",
            None,
        ));
    // Popped from the end: 503, refused, ok.
    let n = m.meter(
        "amqp bus",
        Destination::Bus,
        Scripted(Mutex::new(vec![
            Ok(()),
            Err(refused),
            Err(NotifyError::retryable("503")),
        ])),
    );
    let _ = n.notify(&firing()).await;
    assert_eq!(
        m.health(),
        Ok(()),
        "an ordinary failure is not a health matter"
    );
    let _ = n.notify(&firing()).await;
    let why = m.health().unwrap_err();
    assert!(
        why.starts_with("destination amqp bus refused: configuration: amqp exchange `nova`: 406")
            && why.contains("inequivalent arg 'durable'"),
        "{why}"
    );
    assert!(
        sample(
            &m.encode(),
            r#"wd_notifications_total{destination="bus",outcome="configuration"}"#
        ) == Some(1.0)
    );
    let _ = n.notify(&firing()).await;
    assert_eq!(m.health(), Ok(()), "fixed: delivered again");

    // A tenant's endpoint with a bad certificate is the tenant's matter.
    let cert = NotifyError::retryable("webhook https://tenant/x").with_source(
        wd_notify::CertificateError::new("invalid peer certificate: UnknownIssuer", None),
    );
    let tenant = m.meter(
        "webhook project p",
        Destination::Project,
        Scripted(Mutex::new(vec![Err(cert)])),
    );
    let _ = tenant.notify(&firing()).await;
    assert_eq!(m.health(), Ok(()));
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

#[test]
fn queue_gauges_are_sampled_and_summed_per_destination_kind() {
    let m = Metrics::new();
    m.add_queue_source(Box::new(|| {
        let q = |name: &str, d, entries, age: u64, dropped| QueueSnapshot {
            name: name.into(),
            destination: d,
            entries,
            bytes: None,
            oldest_age: Some(Duration::from_secs(age)),
            dropped,
        };
        vec![
            q("webhook project p1", Destination::Project, 2, 10, 1),
            q("webhook project p2", Destination::Project, 3, 40, 0),
            q("amqp", Destination::Bus, 0, 0, 5),
        ]
    }));
    let text = m.encode();
    let check =
        |series: &str, v: f64| assert_eq!(sample(&text, series), Some(v), "{series} in\n{text}");
    check(r#"wd_queue_entries{destination="project"}"#, 5.0);
    check(
        r#"wd_queue_oldest_age_seconds{destination="project"}"#,
        40.0,
    );
    check(r#"wd_queue_dropped_total{destination="project"}"#, 1.0);
    check(r#"wd_queue_dropped_total{destination="bus"}"#, 5.0);
    // Project ids never become labels.
    assert!(!text.contains("p1"), "{text}");
    // Status shows each queue by name.
    assert_eq!(m.status().destinations.len(), 3);
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

#[tokio::test(start_paused = true)]
async fn an_attempt_cut_off_by_a_deadline_counts_as_failed() {
    struct Hang;
    #[async_trait]
    impl Notifier for Hang {
        async fn notify(&self, _: &Notification) -> Result<(), NotifyError> {
            std::future::pending().await
        }
    }
    let m = Metrics::new();
    let n = m.meter("amqp", Destination::Bus, Hang);
    let cut = tokio::time::timeout(Duration::from_secs(5), n.notify(&firing())).await;
    assert!(cut.is_err());
    let text = m.encode();
    assert_eq!(
        sample(
            &text,
            r#"wd_notifications_total{destination="bus",outcome="failed"}"#
        ),
        Some(1.0),
        "{text}"
    );
    let st = m.status();
    let last = st.destinations[0].record.last_error.as_ref().unwrap();
    assert!(last.message.contains("abandoned"), "{}", last.message);
}
