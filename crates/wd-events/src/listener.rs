//! The consumer's side: [`listen`], [`EventStream`], [`EventSource`], and
//! the supervisor thread that drives the state machine.

use std::pin::Pin;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use futures::Stream;
use tokio::sync::mpsc as tmpsc;
use virt::connect::Connect;

use crate::backend::{Backend, Libvirt, Msg, Session};
use crate::config::{Backoff, ListenerConfig};
use crate::error::{Error, Result};
use crate::kinds::Enum;
use crate::machine::Machine;
use crate::model::{DisconnectReason, Item};

/// A source of listener items. [`EventStream`] is the real one; consumers
/// take `impl EventSource` (or the `Stream`) so they can be tested without
/// libvirt, with `MockEventSource` (feature `mock`) or a scripted source.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait::async_trait]
pub trait EventSource: Send {
    /// The next item; `None` only when the source has ended (a real
    /// listener never ends while its consumer keeps it).
    async fn next_item(&mut self) -> Option<Item>;
}

type SharedConnection = Arc<Mutex<Option<Connect>>>;

/// The listener's stream of [`Item`]s. It never ends on its own: errors are
/// items and the listener reconnects by itself. Dropping it stops the
/// listener (its supervisor thread exits and deregisters).
#[derive(Debug)]
pub struct EventStream {
    items: tmpsc::Receiver<Item>,
    control: Sender<Msg>,
    connection: SharedConnection,
}

/// Starts a listener on `config.uri` and returns its stream.
///
/// Registers libvirt's event loop first if needed (see
/// [`init_event_loop`](crate::init_event_loop)). The connection is opened on
/// the listener's own thread; a failure to connect is an item
/// ([`Item::ConnectFailed`]), not an error here. This fails only if the
/// event loop or the thread cannot be started.
///
/// ```
/// use futures::StreamExt;
/// use wd_events::{Item, ListenerConfig};
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let mut events = wd_events::listen(ListenerConfig::default().uri("test:///default"))?;
/// while let Some(item) = events.next().await {
///     match item {
///         Item::Watchdog(firing) => println!("{}: {}", firing.domain, firing.action),
///         Item::InitDone { domains, .. } => { assert_eq!(domains, 1); break }
///         _ => {}
///     }
/// }
/// # Ok::<(), wd_events::Error>(())
/// # }).unwrap();
/// ```
pub fn listen(config: ListenerConfig) -> Result<EventStream> {
    crate::ffi::init_event_loop()?;
    spawn(Libvirt, config)
}

/// Starts the supervisor thread over any backend.
pub(crate) fn spawn<B: Backend>(backend: B, config: ListenerConfig) -> Result<EventStream> {
    let (items_tx, items) = tmpsc::channel(config.channel_capacity.max(1));
    let (control, inbox) = mpsc::channel();
    let connection = SharedConnection::default();
    let supervisor = Supervisor {
        backend,
        config,
        inbox,
        sink: control.clone(),
        out: items_tx,
        connection: connection.clone(),
        machine: Machine::new(),
    };
    std::thread::Builder::new()
        .name("wd-events".to_owned())
        .spawn(move || supervisor.run())
        .map_err(|e| Error::Spawn {
            name: "wd-events",
            source: Arc::new(e),
        })?;
    Ok(EventStream {
        items,
        control,
        connection,
    })
}

impl EventStream {
    /// The listener's current connection, while it is connected.
    ///
    /// Useful to fetch a domain's XML on the same connection, and to drive
    /// libvirt's `test` driver with a custom file (`test:///path.xml`),
    /// whose state is per connection. (`test:///default` shares one state
    /// among all connections of a process.)
    pub fn connection(&self) -> Option<Connect> {
        self.connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Receives the next item (the same as `StreamExt::next`).
    pub async fn recv(&mut self) -> Option<Item> {
        self.items.recv().await
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        let _ = self.control.send(Msg::Shutdown);
    }
}

impl Stream for EventStream {
    type Item = Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        self.items.poll_recv(cx)
    }
}

