//! The router's tests: isolation between destinations, routing, progress
//! per destination across restarts, the old layout's migration, panics.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::mpsc;
use uuid::Uuid;

use super::*;
use crate::backends::ChannelNotifier;
use crate::testing::firing;

/// Answers every notification after `delay` with `answer`, counting calls.
struct Scripted {
    delay: Duration,
    answer: fn() -> Result<(), NotifyError>,
    calls: AtomicUsize,
}

impl Scripted {
    fn new(delay: Duration, answer: fn() -> Result<(), NotifyError>) -> Arc<Self> {
        Arc::new(Scripted {
            delay,
            answer,
            calls: AtomicUsize::new(0),
        })
    }
}

#[async_trait]
impl Notifier for Scripted {
    async fn notify(&self, _: &Notification) -> Result<(), NotifyError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        (self.answer)()
    }
}

fn quick() -> SpoolConfig {
    SpoolConfig::default().retry_delays(Duration::from_millis(5), Duration::from_millis(50))
}

fn dest(name: &str, kind: DestinationKind, route: Route, n: Arc<dyn Notifier>) -> Destination {
    Destination::new(name, kind, route, n)
        .queue(quick())
        .retry(RetryConfig::default().deadline(Duration::from_millis(200)))
}

fn channel(name: &str, route: Route) -> (Destination, mpsc::Receiver<Notification>) {
    let (n, rx) = ChannelNotifier::channel(1024);
    let kind = match route {
        Route::All => DestinationKind::Operator,
        _ => DestinationKind::Project,
    };
    (dest(name, kind, route, Arc::new(n)), rx)
}

