//! The supervisor's behaviour over a mocked libvirt.

use super::*;
use crate::backend::{MockBackend, MockSession};
use crate::kinds::{DomainState, Lifecycle, LifecycleDetail, WatchdogAction};
use crate::machine::{RawEvent, RawKind};
use crate::model::{DomainId, DomainInfo, Origin};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use uuid::Uuid;

fn virt_error() -> virt::error::Error {
    // virGetVersion initializes libvirt (its thread-local error slot
    // included) and succeeds; with no error pending, `last_error`
    // builds a generic error value without touching any connection.
    let _ = virt::connect::Connect::version();
    virt::error::Error::last_error()
}

fn connect_error() -> Error {
    Error::Connect {
        uri: "test:///x".into(),
        source: virt_error(),
    }
}

fn config() -> ListenerConfig {
    ListenerConfig::default()
        .uri("test:///x")
        .alive_check_interval(Duration::from_millis(20))
        .recheck_interval(Duration::ZERO)
        .settle_interval(Duration::ZERO)
        .backoff(
            wd_backoff::Backoff::new(Duration::from_millis(5), Duration::from_millis(20))
                .jitter(false),
        )
}

fn dom() -> DomainId {
    DomainId {
        uuid: Uuid::from_u128(0xa),
        name: "dom-a".into(),
    }
}

fn listed(state: DomainState, reason: i32) -> DomainInfo {
    DomainInfo {
        domain: dom(),
        id: Some(1),
        state: Enum::Known(state),
        reason,
        xml: Some("<domain/>".into()),
        generation: 0,
    }
}

fn raw(kind: RawKind) -> RawEvent {
    RawEvent {
        domain: dom(),
        run_id: Some(1),
        kind,
        received_at: SystemTime::now(),
    }
}

/// The sink of the latest connection, shared with the test.
type Sinks = Arc<Mutex<Vec<Sink>>>;

fn session(list: Vec<DomainInfo>, alive: bool) -> Box<dyn Session> {
    let mut s = MockSession::new();
    s.expect_list_domains().returning(move || Ok(list.clone()));
    s.expect_is_alive().return_const(alive);
    s.expect_connection().returning(|| None);
    s.expect_domain_xml()
        .returning(|_| Ok("<domain><name>dom-a</name></domain>".into()));
    Box::new(s)
}

async fn next(stream: &mut EventStream) -> Item {
    tokio::time::timeout(Duration::from_secs(5), stream.recv())
        .await
        .expect("an item within 5 s")
        .expect("the stream does not end")
}

fn describe(item: &Item) -> String {
    match item {
        Item::Connected { generation, .. } => format!("connected g{generation}"),
        Item::Disconnected { generation, reason } => {
            format!("disconnected g{generation}: {reason}")
        }
        Item::ConnectFailed {
            attempt, retry_in, ..
        } => format!("connect-failed #{attempt} retry in {retry_in:?}"),
        Item::InitStart { generation } => format!("init-start g{generation}"),
        Item::InitDomain(d) => format!("init {} {}", d.domain.name, d.state),
        Item::InitDone { generation, .. } => format!("init-done g{generation}"),
        Item::Watchdog(w) => format!("watchdog {} {} g{}", w.action, w.origin, w.generation),
        Item::Lifecycle(l) => format!("{} {} xml={}", l.event, l.detail, l.xml.is_some()),
        Item::Error(e) => format!("error: {e}"),
    }
}

async fn expect(stream: &mut EventStream, expected: &[&str]) {
    for want in expected {
        let got = describe(&next(stream).await);
        assert_eq!(&got, want);
    }
}

fn send(sinks: &Sinks, msg: Msg) {
    let sinks = sinks.lock().unwrap();
    sinks.last().expect("a connection").send(msg).unwrap();
}

