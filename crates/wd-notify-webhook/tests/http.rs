//! Delivery against a real HTTP server on 127.0.0.1 that verifies every
//! request exactly as the Standard Webhooks specification says.

use std::collections::VecDeque;
use std::error::Error as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use time::OffsetDateTime;
use wd_notify::{Notification, Notifier, NotifyError};
use wd_notify_webhook::{
    DEFAULT_TOLERANCE, Endpoint, Secret, WebhookConfig, WebhookNotifier, verify,
};

/// What the receiver answers to the next request.
#[derive(Clone)]
enum Reply {
    Status(u16),
    RetryAfter(u16, String),
    Slow(Duration),
}

struct Received {
    path: String,
    headers: HeaderMap,
    body: Bytes,
    verified: Result<String, String>,
    at: Instant,
    /// The client's address: one per TCP connection.
    peer: std::net::SocketAddr,
}

struct Receiver {
    secrets: Vec<Secret>,
    /// Replies to give, in order; when empty, 204.
    plan: Mutex<VecDeque<Reply>>,
    log: Mutex<Vec<Received>>,
}

async fn hook(
    State(rx): State<Arc<Receiver>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let verified = verify(&headers, &body, &rx.secrets, DEFAULT_TOLERANCE)
        .map(|v| v.id)
        .map_err(|e| e.to_string());
    let ok = verified.is_ok();
    rx.log.lock().unwrap().push(Received {
        path: uri.path().to_owned(),
        headers,
        body,
        verified,
        at: Instant::now(),
        peer,
    });
    if !ok {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let reply = rx.plan.lock().unwrap().pop_front();
    match reply {
        None => StatusCode::NO_CONTENT.into_response(),
        Some(Reply::Status(code)) => StatusCode::from_u16(code).unwrap().into_response(),
        Some(Reply::RetryAfter(code, after)) => (
            StatusCode::from_u16(code).unwrap(),
            [("retry-after", after)],
        )
            .into_response(),
        Some(Reply::Slow(d)) => {
            tokio::time::sleep(d).await;
            StatusCode::NO_CONTENT.into_response()
        }
    }
}

/// Starts a receiver on 127.0.0.1:0; returns it and its base URL.
async fn receiver(secrets: Vec<Secret>, plan: Vec<Reply>) -> (Arc<Receiver>, String) {
    let rx = Arc::new(Receiver {
        secrets,
        plan: Mutex::new(plan.into()),
        log: Mutex::new(Vec::new()),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = Router::new().fallback(hook).with_state(rx.clone());
    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (rx, base)
}

fn key(byte: u8) -> Secret {
    Secret::from_bytes(&[byte; 32]).unwrap()
}

fn notification(project: Option<&str>) -> Notification {
    wd_notify::testing::fresh_firing("reset", project)
}

fn requests(rx: &Receiver) -> Vec<(String, Value, Result<String, String>)> {
    rx.log
        .lock()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.path.clone(),
                serde_json::from_slice(&r.body).unwrap(),
                r.verified.clone(),
            )
        })
        .collect()
}

/// Retries `notify` as a retry layer would: retryable errors are retried
/// after the wait the receiver asked for (or 20 ms), permanent ones end it.
async fn deliver_with_retries(
    notifier: &WebhookNotifier,
    n: &Notification,
    max_attempts: usize,
) -> (Result<(), NotifyError>, Vec<NotifyError>) {
    let mut errors = Vec::new();
    for _ in 0..max_attempts {
        match notifier.notify(n).await {
            Ok(()) => return (Ok(()), errors),
            Err(e) if e.is_retryable() => {
                tokio::time::sleep(e.retry_after().unwrap_or(Duration::from_millis(20))).await;
                errors.push(e);
            }
            Err(e) => return (Err(e), errors),
        }
    }
    (Err(NotifyError::permanent("gave up")), errors)
}

