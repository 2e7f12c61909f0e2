//! The listener's queues, and the one lock its three threads share.
//!
//! * The **inbox** takes what libvirt's callbacks send (on the
//!   `wd-libvirt-loop` thread, which must never wait). It is bounded by
//!   folding: once it holds [`ListenerConfig::inbox_capacity`] events, a new
//!   lifecycle event of a domain removes that domain's pending lifecycle
//!   events that it makes redundant (see [`Flags::covers`]). Watchdog
//!   firings and the `suspended watchdog` that follows a pause are never
//!   folded, and nothing folds across a firing, so no firing and no pause
//!   episode is lost. What remains beyond the capacity is bounded by the
//!   number of domains (at most five lifecycle events each) plus the
//!   firings, which a guest produces at most once per watchdog timeout.
//! * The **outbox** holds [`Item`]s for the consumer. The supervisor never
//!   waits for the consumer: it stops taking events from the inbox while
//!   the outbox holds [`ListenerConfig::channel_capacity`] items (so the
//!   inbox folds), and it starts no catch-up until there is room, but its
//!   liveness check and re-check keep their schedule.
//! * The **direct path**: while the supervisor waits for live events with
//!   nothing in hand (the inbox empty, no event of its own being handled,
//!   no close pending, the catch-up done) and the outbox has room, a live
//!   event that needs no XML (a firing, and every lifecycle event but
//!   `defined` and `started`) is turned into its item by the state machine
//!   on the callback's thread, under the same lock, and goes straight to
//!   the consumer. That saves a firing one thread wake-up on its way, and
//!   the order is the same as through the supervisor: nothing is in the
//!   inbox or in the supervisor's hands that should come first.
//!
//! [`ListenerConfig::inbox_capacity`]: crate::ListenerConfig::inbox_capacity
//! [`ListenerConfig::channel_capacity`]: crate::ListenerConfig::channel_capacity

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::task::AtomicWaker;
use uuid::Uuid;

use crate::kinds::{Lifecycle, LifecycleDetail, SuspendedDetail};
use crate::machine::{Machine, RawEvent, RawKind};
use crate::model::Item;

/// A message from the libvirt event-loop thread (or the consumer) to the
/// listener's supervisor thread.
#[derive(Debug)]
pub(crate) enum Msg {
    /// A domain event.
    Event(RawEvent),
    /// The close callback of the connection of `generation` ran.
    Closed { generation: u64, reason: i32 },
    /// The consumer dropped the stream.
    Shutdown,
}

/// What the listener's queues hold and have done: for logs, metrics and
/// tests ([`EventStream::stats`](crate::EventStream::stats)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListenerStats {
    /// Events waiting in the inbox now.
    pub inbox_len: usize,
    /// The most events the inbox has held at once.
    pub inbox_high_water: usize,
    /// Lifecycle events folded into a later one of the same domain.
    pub folded: u64,
    /// Items waiting for the consumer now.
    pub outbox_len: usize,
    /// The most items that have waited for the consumer at once.
    pub outbox_high_water: usize,
    /// Liveness checks made (they go on while the consumer is behind).
    pub alive_checks: u64,
    /// Catch-ups completed.
    pub catch_ups: u64,
    /// Live events turned into items on libvirt's callback thread and
    /// handed straight to the consumer (the direct path, see the
    /// `inbox` module), without waking the listener's thread.
    pub direct: u64,
    /// How long the last catch-up took, from the start of the connection
    /// attempt to its last item queued for the consumer (the listing,
    /// each domain's state, and the XML of the domains that needed it).
    pub last_catch_up: Option<Duration>,
    /// How many domains the last catch-up listed.
    pub last_catch_up_domains: usize,
    /// How many domain XMLs the last catch-up fetched.
    pub last_catch_up_xml: usize,
}

/// What a lifecycle event means to the consumers, for folding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Flags {
    /// It ends a pause episode.
    ends: bool,
    /// Its item carries the domain's XML.
    xml: bool,
    /// The domain stopped or is gone (so its XML no longer matters).
    gone: bool,
}

