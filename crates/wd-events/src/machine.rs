//! The listener's state machine: pure logic, no libvirt and no I/O.
//!
//! It is driven by four inputs — a connection opened, the catch-up listing,
//! a live event, a connection lost — and answers each with the items to
//! hand to the consumer. All the decisions about generations, sequence
//! numbers and watchdog episodes live here, so they are unit-tested
//! exhaustively without libvirt.
//!
//! # Episodes
//!
//! A `pause` firing leaves the guest paused with reason `watchdog` until
//! someone resumes or stops it. That pause is one *episode* and is reported
//! once, whether it is seen live, found by a catch-up, or both:
//!
//! * A live `pause` firing opens an episode and is reported.
//! * A catch-up (or a periodic re-check) that finds a domain paused by its
//!   watchdog reports it as recovered and opens an episode, unless an episode is already open for
//!   the same run of the domain (the same runtime id): then it was reported
//!   before and is not announced again.
//! * The episode ends on a `resumed`, `started`, `stopped` or `undefined`
//!   lifecycle event, on a firing with another action (the guest runs
//!   again), or when a catch-up or re-check finds the domain not paused by
//!   its watchdog (or gone).
//! * Race: the catch-up lists the domains after the callbacks are
//!   registered, and the listing is processed before the live events that
//!   queued up meanwhile. A firing in that window is thus seen twice: first
//!   as recovered, then live. A live `pause` firing on an episode that a
//!   listing of the *current* generation opened, and that no live firing
//!   has confirmed yet, is that same firing and is not reported again. (The
//!   same holds for a re-check.)
//!
//! Every other action (`reset`, `none`, `poweroff`, ...) is an episode of its
//! own and leaves nothing for a catch-up to find.

use std::collections::{HashMap, HashSet};
use std::time::SystemTime;

use uuid::Uuid;

use crate::kinds::{Enum, Lifecycle, LifecycleDetail, SuspendedDetail, WatchdogAction};
use crate::model::{
    DisconnectReason, DomainId, DomainInfo, Item, LifecycleEvent, Origin, WatchdogEvent,
};

/// An event copied out of a libvirt callback, before the state machine has
/// given it a sequence number, a generation and an episode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEvent {
    /// The domain.
    pub domain: DomainId,
    /// The domain's runtime id (`virDomainGetID`), `None` when inactive.
    pub run_id: Option<u32>,
    /// What happened.
    pub kind: RawKind,
    /// When the callback ran.
    pub received_at: SystemTime,
}

/// What a [`RawEvent`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RawKind {
    /// `VIR_DOMAIN_EVENT_ID_WATCHDOG`.
    Watchdog {
        /// What the hypervisor did.
        action: Enum<WatchdogAction>,
    },
    /// `VIR_DOMAIN_EVENT_ID_LIFECYCLE`.
    Lifecycle {
        /// What happened.
        event: Enum<Lifecycle>,
        /// Why.
        detail: LifecycleDetail,
    },
}

impl RawKind {
    /// True for lifecycle events whose item carries the domain XML.
    pub(crate) fn wants_xml(&self) -> bool {
        matches!(
            self,
            RawKind::Lifecycle { event, .. }
                if event.is(Lifecycle::Defined) || event.is(Lifecycle::Started)
        )
    }
}

/// An open pause episode of one domain.
#[derive(Debug, Clone)]
struct Episode {
    id: Uuid,
    /// The run of the domain that was paused. A domain restarted while we
    /// were disconnected has a new runtime id, so a pause found then is a
    /// new episode.
    run_id: Option<u32>,
    /// The generation whose catch-up opened the episode, while no live firing
    /// has confirmed it; `None` once confirmed or when opened live.
    unconfirmed_recovery: Option<u64>,
}

/// The last firing of a domain, waiting for the lifecycle change it causes.
#[derive(Debug, Clone, Copy)]
struct Follow {
    episode: Uuid,
    action: Enum<WatchdogAction>,
}

impl Follow {
    /// Whether `event`/`detail` is the consequence of this firing.
    fn caused(&self, event: Enum<Lifecycle>, detail: LifecycleDetail) -> bool {
        match self.action.known() {
            Some(WatchdogAction::Pause) => {
                detail == LifecycleDetail::Suspended(Enum::Known(SuspendedDetail::Watchdog))
            }
            Some(WatchdogAction::Poweroff | WatchdogAction::Shutdown) => {
                event.is(Lifecycle::Shutdown) || event.is(Lifecycle::Stopped)
            }
            _ => false,
        }
    }
}

#[derive(Debug, Default)]
struct Track {
    episode: Option<Episode>,
    follow: Option<Follow>,
}