async fn recv(rx: &mut mpsc::Receiver<Notification>, within: Duration) -> Notification {
    tokio::time::timeout(within, rx.recv())
        .await
        .expect("delivered in time")
        .expect("channel open")
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let t0 = std::time::Instant::now();
    while !done() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn hostile() -> Vec<(&'static str, Arc<Scripted>)> {
    vec![
        ("hang", Scripted::new(Duration::from_secs(3600), || Ok(()))),
        (
            "huge-retry-after",
            Scripted::new(Duration::ZERO, || {
                Err(NotifyError::retryable("503").with_retry_after(Duration::MAX))
            }),
        ),
        (
            "down",
            Scripted::new(Duration::ZERO, || Err(NotifyError::retryable("503"))),
        ),
        (
            "gone",
            Scripted::new(Duration::ZERO, || Err(NotifyError::permanent("410"))),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_destination_delays_no_other_and_routing_is_by_owner() {
    for on_disk in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (ops, mut ops_rx) = channel("ops", Route::All);
        let (b, mut b_rx) = channel("project-2", Route::Project("project-2".into()));
        let mut dests = vec![ops, b];
        let bad = hostile();
        for (name, n) in &bad {
            dests.push(dest(
                name,
                DestinationKind::Project,
                Route::Project("project-1".into()),
                n.clone(),
            ));
        }
        let router = Router::open(
            on_disk.then_some(dir.path()),
            dests,
            &RouterDefaults::default(),
        )
        .unwrap();
        // Project 1's hostile endpoints each get 100 entries.
        for i in 0..100 {
            let mut n = firing(1000 + i);
            n.instance.project_id = Some("project-1".into());
            router.notify(&n).await.unwrap();
        }
        for _ in 0..100 {
            recv(&mut ops_rx, Duration::from_secs(5)).await;
        }
        // Project 2's notification arrives promptly, and only at its own
        // endpoint and the operator's.
        let t0 = std::time::Instant::now();
        let n = firing(2);
        router.notify(&n).await.unwrap();
        assert_eq!(recv(&mut b_rx, Duration::from_secs(1)).await, n);
        assert_eq!(recv(&mut ops_rx, Duration::from_secs(1)).await, n);
        assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
        let status = router.status();
        let hang = status.iter().find(|s| s.name == "hang").unwrap();
        assert_eq!(hang.backlog, 100);
        assert_eq!(hang.kind, DestinationKind::Project);
        let huge = status
            .iter()
            .find(|s| s.name == "huge-retry-after")
            .unwrap();
        assert!(huge.failed >= 1 && huge.backlog == 100, "{huge:?}");
        assert!(huge.last_error.as_deref().unwrap().contains("503"));
        until("permanent failures dropped", || {
            router
                .status()
                .iter()
                .any(|s| s.name == "gone" && s.dropped_permanent == 100)
        })
        .await;
        // A notification with no owner goes to the operator only.
        let mut orphan = firing(3);
        orphan.instance.project_id = None;
        router.notify(&orphan).await.unwrap();
        assert_eq!(recv(&mut ops_rx, Duration::from_secs(1)).await, orphan);
        assert!(b_rx.try_recv().is_err());
        assert!(router.health_line().contains("hang [project]: backlog 100"));
        router.shutdown(Duration::ZERO).await;
    }
}

#[tokio::test]
async fn progress_is_per_destination_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let n = firing(7);
    let down = Scripted::new(Duration::ZERO, || Err(NotifyError::retryable("down")));
    {
        let (ok, mut rx) = channel("ok", Route::All);
        let router = Router::open(
            Some(dir.path()),
            vec![
                ok,
                dest("down", DestinationKind::Bus, Route::All, down.clone()),
            ],
            &RouterDefaults::default(),
        )
        .unwrap();
        router.notify(&n).await.unwrap();
        assert_eq!(recv(&mut rx, Duration::from_secs(5)).await, n);
        until("a failed attempt", || down.calls.load(Ordering::SeqCst) > 0).await;
        let stats = router.shutdown(Duration::ZERO).await;
        assert_eq!(stats[0].1.delivered, 1);
        assert_eq!(stats[1].1.pending, 1);
    }
    let (ok, mut ok_rx) = channel("ok", Route::All);
    let (up, mut up_rx) = ChannelNotifier::channel(4);
    let router = Router::open(
        Some(dir.path()),
        vec![
            ok,
            dest("down", DestinationKind::Bus, Route::All, Arc::new(up)),
        ],
        &RouterDefaults::default(),
    )
    .unwrap();
    // The destination that was down gets it now, with its event id; the one
    // that had it does not get it again.
    assert_eq!(
        recv(&mut up_rx, Duration::from_secs(5)).await.event_id,
        n.event_id
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(ok_rx.try_recv().is_err());
    router.shutdown(Duration::ZERO).await;
}

#[tokio::test]
async fn the_old_shared_layout_is_drained_into_the_new_queues() {
    let dir = tempfile::tempdir().unwrap();
    let ns: Vec<Notification> = (1..=4).map(firing).collect();
    {
        // An old agent: one spool in the root, its backend down.
        let old = Spool::open(
            dir.path(),
            quick(),
            Scripted::new(Duration::ZERO, || Err(NotifyError::retryable("down"))),
        )
        .unwrap();
        for n in &ns {
            old.notify(n).await.unwrap();
        }
        assert_eq!(old.shutdown(Duration::ZERO).await.pending, 4);
    }
    let (ops, mut ops_rx) = channel("ops", Route::All);
    let (p2, mut p2_rx) = channel("p2", Route::Project("project-2".into()));
    let router = Router::open(Some(dir.path()), vec![ops, p2], &RouterDefaults::default()).unwrap();
    let mut got: Vec<Uuid> = Vec::new();
    for _ in 0..4 {
        got.push(recv(&mut ops_rx, Duration::from_secs(5)).await.event_id);
    }
    got.sort();
    let mut want: Vec<Uuid> = ns.iter().map(|n| n.event_id).collect();
    want.sort();
    assert_eq!(got, want);
    assert_eq!(recv(&mut p2_rx, Duration::from_secs(5)).await, ns[1]);
    // The old segments are gone; only the new queues remain.
    assert!(scan(dir.path()).unwrap().segments.is_empty());
    router.shutdown(Duration::from_secs(1)).await;
    drop(router);
    // A second start finds nothing to migrate and delivers nothing again.
    let (ops, mut ops_rx) = channel("ops", Route::All);
    let router = Router::open(Some(dir.path()), vec![ops], &RouterDefaults::default()).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(ops_rx.try_recv().is_err());
    router.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_worker_restarts_and_the_others_keep_delivering() {
    let (a, mut a_rx) = channel("a", Route::All);
    let (b, mut b_rx) = channel("b", Route::All);
    let router = Router::open(None, vec![a, b], &RouterDefaults::default()).unwrap();
    assert!(router.inject_worker_panic("a"));
    assert!(!router.inject_worker_panic("nobody"));
    for i in 0..5 {
        let n = firing(i);
        router.notify(&n).await.unwrap();
        assert_eq!(recv(&mut b_rx, Duration::from_secs(1)).await, n);
        assert_eq!(recv(&mut a_rx, Duration::from_secs(5)).await, n);
    }
    let a = &router.status()[0];
    assert_eq!(a.worker_restarts, 1);
    assert!(
        a.last_error
            .as_deref()
            .unwrap()
            .contains("injected test panic")
    );
    router.shutdown(Duration::ZERO).await;
}

#[tokio::test]
async fn without_a_spool_a_refused_notification_is_retried_from_memory() {
    static CALLS: Mutex<usize> = Mutex::new(0);
    let flaky = Scripted::new(Duration::ZERO, || {
        let mut calls = CALLS.lock().unwrap();
        *calls += 1;
        if *calls < 4 {
            Err(NotifyError::retryable("down"))
        } else {
            Ok(())
        }
    });
    let d = dest("flaky", DestinationKind::Bus, Route::All, flaky.clone())
        .retry(RetryConfig::default().max_attempts(1));
    let router = Router::open(None, vec![d], &RouterDefaults::default()).unwrap();
    router.notify(&firing(1)).await.unwrap();
    until("delivery after retries", || {
        router.status()[0].delivered == 1
    })
    .await;
    let s = &router.status()[0];
    assert_eq!((s.failed, s.backlog), (3, 0));
    router.shutdown(Duration::ZERO).await;
}

#[test]
fn directory_names_are_stable_and_safe() {
    let d = |kind, key: &str| {
        Destination::new("x", kind, Route::All, Arc::new(crate::LogNotifier)).key(key)
    };
    let name = d(DestinationKind::Project, "../../etc/passwd").dir_name();
    assert!(name.starts_with("project-") && name.len() == "project-".len() + 16);
    assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    assert_eq!(
        name,
        d(DestinationKind::Project, "../../etc/passwd").dir_name()
    );
    assert_ne!(
        name,
        d(DestinationKind::Operator, "../../etc/passwd").dir_name()
    );
    assert_ne!(
        name,
        d(DestinationKind::Project, "../../etc/passwd2").dir_name()
    );
}

#[tokio::test]
async fn a_destination_given_twice_is_refused() {
    let (a, _) = channel("a", Route::All);
    let (b, _) = channel("a", Route::All);
    let err = Router::open(None, vec![a, b], &RouterDefaults::default()).unwrap_err();
    assert!(err.to_string().contains("destination=a"), "{err}");
}

#[tokio::test]
async fn destinations_are_added_and_retired_while_running() {
    let dir = tempfile::tempdir().unwrap();
    let (ops, mut ops_rx) = channel("ops", Route::All);
    let router =
        Arc::new(Router::open(Some(dir.path()), vec![ops], &RouterDefaults::default()).unwrap());
    // A new project's endpoint: its queue starts and takes its project's
    // notifications at once.
    let (p1, mut p1_rx) = channel("p1", Route::Project("project-1".into()));
    let p1_dir = p1.dir_name();
    router.add(p1).unwrap();
    assert_eq!(router.names(), ["ops", "p1"]);
    let mut n = firing(11);
    n.instance.project_id = Some("project-1".into());
    router.notify(&n).await.unwrap();
    assert_eq!(recv(&mut p1_rx, Duration::from_secs(5)).await, n);
    assert_eq!(recv(&mut ops_rx, Duration::from_secs(5)).await, n);
    // A removed destination with a backlog: it takes nothing new and stays
    // until its backlog has drained.
    let down = Scripted::new(Duration::ZERO, || Err(NotifyError::retryable("down")));
    let slow = dest("slow", DestinationKind::Bus, Route::All, down.clone());
    let slow_dir = slow.dir_name();
    router.add(slow).unwrap();
    router.notify(&firing(12)).await.unwrap();
    assert!(router.retire(&slow_dir));
    assert!(router.retire(&p1_dir));
    assert!(!router.active().contains(&slow_dir));
    router.notify(&n).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), p1_rx.recv())
            .await
            .is_err(),
        "a retired destination took a new notification"
    );
    until("the drained destination closed", || {
        !router.names().contains(&"p1".to_owned())
    })
    .await;
    // Still holding its undelivered entry: kept.
    let slow = router
        .status()
        .into_iter()
        .find(|s| s.name == "slow")
        .unwrap();
    assert_eq!(slow.backlog, 1);
    router.shutdown(Duration::ZERO).await;
}
