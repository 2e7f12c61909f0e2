//! The router's tests: isolation between destinations, routing, progress
//! per destination across restarts, reconfiguration and removed
//! destinations' backlogs, panics.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::mpsc;

use super::*;
use crate::builtin::ChannelNotifier;
use crate::testing::firing;
use crate::testing::until;

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

fn quick() -> QueueConfig {
    QueueConfig::default().retry_delays(Duration::from_millis(5), Duration::from_millis(50))
}

fn dest(name: &str, kind: DestinationKind, route: Scope, n: Arc<dyn Notifier>) -> Destination {
    Destination::new(name, kind, route, n)
        .queue(quick().attempt_timeout(Duration::from_millis(200)))
}

fn channel(name: &str, route: Scope) -> (Destination, mpsc::Receiver<Notification>) {
    let (n, rx) = ChannelNotifier::channel(1024);
    let kind = match route {
        Scope::All => DestinationKind::Operator,
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
        let (ops, mut ops_rx) = channel("ops", Scope::All);
        let (b, mut b_rx) = channel("project-2", Scope::Project("project-2".into()));
        let mut dests = vec![ops, b];
        let bad = hostile();
        for (name, n) in &bad {
            dests.push(dest(
                name,
                DestinationKind::Project,
                Scope::Project("project-1".into()),
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
        let (ok, mut rx) = channel("ok", Scope::All);
        let router = Router::open(
            Some(dir.path()),
            vec![
                ok,
                dest("down", DestinationKind::Bus, Scope::All, down.clone()),
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
    let (ok, mut ok_rx) = channel("ok", Scope::All);
    let (up, mut up_rx) = ChannelNotifier::channel(4);
    let router = Router::open(
        Some(dir.path()),
        vec![
            ok,
            dest("down", DestinationKind::Bus, Scope::All, Arc::new(up)),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_worker_restarts_and_the_others_keep_delivering() {
    let (a, mut a_rx) = channel("a", Scope::All);
    let (b, mut b_rx) = channel("b", Scope::All);
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
    let d = dest("flaky", DestinationKind::Bus, Scope::All, flaky.clone());
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
        Destination::new("x", kind, Scope::All, Arc::new(crate::LogNotifier)).key(key)
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
    let (a, _) = channel("a", Scope::All);
    let (b, _) = channel("a", Scope::All);
    let err = Router::open(None, vec![a, b], &RouterDefaults::default()).unwrap_err();
    assert!(err.to_string().contains("destination=a"), "{err}");
}

fn status(router: &Router, name: &str) -> DestinationStatus {
    router
        .status()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no destination {name}"))
}

#[tokio::test]
async fn a_reconfigure_adds_updates_and_removes_and_a_removed_one_sends_nothing_more() {
    let dir = tempfile::tempdir().unwrap();
    let (ops, mut ops_rx) = channel("ops", Scope::All);
    let defaults = RouterDefaults::default();
    let router = Arc::new(Router::open(Some(dir.path()), vec![ops], &defaults).unwrap());
    // A new project's endpoint: its queue starts and takes its project's
    // notifications at once.
    let (ops, mut ops_rx2) = channel("ops", Scope::All);
    let (p1, mut p1_rx) = channel("p1", Scope::Project("project-1".into()));
    let done = router.reconfigure(vec![ops, p1], &defaults).unwrap();
    assert_eq!(
        (done.updated, done.added),
        (vec!["ops".to_owned()], vec!["p1".to_owned()])
    );
    let mut n = firing(11);
    n.instance.project_id = Some("project-1".into());
    router.notify(&n).await.unwrap();
    assert_eq!(recv(&mut p1_rx, Duration::from_secs(5)).await, n);
    // The running destination took its new transport: the old one gets
    // nothing more.
    assert_eq!(recv(&mut ops_rx2, Duration::from_secs(5)).await, n);
    assert!(ops_rx.try_recv().is_err());

    // A destination that is down, with a backlog, then removed: not one
    // more attempt at it, and its backlog stays, shown as retired.
    let down = Scripted::new(Duration::ZERO, || Err(NotifyError::retryable("down")));
    let slow = || dest("slow", DestinationKind::Bus, Scope::All, down.clone());
    let (ops, _ops_rx3) = channel("ops", Scope::All);
    let done = router.reconfigure(vec![ops, slow()], &defaults).unwrap();
    assert_eq!(done.removed, ["p1"]);
    let backlog = firing(12);
    router.notify(&backlog).await.unwrap();
    until("a failed attempt", || down.calls.load(Ordering::SeqCst) > 0).await;
    let (ops, _ops_rx4) = channel("ops", Scope::All);
    let done = router.reconfigure(vec![ops], &defaults).unwrap();
    assert_eq!(done.removed, ["slow"]);
    let calls = down.calls.load(Ordering::SeqCst);
    router.notify(&n).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        down.calls.load(Ordering::SeqCst),
        calls,
        "a removed destination was sent to"
    );
    assert!(
        p1_rx.try_recv().is_err(),
        "a removed destination took a new notification"
    );
    let s = status(&router, "slow");
    assert_eq!((s.state, s.backlog), (DestinationState::Retired, 1));
    // Configured again: it delivers its backlog.
    let (ops, _ops_rx5) = channel("ops", Scope::All);
    let (back, mut back_rx) = ChannelNotifier::channel(4);
    let done = router
        .reconfigure(
            vec![
                ops,
                dest("slow", DestinationKind::Bus, Scope::All, Arc::new(back)),
            ],
            &defaults,
        )
        .unwrap();
    assert_eq!(done.added, ["slow"]);
    assert_eq!(recv(&mut back_rx, Duration::from_secs(5)).await, backlog);
    router.shutdown(Duration::ZERO).await;
}

#[tokio::test]
async fn a_reconfigure_checks_what_open_checks_and_changes_nothing_when_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (ops, mut ops_rx) = channel("ops", Scope::All);
    let defaults = RouterDefaults::default();
    let router = Router::open(Some(dir.path()), vec![ops], &defaults).unwrap();
    let refused = |next: Vec<Destination>, defaults: &RouterDefaults| {
        let err = router.reconfigure(next, defaults).unwrap_err().to_string();
        assert_eq!(router.names(), ["ops"], "{err}");
        err
    };
    // The same destination twice.
    let (a, _) = channel("a", Scope::All);
    let (b, _) = channel("a", Scope::All);
    assert!(refused(vec![a, b], &defaults).contains("destination=a"));
    // Queue bounds out of range, by default or on one destination.
    let (a, _) = channel("a", Scope::All);
    let bad = RouterDefaults {
        queue: QueueConfig::default().max_bytes(4096),
    };
    assert!(refused(vec![a], &bad).contains("max_bytes=4096"));
    let (a, _) = channel("a", Scope::All);
    let a = a.queue(QueueConfig::default().max_entries(0));
    assert!(refused(vec![a], &defaults).contains("max_entries=0"));
    // A new queue that cannot be opened (its directory is a file).
    let (ok, _) = channel("ok", Scope::All);
    let (p, _) = channel("p", Scope::Project("x".into()));
    std::fs::write(dir.path().join("dest").join(p.dir_name()), b"not a dir").unwrap();
    let err = refused(vec![ok, p], &defaults);
    assert!(err.contains("cannot open spool directory"), "{err}");
    assert!(!router.names().contains(&"ok".to_owned()));
    // The running destination still delivers.
    let n = firing(3);
    router.notify(&n).await.unwrap();
    assert_eq!(recv(&mut ops_rx, Duration::from_secs(5)).await, n);
    router.shutdown(Duration::ZERO).await;
}

#[tokio::test]
async fn a_queue_no_destination_owns_is_reported_after_a_restart_and_can_be_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let down = Scripted::new(Duration::ZERO, || Err(NotifyError::retryable("down")));
    let gone = dest("gone", DestinationKind::Project, Scope::All, down.clone());
    let gone_dir = gone.dir_name();
    {
        let router =
            Router::open(Some(dir.path()), vec![gone], &RouterDefaults::default()).unwrap();
        router.notify(&firing(1)).await.unwrap();
        router.notify(&firing(2)).await.unwrap();
        router.shutdown(Duration::ZERO).await;
    }
    // Restarted without it: its queue is still there, and said to be.
    let (ops, _rx) = channel("ops", Scope::All);
    let router =
        Arc::new(Router::open(Some(dir.path()), vec![ops], &RouterDefaults::default()).unwrap());
    let name = format!("orphaned queue {gone_dir}");
    let s = status(&router, &name);
    assert_eq!(
        (s.state, s.kind, s.backlog, s.dir.as_str()),
        (
            DestinationState::Orphaned,
            DestinationKind::Project,
            2,
            gone_dir.as_str()
        )
    );
    assert!(
        router.health_line().contains("orphaned"),
        "{}",
        router.health_line()
    );
    // Nothing knows where to deliver it, so it cannot be drained; it is
    // not taking new notifications.
    let calls = down.calls.load(Ordering::SeqCst);
    assert!(
        router
            .drain(&name)
            .unwrap_err()
            .to_string()
            .contains("orphaned")
    );
    assert!(
        router
            .drain("ops")
            .unwrap_err()
            .to_string()
            .contains("is configured")
    );
    // Allowed: the removed ones, by queue directory (also found by it).
    assert!(
        router
            .drain("nope")
            .unwrap_err()
            .to_string()
            .contains(&gone_dir)
    );
    assert!(
        router
            .drain(&gone_dir)
            .unwrap_err()
            .to_string()
            .contains("orphaned")
    );
    router.notify(&firing(3)).await.unwrap();
    assert_eq!(status(&router, &name).backlog, 2);
    assert_eq!(router.drop_backlog(&name).await.unwrap(), 2);
    assert_eq!(router.names(), ["ops"]);
    assert!(!dir.path().join("dest").join(&gone_dir).exists());
    assert_eq!(down.calls.load(Ordering::SeqCst), calls);
    router.shutdown(Duration::ZERO).await;
}

#[tokio::test]
async fn a_removed_destinations_backlog_is_drained_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let defaults = RouterDefaults::default();
    let (old, mut old_rx) = ChannelNotifier::channel(4);
    let (gate, gate_rx) = tokio::sync::watch::channel(false);
    // Down until the gate opens.
    struct Gated(tokio::sync::watch::Receiver<bool>, ChannelNotifier);
    #[async_trait]
    impl Notifier for Gated {
        async fn notify(&self, n: &Notification) -> Result<(), NotifyError> {
            if *self.0.borrow() {
                self.1.notify(n).await
            } else {
                Err(NotifyError::retryable("down"))
            }
        }
    }
    let p = || {
        dest(
            "p",
            DestinationKind::Project,
            Scope::All,
            Arc::new(Gated(gate_rx.clone(), old.clone())),
        )
    };
    let router = Arc::new(Router::open(Some(dir.path()), vec![p()], &defaults).unwrap());
    let n = firing(5);
    router.notify(&n).await.unwrap();
    router.reconfigure(Vec::new(), &defaults).unwrap();
    gate.send(true).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        old_rx.try_recv().is_err(),
        "a removed destination delivered before it was told to"
    );
    router.drain("p").unwrap();
    assert_eq!(recv(&mut old_rx, Duration::from_secs(5)).await, n);
    until("the drained queue closed", || router.names().is_empty()).await;
    router.shutdown(Duration::ZERO).await;
}
