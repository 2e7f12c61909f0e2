//! Folding and the queues' bounds, without threads.

use std::time::SystemTime;

use super::*;
use crate::kinds::{Enum, WatchdogAction};
use crate::model::DomainId;

fn dom(n: u128) -> DomainId {
    DomainId {
        uuid: Uuid::from_u128(n),
        name: format!("dom-{n}"),
    }
}

fn life(n: u128, event: Lifecycle, detail: i32) -> RawEvent {
    RawEvent {
        domain: dom(n),
        run_id: Some(1),
        kind: RawKind::Lifecycle {
            event: Enum::Known(event),
            detail: LifecycleDetail::from_raw(event as i32, detail),
        },
        received_at: SystemTime::UNIX_EPOCH,
    }
}

fn fire(n: u128) -> RawEvent {
    RawEvent {
        domain: dom(n),
        run_id: Some(1),
        kind: RawKind::Watchdog {
            action: Enum::Known(WatchdogAction::Pause),
        },
        received_at: SystemTime::UNIX_EPOCH,
    }
}

/// `Started`, `Suspended` (paused by a user), `Suspended` (watchdog),
/// `Resumed`, `Stopped`, `Defined`, `Undefined`.
fn started(n: u128) -> RawEvent {
    life(n, Lifecycle::Started, 0)
}
fn paused(n: u128) -> RawEvent {
    life(n, Lifecycle::Suspended, 0)
}
fn paused_wd(n: u128) -> RawEvent {
    life(n, Lifecycle::Suspended, 3)
}
fn resumed(n: u128) -> RawEvent {
    life(n, Lifecycle::Resumed, 0)
}
fn stopped(n: u128) -> RawEvent {
    life(n, Lifecycle::Stopped, 1)
}
fn defined(n: u128) -> RawEvent {
    life(n, Lifecycle::Defined, 0)
}
fn undefined(n: u128) -> RawEvent {
    life(n, Lifecycle::Undefined, 0)
}

fn render(e: &RawEvent) -> String {
    let what = match e.kind {
        RawKind::Watchdog { action } => format!("fire {action}"),
        RawKind::Lifecycle { event, detail } => format!("{event} {detail}"),
    };
    format!("{} {what}", e.domain.name)
}

/// Pushes `events` into an inbox of `capacity` and returns what comes out.
fn check(capacity: usize, events: Vec<RawEvent>, expected: &[&str]) {
    let mut q = Events::new(capacity);
    for e in events {
        q.push(e);
    }
    let mut got = Vec::new();
    while let Some(e) = q.pop() {
        got.push(render(&e));
    }
    assert_eq!(got, expected);
    assert!(q.tails.is_empty(), "tails left: {:?}", q.tails);
}

#[test]
fn below_capacity_nothing_folds() {
    check(
        10,
        vec![started(1), paused(1), resumed(1), stopped(1)],
        &[
            "dom-1 started booted",
            "dom-1 suspended paused",
            "dom-1 resumed unpaused",
            "dom-1 stopped destroyed",
        ],
    );
}

#[test]
fn under_pressure_a_later_event_folds_the_ones_it_makes_redundant() {
    // Capacity 1: every push after the first is under pressure.
    check(
        1,
        vec![
            started(1),
            paused(1),
            resumed(1), // folds the user pause, not the start (its XML)
            paused(1),
            resumed(1), // folds the pause and the earlier resume
            defined(1), // keeps the resume (it ends an episode)
            started(1), // folds all: it ends an episode and brings XML
        ],
        &["dom-1 started booted"],
    );
    check(
        1,
        vec![defined(1), undefined(1), defined(1), stopped(2)],
        &[
            "dom-1 undefined removed",
            "dom-1 defined added",
            "dom-2 stopped destroyed",
        ],
    );
}