#[async_trait::async_trait]
impl EventSource for EventStream {
    async fn next_item(&mut self) -> Option<Item> {
        self.recv().await
    }
}

/// The consumer is gone; stop.
struct Stop;

/// Owns the state machine and the connection; runs on the `wd-events`
/// thread. See the crate docs for the thread model.
struct Supervisor<B> {
    backend: B,
    config: ListenerConfig,
    inbox: Receiver<Msg>,
    /// A sender into `inbox`, cloned into each connection's callbacks.
    sink: Sender<Msg>,
    out: tmpsc::Sender<Item>,
    connection: SharedConnection,
    machine: Machine,
}

impl<B: Backend> Supervisor<B> {
    fn run(mut self) {
        let _ = self.run_until_stopped();
        self.set_connection(None);
    }

    fn run_until_stopped(&mut self) -> Result<(), Stop> {
        let mut backoff = Backoff::new(self.config.backoff);
        let mut failures = 0u32;
        loop {
            let generation = self.machine.generation() + 1;
            let session = match self
                .backend
                .connect(&self.config, generation, self.sink.clone())
            {
                Ok(session) => session,
                Err(error) => {
                    failures = failures.saturating_add(1);
                    let retry_in = backoff.next_delay(fastrand::f64());
                    self.emit(Item::ConnectFailed {
                        attempt: failures,
                        error,
                        retry_in,
                    })?;
                    self.idle(retry_in)?;
                    continue;
                }
            };
            failures = 0;
            let up_since = Instant::now();
            self.set_connection(session.connection());
            let item = self.machine.connected(&self.config.uri);
            self.emit(item)?;
            let reason = self.serve(&*session)?;
            self.set_connection(None);
            // Deregister and close before telling the consumer.
            drop(session);
            let item = self.machine.disconnected(reason);
            self.emit(item)?;
            backoff.connection_ended(up_since.elapsed());
            self.idle(backoff.next_delay(fastrand::f64()))?;
        }
    }

