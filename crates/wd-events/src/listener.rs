//! The consumer's side: [`listen`], [`EventStream`], [`EventSource`], and
//! the supervisor thread that drives the state machine.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use futures::Stream;
use virt::connect::Connect;

use crate::backend::{Backend, Libvirt, Session};
use crate::config::ListenerConfig;
use crate::error::{Error, Result};
use crate::inbox::{self, Gone, Inbox, ListenerStats, Msg, Next, Outbox, Sink};
use crate::kinds::Enum;
use crate::model::DomainInfo;
use crate::model::{DisconnectReason, Item};
use crate::socket::{Files, SocketWatch, Waiting};

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
/// listener: its supervisor thread deregisters, closes its connection and
/// ends, and the drop waits up to 2 s for that.
#[derive(Debug)]
pub struct EventStream {
    items: Outbox,
    control: Sink,
    connection: SharedConnection,
    /// The supervisor thread, and the channel that closes when its work
    /// is done (see `STOP_WAIT`).
    thread: Option<(std::thread::JoinHandle<()>, std::sync::mpsc::Receiver<()>)>,
}

/// How long dropping an [`EventStream`] waits for the listener's thread to
/// deregister, close its connection and end. A process that exits while
/// that thread is still inside libvirt races the libraries' exit handlers
/// (OpenSSL's among them) and can die of a signal instead of exiting
/// cleanly; a thread stuck in a libvirt call longer than this is left to
/// finish on its own.
const STOP_WAIT: Duration = Duration::from_secs(2);

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
    let (control, inbox, items) = inbox::queues(config.inbox_capacity, config.channel_capacity);
    let connection = SharedConnection::default();
    let supervisor = Supervisor {
        backend,
        socket: SocketWatch::for_config(&config),
        config,
        inbox,
        sink: control.clone(),
        connection: connection.clone(),
    };
    let (done, ended) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("wd-events".to_owned())
        .spawn(move || {
            supervisor.run();
            drop(done);
        })
        .map_err(|e| Error::Spawn {
            name: "wd-events",
            source: Arc::new(e),
        })?;
    Ok(EventStream {
        items,
        control,
        connection,
        thread: Some((thread, ended)),
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
        std::future::poll_fn(|cx| self.items.poll_recv(cx)).await
    }

    /// What the listener's queues hold and have done, and how long its last
    /// catch-up took.
    pub fn stats(&self) -> ListenerStats {
        self.items.stats()
    }
}

impl Drop for EventStream {
    /// Stops the listener and waits up to 2 s for its thread to end (it
    /// deregisters and closes its connection first), so that a process
    /// that exits next does not exit under it.
    fn drop(&mut self) {
        let _ = self.control.send(Msg::Shutdown);
        if let Some((thread, ended)) = self.thread.take() {
            match ended.recv_timeout(STOP_WAIT) {
                // Its work is done: the join waits only for the thread's
                // own exit (thread-local destructors included).
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) | Ok(()) => {
                    let _ = thread.join();
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    tracing::warn!(
                        wait = ?STOP_WAIT,
                        "the libvirt listener's thread has not ended yet; not waiting longer"
                    );
                }
            }
        }
    }
}

impl Stream for EventStream {
    type Item = Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
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

impl From<Gone> for Stop {
    fn from(_: Gone) -> Self {
        Stop
    }
}

/// Owns the state machine and the connection; runs on the `wd-events`
/// thread. See the crate docs for the thread model.
struct Supervisor<B> {
    backend: B,
    config: ListenerConfig,
    /// The local daemon's socket, probed while waiting to reconnect.
    socket: Option<SocketWatch>,
    /// The inbox, and the outbox's producing end.
    inbox: Inbox,
    /// A sender into `inbox`, cloned into each connection's callbacks.
    sink: Sink,
    connection: SharedConnection,
}

impl<B: Backend> Supervisor<B> {
    fn run(mut self) {
        let _ = self.run_until_stopped();
        self.set_connection(None);
    }

    fn run_until_stopped(&mut self) -> Result<(), Stop> {
        let mut backoff = wd_backoff::Attempts::new(self.config.backoff);
        let mut failures = 0u32;
        loop {
            let generation = self.inbox.machine(|m| m.generation()) + 1;
            let files = self.socket.as_ref().map(SocketWatch::files);
            let attempt_started = Instant::now();
            let session = match self
                .backend
                .connect(&self.config, generation, self.sink.clone())
            {
                Ok(session) => session,
                Err(error) => {
                    failures = failures.saturating_add(1);
                    let retry_in = backoff.next_delay();
                    self.emit(Item::ConnectFailed {
                        attempt: failures,
                        error,
                        retry_in,
                    })?;
                    self.idle(retry_in, files)?;
                    continue;
                }
            };
            failures = 0;
            let up_since = Instant::now();
            self.set_connection(session.connection());
            let item = self.inbox.machine(|m| m.connected(&self.config.uri));
            self.emit(item)?;
            let reason = self.serve(&*session, attempt_started)?;
            self.set_connection(None);
            // Deregister and close before telling the consumer.
            drop(session);
            let item = self.inbox.machine(|m| m.disconnected(reason));
            self.emit(item)?;
            backoff.reset_if_healthy(up_since.elapsed(), self.config.backoff_reset_after);
            self.idle(backoff.next_delay(), files)?;
        }
    }