#[tokio::test]
async fn reconnects_after_close_and_does_not_repeat_a_reported_pause() {
    let sinks = Sinks::default();
    let attempts = Arc::new(AtomicU32::new(0));
    let mut backend = MockBackend::new();
    let (s, a) = (sinks.clone(), attempts.clone());
    backend
        .expect_connect()
        .returning(move |_, generation, sink| {
            s.lock().unwrap().push(sink);
            match a.fetch_add(1, Ordering::SeqCst) {
                0 => {
                    assert_eq!(generation, 1);
                    Ok(session(vec![listed(DomainState::Running, 1)], true))
                }
                1 => Err(connect_error()),
                _ => {
                    assert_eq!(generation, 2);
                    Ok(session(vec![listed(DomainState::Paused, 6)], true))
                }
            }
        });
    let mut stream = spawn(backend, config()).unwrap();
    expect(
        &mut stream,
        &[
            "connected g1",
            "init-start g1",
            "init dom-a running",
            "init-done g1",
        ],
    )
    .await;
    send(
        &sinks,
        Msg::Event(raw(RawKind::Watchdog {
            action: Enum::Known(WatchdogAction::Pause),
        })),
    );
    send(
        &sinks,
        Msg::Event(raw(RawKind::Lifecycle {
            event: Enum::Known(Lifecycle::Suspended),
            detail: LifecycleDetail::from_raw(3, 3),
        })),
    );
    // A close from another generation is ignored.
    send(
        &sinks,
        Msg::Closed {
            generation: 7,
            reason: 1,
        },
    );
    send(
        &sinks,
        Msg::Closed {
            generation: 1,
            reason: 1,
        },
    );
    expect(
        &mut stream,
        &[
            "watchdog pause live g1",
            "suspended watchdog xml=false",
            "disconnected g1: connection closed (eof)",
            "connect-failed #1 retry in 10ms",
            "connected g2",
            "init-start g2",
            "init dom-a paused",
            "init-done g2",
        ],
    )
    .await;
    // Nothing else: the pause was reported once.
    let quiet = tokio::time::timeout(Duration::from_millis(100), stream.recv()).await;
    assert!(quiet.is_err(), "unexpected item: {quiet:?}");
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn pause_found_by_catch_up_is_reported_as_recovered_once() {
    let attempts = Arc::new(AtomicU32::new(0));
    let sinks = Sinks::default();
    let mut backend = MockBackend::new();
    let (s, a) = (sinks.clone(), attempts.clone());
    backend.expect_connect().returning(move |_, _, sink| {
        s.lock().unwrap().push(sink);
        a.fetch_add(1, Ordering::SeqCst);
        Ok(session(vec![listed(DomainState::Paused, 6)], true))
    });
    let mut stream = spawn(backend, config()).unwrap();
    let mut firings = Vec::new();
    for generation in 1..=3u64 {
        loop {
            match next(&mut stream).await {
                Item::InitDone { .. } => break,
                Item::Watchdog(w) => firings.push(w),
                _ => {}
            }
        }
        // The recovered firing follows InitDone.
        let quiet = tokio::time::timeout(Duration::from_millis(50), stream.recv()).await;
        if let Ok(Some(Item::Watchdog(w))) = quiet {
            firings.push(w);
        }
        send(
            &sinks,
            Msg::Closed {
                generation,
                reason: 1,
            },
        );
    }
    assert_eq!(firings.len(), 1, "{firings:?}");
    assert_eq!(firings[0].origin, Origin::Recovered);
    assert_eq!(firings[0].generation, 1);
}

#[tokio::test]
async fn backoff_grows_and_caps_while_libvirt_is_down() {
    let attempts = Arc::new(AtomicU32::new(0));
    let mut backend = MockBackend::new();
    let a = attempts.clone();
    backend.expect_connect().returning(move |_, _, _| {
        a.fetch_add(1, Ordering::SeqCst);
        Err(connect_error())
    });
    let started = Instant::now();
    let mut stream = spawn(backend, config()).unwrap();
    expect(
        &mut stream,
        &[
            "connect-failed #1 retry in 5ms",
            "connect-failed #2 retry in 10ms",
            "connect-failed #3 retry in 20ms",
            "connect-failed #4 retry in 20ms",
            "connect-failed #5 retry in 20ms",
        ],
    )
    .await;
    // No spinning: attempts are paced by the backoff.
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(55), "{elapsed:?}");
    drop(stream);
    std::thread::sleep(Duration::from_millis(60));
    let n = attempts.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(60));
    assert_eq!(attempts.load(Ordering::SeqCst), n, "stopped after the drop");
}