/// Whether two runtime ids may be the same run. An unknown id cannot prove a
/// restart, so it matches anything: a missed report is worse than none, but
/// a duplicate of an already-reported pause is what the episode prevents.
fn same_run(a: Option<u32>, b: Option<u32>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    }
}

/// The state machine. See the module docs.
#[derive(Debug, Default)]
pub(crate) struct Machine {
    generation: u64,
    last_seq: u64,
    /// Only domains with an open episode or a firing to follow: the map
    /// stays as small as the domains that matter, whatever the churn.
    domains: HashMap<Uuid, Track>,
    /// Active domains whose XML the consumer was given since they last
    /// started (so a catch-up need not fetch it again).
    xml_known: HashSet<Uuid>,
}

impl Track {
    fn is_empty(&self) -> bool {
        self.episode.is_none() && self.follow.is_none()
    }
}

impl Machine {
    pub(crate) fn new() -> Self {
        Machine::default()
    }

    /// The current connection generation (0 before the first connect).
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether a catch-up should fetch the XML of `info` (listed without
    /// it): only an active domain can fire, and its XML is needed when the
    /// consumer was not given it since it started, or when it is paused by
    /// its watchdog (a recovered firing about to be reported). A shut-off
    /// domain's XML comes with its `started` event.
    pub(crate) fn wants_xml(&self, info: &DomainInfo) -> bool {
        info.id.is_some()
            && (info.is_paused_by_watchdog() || !self.xml_known.contains(&info.domain.uuid))
    }

    /// Gives memory back after a wave of churn (a map keeps its largest
    /// capacity otherwise).
    fn shrink(&mut self) {
        if self.domains.capacity() > 64 && self.domains.len() * 4 < self.domains.capacity() {
            self.domains.shrink_to(self.domains.len() * 2);
        }
        if self.xml_known.capacity() > 64 && self.xml_known.len() * 4 < self.xml_known.capacity() {
            self.xml_known.shrink_to(self.xml_known.len() * 2);
        }
    }

    /// How many domains the machine tracks (episodes or firings to follow)
    /// and how many it knows the XML of.
    #[cfg(test)]
    pub(crate) fn sizes(&self) -> (usize, usize) {
        (self.domains.len(), self.xml_known.len())
    }

    fn next_seq(&mut self) -> u64 {
        self.last_seq += 1;
        self.last_seq
    }

    /// A connection to `uri` is open and registered.
    pub(crate) fn connected(&mut self, uri: &str) -> Item {
        self.generation += 1;
        Item::Connected {
            generation: self.generation,
            uri: uri.to_owned(),
        }
    }

    /// The current connection was lost.
    pub(crate) fn disconnected(&mut self, reason: DisconnectReason) -> Item {
        Item::Disconnected {
            generation: self.generation,
            reason,
        }
    }

    /// The catch-up listing of the current connection, taken at `now`:
    /// markers, every domain, then the recovered firings.
    pub(crate) fn listed(&mut self, domains: Vec<DomainInfo>, now: SystemTime) -> Vec<Item> {
        let generation = self.generation;
        let count = domains.len();
        let mut items = Vec::with_capacity(count + 2);
        items.push(Item::InitStart { generation });
        let mut listed = Vec::with_capacity(count);
        let recovered = self.reconcile(domains, now, |info| listed.push(info));
        items.extend(listed.into_iter().map(Item::InitDomain));
        items.push(Item::InitDone {
            generation,
            domains: count,
        });
        items.extend(recovered);
        items
    }

    /// A periodic re-check listing, taken at `now`: the same reconciliation
    /// as the catch-up, but it yields only the firings it recovers. It is a
    /// safety net for a pause that no event and no catch-up reported, such
    /// as one libvirtd learnt of only after our catch-up (libvirtd updates a
    /// guest's state from QEMU when it reconnects to it, without an event).
    pub(crate) fn rechecked(&mut self, domains: Vec<DomainInfo>, now: SystemTime) -> Vec<Item> {
        self.reconcile(domains, now, drop)
    }

    /// Brings the episodes in line with a listing (see the module docs) and
    /// returns the recovered firings; `each` gets every listed domain.
    fn reconcile(
        &mut self,
        domains: Vec<DomainInfo>,
        now: SystemTime,
        mut each: impl FnMut(DomainInfo),
    ) -> Vec<Item> {
        let generation = self.generation;
        let mut seen = HashSet::with_capacity(domains.len());
        let mut recovered = Vec::new();
        for mut info in domains {
            info.generation = generation;
            seen.insert(info.domain.uuid);
            if info.id.is_none() {
                self.xml_known.remove(&info.domain.uuid);
            } else if info.xml.is_some() {
                self.xml_known.insert(info.domain.uuid);
            }
            let track = self.domains.entry(info.domain.uuid).or_default();
            if info.is_paused_by_watchdog() {
                let known = track
                    .episode
                    .as_ref()
                    .is_some_and(|e| same_run(e.run_id, info.id));
                if !known {
                    let id = Uuid::new_v4();
                    track.episode = Some(Episode {
                        id,
                        run_id: info.id,
                        unconfirmed_recovery: Some(generation),
                    });
                    recovered.push((info.domain.clone(), info.id, id));
                }
            } else {
                track.episode = None;
            }
            each(info);
        }
        // A domain that is gone has no episode left to continue.
        self.domains
            .retain(|uuid, track| seen.contains(uuid) && !track.is_empty());
        self.xml_known.retain(|uuid| seen.contains(uuid));
        self.shrink();
        recovered
            .into_iter()
            .map(|(domain, run_id, episode)| {
                let seq = self.next_seq();
                Item::Watchdog(WatchdogEvent {
                    domain,
                    run_id,
                    action: Enum::Known(WatchdogAction::Pause),
                    received_at: now,
                    seq,
                    generation,
                    origin: Origin::Recovered,
                    episode,
                })
            })
            .collect()
    }

    /// A live event; `xml` is the domain XML fetched for it, if any.
    pub(crate) fn live(&mut self, event: RawEvent, xml: Option<String>) -> Option<Item> {
        match event.kind {
            RawKind::Watchdog { action } => self.watchdog(event, action),
            RawKind::Lifecycle { event: ev, detail } => {
                Some(self.lifecycle(event, ev, detail, xml))
            }
        }
    }

    fn watchdog(&mut self, raw: RawEvent, action: Enum<WatchdogAction>) -> Option<Item> {
        let generation = self.generation;
        let track = self.domains.entry(raw.domain.uuid).or_default();
        let episode = if action.is(WatchdogAction::Pause) {
            if let Some(open) = track.episode.as_mut().filter(|e| {
                e.unconfirmed_recovery == Some(generation) && same_run(e.run_id, raw.run_id)
            }) {
                // The catch-up of this generation already reported this very
                // firing as recovered (see "Race" in the module docs).
                open.unconfirmed_recovery = None;
                track.follow = Some(Follow {
                    episode: open.id,
                    action,
                });
                return None;
            }
            let id = Uuid::new_v4();
            track.episode = Some(Episode {
                id,
                run_id: raw.run_id,
                unconfirmed_recovery: None,
            });
            id
        } else {
            // The guest was running to fire again: whatever pause we held
            // has ended without our seeing the resume.
            track.episode = None;
            Uuid::new_v4()
        };
        track.follow = Some(Follow { episode, action });
        let seq = self.next_seq();
        Some(Item::Watchdog(WatchdogEvent {
            domain: raw.domain,
            run_id: raw.run_id,
            action,
            received_at: raw.received_at,
            seq,
            generation,
            origin: Origin::Live,
            episode,
        }))
    }

    fn lifecycle(
        &mut self,
        raw: RawEvent,
        event: Enum<Lifecycle>,
        detail: LifecycleDetail,
        xml: Option<String>,
    ) -> Item {
        let track = self.domains.entry(raw.domain.uuid).or_default();
        let mut episode = None;
        if let Some(follow) = track.follow.take()
            && follow.caused(event, detail)
        {
            episode = Some(follow.episode);
            // A poweroff may show as `shutdown` and then `stopped`; both
            // follow from the firing.
            if !event.is(Lifecycle::Stopped) && !detail_is_watchdog_pause(detail) {
                track.follow = Some(follow);
            }
        }
        let ends_episode = [
            Lifecycle::Resumed,
            Lifecycle::Started,
            Lifecycle::Stopped,
            Lifecycle::Undefined,
        ]
        .into_iter()
        .any(|l| event.is(l));
        if ends_episode {
            track.episode = None;
        }
        if event.is(Lifecycle::Undefined) || track.is_empty() {
            self.domains.remove(&raw.domain.uuid);
        }
        if event.is(Lifecycle::Stopped) || event.is(Lifecycle::Undefined) {
            self.xml_known.remove(&raw.domain.uuid);
            self.shrink();
        } else if xml.is_some() {
            self.xml_known.insert(raw.domain.uuid);
        }
        let seq = self.next_seq();
        Item::Lifecycle(LifecycleEvent {
            domain: raw.domain,
            event,
            detail,
            received_at: raw.received_at,
            seq,
            generation: self.generation,
            episode,
            xml,
        })
    }
}

fn detail_is_watchdog_pause(detail: LifecycleDetail) -> bool {
    detail == LifecycleDetail::Suspended(Enum::Known(SuspendedDetail::Watchdog))
}

#[cfg(test)]
mod tests;