impl Flags {
    fn of(event: &RawEvent) -> Option<Flags> {
        let RawKind::Lifecycle { event, detail } = event.kind else {
            return None;
        };
        if detail
            == LifecycleDetail::Suspended(crate::kinds::Enum::Known(SuspendedDetail::Watchdog))
        {
            // The consequence of a pause firing: never folded.
            return None;
        }
        let is = |l: &[Lifecycle]| l.iter().any(|l| event.is(*l));
        Some(Flags {
            ends: is(&[
                Lifecycle::Resumed,
                Lifecycle::Started,
                Lifecycle::Stopped,
                Lifecycle::Undefined,
            ]),
            xml: is(&[Lifecycle::Defined, Lifecycle::Started]),
            gone: is(&[Lifecycle::Stopped, Lifecycle::Undefined]),
        })
    }

    /// Whether a later event with these flags makes an earlier one with
    /// `earlier` redundant: it ends an episode if the earlier did, and its
    /// XML (fetched when it is handled, so the newest) replaces the earlier
    /// one's, unless the domain is gone anyway.
    fn covers(self, earlier: Flags) -> bool {
        (!earlier.ends || self.ends) && (!earlier.xml || self.xml || self.gone)
    }
}

/// The inbox's events, in arrival order, folding under pressure.
#[derive(Debug)]
struct Events {
    capacity: usize,
    next: u64,
    queue: BTreeMap<u64, RawEvent>,
    /// Per domain, the slots of its foldable lifecycle events since its last
    /// pending firing, oldest first.
    tails: HashMap<Uuid, Vec<u64>>,
    folded: u64,
    high_water: usize,
}

impl Events {
    fn new(capacity: usize) -> Self {
        Events {
            capacity: capacity.max(1),
            next: 0,
            queue: BTreeMap::new(),
            tails: HashMap::new(),
            folded: 0,
            high_water: 0,
        }
    }

    fn push(&mut self, event: RawEvent) {
        let uuid = event.domain.uuid;
        let flags = Flags::of(&event);
        if let (Some(flags), true) = (flags, self.queue.len() >= self.capacity)
            && let Some(tail) = self.tails.get_mut(&uuid)
        {
            let queue = &mut self.queue;
            let folded = &mut self.folded;
            tail.retain(|slot| {
                let redundant = queue
                    .get(slot)
                    .and_then(Flags::of)
                    .is_some_and(|earlier| flags.covers(earlier));
                if redundant {
                    queue.remove(slot);
                    *folded += 1;
                }
                !redundant
            });
        }
        let slot = self.next;
        self.next += 1;
        match (&event.kind, flags) {
            // Nothing folds across a firing.
            (RawKind::Watchdog { .. }, _) => {
                self.tails.remove(&uuid);
            }
            (_, Some(_)) => self.tails.entry(uuid).or_default().push(slot),
            _ => {}
        }
        self.queue.insert(slot, event);
        self.high_water = self.high_water.max(self.queue.len());
    }

    fn pop(&mut self) -> Option<RawEvent> {
        let (slot, event) = self.queue.pop_first()?;
        let uuid = event.domain.uuid;
        if let Some(tail) = self.tails.get_mut(&uuid)
            && tail.first() == Some(&slot)
        {
            tail.remove(0);
            if tail.is_empty() {
                self.tails.remove(&uuid);
                if self.tails.capacity() > 64 && self.tails.len() * 4 < self.tails.capacity() {
                    self.tails.shrink_to(self.tails.len() * 2);
                }
            }
        }
        Some(event)
    }

    fn len(&self) -> usize {
        self.queue.len()
    }

    fn first_slot(&self) -> Option<u64> {
        self.queue.first_key_value().map(|(slot, _)| *slot)
    }
}

#[derive(Debug)]
struct State {
    /// Close callbacks, in order (one per connection at most), each with
    /// the inbox slot that follows the events that came before it.
    closed: VecDeque<(u64, u64, i32)>,
    events: Events,
    out: VecDeque<Item>,
    out_capacity: usize,
    consumer_gone: bool,
    supervisor_gone: bool,
    /// The state machine: the supervisor's, and the direct path's.
    machine: Machine,
    /// The supervisor waits for live events with nothing in hand, so the
    /// callbacks may take the direct path.
    direct: bool,
    stats: ListenerStats,
}

impl State {
    /// Whether `event` may take the direct path now.
    fn may_go_direct(&self, event: &RawEvent) -> bool {
        self.direct
            && !self.consumer_gone
            && self.events.len() == 0
            && self.closed.is_empty()
            && self.out.len() < self.out_capacity
            && !event.kind.wants_xml()
    }