    /// Catches up, then handles live events until the connection is lost;
    /// meanwhile checks that the connection is alive and re-checks the
    /// domains, each at its interval.
    fn serve(&mut self, session: &dyn Session) -> Result<DisconnectReason, Stop> {
        match session.list_domains(true) {
            Ok(domains) => {
                for item in self.machine.listed(domains, SystemTime::now()) {
                    self.emit(item)?;
                }
            }
            Err(e) => return Ok(DisconnectReason::CatchUpFailed(e)),
        }
        let generation = self.machine.generation();
        let alive_every = self
            .config
            .alive_check_interval
            .max(Duration::from_millis(10));
        let recheck_every = self.config.recheck_interval;
        let mut next_alive = Instant::now() + alive_every;
        let mut next_recheck = (!recheck_every.is_zero()).then(|| Instant::now() + recheck_every);
        loop {
            // Checked on every turn, so a steady flow of events cannot starve
            // them.
            let now = Instant::now();
            if now >= next_alive {
                if !session.is_alive() {
                    return Ok(DisconnectReason::NotAlive);
                }
                next_alive = now + alive_every;
            }
            if let Some(at) = next_recheck
                && now >= at
            {
                match session.list_domains(false) {
                    Ok(domains) => {
                        for item in self.machine.rechecked(domains, SystemTime::now()) {
                            self.emit(item)?;
                        }
                    }
                    // The alive check decides whether the connection is lost.
                    Err(e) => self.emit(Item::Error(e))?,
                }
                next_recheck = Some(Instant::now() + recheck_every);
            }
            let wake = next_recheck.map_or(next_alive, |r| r.min(next_alive));
            match self
                .inbox
                .recv_timeout(wake.saturating_duration_since(Instant::now()))
            {
                Ok(Msg::Event(event)) => {
                    let xml = if event.kind.wants_xml() {
                        match session.domain_xml(event.domain.uuid) {
                            Ok(xml) => Some(xml),
                            Err(e) => {
                                self.emit(Item::Error(e))?;
                                None
                            }
                        }
                    } else {
                        None
                    };
                    if let Some(item) = self.machine.live(event, xml) {
                        self.emit(item)?;
                    }
                }
                Ok(Msg::Closed {
                    generation: g,
                    reason,
                }) if g == generation => {
                    return Ok(DisconnectReason::Closed(Enum::from_raw(reason)));
                }
                // A late close of an earlier connection.
                Ok(Msg::Closed { .. }) => {}
                Ok(Msg::Shutdown) | Err(RecvTimeoutError::Disconnected) => return Err(Stop),
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }

    /// Waits `delay` while disconnected, still handling events that were
    /// queued before the connection went away (they are real events).
    fn idle(&mut self, delay: Duration) -> Result<(), Stop> {
        let deadline = Instant::now() + delay;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            match self.inbox.recv_timeout(left) {
                Ok(Msg::Event(event)) => {
                    if let Some(item) = self.machine.live(event, None) {
                        self.emit(item)?;
                    }
                }
                Ok(Msg::Closed { .. }) => {}
                Ok(Msg::Shutdown) | Err(RecvTimeoutError::Disconnected) => return Err(Stop),
                Err(RecvTimeoutError::Timeout) => return Ok(()),
            }
        }
    }

    fn emit(&self, item: Item) -> Result<(), Stop> {
        match &item {
            Item::ConnectFailed {
                attempt,
                error,
                retry_in,
            } => tracing::warn!(attempt, error = %error, ?retry_in, "libvirt connect failed"),
            Item::Disconnected { generation, reason } => {
                tracing::warn!(generation, %reason, "libvirt connection lost");
            }
            Item::Connected { generation, uri } => {
                tracing::info!(generation, uri, "libvirt connected");
            }
            _ => {}
        }
        // Waits while the consumer is behind; the libvirt loop thread never
        // does, since it only feeds the unbounded inbox.
        self.out.blocking_send(item).map_err(|_| Stop)
    }

    fn set_connection(&self, conn: Option<Connect>) {
        *self
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = conn;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{MockBackend, MockSession};
    use crate::config::BackoffConfig;
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
            .backoff(
                BackoffConfig::default()
                    .delays(Duration::from_millis(5), Duration::from_millis(20))
                    .jitter(0.0),
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
    type Sinks = Arc<Mutex<Vec<Sender<Msg>>>>;

    fn session(list: Vec<DomainInfo>, alive: bool) -> Box<dyn Session> {
        let mut s = MockSession::new();
        s.expect_list_domains().returning(move |_| Ok(list.clone()));
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
                    s.expect_list_domains().returning(|_| {
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

    #[tokio::test]
    async fn started_and_defined_carry_xml_and_a_failed_fetch_is_an_error_item() {
        let sinks = Sinks::default();
        let mut backend = MockBackend::new();
        let s = sinks.clone();
        backend.expect_connect().returning(move |_, _, sink| {
            s.lock().unwrap().push(sink);
            let mut m = MockSession::new();
            m.expect_list_domains().returning(|_| Ok(vec![]));
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
            m.expect_list_domains().returning(|_| Ok(vec![]));
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
        drop(stream);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !released.load(Ordering::SeqCst) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(released.load(Ordering::SeqCst), "session not released");
    }

    /// A consumer written against `EventSource` gets the real stream's
    /// items, in order (what the mock stands in for in consumers' tests).
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

    #[tokio::test]
    async fn recheck_recovers_a_pause_the_catch_up_missed_once() {
        let rechecks = Arc::new(AtomicU32::new(0));
        let mut backend = MockBackend::new();
        let r = rechecks.clone();
        backend.expect_connect().times(1).returning(move |_, _, _| {
            let r = r.clone();
            let mut m = MockSession::new();
            m.expect_list_domains().returning(move |with_xml| {
                if with_xml {
                    // The catch-up: libvirtd has not caught up with QEMU.
                    Ok(vec![listed(DomainState::Running, 1)])
                } else {
                    r.fetch_add(1, Ordering::SeqCst);
                    let mut d = listed(DomainState::Paused, 6);
                    d.xml = None;
                    Ok(vec![d])
                }
            });
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
}