#[tokio::test]
async fn dead_connection_and_failed_catch_up_both_reconnect() {
    let attempts = Arc::new(AtomicU32::new(0));
    let mut backend = MockBackend::new();
    let a = attempts.clone();
    backend.expect_connect().returning(move |_, _, _| {
        match a.fetch_add(1, Ordering::SeqCst) {
            0 => Ok(session(vec![], false)), // is_alive says dead
            1 => {
                let mut s = MockSession::new();
                s.expect_list_domains().returning(|| {
                    Err(Error::ListDomains {
                        uri: "test:///x".into(),
                        source: virt_error(),
                    })
                });
                s.expect_connection().returning(|| None);
                Ok(Box::new(s))
            }
            _ => Ok(session(vec![], true)),
        }
    });
    let mut stream = spawn(backend, config()).unwrap();
    expect(
        &mut stream,
        &[
            "connected g1",
            "init-start g1",
            "init-done g1",
            "disconnected g1: connection is no longer alive",
            "connected g2",
        ],
    )
    .await;
    let item = next(&mut stream).await;
    assert!(
        describe(&item).starts_with(
            "disconnected g2: catch-up failed: cannot list the domains on `test:///x`"
        ),
        "{}",
        describe(&item)
    );
    expect(
        &mut stream,
        &["connected g3", "init-start g3", "init-done g3"],
    )
    .await;
}

/// A config whose backoff alone would keep the listener away for an hour,
/// watching the socket at `path`.
fn watched(path: &std::path::Path) -> ListenerConfig {
    config()
        .uri(format!("qemu+unix:///system?socket={}", path.display()))
        .socket_probe_interval(Duration::from_millis(10))
        .backoff(
            wd_backoff::Backoff::new(Duration::from_secs(3600), Duration::from_secs(3600))
                .jitter(false),
        )
}

fn socket_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("wd-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn a_socket_that_accepts_again_ends_the_backoff_and_the_catch_up_follows() {
    let dir = socket_dir("back");
    let path = dir.join("sock");
    let attempts = Arc::new(AtomicU32::new(0));
    let mut backend = MockBackend::new();
    let a = attempts.clone();
    backend
        .expect_connect()
        .returning(move |_, _, _| match a.fetch_add(1, Ordering::SeqCst) {
            0 => Err(connect_error()),
            _ => Ok(session(vec![listed(DomainState::Running, 1)], true)),
        });
    let mut stream = spawn(backend, watched(&path)).unwrap();
    expect(&mut stream, &["connect-failed #1 retry in 3600s"]).await;
    // The daemon comes back: its socket accepts.
    let _daemon = std::os::unix::net::UnixListener::bind(&path).unwrap();
    expect(
        &mut stream,
        &[
            "connected g1",
            "init-start g1",
            "init dom-a running",
            "init-done g1",
        ],
    )
    .await;
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    drop(stream);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_daemon_that_accepts_but_refuses_is_retried_on_the_backoff_only() {
    let dir = socket_dir("refuse");
    let path = dir.join("sock");
    // Accepting all along (the kernel's backlog accepts for it).
    let _daemon = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let attempts = Arc::new(AtomicU32::new(0));
    let mut backend = MockBackend::new();
    let a = attempts.clone();
    backend.expect_connect().returning(move |_, _, _| {
        a.fetch_add(1, Ordering::SeqCst);
        Err(connect_error())
    });
    let stream = spawn(backend, watched(&path)).unwrap();
    // Twenty probe intervals: a probe-paced retry would have come by now.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        1,
        "no retry before the backoff"
    );
    drop(stream);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn started_and_defined_carry_xml_and_a_failed_fetch_is_an_error_item() {
    let sinks = Sinks::default();
    let mut backend = MockBackend::new();
    let s = sinks.clone();
    backend.expect_connect().returning(move |_, _, sink| {
        s.lock().unwrap().push(sink);
        let mut m = MockSession::new();
        m.expect_list_domains().returning(|| Ok(vec![]));
        m.expect_is_alive().return_const(true);
        m.expect_connection().returning(|| None);
        let calls = AtomicU32::new(0);
        m.expect_domain_xml().returning(move |uuid| {
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                Ok(format!("<domain><uuid>{uuid}</uuid></domain>"))
            } else {
                Err(Error::Domain {
                    what: "xml",
                    domain: uuid.to_string(),
                    source: virt_error(),
                })
            }
        });
        Ok(Box::new(m))
    });
    let mut stream = spawn(backend, config()).unwrap();
    expect(
        &mut stream,
        &["connected g1", "init-start g1", "init-done g1"],
    )
    .await;
    for (event, detail) in [
        (Lifecycle::Started, 0),
        (Lifecycle::Defined, 1),
        (Lifecycle::Stopped, 1),
    ] {
        send(
            &sinks,
            Msg::Event(raw(RawKind::Lifecycle {
                event: Enum::Known(event),
                detail: LifecycleDetail::from_raw(event as i32, detail),
            })),
        );
    }
    let first = next(&mut stream).await;
    let Item::Lifecycle(l) = &first else {
        panic!("{first:?}")
    };
    assert_eq!(
        l.xml.as_deref(),
        Some("<domain><uuid>00000000-0000-0000-0000-00000000000a</uuid></domain>")
    );
    let item = next(&mut stream).await;
    assert!(
        describe(&item).starts_with(
            "error: cannot read the xml of domain 00000000-0000-0000-0000-00000000000a"
        ),
        "{}",
        describe(&item)
    );
    expect(
        &mut stream,
        &["defined updated xml=false", "stopped destroyed xml=false"],
    )
    .await;
}

