//! The owned values the listener hands to its consumer.

use std::fmt;
use std::time::{Duration, SystemTime};

use uuid::Uuid;

use crate::error::Error;
use crate::kinds::{
    CloseReason, DomainState, Enum, Lifecycle, LifecycleDetail, PAUSED_REASON_WATCHDOG,
    WatchdogAction,
};

/// One item of the listener's stream: an event, a catch-up marker, or a
/// change of the connection's state.
///
/// The order after each (re)connect is: [`Connected`](Item::Connected),
/// [`InitStart`](Item::InitStart), one [`InitDomain`](Item::InitDomain) per
/// domain, [`InitDone`](Item::InitDone), then the watchdog firings the
/// catch-up recovered, then live events (and any firing a periodic re-check
/// recovers) until [`Disconnected`](Item::Disconnected).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Item {
    /// A connection is open and the callbacks are registered.
    Connected {
        /// The connection generation: 1 for the first connection, one more
        /// on each reconnect.
        generation: u64,
        /// The URI connected to.
        uri: String,
    },
    /// The connection was lost; the listener reconnects by itself.
    Disconnected {
        /// The generation that was lost.
        generation: u64,
        /// Why.
        reason: DisconnectReason,
    },
    /// An attempt to connect failed; the next one follows after `retry_in`.
    ConnectFailed {
        /// Failed attempts in a row, from 1.
        attempt: u32,
        /// What went wrong.
        error: Error,
        /// The delay before the next attempt.
        retry_in: Duration,
    },
    /// The catch-up listing begins: a consumer that caches domains may start
    /// rebuilding its cache from the `InitDomain` items that follow.
    InitStart {
        /// The connection generation.
        generation: u64,
    },
    /// One domain found by the catch-up listing.
    InitDomain(DomainInfo),
    /// The catch-up listing is complete: every domain that exists was listed,
    /// so a cache entry not seen since `InitStart` is stale.
    InitDone {
        /// The connection generation.
        generation: u64,
        /// How many domains were listed.
        domains: usize,
    },
    /// A guest's watchdog fired (seen live, or recovered by a catch-up).
    Watchdog(WatchdogEvent),
    /// A domain changed state.
    Lifecycle(LifecycleEvent),
    /// Something failed that the listener works around (for example, one
    /// domain's XML could not be read). It does not end the stream.
    Error(Error),
}

/// Why a connection was lost.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// libvirt's close callback reported it.
    Closed(Enum<CloseReason>),
    /// `virConnectIsAlive` said the connection is dead (a drop the close
    /// callback did not report).
    NotAlive,
    /// The catch-up listing failed, so the listener reconnects to start over.
    CatchUpFailed(Error),
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DisconnectReason::Closed(r) => write!(f, "connection closed ({r})"),
            DisconnectReason::NotAlive => f.write_str("connection is no longer alive"),
            DisconnectReason::CatchUpFailed(e) => write!(f, "catch-up failed: {e}"),
        }
    }
}

/// A domain's identity as libvirt reports it with every event.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DomainId {
    /// The domain UUID (for Nova, the instance UUID).
    pub uuid: Uuid,
    /// The domain name.
    pub name: String,
}

impl fmt::Display for DomainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.uuid)
    }
}

/// How an event was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// Delivered by libvirt as it happened.
    Live,
    /// Inferred from a listing (the catch-up after a connect, or a periodic
    /// re-check): the domain was found paused by its watchdog and that pause
    /// had not been reported yet.
    Recovered,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Origin::Live => "live",
            Origin::Recovered => "recovered",
        })
    }
}

/// One watchdog firing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchdogEvent {
    /// The domain whose watchdog fired.
    pub domain: DomainId,
    /// The domain's runtime id (`virDomainGetID`) when it fired: it changes
    /// on every start, so it tells one run of the domain from the next (a
    /// hard reboot is a destroy and a start). `None` when libvirt did not
    /// give one.
    pub run_id: Option<u32>,
    /// What the hypervisor did. A recovered firing is always
    /// [`WatchdogAction::Pause`]: a pause is the only action that leaves
    /// state behind to find.
    pub action: Enum<WatchdogAction>,
    /// When the listener received the event (for a recovered firing: when
    /// a listing found it, which is later than the firing itself).
    pub received_at: SystemTime,
    /// The event's position among all events of this listener: strictly
    /// increasing in stream order, shared with lifecycle events.
    pub seq: u64,
    /// The connection generation the event was seen on.
    pub generation: u64,
    /// Whether it was seen live or recovered.
    pub origin: Origin,
    /// The firing's episode. A pause keeps its episode until the domain is
    /// resumed, stopped or undefined, so one pause gives one event whether
    /// it is seen live, recovered, or both, and whatever reconnects happen
    /// in between. Every other action is an episode of its own.
    pub episode: Uuid,
}

impl WatchdogEvent {
    /// True when the firing was found by a catch-up rather than seen live.
    pub fn is_recovered(&self) -> bool {
        self.origin == Origin::Recovered
    }
}

/// One domain lifecycle change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleEvent {
    /// The domain.
    pub domain: DomainId,
    /// What happened.
    pub event: Enum<Lifecycle>,
    /// Why, typed by `event`.
    pub detail: LifecycleDetail,
    /// When the listener received the event.
    pub received_at: SystemTime,
    /// The event's position among all events of this listener (see
    /// [`WatchdogEvent::seq`]).
    pub seq: u64,
    /// The connection generation the event was seen on.
    pub generation: u64,
    /// The watchdog episode this change follows from, when it is the
    /// consequence of the domain's last firing: `suspended watchdog` after a
    /// `pause`, or `stopped`/`shutdown` after a `poweroff`/`shutdown` action.
    pub episode: Option<Uuid>,
    /// The domain's XML (`virDomainGetXMLDesc(0)`) for `defined` and
    /// `started` events, so a consumer can cache the owner metadata; `None`
    /// for other events or when it could not be read.
    pub xml: Option<String>,
}

/// One domain as the catch-up listing found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainInfo {
    /// The domain.
    pub domain: DomainId,
    /// The runtime id of a running domain; `None` when it is inactive.
    pub id: Option<u32>,
    /// Its state.
    pub state: Enum<DomainState>,
    /// The raw reason for the state (its meaning depends on the state).
    pub reason: i32,
    /// The domain's XML (`virDomainGetXMLDesc(0)`), fetched only when it
    /// matters: for an active domain whose XML this listener has not handed
    /// out since it started, or one paused by its watchdog. `None` otherwise
    /// (a shut-off domain's XML comes with its `started` event, a known
    /// running domain's was given before), or when it could not be read (the
    /// domain vanished during the listing).
    pub xml: Option<String>,
    /// The connection generation of the listing.
    pub generation: u64,
}

impl DomainInfo {
    /// True when the domain is paused because its watchdog fired.
    pub fn is_paused_by_watchdog(&self) -> bool {
        self.state.is(DomainState::Paused) && self.reason == PAUSED_REASON_WATCHDOG
    }
}
