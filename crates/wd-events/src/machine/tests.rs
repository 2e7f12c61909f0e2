//! Unit tests of the connection state machine: every decision about an
//! episode, without libvirt.

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
        let (Some(Item::Watchdog(first)), Some(Item::Watchdog(second))) = (first, second) else {
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
fn firings_carry_the_run_id_they_were_seen_with() {
    let mut m = Machine::new();
    m.connected("test:///default");
    let runs = |items: Vec<Item>| -> Vec<Option<u32>> {
        items
            .into_iter()
            .filter_map(|i| match i {
                Item::Watchdog(w) => Some(w.run_id),
                _ => None,
            })
            .collect()
    };
    assert_eq!(runs(m.listed(vec![paused_wd(A, 7)], t(1))), [Some(7)]);
    assert_eq!(
        runs(m.live(firing(B, 9, 2), None).into_iter().collect()),
        [Some(9)]
    );
    let mut inactive = firing(B, 9, 2);
    inactive.run_id = None;
    assert_eq!(runs(m.live(inactive, None).into_iter().collect()), [None]);
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

#[test]
fn the_machine_tracks_only_the_domains_that_matter_whatever_the_churn() {
    let mut m = Machine::new();
    m.connected("test:///x");
    let xml = Some("<domain/>".to_owned());
    for n in 0..100_000u128 {
        m.live(life(n, 1, Lifecycle::Defined, 0), xml.clone());
        m.live(life(n, 1, Lifecycle::Started, 0), xml.clone());
        // A transient domain's stop: no `undefined` event follows.
        m.live(life(n, 1, Lifecycle::Stopped, 1), None);
    }
    assert_eq!(m.sizes(), (0, 0));
    // A running domain whose XML was given is known; a catch-up skips it
    // unless it is paused by its watchdog.
    m.live(life(1, 1, Lifecycle::Started, 0), xml);
    assert!(!m.wants_xml(&running(1, 1)));
    assert!(m.wants_xml(&paused_wd(1, 1)));
    assert!(m.wants_xml(&running(2, 1)), "unknown");
    assert!(
        !m.wants_xml(&info(2, None, DomainState::Shutoff, 1)),
        "shut off"
    );
    assert_eq!(m.sizes(), (0, 1));
}