/// Sets its flag when dropped.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn dropping_the_stream_stops_the_listener_and_releases_the_session() {
    let released = Arc::new(AtomicBool::new(false));
    let mut backend = MockBackend::new();
    let r = released.clone();
    backend.expect_connect().times(1).returning(move |_, _, _| {
        let flag = DropFlag(r.clone());
        let mut m = MockSession::new();
        m.expect_list_domains().returning(|| Ok(vec![]));
        m.expect_is_alive().return_const(true);
        // The closure owns the flag, so it drops with the session.
        m.expect_connection().returning(move || {
            let _ = &flag;
            None
        });
        Ok(Box::new(m))
    });
    let mut stream = spawn(backend, config()).unwrap();
    expect(
        &mut stream,
        &["connected g1", "init-start g1", "init-done g1"],
    )
    .await;
    assert!(!released.load(Ordering::SeqCst));
    // The drop returns once the thread has released the session and
    // ended: a process exiting next does not exit under it.
    drop(stream);
    assert!(released.load(Ordering::SeqCst), "session not released");
}

/// A consumer written against `EventSource` gets the real stream's items,
/// in order (what the mock stands in for in consumers' tests).
#[tokio::test]
async fn the_stream_is_an_event_source_for_generic_consumers() {
    async fn take<S: EventSource>(source: &mut S, n: usize) -> Vec<String> {
        let mut got = Vec::new();
        for _ in 0..n {
            let item = tokio::time::timeout(Duration::from_secs(5), source.next_item())
                .await
                .expect("an item within 5 s")
                .expect("the source does not end");
            got.push(describe(&item));
        }
        got
    }
    let mut backend = MockBackend::new();
    backend.expect_connect().times(1).returning(|_, _, _| {
        Ok(session(
            vec![listed(
                DomainState::Paused,
                crate::kinds::PAUSED_REASON_WATCHDOG,
            )],
            true,
        ))
    });
    let mut stream = spawn(backend, config()).unwrap();
    assert_eq!(
        take(&mut stream, 5).await,
        [
            "connected g1",
            "init-start g1",
            "init dom-a paused",
            "init-done g1",
            "watchdog pause recovered g1",
        ]
    );
}