#[test]
fn firings_and_watchdog_pauses_never_fold_nor_anything_across_them() {
    check(
        1,
        vec![
            started(1),
            fire(1),
            paused_wd(1),
            resumed(1),
            fire(1),
            paused_wd(1),
            paused_wd(1),
            stopped(1),
        ],
        &[
            "dom-1 started booted",
            "dom-1 fire pause",
            "dom-1 suspended watchdog",
            "dom-1 resumed unpaused",
            "dom-1 fire pause",
            "dom-1 suspended watchdog",
            "dom-1 suspended watchdog",
            "dom-1 stopped destroyed",
        ],
    );
}

#[test]
fn a_flood_of_100k_lifecycle_events_stays_bounded_and_loses_no_firing() {
    const CAPACITY: usize = 256;
    const DOMAINS: u128 = 100;
    let mut q = Events::new(CAPACITY);
    let mut firings = 0usize;
    let cycle = [started, paused, resumed, defined, stopped, undefined];
    let mut max_len = 0;
    for i in 0..100_000u128 {
        let d = i % DOMAINS;
        q.push(cycle[(i / DOMAINS % 6) as usize](d));
        if i % 997 == 0 {
            q.push(fire(d));
            q.push(paused_wd(d));
            firings += 1;
        }
        max_len = max_len.max(q.len());
    }
    // The capacity, plus at most one event per foldable class and domain,
    // plus what the firings bring.
    let bound = CAPACITY + 5 * DOMAINS as usize + 2 * firings;
    assert!(max_len <= bound, "{max_len} > {bound}");
    assert!(q.folded > 90_000, "folded {}", q.folded);
    assert_eq!(q.high_water, max_len);
    let mut seen_firings = 0;
    let mut last: HashMap<Uuid, String> = HashMap::new();
    while let Some(e) = q.pop() {
        let r = render(&e);
        if matches!(e.kind, RawKind::Watchdog { .. }) {
            seen_firings += 1;
        }
        if r.ends_with("suspended watchdog") {
            // Still right after its firing.
            assert!(last[&e.domain.uuid].ends_with("fire pause"), "{r}");
        }
        last.insert(e.domain.uuid, r);
    }
    assert_eq!(seen_firings, firings);
    assert!(q.tails.is_empty());
}

#[test]
fn the_outbox_folds_connection_noise_and_ends_after_the_supervisor() {
    let (sink, inbox, outbox) = queues(8, 1);
    let failed = |attempt| Item::ConnectFailed {
        attempt,
        error: crate::Error::Spawn {
            name: "x",
            source: Arc::new(std::io::Error::other("x")),
        },
        retry_in: Duration::ZERO,
    };
    inbox.emit(failed(1)).unwrap();
    inbox.emit(failed(2)).unwrap();
    inbox
        .emit(Item::Connected {
            generation: 1,
            uri: "test:///x".into(),
        })
        .unwrap();
    // Full, and nothing of generation 1 taken: the pair vanishes.
    inbox
        .emit(Item::Disconnected {
            generation: 1,
            reason: crate::DisconnectReason::NotAlive,
        })
        .unwrap();
    assert_eq!(outbox.stats().outbox_len, 1);
    assert_eq!(outbox.stats().outbox_high_water, 2);
    // Room now reported to a supervisor that does not take events.
    assert!(matches!(
        inbox.next(Instant::now(), false, false),
        Next::Timeout
    ));
    let waker = futures::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    match outbox.poll_recv(&mut cx) {
        Poll::Ready(Some(Item::ConnectFailed { attempt: 2, .. })) => {}
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        inbox.next(Instant::now(), false, false),
        Next::Room
    ));
    sink.send(Msg::Event(fire(1))).unwrap();
    assert!(matches!(
        inbox.next(Instant::now(), true, false),
        Next::Event(_)
    ));
    assert!(outbox.poll_recv(&mut cx).is_pending());
    drop(inbox);
    assert!(matches!(outbox.poll_recv(&mut cx), Poll::Ready(None)));
    assert_eq!(sink.send(Msg::Shutdown), Err(Gone));
}