    /// Catches up, then handles live events until the connection is lost;
    /// meanwhile checks that the connection is alive and re-checks the
    /// domains, each at its interval, whether or not the consumer keeps up.
    /// `connected_at` is when the connection attempt began: the catch-up's
    /// duration counts from there.
    fn serve(
        &mut self,
        session: &dyn Session,
        connected_at: Instant,
    ) -> Result<DisconnectReason, Stop> {
        let generation = self.inbox.machine(|m| m.generation());
        let alive_every = self
            .config
            .alive_check_interval
            .max(Duration::from_millis(10));
        let recheck_every = self.config.recheck_interval;
        let mut next_alive = Instant::now() + alive_every;
        let mut next_recheck = (!recheck_every.is_zero()).then(|| Instant::now() + recheck_every);
        // Live events wait until the catch-up is out, which waits for room
        // at the consumer (so a stalled consumer and a flapping libvirtd do
        // not pile up listings).
        let mut caught_up = false;
        let mut settle = None;
        loop {
            if !caught_up && self.inbox.has_room() {
                if let Err(e) = self.catch_up(session, connected_at) {
                    return Ok(DisconnectReason::CatchUpFailed(e));
                }
                caught_up = true;
                settle = Settle::new(self.config.settle_interval, Instant::now());
            }
            // Checked on every turn, so neither a steady flow of events nor
            // a stalled consumer can starve them.
            let now = Instant::now();
            if now >= next_alive {
                self.inbox.record(|s| s.alive_checks += 1);
                if !session.is_alive() {
                    return Ok(DisconnectReason::NotAlive);
                }
                next_alive = now + alive_every;
            }
            if let Some(at) = next_recheck
                && now >= at
            {
                if caught_up {
                    match session.list_domains() {
                        Ok(domains) => {
                            let now = SystemTime::now();
                            for item in self.inbox.machine(|m| m.rechecked(domains, now)) {
                                self.emit(item)?;
                            }
                        }
                        // The alive check decides whether the connection is lost.
                        Err(e) => self.emit(Item::Error(e))?,
                    }
                }
                next_recheck = Some(Instant::now() + recheck_every);
            }
            if let Some(s) = &mut settle
                && s.due(now)
            {
                match self.settle_listing(session) {
                    Ok(busy) => s.done(Instant::now(), busy),
                    // The alive check decides whether the connection is lost.
                    Err(e) => {
                        s.done(Instant::now(), 0);
                        self.emit(Item::Error(e))?;
                    }
                }
            }
            let wake = [next_recheck, settle.as_ref().and_then(Settle::next)]
                .into_iter()
                .flatten()
                .fold(next_alive, Instant::min);
            match self.inbox.next(wake, caught_up, true) {
                Next::Event(event) => {
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
                    self.inbox.live(event, xml)?;
                }
                Next::Closed {
                    generation: g,
                    reason,
                } if g == generation => {
                    return Ok(DisconnectReason::Closed(Enum::from_raw(reason)));
                }
                // A late close of an earlier connection.
                Next::Closed { .. } | Next::Room | Next::Timeout => {}
                Next::Stop => return Err(Stop),
            }
        }
    }

    /// Lists the domains, fetches the XML of those that need it (see
    /// `Machine::wants_xml`: at most once per domain and connection, none
    /// for a shut-off domain or a running one already known), and queues the
    /// catch-up's items.
    fn catch_up(&mut self, session: &dyn Session, connected_at: Instant) -> Result<(), Error> {
        let domains = session.list_domains()?;
        let (count, fetched) = self.emit_listing(session, domains);
        let took = connected_at.elapsed();
        self.inbox.record(|s| {
            s.catch_ups += 1;
            s.last_catch_up = Some(took);
            s.last_catch_up_domains = count;
            s.last_catch_up_xml = fetched;
        });
        tracing::info!(
            generation = self.inbox.machine(|m| m.generation()),
            domains = count,
            xml_fetched = fetched,
            duration_ms = took.as_secs_f64() * 1000.0,
            "catch-up done"
        );
        Ok(())
    }

    /// Fetches the XML of the listed domains that need it and queues the
    /// listing's items; returns how many domains were listed and how many
    /// XML documents fetched.
    fn emit_listing(
        &mut self,
        session: &dyn Session,
        mut domains: Vec<DomainInfo>,
    ) -> (usize, usize) {
        let mut fetched = 0usize;
        let wanted = self
            .inbox
            .machine(|m| domains.iter().map(|i| m.wants_xml(i)).collect::<Vec<_>>());
        for (info, wanted) in domains.iter_mut().zip(wanted) {
            if wanted {
                // A domain that vanished since the listing has no XML; the
                // next listing will not show it either.
                info.xml = session.domain_xml(info.domain.uuid).ok();
                fetched += 1;
            }
        }
        let count = domains.len();
        let now = SystemTime::now();
        for item in self.inbox.machine(|m| m.listed(domains, now)) {
            // The consumer is gone: the supervisor stops at its next turn.
            if self.emit(item).is_err() {
                break;
            }
        }
        (count, fetched)
    }

