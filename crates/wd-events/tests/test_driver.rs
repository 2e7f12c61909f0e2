//! Integration tests against libvirt's built-in `test:///default` driver: no
//! daemon, real libvirt library, real event loop and callbacks.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use virt::connect::Connect;
use wd_events::{
    DomainState, Enum, EventStream, Item, Lifecycle, LifecycleDetail, ListenerConfig, RawEvent,
    RawKind, ResumedDetail, StartedDetail, StoppedDetail, SuspendedDetail,
};

const URI: &str = "test:///default";

/// All connections to `test:///default` in one process share one driver
/// state (its domain `test`), so these tests take turns.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn next(stream: &mut EventStream) -> Item {
    tokio::time::timeout(Duration::from_secs(10), stream.recv())
        .await
        .expect("an item within 10 s")
        .expect("the stream does not end")
}

/// Skips items until the catch-up is done; returns the listed domains.
async fn until_init_done(stream: &mut EventStream) -> Vec<wd_events::DomainInfo> {
    let mut domains = Vec::new();
    loop {
        match next(stream).await {
            Item::InitDomain(d) => domains.push(d),
            Item::InitDone { domains: n, .. } => {
                assert_eq!(n, domains.len());
                return domains;
            }
            _ => {}
        }
    }
}

async fn next_lifecycle(stream: &mut EventStream) -> wd_events::LifecycleEvent {
    loop {
        if let Item::Lifecycle(l) = next(stream).await {
            return l;
        }
    }
}

#[tokio::test]
async fn listener_connects_lists_and_reports_suspend_resume_destroy_start() {
    let _serial = SERIAL.lock().await;
    let mut stream = wd_events::listen(ListenerConfig::default().uri(URI)).unwrap();
    match next(&mut stream).await {
        Item::Connected { generation, uri } => assert_eq!((generation, uri.as_str()), (1, URI)),
        other => panic!("expected Connected first, got {other:?}"),
    }
    assert!(matches!(
        next(&mut stream).await,
        Item::InitStart { generation: 1 }
    ));
    let domains = until_init_done(&mut stream).await;
    assert_eq!(domains.len(), 1, "{domains:?}");
    let listed = &domains[0];
    assert_eq!(listed.domain.name, "test");
    assert_eq!(listed.state, Enum::Known(DomainState::Running));
    assert!(!listed.is_paused_by_watchdog());
    assert!(listed.id.is_some());
    assert_eq!(listed.generation, 1);
    let xml = listed.xml.as_deref().expect("xml of the listed domain");
    assert!(xml.contains("<name>test</name>"), "{xml}");

    // Act on the listener's own connection (needed with a custom test
    // driver file, whose state is per connection).
    let conn = stream.connection().expect("connected");
    let dom = conn.lookup_domain_by_name("test").unwrap();
    let uuid = dom.uuid().unwrap();

    dom.suspend().unwrap();
    let suspended = next_lifecycle(&mut stream).await;
    assert_eq!(suspended.domain.uuid, uuid);
    assert_eq!(suspended.domain.name, "test");
    assert_eq!(suspended.event, Enum::Known(Lifecycle::Suspended));
    assert_eq!(
        suspended.detail,
        LifecycleDetail::Suspended(Enum::Known(SuspendedDetail::Paused))
    );
    assert_eq!(suspended.generation, 1);
    assert_eq!(suspended.episode, None);
    assert!(suspended.xml.is_none());
    let age = SystemTime::now()
        .duration_since(suspended.received_at)
        .unwrap();
    assert!(age < Duration::from_secs(10), "{age:?}");

    dom.resume().unwrap();
    let resumed = next_lifecycle(&mut stream).await;
    assert_eq!(
        resumed.detail,
        LifecycleDetail::Resumed(Enum::Known(ResumedDetail::Unpaused))
    );
    assert!(resumed.seq > suspended.seq);

    dom.destroy().unwrap();
    let stopped = next_lifecycle(&mut stream).await;
    assert_eq!(
        stopped.detail,
        LifecycleDetail::Stopped(Enum::Known(StoppedDetail::Destroyed))
    );
    assert!(stopped.seq > resumed.seq);

    dom.create().unwrap();
    let started = next_lifecycle(&mut stream).await;
    assert_eq!(
        started.detail,
        LifecycleDetail::Started(Enum::Known(StartedDetail::Booted))
    );
    let xml = started
        .xml
        .as_deref()
        .expect("started events carry the xml");
    assert!(xml.contains(&uuid.to_string()), "{xml}");
}

fn recv(rx: &mpsc::Receiver<RawEvent>, within: Duration) -> Option<RawEvent> {
    rx.recv_timeout(within).ok()
}

#[test]
fn no_events_arrive_after_the_registration_is_dropped() {
    let _serial = SERIAL.blocking_lock();
    wd_events::init_event_loop().unwrap();
    let conn = Connect::open(Some(URI)).unwrap();
    let (tx_dropped, rx_dropped) = mpsc::channel();
    let (tx_kept, rx_kept) = mpsc::channel();
    let dropped = wd_events::register(&conn, move |e| {
        let _ = tx_dropped.send(e);
    })
    .unwrap();
    let _kept = wd_events::register(&conn, move |e| {
        let _ = tx_kept.send(e);
    })
    .unwrap();
    let dom = conn.lookup_domain_by_name("test").unwrap();

    dom.suspend().unwrap();
    for rx in [&rx_dropped, &rx_kept] {
        let event = recv(rx, Duration::from_secs(5)).expect("suspend event");
        assert_eq!(
            event.kind,
            RawKind::Lifecycle {
                event: Enum::Known(Lifecycle::Suspended),
                detail: LifecycleDetail::Suspended(Enum::Known(SuspendedDetail::Paused)),
            }
        );
        assert_eq!(event.domain.name, "test");
        assert!(event.run_id.is_some());
    }

    drop(dropped);
    dom.resume().unwrap();
    // The registration still in place proves the event was emitted...
    let event = recv(&rx_kept, Duration::from_secs(5)).expect("resume event");
    assert!(matches!(
        event.kind,
        RawKind::Lifecycle { event, .. } if event.is(Lifecycle::Resumed)
    ));
    // ...and the dropped one did not get it.
    assert!(recv(&rx_dropped, Duration::from_millis(300)).is_none());
}

#[test]
fn dropping_the_registration_frees_the_closures() {
    let _serial = SERIAL.blocking_lock();
    wd_events::init_event_loop().unwrap();
    let conn = Connect::open(Some(URI)).unwrap();
    let witness = Arc::new(());
    let held = witness.clone();
    let registration = wd_events::register(&conn, move |_| {
        let _ = &held;
    })
    .unwrap();
    // One clone per event ID, plus ours.
    assert_eq!(Arc::strong_count(&witness), 3);
    drop(registration);
    // libvirt runs the free callbacks, maybe later on the loop thread.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Arc::strong_count(&witness) > 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(Arc::strong_count(&witness), 1);
}