    /// Runs the state machine on a live event (`xml`: the domain's XML
    /// fetched for it) and queues its item; `true` when the consumer has
    /// a new item to wake for.
    fn live(&mut self, event: RawEvent, xml: Option<String>) -> bool {
        let item = self.machine.live(event, xml);
        item.is_some_and(|item| self.push_out(item))
    }

    /// Queues `item` for the consumer; see [`Inbox::emit`]. `false` when it
    /// was folded away.
    fn push_out(&mut self, item: Item) -> bool {
        let full = self.out.len() >= self.out_capacity;
        match (&item, self.out.back()) {
            (Item::ConnectFailed { .. }, Some(Item::ConnectFailed { .. })) => {
                self.out.pop_back();
            }
            (Item::Error(_), Some(Item::Error(_))) if full => {
                self.out.pop_back();
            }
            (
                Item::Disconnected { generation, .. },
                Some(Item::Connected {
                    generation: connected,
                    ..
                }),
            ) if generation == connected && full => {
                self.out.pop_back();
                return false;
            }
            _ => {}
        }
        self.out.push_back(item);
        self.stats.outbox_high_water = self.stats.outbox_high_water.max(self.out.len());
        true
    }
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Wakes the supervisor: a message arrived, or the consumer took items.
    supervisor: Condvar,
    /// Wakes the consumer.
    consumer: AtomicWaker,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent, and none can
        // panic halfway; a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Creates the queues of one listener: the sink for callbacks, the
/// supervisor's end, and the consumer's end.
pub(crate) fn queues(inbox_capacity: usize, out_capacity: usize) -> (Sink, Inbox, Outbox) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            closed: VecDeque::new(),
            events: Events::new(inbox_capacity),
            out: VecDeque::new(),
            out_capacity: out_capacity.max(1),
            consumer_gone: false,
            supervisor_gone: false,
            machine: Machine::new(),
            direct: false,
            stats: ListenerStats::default(),
        }),
        supervisor: Condvar::new(),
        consumer: AtomicWaker::new(),
    });
    (Sink(shared.clone()), Inbox(shared.clone()), Outbox(shared))
}

/// Where libvirt's callbacks (and the consumer's drop) send [`Msg`]s. It
/// never blocks for longer than a queue operation.
#[derive(Debug, Clone)]
pub(crate) struct Sink(Arc<Shared>);

/// The listener is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Gone;

impl Sink {
    /// Queues `msg` for the supervisor.
    pub(crate) fn send(&self, msg: Msg) -> Result<(), Gone> {
        let mut state = self.0.lock();
        if state.supervisor_gone {
            return Err(Gone);
        }
        match msg {
            Msg::Event(event) if state.may_go_direct(&event) => {
                // The supervisor is waiting with nothing in hand: no need
                // to wake it.
                state.stats.direct += 1;
                let pushed = state.live(event, None);
                drop(state);
                if pushed {
                    self.0.consumer.wake();
                }
                return Ok(());
            }
            Msg::Event(event) => state.events.push(event),
            Msg::Closed { generation, reason } => {
                let after = state.events.next;
                state.closed.push_back((after, generation, reason));
            }
            Msg::Shutdown => state.consumer_gone = true,
        }
        drop(state);
        self.0.supervisor.notify_one();
        Ok(())
    }
}

#[cfg(test)]
impl Sink {
    /// Whether the direct path is open now.
    pub(crate) fn direct_open(&self) -> bool {
        self.0.lock().direct
    }
}

/// What the supervisor should do next.
#[derive(Debug)]
pub(crate) enum Next {
    /// The close callback of connection `generation` ran.
    Closed { generation: u64, reason: i32 },
    /// Handle this event.
    Event(RawEvent),
    /// The consumer has room again (only when events were not wanted).
    Room,
    /// The deadline passed.
    Timeout,
    /// The consumer is gone.
    Stop,
}

#[cfg(test)]
impl Next {
    fn is_event(&self) -> bool {
        matches!(self, Next::Event(_))
    }
}

/// The supervisor's end.
#[derive(Debug)]
pub(crate) struct Inbox(Arc<Shared>);