#[tokio::test]
async fn delivers_a_signed_cloud_event_with_every_field() {
    let (rx, base) = receiver(vec![key(1)], vec![]).await;
    let notifier = WebhookNotifier::new(
        WebhookConfig::default().with_project("p-a", Endpoint::new(format!("{base}/a"), [key(1)])),
    )
    .unwrap();
    let n = notification(Some("p-a"));
    notifier.notify(&n).await.unwrap();

    let log = rx.log.lock().unwrap();
    assert_eq!(log.len(), 1);
    let r = &log[0];
    assert_eq!(r.verified, Ok(n.event_id.to_string()), "signature verifies");
    assert_eq!(r.headers["content-type"], "application/cloudevents+json");
    assert_eq!(r.headers["webhook-id"], n.event_id.to_string().as_str());
    let ts: i64 = r.headers["webhook-timestamp"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((OffsetDateTime::now_utc().unix_timestamp() - ts).abs() <= 5);

    let body: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["specversion"], "1.0");
    assert_eq!(body["id"], n.event_id.to_string());
    assert_eq!(body["source"], "urn:wd:compute-1:wd");
    assert_eq!(body["type"], "io.wd.compute.instance.watchdog");
    assert_eq!(body["subject"], n.instance.uuid.to_string());
    let time = OffsetDateTime::parse(
        body["time"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert_eq!(time, n.fired_at);
    assert_eq!(body["datacontenttype"], "application/json");
    assert_eq!(body["data"]["instance"]["project_id"], "p-a");
    assert_eq!(body["data"]["instance"]["user_id"], "u-1");
    assert_eq!(body["data"]["action"], "reset");
    let data: Notification = serde_json::from_value(body["data"].clone()).unwrap();
    assert_eq!(data, n, "data is the notification's JSON form");
    assert_eq!(
        body.as_object().unwrap().len(),
        8,
        "no other attributes: {body}"
    );
}

/// Issue 19, connections ready: an endpoint's notifications after the
/// first reuse its kept-alive connection (no new TCP or TLS handshake),
/// also after an idle while.
#[tokio::test]
async fn later_notifications_reuse_the_endpoints_connection() {
    let (rx, base) = receiver(vec![key(1)], vec![]).await;
    let notifier = WebhookNotifier::new(
        WebhookConfig::default().with_project("p-a", Endpoint::new(format!("{base}/a"), [key(1)])),
    )
    .unwrap();
    for i in 0..4 {
        if i == 3 {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        notifier.notify(&notification(Some("p-a"))).await.unwrap();
    }
    let peers: Vec<_> = rx.log.lock().unwrap().iter().map(|r| r.peer).collect();
    assert_eq!(peers.len(), 4);
    assert!(peers.iter().all(|p| *p == peers[0]), "{peers:?}");
}

#[tokio::test]
async fn retryable_failures_are_retried_honouring_retry_after() {
    let (rx, base) = receiver(
        vec![key(1)],
        vec![Reply::Status(503), Reply::RetryAfter(429, "1".into())],
    )
    .await;
    let notifier = WebhookNotifier::new(
        WebhookConfig::default().with_operator(Endpoint::new(format!("{base}/ops"), [key(1)])),
    )
    .unwrap();
    let n = notification(None);
    let (result, errors) = deliver_with_retries(&notifier, &n, 5).await;
    result.unwrap();

    assert_eq!(errors.len(), 2);
    assert!(errors.iter().all(NotifyError::is_retryable));
    assert_eq!(errors[0].retry_after(), None);
    assert!(
        errors[0].to_string().contains("503 Service Unavailable"),
        "{}",
        errors[0]
    );
    assert_eq!(errors[1].retry_after(), Some(Duration::from_secs(1)));
    assert!(
        errors[1].to_string().contains("429 Too Many Requests"),
        "{}",
        errors[1]
    );

    let log = rx.log.lock().unwrap();
    assert_eq!(log.len(), 3, "two failures, then delivered");
    assert!(log.iter().all(|r| r.verified == Ok(n.event_id.to_string())));
    assert!(
        log[2].at - log[1].at >= Duration::from_secs(1),
        "waited as asked"
    );
}

#[tokio::test]
async fn retry_after_as_an_http_date_is_honoured() {
    let in_3s = OffsetDateTime::now_utc() + time::Duration::seconds(3);
    let date = in_3s
        .format(time::macros::format_description!(
            "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
        ))
        .unwrap();
    let (_rx, base) = receiver(vec![key(1)], vec![Reply::RetryAfter(503, date)]).await;
    let notifier = WebhookNotifier::new(
        WebhookConfig::default().with_operator(Endpoint::new(format!("{base}/ops"), [key(1)])),
    )
    .unwrap();
    let err = notifier.notify(&notification(None)).await.unwrap_err();
    let wait = err.retry_after().expect("retry_after from the date");
    assert!(
        wait > Duration::from_secs(1) && wait <= Duration::from_secs(3),
        "{wait:?}"
    );
}

#[tokio::test]
async fn permanent_failures_are_not_retried() {
    let (rx, base) = receiver(vec![key(1)], vec![Reply::Status(400), Reply::Status(410)]).await;
    let notifier = WebhookNotifier::new(
        WebhookConfig::default().with_project("p-a", Endpoint::new(format!("{base}/a"), [key(1)])),
    )
    .unwrap();

    // 400: permanent, not retried (the queue drops the entry; it is never
    // offered again).
    let first = notification(Some("p-a"));
    let (result, retried) = deliver_with_retries(&notifier, &first, 5).await;
    let err = result.unwrap_err();
    assert!(retried.is_empty());
    assert!(matches!(err, NotifyError::Permanent { .. }), "{err}");
    assert!(err.to_string().contains("project p-a"), "{err}");
    assert!(err.to_string().contains("400 Bad Request"), "{err}");
    assert_eq!(rx.log.lock().unwrap().len(), 1);

    // 410 Gone: permanent, and the endpoint is disabled for later events.
    let err = notifier
        .notify(&notification(Some("p-a")))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("410 Gone"), "{err}");
    assert!(!err.is_retryable());
    let later = notifier
        .notify(&notification(Some("p-a")))
        .await
        .unwrap_err();
    assert!(!later.is_retryable());
    assert!(
        later.to_string().contains("disabled after 410 Gone"),
        "{later}"
    );
    assert_eq!(
        rx.log.lock().unwrap().len(),
        2,
        "nothing sent to a gone endpoint"
    );
}

#[tokio::test]
async fn a_slow_receiver_times_out_as_retryable() {
    let (rx, base) = receiver(vec![key(1)], vec![Reply::Slow(Duration::from_secs(3))]).await;
    let notifier = WebhookNotifier::new(
        WebhookConfig::default()
            .with_timeout(Duration::from_millis(300))
            .with_operator(Endpoint::new(format!("{base}/ops"), [key(1)])),
    )
    .unwrap();
    let n = notification(None);
    let started = Instant::now();
    let err = notifier.notify(&n).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(err.is_retryable(), "{err}");
    assert!(err.to_string().contains("timed out"), "{err}");
    // The receiver is fast again: the retry delivers.
    notifier.notify(&n).await.unwrap();
    assert_eq!(rx.log.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn an_unreachable_endpoint_is_retryable_and_its_credentials_stay_hidden() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let notifier = WebhookNotifier::new(WebhookConfig::default().with_operator(Endpoint::new(
        format!("http://admin:hunter2@127.0.0.1:{port}/hook?token=s3cr3t"),
        [key(1)],
    )))
    .unwrap();
    let err = notifier.notify(&notification(None)).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    let mut chain = format!("{err} {err:?} {notifier:?}");
    let mut source = err.source();
    while let Some(s) = source {
        chain.push_str(&format!(" {s} {s:?}"));
        source = s.source();
    }
    assert!(
        chain.contains(&format!("http://127.0.0.1:{port} #")) && !chain.contains("/hook"),
        "{chain}"
    );
    for leak in ["hunter2", "s3cr3t", "admin"] {
        assert!(!chain.contains(leak), "{leak} leaked: {chain}");
    }
}

#[tokio::test]
async fn one_projects_events_never_reach_another_projects_endpoint() {
    let (rx, base) = receiver(vec![key(1), key(2), key(9)], vec![]).await;
    // Each endpoint its own destination, routed by owner: the agent's
    // composition.
    let router = router(
        WebhookConfig::default()
            .with_operator(Endpoint::new(format!("{base}/ops"), [key(9)]))
            .with_project("p-a", Endpoint::new(format!("{base}/a"), [key(1)]))
            .with_project("p-b", Endpoint::new(format!("{base}/b"), [key(2)])),
    );
    let events = [
        notification(Some("p-a")),
        notification(Some("p-b")),
        notification(Some("p-a")),
        notification(None),
        notification(Some("p-unknown")),
        notification(Some("P-A")),
    ];
    for n in &events {
        router.notify(n).await.unwrap();
    }
    wd_notify::testing::until("nine requests", || rx.log.lock().unwrap().len() == 9).await;
    router.shutdown(Duration::ZERO).await;
    let seen = |path: &str| -> Vec<String> {
        requests(&rx)
            .into_iter()
            .filter(|(p, _, _)| p == path)
            .map(|(_, body, verified)| {
                assert!(verified.is_ok(), "{verified:?}");
                body["id"].as_str().unwrap().to_owned()
            })
            .collect()
    };
    let ids = |which: &[usize]| -> Vec<String> {
        which
            .iter()
            .map(|&i| events[i].event_id.to_string())
            .collect()
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(sorted(seen("/a")), sorted(ids(&[0, 2])));
    assert_eq!(seen("/b"), ids(&[1]));
    assert_eq!(
        sorted(seen("/ops")),
        sorted(ids(&[0, 1, 2, 3, 4, 5])),
        "the operator gets everything"
    );
    // Each endpoint's requests are signed with its own key only.
    for r in rx.log.lock().unwrap().iter() {
        let own = own_key(&r.path);
        assert!(
            verify(
                &r.headers,
                &r.body,
                std::slice::from_ref(&own),
                DEFAULT_TOLERANCE
            )
            .is_ok()
        );
        let others: Vec<Secret> = [key(1), key(2), key(9)]
            .into_iter()
            .filter(|k| *k != own)
            .collect();
        assert!(
            verify(&r.headers, &r.body, &others, DEFAULT_TOLERANCE).is_err(),
            "{}",
            r.path
        );
    }
}

fn own_key(path: &str) -> Secret {
    match path {
        "/a" => key(1),
        "/b" => key(2),
        _ => key(9),
    }
}

#[tokio::test]
async fn key_rotation_sends_two_signatures_and_either_key_verifies() {
    let (old, new) = (key(3), key(4));
    let (rx, base) = receiver(vec![new.clone()], vec![]).await;
    let notifier = WebhookNotifier::new(WebhookConfig::default().with_project(
        "p-a",
        Endpoint::new(format!("{base}/a"), [old.clone(), new.clone()]),
    ))
    .unwrap();
    notifier.notify(&notification(Some("p-a"))).await.unwrap();

    let log = rx.log.lock().unwrap();
    let r = &log[0];
    let sigs: Vec<&str> = r.headers["webhook-signature"]
        .to_str()
        .unwrap()
        .split(' ')
        .collect();
    assert_eq!(sigs.len(), 2);
    assert!(sigs.iter().all(|s| s.starts_with("v1,")));
    assert!(
        verify(&r.headers, &r.body, &[old], DEFAULT_TOLERANCE).is_ok(),
        "receiver with the old key"
    );
    assert!(
        verify(&r.headers, &r.body, &[new], DEFAULT_TOLERANCE).is_ok(),
        "receiver with the new key"
    );
    assert!(
        verify(&r.headers, &r.body, &[key(5)], DEFAULT_TOLERANCE).is_err(),
        "any other key fails"
    );
}

#[tokio::test]
async fn a_failing_endpoint_is_retried_without_resending_to_the_others() {
    let (ops, ops_base) = receiver(vec![key(9)], vec![Reply::Status(502)]).await;
    let (tenant, tenant_base) = receiver(vec![key(1)], vec![]).await;
    let router = router(
        WebhookConfig::default()
            .with_operator(Endpoint::new(format!("{ops_base}/ops"), [key(9)]))
            .with_project("p-a", Endpoint::new(format!("{tenant_base}/a"), [key(1)])),
    );
    router.notify(&notification(Some("p-a"))).await.unwrap();
    // The receiver logs a request before it answers: wait for the answer
    // to be counted too.
    wd_notify::testing::until("a retried request answered", || {
        ops.log.lock().unwrap().len() == 2
            && router.status().iter().map(|s| s.delivered).sum::<u64>() == 2
    })
    .await;
    let status = router.status();
    assert_eq!(status.iter().map(|s| s.delivered).sum::<u64>(), 2);
    let last = status[0].last_error.clone().unwrap();
    assert!(
        last.contains("the operator") && last.contains("502"),
        "{last}"
    );
    router.shutdown(Duration::ZERO).await;
    assert_eq!(
        tenant.log.lock().unwrap().len(),
        1,
        "the tenant got it once"
    );
}

/// A router in memory over every endpoint of `config`, each its own
/// destination (as the agent composes them), with quick redelivery.
fn router(config: WebhookConfig) -> wd_notify::Router {
    use wd_notify::{Destination, DestinationKind, Scope};
    let destinations = WebhookNotifier::split(config)
        .unwrap()
        .into_iter()
        .map(|e| {
            let (kind, route) = match &e.project {
                None => (DestinationKind::Operator, Scope::All),
                Some(p) => (DestinationKind::Project, Scope::Project(p.clone())),
            };
            Destination::new(e.shown.clone(), kind, route, Arc::new(e.notifier)).key(e.fingerprint)
        })
        .collect();
    let defaults = wd_notify::RouterDefaults {
        queue: wd_notify::QueueConfig::default()
            .retry_delays(Duration::from_millis(10), Duration::from_millis(50)),
    };
    wd_notify::Router::open(None, destinations, &defaults).unwrap()
}

#[tokio::test]
async fn the_queue_redelivers_after_the_requested_wait() {
    let (rx, base) = receiver(
        vec![key(1)],
        vec![Reply::Status(502), Reply::RetryAfter(503, "1".into())],
    )
    .await;
    let notifier = WebhookNotifier::new(
        WebhookConfig::default().with_project("p-a", Endpoint::new(format!("{base}/a"), [key(1)])),
    )
    .unwrap();
    // The destination's queue is the one retry loop.
    let queue = wd_notify::Spool::memory(
        "webhook p-a",
        wd_notify::QueueConfig::default()
            .retry_delays(Duration::from_millis(10), Duration::from_secs(2)),
        notifier,
    )
    .unwrap();
    let n = notification(Some("p-a"));
    queue.notify(&n).await.unwrap();
    let done = queue.shutdown(Duration::from_secs(10)).await;
    assert_eq!((done.delivered, done.pending), (1, 0), "{done:?}");

    let log = rx.log.lock().unwrap();
    assert_eq!(log.len(), 3);
    assert!(log.iter().all(|r| r.verified == Ok(n.event_id.to_string())));
    assert!(
        log[1].at - log[0].at < Duration::from_millis(900),
        "backoff step only"
    );
    assert!(
        log[2].at - log[1].at >= Duration::from_secs(1),
        "Retry-After honoured"
    );
}