    /// A settle listing (see [`ListenerConfig::settle_interval`]): the
    /// catch-up's listing again, markers included; returns how many active
    /// domains libvirt is busy with.
    fn settle_listing(&mut self, session: &dyn Session) -> Result<usize, Error> {
        let domains = session.list_domains()?;
        let busy = session.busy_domains();
        let (count, _) = self.emit_listing(session, domains);
        tracing::debug!(
            generation = self.inbox.machine(|m| m.generation()),
            domains = count,
            busy,
            "settle listing done"
        );
        Ok(busy)
    }

    /// Waits `delay` while disconnected, still handling events that were
    /// queued before the connection went away (they are real events).
    ///
    /// Ends early when the local daemon's socket starts accepting again
    /// (see the `socket` module): libvirtd is back, and the backoff has no
    /// reason to hold us.
    /// `files` are the socket files as they were before the last attempt.
    fn idle(&mut self, delay: Duration, files: Option<Files>) -> Result<(), Stop> {
        let deadline = Instant::now() + delay;
        let mut watch = self.socket.as_ref().zip(files).map(|(w, f)| w.begin(f));
        loop {
            let wake = watch
                .as_ref()
                .map_or(deadline, |w| deadline.min(Instant::now() + w.every()));
            match self.inbox.next(wake, true, false) {
                Next::Event(event) => self.inbox.live(event, None)?,
                Next::Closed { .. } | Next::Room => {}
                Next::Stop => return Err(Stop),
                Next::Timeout if Instant::now() >= deadline => return Ok(()),
                Next::Timeout => {
                    if watch.as_mut().is_some_and(Waiting::back) {
                        tracing::info!(
                            uri = self.config.uri,
                            "libvirt's socket accepts again; reconnecting now"
                        );
                        return Ok(());
                    }
                }
            }
        }
    }

    fn emit(&self, item: Item) -> Result<(), Stop> {
        match &item {
            Item::ConnectFailed {
                attempt,
                error,
                retry_in,
            } => {
                // With libvirt's reason: "authentication failed", "Connection refused".
                let reason = std::error::Error::source(error).map(ToString::to_string);
                tracing::warn!(attempt, error = %error, reason, ?retry_in, "libvirt connect failed");
            }
            Item::Disconnected { generation, reason } => {
                tracing::warn!(generation, %reason, "libvirt connection lost");
            }
            Item::Connected { generation, uri } => {
                tracing::info!(generation, uri, "libvirt connected");
            }
            _ => {}
        }
        // Never waits: the supervisor stops taking events while the
        // consumer is behind, and the inbox folds meanwhile.
        self.inbox.emit(item).map_err(Stop::from)
    }

    fn set_connection(&self, conn: Option<Connect>) {
        *self
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = conn;
    }
}

/// When the settle listings after a catch-up are due (see
/// [`ListenerConfig::settle_interval`]): at 1, 4 and 12 units after it, then
/// every 4 units while libvirt is busy with a domain, up to 120 units.
#[derive(Debug)]
struct Settle {
    unit: Duration,
    caught_up_at: Instant,
    /// Settle listings done.
    done: u32,
    next: Option<Instant>,
}

impl Settle {
    /// The fixed offsets, in units after the catch-up.
    const FIXED: [u32; 3] = [1, 4, 12];
    /// The wait between listings while a domain is busy, in units.
    const WHILE_BUSY: u32 = 4;
    /// No settle listing after this many units.
    const LIMIT: u32 = 120;

    /// `None` when `unit` is zero (off).
    fn new(unit: Duration, caught_up_at: Instant) -> Option<Settle> {
        (!unit.is_zero()).then(|| Settle {
            unit,
            caught_up_at,
            done: 0,
            next: Some(caught_up_at + unit * Self::FIXED[0]),
        })
    }

    fn next(&self) -> Option<Instant> {
        self.next
    }

    fn due(&self, now: Instant) -> bool {
        self.next.is_some_and(|at| now >= at)
    }

    /// A settle listing was done at `now` and found `busy` domains libvirt
    /// is busy with.
    fn done(&mut self, now: Instant, busy: usize) {
        self.done = self.done.saturating_add(1);
        let limit = self.caught_up_at + self.unit * Self::LIMIT;
        self.next = match Self::FIXED.get(self.done as usize) {
            Some(&units) => Some(self.caught_up_at + self.unit * units),
            None if busy > 0 => Some(now + self.unit * Self::WHILE_BUSY).filter(|at| *at <= limit),
            None => None,
        };
    }
}

#[cfg(test)]
mod settle_tests;
#[cfg(test)]
mod tests;
