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
                    recovered.push((info.domain.clone(), id));
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
            .map(|(domain, episode)| {
                let seq = self.next_seq();
                Item::Watchdog(WatchdogEvent {
                    domain,
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
mod tests {
    use super::*;
    use crate::kinds::{CloseReason, ResumedDetail};
    use crate::kinds::{DomainState, PAUSED_REASON_WATCHDOG, StartedDetail, StoppedDetail};
    use std::time::Duration;

    const A: u128 = 0xa;
    const B: u128 = 0xb;

    fn dom(n: u128) -> DomainId {
        DomainId {
            uuid: Uuid::from_u128(n),
            name: format!("dom-{n:x}"),
        }
    }

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn firing(n: u128, run: u32, action: i32) -> RawEvent {
        RawEvent {
            domain: dom(n),
            run_id: Some(run),
            kind: RawKind::Watchdog {
                action: Enum::from_raw(action),
            },
            received_at: t(100),
        }
    }

    fn life(n: u128, run: u32, event: Lifecycle, detail: i32) -> RawEvent {
        RawEvent {
            domain: dom(n),
            run_id: Some(run),
            kind: RawKind::Lifecycle {
                event: Enum::Known(event),
                detail: LifecycleDetail::from_raw(event as i32, detail),
            },
            received_at: t(100),
        }
    }

    fn paused_wd(n: u128, run: u32) -> DomainInfo {
        info(n, Some(run), DomainState::Paused, PAUSED_REASON_WATCHDOG)
    }

    fn running(n: u128, run: u32) -> DomainInfo {
        info(n, Some(run), DomainState::Running, 1)
    }

    fn info(n: u128, id: Option<u32>, state: DomainState, reason: i32) -> DomainInfo {
        DomainInfo {
            domain: dom(n),
            id,
            state: Enum::Known(state),
            reason,
            xml: Some(format!("<domain><name>dom-{n:x}</name></domain>")),
            generation: 0,
        }
    }

    /// A compact, deterministic rendering of items; episode ids are replaced
    /// by `e1`, `e2`, ... in order of first appearance.
    struct Render {
        episodes: Vec<Uuid>,
    }

    impl Render {
        fn new() -> Self {
            Render {
                episodes: Vec::new(),
            }
        }

        fn ep(&mut self, id: Uuid) -> String {
            let pos = match self.episodes.iter().position(|e| *e == id) {
                Some(p) => p,
                None => {
                    self.episodes.push(id);
                    self.episodes.len() - 1
                }
            };
            format!("e{}", pos + 1)
        }

        fn item(&mut self, item: &Item) -> String {
            match item {
                Item::Connected { generation, .. } => format!("connected g{generation}"),
                Item::Disconnected { generation, .. } => format!("disconnected g{generation}"),
                Item::InitStart { generation } => format!("init-start g{generation}"),
                Item::InitDomain(d) => format!(
                    "init {} {}/{} g{}",
                    d.domain.name, d.state, d.reason, d.generation
                ),
                Item::InitDone {
                    generation,
                    domains,
                } => format!("init-done g{generation} n={domains}"),
                Item::Watchdog(w) => format!(
                    "#{} watchdog {} {} {} g{} {}",
                    w.seq,
                    w.domain.name,
                    w.action,
                    w.origin,
                    w.generation,
                    self.ep(w.episode)
                ),
                Item::Lifecycle(l) => {
                    let ep = l
                        .episode
                        .map(|e| format!(" {}", self.ep(e)))
                        .unwrap_or_default();
                    format!(
                        "#{} {} {} {} g{}{}",
                        l.seq, l.domain.name, l.event, l.detail, l.generation, ep
                    )
                }
                other => format!("{other:?}"),
            }
        }
    }

    /// Feeds `inputs` to a fresh machine and compares the rendered items.
    enum In {
        Connect,
        Drop,
        List(Vec<DomainInfo>),
        Recheck(Vec<DomainInfo>),
        Live(RawEvent),
    }

    fn check(inputs: Vec<In>, expected: &[&str]) {
        let mut m = Machine::new();
        let mut r = Render::new();
        let mut got = Vec::new();
        for input in inputs {
            let items = match input {
                In::Connect => vec![m.connected("test:///default")],
                In::Drop => {
                    vec![m.disconnected(DisconnectReason::Closed(Enum::Known(CloseReason::Eof)))]
                }
                In::List(d) => m.listed(d, t(200)),
                In::Recheck(d) => m.rechecked(d, t(300)),
                In::Live(e) => m.live(e, None).into_iter().collect(),
            };
            got.extend(items.iter().map(|i| r.item(i)));
        }
        assert_eq!(got, expected);
    }

    use In::*;

    #[test]
    fn live_pause_then_its_suspend_share_the_episode() {
        check(
            vec![
                Connect,
                List(vec![running(A, 1)]),
                Live(firing(A, 1, 1)),
                Live(life(A, 1, Lifecycle::Suspended, 3)),
            ],
            &[
                "connected g1",
                "init-start g1",
                "init dom-a running/1 g1",
                "init-done g1 n=1",
                "#1 watchdog dom-a pause live g1 e1",
                "#2 dom-a suspended watchdog g1 e1",
            ],
        );
    }

    #[test]
    fn already_reported_pause_is_not_announced_again_after_reconnect() {
        check(
            vec![
                Connect,
                List(vec![running(A, 1)]),
                Live(firing(A, 1, 1)),
                Drop,
                Connect,
                List(vec![paused_wd(A, 1)]),
                Drop,
                Connect,
                List(vec![paused_wd(A, 1)]),
            ],
            &[
                "connected g1",
                "init-start g1",
                "init dom-a running/1 g1",
                "init-done g1 n=1",
                "#1 watchdog dom-a pause live g1 e1",
                "disconnected g1",
                "connected g2",
                "init-start g2",
                "init dom-a paused/6 g2",
                "init-done g2 n=1",
                "disconnected g2",
                "connected g3",
                "init-start g3",
                "init dom-a paused/6 g3",
                "init-done g3 n=1",
            ],
        );
    }

    #[test]
    fn pause_found_at_catch_up_is_reported_once_as_recovered() {
        check(
            vec![
                Connect,
                List(vec![running(A, 1), running(B, 2)]),
                Drop,
                Connect,
                List(vec![paused_wd(A, 1), running(B, 2)]),
                Drop,
                Connect,
                List(vec![paused_wd(A, 1), running(B, 2)]),
            ],
            &[
                "connected g1",
                "init-start g1",
                "init dom-a running/1 g1",
                "init dom-b running/1 g1",
                "init-done g1 n=2",
                "disconnected g1",
                "connected g2",
                "init-start g2",
                "init dom-a paused/6 g2",
                "init dom-b running/1 g2",
                "init-done g2 n=2",
                "#1 watchdog dom-a pause recovered g2 e1",
                "disconnected g2",
                "connected g3",
                "init-start g3",
                "init dom-a paused/6 g3",
                "init dom-b running/1 g3",
                "init-done g3 n=2",
            ],
        );
    }

    #[test]
    fn firing_seen_by_the_catch_up_and_then_live_is_reported_once() {
        // The firing happened between registration and listing: the listing
        // reports it as recovered, then the queued live events arrive.
        check(
            vec![
                Connect,
                List(vec![paused_wd(A, 1)]),
                Live(firing(A, 1, 1)),
                Live(life(A, 1, Lifecycle::Suspended, 3)),
            ],
            &[
                "connected g1",
                "init-start g1",
                "init dom-a paused/6 g1",
                "init-done g1 n=1",
                "#1 watchdog dom-a pause recovered g1 e1",
                "#2 dom-a suspended watchdog g1 e1",
            ],
        );
    }

    #[test]
    fn recovered_episode_of_an_earlier_generation_does_not_swallow_a_new_firing() {
        // Recovered in g1; in g2 the guest was resumed and fired again between
        // registration and listing. The queued resume ends the episode.
        check(
            vec![
                Connect,
                List(vec![paused_wd(A, 1)]),
                Drop,
                Connect,
                List(vec![paused_wd(A, 1)]),
                Live(life(A, 1, Lifecycle::Resumed, 0)),
                Live(firing(A, 1, 1)),
            ],
            &[
                "connected g1",
                "init-start g1",
                "init dom-a paused/6 g1",
                "init-done g1 n=1",
                "#1 watchdog dom-a pause recovered g1 e1",
                "disconnected g1",
                "connected g2",
                "init-start g2",
                "init dom-a paused/6 g2",
                "init-done g2 n=1",
                "#2 dom-a resumed unpaused g2",
                "#3 watchdog dom-a pause live g2 e2",
            ],
        );
        // Even without the resume (lost), a live firing on an episode carried
        // over from an earlier generation is a new firing.
        check(
            vec![
                Connect,
                List(vec![paused_wd(A, 1)]),
                Drop,
                Connect,
                List(vec![paused_wd(A, 1)]),
                Live(firing(A, 1, 1)),
            ],
            &[
                "connected g1",
                "init-start g1",
                "init dom-a paused/6 g1",
                "init-done g1 n=1",
                "#1 watchdog dom-a pause recovered g1 e1",
                "disconnected g1",
                "connected g2",
                "init-start g2",
                "init dom-a paused/6 g2",
                "init-done g2 n=1",
                "#2 watchdog dom-a pause live g2 e2",
            ],
        );
    }

    #[test]
    fn episode_ends_on_resume_and_a_new_firing_is_a_new_episode() {
        for (ending, detail) in [
            (Lifecycle::Resumed, ResumedDetail::Unpaused as i32),
            (Lifecycle::Stopped, StoppedDetail::Destroyed as i32),
            (Lifecycle::Started, StartedDetail::Booted as i32),
        ] {
            let mut m = Machine::new();
            m.connected("x");
            m.listed(vec![running(A, 1)], t(1));
            let first = m.live(firing(A, 1, 1), None);
            m.live(life(A, 1, ending, detail), None);
            let second = m.live(firing(A, 1, 1), None);
            let (Some(Item::Watchdog(first)), Some(Item::Watchdog(second))) = (first, second)
            else {
                panic!("both firings must be reported after {ending}");
            };
            assert_ne!(first.episode, second.episode, "{ending}");
            assert_eq!((first.seq, second.seq), (1, 3));
        }
    }

    #[test]
    fn episode_ends_when_the_catch_up_finds_the_domain_running_or_gone() {
        check(
            vec![
                Connect,
                List(vec![running(A, 1)]),
                Live(firing(A, 1, 1)),
                Drop,
                Connect,
                List(vec![running(A, 1)]), // resumed while we were away
                Drop,
                Connect,
                List(vec![paused_wd(A, 1)]), // fired again while we were away
                Drop,
                Connect,
                List(vec![]), // gone
                Drop,
                Connect,
                List(vec![paused_wd(A, 1)]), // back (same id) and paused
            ],
            &[
                "connected g1",
                "init-start g1",
                "init dom-a running/1 g1",
                "init-done g1 n=1",
                "#1 watchdog dom-a pause live g1 e1",
                "disconnected g1",
                "connected g2",
                "init-start g2",
                "init dom-a running/1 g2",
                "init-done g2 n=1",
                "disconnected g2",
                "connected g3",
                "init-start g3",
                "init dom-a paused/6 g3",
                "init-done g3 n=1",
                "#2 watchdog dom-a pause recovered g3 e2",
                "disconnected g3",
                "connected g4",
                "init-start g4",
                "init-done g4 n=0",
                "disconnected g4",
                "connected g5",
                "init-start g5",
                "init dom-a paused/6 g5",
                "init-done g5 n=1",
                "#3 watchdog dom-a pause recovered g5 e3",
            ],
        );
    }

    #[test]
    fn a_restarted_domain_paused_again_is_a_new_episode() {
        check(
            vec![
                Connect,
                List(vec![running(A, 1)]),
                Live(firing(A, 1, 1)),
                Drop,
                Connect,
                List(vec![paused_wd(A, 7)]), // destroyed, started, fired
            ],
            &[
                "connected g1",
                "init-start g1",
                "init dom-a running/1 g1",
                "init-done g1 n=1",
                "#1 watchdog dom-a pause live g1 e1",
                "disconnected g1",
                "connected g2",
                "init-start g2",
                "init dom-a paused/6 g2",
                "init-done g2 n=1",
                "#2 watchdog dom-a pause recovered g2 e2",
            ],
        );
    }

    #[test]
    fn other_actions_are_episodes_of_their_own_and_never_recovered() {
        check(
            vec![
                Connect,
                List(vec![running(A, 1)]),
                Live(firing(A, 1, 2)),
                Live(firing(A, 1, 2)),
                Live(firing(A, 1, 6)),
                Live(firing(A, 1, 9)),
                Live(firing(A, 1, 3)),
                Live(life(A, 1, Lifecycle::Shutdown, 0)),
                Live(life(A, 1, Lifecycle::Stopped, 0)),
                Live(life(A, 1, Lifecycle::Undefined, 0)),
                Drop,
                Connect,
                List(vec![info(A, None, DomainState::Shutoff, 0)]),
            ],
            &[
                "connected g1",
                "init-start g1",
                "init dom-a running/1 g1",
                "init-done g1 n=1",
                "#1 watchdog dom-a reset live g1 e1",
                "#2 watchdog dom-a reset live g1 e2",
                "#3 watchdog dom-a inject-nmi live g1 e3",
                "#4 watchdog dom-a unknown-9 live g1 e4",
                "#5 watchdog dom-a poweroff live g1 e5",
                "#6 dom-a shutdown finished g1 e5",
                "#7 dom-a stopped shutdown g1 e5",
                "#8 dom-a undefined removed g1",
                "disconnected g1",
                "connected g2",
                "init-start g2",
                "init dom-a shutoff/0 g2",
                "init-done g2 n=1",
            ],
        );
    }

    #[test]
    fn only_the_consequence_of_a_firing_carries_its_episode() {
        check(
            vec![
                Connect,
                List(vec![running(A, 1), running(B, 2)]),
                Live(firing(A, 1, 2)), // reset: no lifecycle consequence
                Live(life(A, 1, Lifecycle::Suspended, 0)),
                Live(firing(B, 2, 1)),
                Live(life(A, 1, Lifecycle::Resumed, 0)), // other domain
                Live(life(B, 2, Lifecycle::Suspended, 3)),
                Live(life(B, 2, Lifecycle::Resumed, 0)),
            ],
            &[
                "connected g1",
                "init-start g1",
                "init dom-a running/1 g1",
                "init dom-b running/1 g1",
                "init-done g1 n=2",
                "#1 watchdog dom-a reset live g1 e1",
                "#2 dom-a suspended paused g1",
                "#3 watchdog dom-b pause live g1 e2",
                "#4 dom-a resumed unpaused g1",
                "#5 dom-b suspended watchdog g1 e2",
                "#6 dom-b resumed unpaused g1",
            ],
        );
    }

    #[test]
    fn a_live_pause_while_an_episode_is_open_reports_a_new_episode() {
        // A resume we never saw (e.g. it happened while disconnected and the
        // guest fired again after the listing): a live firing is always real.
        check(
            vec![
                Connect,
                List(vec![running(A, 1)]),
                Live(firing(A, 1, 1)),
                Live(firing(A, 1, 1)),
            ],
            &[
                "connected g1",
                "init-start g1",
                "init dom-a running/1 g1",
                "init-done g1 n=1",
                "#1 watchdog dom-a pause live g1 e1",
                "#2 watchdog dom-a pause live g1 e2",
            ],
        );
    }

    #[test]
    fn generation_increments_and_events_carry_it() {
        let mut m = Machine::new();
        assert_eq!(m.generation(), 0);
        for g in 1..=3 {
            match m.connected("u") {
                Item::Connected { generation, uri } => {
                    assert_eq!((generation, uri.as_str()), (g, "u"));
                }
                other => panic!("{other:?}"),
            }
            let Some(Item::Lifecycle(l)) = m.live(life(B, 1, Lifecycle::Defined, 0), None) else {
                panic!("lifecycle expected");
            };
            assert_eq!((l.generation, l.seq), (g, g));
            match m.disconnected(DisconnectReason::NotAlive) {
                Item::Disconnected { generation, .. } => assert_eq!(generation, g),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn xml_passes_through_and_times_are_kept() {
        let mut m = Machine::new();
        m.connected("u");
        let mut ev = life(A, 1, Lifecycle::Started, 0);
        ev.received_at = t(42);
        let Some(Item::Lifecycle(l)) = m.live(ev, Some("<domain/>".into())) else {
            panic!("lifecycle expected");
        };
        assert_eq!(l.xml.as_deref(), Some("<domain/>"));
        assert_eq!(l.received_at, t(42));
        let items = m.listed(vec![paused_wd(B, 3)], t(7));
        let Some(Item::Watchdog(w)) = items.last() else {
            panic!("recovered firing expected: {items:?}");
        };
        assert_eq!(w.received_at, t(7));
        assert!(w.is_recovered());
        assert!(
            RawKind::Lifecycle {
                event: Enum::Known(Lifecycle::Defined),
                detail: LifecycleDetail::from_raw(0, 0)
            }
            .wants_xml()
        );
        assert!(!firing(A, 1, 1).kind.wants_xml());
    }

    #[test]
    fn unknown_run_ids_match() {
        assert!(same_run(None, Some(3)));
        assert!(same_run(Some(3), None));
        assert!(same_run(Some(3), Some(3)));
        assert!(!same_run(Some(3), Some(4)));
    }

    #[test]
    fn recheck_recovers_a_pause_no_event_reported_and_only_once() {
        check(
            vec![
                Connect,
                List(vec![running(A, 1)]), // libvirtd had not caught up yet
                Recheck(vec![paused_wd(A, 1)]),
                Recheck(vec![paused_wd(A, 1)]),
                Live(firing(A, 1, 1)), // the same firing, queued behind the recheck
                Live(life(A, 1, Lifecycle::Resumed, 0)),
                Recheck(vec![running(A, 1)]),
                Drop,
                Connect,
                List(vec![paused_wd(A, 1)]),
                Recheck(vec![paused_wd(A, 1)]),
            ],
            &[
                "connected g1",
                "init-start g1",
                "init dom-a running/1 g1",
                "init-done g1 n=1",
                "#1 watchdog dom-a pause recovered g1 e1",
                "#2 dom-a resumed unpaused g1",
                "disconnected g1",
                "connected g2",
                "init-start g2",
                "init dom-a paused/6 g2",
                "init-done g2 n=1",
                "#3 watchdog dom-a pause recovered g2 e2",
            ],
        );
    }

    #[test]
    fn recheck_ends_episodes_like_a_catch_up() {
        check(
            vec![
                Connect,
                List(vec![running(A, 1), running(B, 2)]),
                Live(firing(A, 1, 1)),
                Live(firing(B, 2, 1)),
                Recheck(vec![running(A, 1)]), // A resumed unseen, B gone
                Recheck(vec![paused_wd(A, 1)]),
            ],
            &[
                "connected g1",
                "init-start g1",
                "init dom-a running/1 g1",
                "init dom-b running/1 g1",
                "init-done g1 n=2",
                "#1 watchdog dom-a pause live g1 e1",
                "#2 watchdog dom-b pause live g1 e2",
                "#3 watchdog dom-a pause recovered g1 e3",
            ],
        );
    }
}