/// After the catch-up, a firing and the lifecycle events that need no XML
/// reach the consumer on libvirt's callback thread (the direct path), in
/// order with a `started` (which the listener's thread handles, fetching
/// its XML) and with what comes after it.
#[tokio::test]
async fn live_events_take_the_direct_path_in_order_once_caught_up() {
    let sinks = Sinks::default();
    let mut backend = MockBackend::new();
    let s = sinks.clone();
    backend
        .expect_connect()
        .times(1)
        .returning(move |_, _, sink| {
            s.lock().unwrap().push(sink);
            Ok(session(vec![], true))
        });
    // No liveness check wakes the listener's thread meanwhile.
    let config = config().alive_check_interval(Duration::from_secs(60));
    let mut stream = spawn(backend, config).unwrap();
    expect(
        &mut stream,
        &["connected g1", "init-start g1", "init-done g1"],
    )
    .await;
    let open = || sinks.lock().unwrap().last().is_some_and(Sink::direct_open);
    let t0 = Instant::now();
    while !open() {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the direct path opens"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let pause = RawKind::Watchdog {
        action: Enum::Known(WatchdogAction::Pause),
    };
    let life = |event, detail| Msg::Event(raw(lifecycle_kind(event, detail)));
    send(&sinks, Msg::Event(raw(pause)));
    send(&sinks, life(Lifecycle::Suspended, 3));
    send(&sinks, life(Lifecycle::Started, 0));
    send(&sinks, life(Lifecycle::Stopped, 1));
    expect(
        &mut stream,
        &[
            "watchdog pause live g1",
            "suspended watchdog xml=false",
            "started booted xml=true",
            "stopped destroyed xml=false",
        ],
    )
    .await;
    // The first two went directly, `started` did not, and `stopped` may
    // have come while the listener's thread handled `started`.
    let direct = stream.stats().direct;
    assert!((2..=3).contains(&direct), "direct: {direct}");
}

#[tokio::test]
async fn recheck_recovers_a_pause_the_catch_up_missed_once() {
    let rechecks = Arc::new(AtomicU32::new(0));
    let mut backend = MockBackend::new();
    let r = rechecks.clone();
    backend.expect_connect().times(1).returning(move |_, _, _| {
        let r = r.clone();
        let mut m = MockSession::new();
        let listings = AtomicU32::new(0);
        m.expect_list_domains().returning(move || {
            if listings.fetch_add(1, Ordering::SeqCst) == 0 {
                // The catch-up: libvirtd has not caught up with QEMU.
                Ok(vec![listed(DomainState::Running, 1)])
            } else {
                r.fetch_add(1, Ordering::SeqCst);
                let mut d = listed(DomainState::Paused, 6);
                d.xml = None;
                Ok(vec![d])
            }
        });
        m.expect_domain_xml()
            .returning(|_| Ok("<domain><name>dom-a</name></domain>".into()));
        m.expect_is_alive().return_const(true);
        m.expect_connection().returning(|| None);
        Ok(Box::new(m))
    });
    let mut stream = spawn(
        backend,
        config().recheck_interval(Duration::from_millis(20)),
    )
    .unwrap();
    expect(
        &mut stream,
        &[
            "connected g1",
            "init-start g1",
            "init dom-a running",
            "init-done g1",
        ],
    )
    .await;
    expect(&mut stream, &["watchdog pause recovered g1"]).await;
    while rechecks.load(Ordering::SeqCst) < 4 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let quiet = tokio::time::timeout(Duration::from_millis(50), stream.recv()).await;
    assert!(quiet.is_err(), "reported once: {quiet:?}");
}

/// Issue 19: libvirtd lists the guest `running` until it has reattached to
/// its QEMU (busy with it meanwhile); the settle listings after the
/// catch-up, with markers, list it as paused and recover the pause once,
/// then stop once libvirt is no longer busy.
#[tokio::test]
async fn settle_listings_find_a_pause_libvirtd_learnt_of_after_the_catch_up() {
    let mut backend = MockBackend::new();
    let listings = Arc::new(AtomicU32::new(0));
    let l = listings.clone();
    backend.expect_connect().times(1).returning(move |_, _, _| {
        let l = l.clone();
        let mut m = MockSession::new();
        let seen = l.clone();
        m.expect_list_domains().returning(move || {
            // The catch-up and the three fixed settle listings: stale.
            Ok(vec![if l.fetch_add(1, Ordering::SeqCst) < 4 {
                listed(DomainState::Running, 1)
            } else {
                listed(DomainState::Paused, 6)
            }])
        });
        // Busy until the fifth listing: one more settle listing.
        m.expect_busy_domains()
            .returning(move || usize::from(seen.load(Ordering::SeqCst) < 5));
        m.expect_domain_xml()
            .returning(|_| Ok("<domain><name>dom-a</name></domain>".into()));
        m.expect_is_alive().return_const(true);
        m.expect_connection().returning(|| None);
        Ok(Box::new(m))
    });
    let mut stream = spawn(backend, config().settle_interval(Duration::from_millis(5))).unwrap();
    let mut want = vec!["connected g1"];
    for state in ["running", "running", "running", "running", "paused"] {
        want.push("init-start g1");
        want.push(if state == "running" {
            "init dom-a running"
        } else {
            "init dom-a paused"
        });
        want.push("init-done g1");
    }
    want.push("watchdog pause recovered g1");
    expect(&mut stream, &want).await;
    // Not busy any more after the fifth listing: it is the last.
    let quiet = tokio::time::timeout(Duration::from_millis(300), stream.recv()).await;
    assert!(quiet.is_err(), "no more settle listings: {quiet:?}");
    assert_eq!(listings.load(Ordering::SeqCst), 5);
}