impl Inbox {
    /// Waits until `deadline` for something to do. Events are taken only if
    /// `events` and the consumer has room; otherwise room is reported.
    /// With `direct` (and `events`), the callbacks may hand live events
    /// straight to the consumer while this waits (see the module docs).
    pub(crate) fn next(&self, deadline: Instant, events: bool, direct: bool) -> Next {
        let mut state = self.0.lock();
        loop {
            if state.consumer_gone {
                return Next::Stop;
            }
            let room = state.out.len() < state.out_capacity;
            // A close comes after the events that came before it, unless
            // those cannot be taken now (they are handled while
            // disconnected, then).
            if let Some(&(after, generation, reason)) = state.closed.front()
                && (!(room && events) || state.events.first_slot().is_none_or(|s| s >= after))
            {
                state.closed.pop_front();
                return Next::Closed { generation, reason };
            }
            if room && events {
                if let Some(event) = state.events.pop() {
                    return Next::Event(event);
                }
            } else if room {
                return Next::Room;
            }
            let now = Instant::now();
            if now >= deadline {
                return Next::Timeout;
            }
            state.direct = direct && events;
            state = self
                .0
                .supervisor
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            state.direct = false;
        }
    }

    /// Runs `f` on the state machine.
    pub(crate) fn machine<R>(&self, f: impl FnOnce(&mut Machine) -> R) -> R {
        f(&mut self.0.lock().machine)
    }

    /// Handles a live event the supervisor took from the inbox (`xml` is the
    /// domain's XML fetched for it) and queues its item, under one lock.
    pub(crate) fn live(&self, event: RawEvent, xml: Option<String>) -> Result<(), Gone> {
        let mut state = self.0.lock();
        if state.consumer_gone {
            return Err(Gone);
        }
        let pushed = state.live(event, xml);
        drop(state);
        if pushed {
            self.0.consumer.wake();
        }
        Ok(())
    }

    /// Whether the consumer has room for more items.
    pub(crate) fn has_room(&self) -> bool {
        let state = self.0.lock();
        state.out.len() < state.out_capacity
    }

    /// Queues `item` for the consumer without waiting. Connection noise
    /// that the consumer has not seen yet is folded: repeated connect
    /// failures keep the latest, a connection lost before anything of it
    /// was taken vanishes, and errors beyond the capacity keep the latest.
    /// `Err` when the consumer is gone.
    pub(crate) fn emit(&self, item: Item) -> Result<(), Gone> {
        let mut state = self.0.lock();
        if state.consumer_gone {
            return Err(Gone);
        }
        let pushed = state.push_out(item);
        drop(state);
        if pushed {
            self.0.consumer.wake();
        }
        Ok(())
    }

    /// Updates the statistics.
    pub(crate) fn record(&self, f: impl FnOnce(&mut ListenerStats)) {
        f(&mut self.0.lock().stats);
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        self.0.lock().supervisor_gone = true;
        self.0.consumer.wake();
    }
}

/// The consumer's end.
#[derive(Debug)]
pub(crate) struct Outbox(Arc<Shared>);

impl Outbox {
    /// The next item, `None` once the supervisor is gone and nothing is left.
    pub(crate) fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        if let Some(item) = self.try_recv() {
            return Poll::Ready(item);
        }
        self.0.consumer.register(cx.waker());
        match self.try_recv() {
            Some(item) => Poll::Ready(item),
            None => Poll::Pending,
        }
    }

    /// `Some(Some(item))`, `Some(None)` at the end, `None` when empty.
    fn try_recv(&self) -> Option<Option<Item>> {
        let mut state = self.0.lock();
        let item = state.out.pop_front();
        // A catch-up of many domains leaves a large buffer behind.
        if state.out.is_empty() && state.out.capacity() > 2 * state.out_capacity {
            let keep = state.out_capacity;
            state.out.shrink_to(keep);
        }
        let end = item.is_none() && state.supervisor_gone;
        let was_full = state.out.len() + 1 >= state.out_capacity;
        drop(state);
        match item {
            Some(item) => {
                if was_full {
                    self.0.supervisor.notify_one();
                }
                Some(Some(item))
            }
            None if end => Some(None),
            None => None,
        }
    }

    /// A snapshot of the statistics.
    pub(crate) fn stats(&self) -> ListenerStats {
        let state = self.0.lock();
        ListenerStats {
            inbox_len: state.events.len(),
            inbox_high_water: state.events.high_water,
            folded: state.events.folded,
            outbox_len: state.out.len(),
            ..state.stats
        }
    }
}

#[cfg(test)]
mod tests;