/// Waits (up to 5 s) until the supervisor thread waits with the direct
/// path open.
fn until_direct(sink: &Sink) {
    let t0 = Instant::now();
    while !sink.0.lock().direct {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the supervisor waits"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn take(outbox: &Outbox) -> Option<Item> {
    let waker = futures::task::noop_waker();
    match outbox.poll_recv(&mut Context::from_waker(&waker)) {
        Poll::Ready(item) => item,
        Poll::Pending => None,
    }
}

#[test]
fn while_the_supervisor_waits_a_firing_goes_straight_to_the_consumer() {
    let (sink, inbox, outbox) = queues(8, 4);
    let supervisor = std::thread::spawn(move || {
        let next = inbox.next(Instant::now() + Duration::from_millis(300), true, true);
        (inbox, next)
    });
    until_direct(&sink);
    sink.send(Msg::Event(fire(1))).unwrap();
    sink.send(Msg::Event(stopped(2))).unwrap();
    match take(&outbox) {
        Some(Item::Watchdog(w)) => assert_eq!(w.domain.uuid, Uuid::from_u128(1)),
        other => panic!("the firing's item at once, got {other:?}"),
    }
    assert!(matches!(take(&outbox), Some(Item::Lifecycle(_))));
    // The supervisor was never handed them: it waited out its deadline.
    let (inbox, next) = supervisor.join().unwrap();
    assert!(matches!(next, Next::Timeout), "{next:?}");
    assert_eq!(outbox.stats().direct, 2);
    assert_eq!(outbox.stats().inbox_len, 0);
    // Not waiting any more: the supervisor's way again.
    sink.send(Msg::Event(fire(3))).unwrap();
    assert!(take(&outbox).is_none());
    assert!(matches!(
        inbox.next(Instant::now(), true, true),
        Next::Event(_)
    ));
}

#[test]
fn the_direct_path_never_passes_what_the_supervisor_must_do_first() {
    let (sink, inbox, outbox) = queues(8, 2);
    let open = || sink.0.lock().direct = true;
    // Closed: not while the supervisor does not take events.
    sink.send(Msg::Event(fire(1))).unwrap();
    assert_eq!((outbox.stats().direct, outbox.stats().inbox_len), (0, 1));
    // An event in the inbox comes first, and what follows it waits too.
    open();
    sink.send(Msg::Event(fire(2))).unwrap();
    assert_eq!((outbox.stats().direct, outbox.stats().inbox_len), (0, 2));
    while inbox.next(Instant::now(), true, false).is_event() {}
    // A pending close comes first.
    open();
    sink.send(Msg::Closed {
        generation: 1,
        reason: 0,
    })
    .unwrap();
    sink.send(Msg::Event(fire(3))).unwrap();
    assert_eq!((outbox.stats().direct, outbox.stats().inbox_len), (0, 1));
    assert!(matches!(
        inbox.next(Instant::now(), true, false),
        Next::Closed { .. }
    ));
    assert!(inbox.next(Instant::now(), true, false).is_event());
    // `started` needs the domain's XML, which only the supervisor fetches.
    open();
    sink.send(Msg::Event(started(4))).unwrap();
    assert_eq!((outbox.stats().direct, outbox.stats().inbox_len), (0, 1));
    assert!(inbox.next(Instant::now(), true, false).is_event());
    // The consumer's queue is full: the event waits in the inbox (which
    // folds), as it does on the supervisor's way.
    open();
    sink.send(Msg::Event(fire(5))).unwrap();
    sink.send(Msg::Event(fire(6))).unwrap();
    assert_eq!(outbox.stats().direct, 2);
    open();
    sink.send(Msg::Event(fire(7))).unwrap();
    assert_eq!((outbox.stats().direct, outbox.stats().inbox_len), (2, 1));
    assert_eq!(outbox.stats().outbox_len, 2);
    // The consumer gone: nothing more is handed to it.
    sink.send(Msg::Shutdown).unwrap();
    open();
    sink.send(Msg::Event(fire(8))).unwrap();
    assert_eq!(outbox.stats().direct, 2);
}