fn event_of(n: u128, kind: RawKind) -> RawEvent {
    RawEvent {
        domain: DomainId {
            uuid: Uuid::from_u128(n),
            name: format!("dom-{n}"),
        },
        run_id: Some(1),
        kind,
        received_at: SystemTime::now(),
    }
}

fn lifecycle_kind(event: Lifecycle, detail: i32) -> RawKind {
    RawKind::Lifecycle {
        event: Enum::Known(event),
        detail: LifecycleDetail::from_raw(event as i32, detail),
    }
}

#[tokio::test]
async fn a_flood_with_a_stalled_consumer_stays_bounded_keeps_checking_and_loses_no_firing() {
    const DOMAINS: u128 = 100;
    let sinks = Sinks::default();
    let alive = Arc::new(AtomicU32::new(0));
    let mut backend = MockBackend::new();
    let (s, a) = (sinks.clone(), alive.clone());
    backend
        .expect_connect()
        .times(1)
        .returning(move |_, _, sink| {
            s.lock().unwrap().push(sink);
            let a = a.clone();
            let mut m = MockSession::new();
            m.expect_list_domains().returning(|| Ok(vec![]));
            m.expect_is_alive().returning(move || {
                a.fetch_add(1, Ordering::SeqCst);
                true
            });
            m.expect_connection().returning(|| None);
            m.expect_domain_xml()
                .returning(|uuid| Ok(format!("<domain><uuid>{uuid}</uuid></domain>")));
            Ok(Box::new(m))
        });
    let mut stream = spawn(backend, config().channel_capacity(16).inbox_capacity(256)).unwrap();
    expect(
        &mut stream,
        &["connected g1", "init-start g1", "init-done g1"],
    )
    .await;
    // The consumer stalls from here on while 100,000 lifecycle events of
    // 100 domains arrive, with a pause firing (and its suspension) now and
    // then.
    let cycle = [
        (Lifecycle::Defined, 0),
        (Lifecycle::Started, 0),
        (Lifecycle::Suspended, 0),
        (Lifecycle::Resumed, 0),
        (Lifecycle::Stopped, 1),
        (Lifecycle::Undefined, 0),
    ];
    let mut firings = 0usize;
    for i in 0..100_000u128 {
        let d = i % DOMAINS;
        let (event, detail) = cycle[(i / DOMAINS % 6) as usize];
        send(
            &sinks,
            Msg::Event(event_of(d, lifecycle_kind(event, detail))),
        );
        if i % 997 == 0 {
            let pause = RawKind::Watchdog {
                action: Enum::Known(WatchdogAction::Pause),
            };
            send(&sinks, Msg::Event(event_of(d, pause)));
            send(
                &sinks,
                Msg::Event(event_of(d, lifecycle_kind(Lifecycle::Suspended, 3))),
            );
            firings += 1;
        }
    }
    let stats = stream.stats();
    let bound = 256 + 5 * DOMAINS as usize + 2 * firings;
    assert!(
        stats.inbox_high_water <= bound,
        "inbox held {} > {bound}",
        stats.inbox_high_water
    );
    assert!(stats.outbox_high_water <= 16, "{stats:?}");
    assert!(stats.folded > 90_000, "{stats:?}");
    // The liveness check keeps its schedule while nobody reads.
    let before = alive.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let checks = alive.load(Ordering::SeqCst) - before;
    assert!(checks >= 3, "{checks} alive checks in 200 ms");
    // The consumer catches up: every firing is there.
    let mut got = 0;
    while let Ok(Some(item)) = tokio::time::timeout(Duration::from_millis(300), stream.recv()).await
    {
        if matches!(item, Item::Watchdog(_)) {
            got += 1;
        }
    }
    assert_eq!(got, firings);
    assert_eq!(stream.stats().inbox_len, 0);
}
