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
use crate::config::ListenerConfig;
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
        let mut backoff = wd_backoff::Attempts::new(self.config.backoff);
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
                    let retry_in = backoff.next_delay();
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
            backoff.reset_if_healthy(up_since.elapsed(), self.config.backoff_reset_after);
            self.idle(backoff.next_delay())?;
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
mod tests;
