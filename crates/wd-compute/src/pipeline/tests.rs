//! The pipeline's rules, fed listener items by hand.

use std::sync::Mutex;
use std::time::SystemTime;

use async_trait::async_trait;
use wd_events::{DomainInfo, DomainState, Enum, LifecycleDetail, Origin, ResumedDetail};
use wd_notify::NotifyError;

use super::*;
use crate::directory::NovaDirectory;

const PROJECT: &str = "6f70656e737461636b20697320636f6f6c";

/// Records what it is given; refuses for good while `fail` is set.
#[derive(Default)]
struct Recorder {
    got: Mutex<Vec<Notification>>,
    fail: Mutex<bool>,
}

#[async_trait]
impl Notifier for Recorder {
    async fn notify(&self, n: &Notification) -> Result<(), NotifyError> {
        if *self.fail.lock().unwrap() {
            return Err(NotifyError::permanent("refused"));
        }
        self.got.lock().unwrap().push(n.clone());
        Ok(())
    }
}

pub(super) fn dom(n: u128) -> DomainId {
    DomainId {
        uuid: Uuid::from_u128(n),
        name: format!("instance-{n:08x}"),
    }
}

fn nova_xml(d: &DomainId) -> String {
    format!(
        r#"<domain type="kvm"><uuid>{}</uuid><name>{}</name><metadata>
<nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">
<nova:name>web-1</nova:name><nova:flavor name="m1.small"/>
<nova:owner><nova:user uuid="u-1">alice</nova:user><nova:project uuid="{PROJECT}">demo</nova:project></nova:owner>
</nova:instance></metadata><devices/></domain>"#,
        d.uuid, d.name
    )
}

pub(super) fn fire(
    d: &DomainId,
    action: wd_events::WatchdogAction,
    origin: Origin,
    episode: u128,
) -> Item {
    fire_run(d, 1, action, origin, episode)
}

/// A firing of run `run` of `d`.
fn fire_run(
    d: &DomainId,
    run: u32,
    action: wd_events::WatchdogAction,
    origin: Origin,
    episode: u128,
) -> Item {
    Item::Watchdog(WatchdogEvent {
        domain: d.clone(),
        run_id: Some(run),
        action: Enum::Known(action),
        received_at: SystemTime::now(),
        seq: 1,
        generation: 1,
        origin,
        episode: Uuid::from_u128(episode),
    })
}

pub(super) fn listing(domains: &[(DomainId, bool)]) -> Vec<Item> {
    let runs: Vec<_> = domains.iter().map(|(d, p)| (d.clone(), 1, *p)).collect();
    listing_runs(&runs)
}

/// A catch-up listing of `(domain, run, paused by its watchdog)`.
fn listing_runs(domains: &[(DomainId, u32, bool)]) -> Vec<Item> {
    let mut items = vec![Item::InitStart { generation: 2 }];
    for (d, run, paused) in domains {
        items.push(Item::InitDomain(DomainInfo {
            domain: d.clone(),
            id: Some(*run),
            state: Enum::Known(if *paused {
                DomainState::Paused
            } else {
                DomainState::Running
            }),
            reason: if *paused {
                wd_events::PAUSED_REASON_WATCHDOG
            } else {
                1
            },
            xml: Some(nova_xml(d)),
            generation: 2,
        }));
    }
    items.push(Item::InitDone {
        generation: 2,
        domains: domains.len(),
    });
    items
}

pub(super) fn resumed(d: &DomainId) -> Item {
    Item::Lifecycle(LifecycleEvent {
        domain: d.clone(),
        event: Enum::Known(Lifecycle::Resumed),
        detail: LifecycleDetail::Resumed(Enum::Known(ResumedDetail::Unpaused)),
        received_at: SystemTime::now(),
        seq: 2,
        generation: 1,
        episode: None,
        xml: None,
    })
}

fn pipeline(ledger: Ledger) -> (Pipeline, Arc<Recorder>, Arc<NovaDirectory>) {
    let rec = Arc::new(Recorder::default());
    let dir = Arc::new(NovaDirectory::new());
    (
        Pipeline::new("compute-1", dir.clone(), rec.clone(), ledger),
        rec,
        dir,
    )
}

async fn feed(p: &mut Pipeline, items: Vec<Item>) {
    for i in items {
        p.drive(futures::stream::iter([i]), std::future::pending())
            .await;
    }
}

use wd_events::WatchdogAction::{Pause, Reset};

#[tokio::test]
async fn live_pause_carries_the_owner_and_is_not_repeated_after_a_reconnect() {
    let d = dom(1);
    let (mut p, rec, _) = pipeline(Ledger::in_memory());
    feed(&mut p, listing(&[(d.clone(), false)])).await;
    feed(&mut p, vec![fire(&d, Pause, Origin::Live, 77)]).await;
    // Reconnect: the catch-up finds the pause again and (as after a
    // restart of the listener) reports it as recovered.
    feed(&mut p, listing(&[(d.clone(), true)])).await;
    feed(&mut p, vec![fire(&d, Pause, Origin::Recovered, 78)]).await;

    let got = rec.got.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "{got:#?}");
    let n = &got[0];
    assert_eq!(n.event_id, Uuid::from_u128(77));
    assert_eq!(n.instance.uuid, d.uuid);
    assert_eq!(n.instance.project_id.as_deref(), Some(PROJECT));
    assert_eq!(n.instance.user_id.as_deref(), Some("u-1"));
    assert_eq!(n.instance.name.as_deref(), Some("web-1"));
    assert_eq!(n.action, "pause");
    assert_eq!(n.host, "compute-1");
    assert!(!n.recovered);
    assert_eq!(p.stats().already_notified, 1);
}

#[tokio::test]
async fn the_ledger_survives_a_restart_and_a_resume_ends_the_episode() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("episodes.json");
    let d = dom(2);
    {
        let (mut p, rec, _) = pipeline(Ledger::open(&path).unwrap());
        feed(&mut p, listing(&[(d.clone(), false)])).await;
        feed(&mut p, vec![fire(&d, Pause, Origin::Live, 1)]).await;
        assert_eq!(rec.got.lock().unwrap().len(), 1);
    }
    // A new process: its catch-up recovers the same pause.
    let (mut p, rec, _) = pipeline(Ledger::open(&path).unwrap());
    feed(&mut p, listing(&[(d.clone(), true)])).await;
    feed(&mut p, vec![fire(&d, Pause, Origin::Recovered, 2)]).await;
    assert!(rec.got.lock().unwrap().is_empty());
    // Resumed, then paused again: a new episode, announced.
    feed(&mut p, vec![resumed(&d), fire(&d, Pause, Origin::Live, 3)]).await;
    let got = rec.got.lock().unwrap().clone();
    assert_eq!(
        got.iter().map(|n| n.event_id).collect::<Vec<_>>(),
        [Uuid::from_u128(3)]
    );
}

#[tokio::test]
async fn a_refused_pause_is_offered_again_with_the_same_event_id() {
    let d = dom(3);
    let (mut p, rec, _) = pipeline(Ledger::in_memory());
    feed(&mut p, listing(&[(d.clone(), false)])).await;
    *rec.fail.lock().unwrap() = true;
    feed(&mut p, vec![fire(&d, Pause, Origin::Live, 10)]).await;
    assert_eq!(p.stats().delivery_errors, 1);
    *rec.fail.lock().unwrap() = false;
    feed(&mut p, listing(&[(d.clone(), true)])).await;
    feed(&mut p, vec![fire(&d, Pause, Origin::Recovered, 11)]).await;
    let got = rec.got.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].event_id, Uuid::from_u128(10));
    assert!(got[0].recovered);
}

#[tokio::test]
async fn catch_up_forgets_episodes_of_guests_no_longer_paused() {
    let d = dom(4);
    let (mut p, rec, _) = pipeline(Ledger::in_memory());
    feed(&mut p, listing(&[(d.clone(), false)])).await;
    feed(&mut p, vec![fire(&d, Pause, Origin::Live, 20)]).await;
    // Resumed while we were disconnected: the listing shows it running.
    feed(&mut p, listing(&[(d.clone(), false)])).await;
    feed(&mut p, vec![fire(&d, Pause, Origin::Live, 21)]).await;
    assert_eq!(rec.got.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn resets_are_each_announced_and_unknown_owners_get_no_project() {
    let known = dom(5);
    let stranger = dom(6);
    let (mut p, rec, dir) = pipeline(Ledger::in_memory());
    feed(&mut p, listing(&[(known.clone(), false)])).await;
    feed(
        &mut p,
        vec![
            fire(&known, Reset, Origin::Live, 30),
            fire(&known, Reset, Origin::Live, 31),
            fire(&stranger, Reset, Origin::Live, 32),
        ],
    )
    .await;
    let got = rec.got.lock().unwrap().clone();
    assert_eq!(got.len(), 3);
    assert_eq!(got[0].action, "reset");
    assert_eq!(got[2].instance.project_id, None);
    assert_eq!(got[2].instance.uuid, stranger.uuid);
    assert_eq!(p.stats().unknown_owner, 1);
    assert_eq!(dir.unknown_owner_count(), 1);
}

#[tokio::test]
async fn the_owner_is_cached_from_a_started_event_and_outlives_the_domain() {
    let d = dom(7);
    let (mut p, rec, _) = pipeline(Ledger::in_memory());
    let started = Item::Lifecycle(LifecycleEvent {
        domain: d.clone(),
        event: Enum::Known(Lifecycle::Started),
        detail: LifecycleDetail::Unknown(0),
        received_at: SystemTime::now(),
        seq: 1,
        generation: 1,
        episode: None,
        xml: Some(nova_xml(&d)),
    });
    let undefined = Item::Lifecycle(LifecycleEvent {
        domain: d.clone(),
        event: Enum::Known(Lifecycle::Undefined),
        detail: LifecycleDetail::Unknown(0),
        received_at: SystemTime::now(),
        seq: 2,
        generation: 1,
        episode: None,
        xml: None,
    });
    feed(
        &mut p,
        vec![
            started,
            undefined,
            fire(&d, wd_events::WatchdogAction::Poweroff, Origin::Live, 40),
        ],
    )
    .await;
    let got = rec.got.lock().unwrap().clone();
    assert_eq!(got[0].instance.project_id.as_deref(), Some(PROJECT));
    assert_eq!(got[0].action, "poweroff");
}

/// A lifecycle event of `d`.
fn life(d: &DomainId, event: Lifecycle) -> Item {
    Item::Lifecycle(LifecycleEvent {
        domain: d.clone(),
        event: Enum::Known(event),
        detail: LifecycleDetail::Unknown(0),
        received_at: SystemTime::now(),
        seq: 3,
        generation: 1,
        episode: None,
        xml: None,
    })
}

/// The event ids the recorder got, as small numbers.
fn ids(rec: &Recorder) -> Vec<u128> {
    rec.got
        .lock()
        .unwrap()
        .iter()
        .map(|n| n.event_id.as_u128())
        .collect()
}

#[tokio::test]
async fn a_hard_reboot_is_a_new_episode_seen_live_or_after_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("episodes.json");
    let d = dom(8);
    {
        // Seen live: pause, destroy + start (a new run), pause again.
        let (mut p, rec, _) = pipeline(Ledger::open(&path).unwrap());
        feed(&mut p, listing_runs(&[(d.clone(), 1, false)])).await;
        feed(
            &mut p,
            vec![
                fire_run(&d, 1, Pause, Origin::Live, 1),
                life(&d, Lifecycle::Stopped),
                life(&d, Lifecycle::Started),
                fire_run(&d, 2, Pause, Origin::Live, 2),
            ],
        )
        .await;
        assert_eq!(ids(&rec), [1, 2]);
        let got = rec.got.lock().unwrap().clone();
        assert_eq!(
            got.iter().map(|n| n.domain.id).collect::<Vec<_>>(),
            [Some(1), Some(2)]
        );
    }
    {
        // Restarted: the catch-up finds run 2 paused: already notified.
        let (mut p, rec, _) = pipeline(Ledger::open(&path).unwrap());
        feed(&mut p, listing_runs(&[(d.clone(), 2, true)])).await;
        feed(&mut p, vec![fire_run(&d, 2, Pause, Origin::Recovered, 3)]).await;
        assert_eq!(ids(&rec), [] as [u128; 0]);
        assert_eq!(p.stats().already_notified, 1);
    }
    {
        // The agent was down while the guest was hard-rebooted and paused
        // again: the catch-up finds run 3 paused, which the ledger (run 2)
        // has not seen: a new episode, announced as recovered.
        let (mut p, rec, _) = pipeline(Ledger::open(&path).unwrap());
        feed(&mut p, listing_runs(&[(d.clone(), 3, true)])).await;
        feed(&mut p, vec![fire_run(&d, 3, Pause, Origin::Recovered, 4)]).await;
        assert_eq!(ids(&rec), [4]);
        assert!(rec.got.lock().unwrap()[0].recovered);
    }
    let l = Ledger::open(&path).unwrap();
    assert_eq!(
        l.get(&d.uuid),
        Some(Entry {
            event_id: Uuid::from_u128(4),
            accepted: true,
            run_id: Some(3),
        })
    );
}

#[tokio::test]
async fn a_live_pause_is_always_announced() {
    // The resume between these two pauses was not seen (a dropped
    // connection), yet a live firing is a real new firing.
    let d = dom(9);
    let (mut p, rec, _) = pipeline(Ledger::in_memory());
    feed(&mut p, listing(&[(d.clone(), false)])).await;
    feed(
        &mut p,
        vec![
            fire(&d, Pause, Origin::Live, 1),
            fire(&d, Pause, Origin::Live, 2),
        ],
    )
    .await;
    assert_eq!(ids(&rec), [1, 2]);
}

#[tokio::test]
async fn a_version_1_ledger_entry_matches_any_run_once_then_learns_it() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("episodes.json");
    let d = dom(10);
    std::fs::write(
        &path,
        format!(
            r#"{{"version":1,"episodes":{{"{}":{{"event_id":"{}","accepted":true}}}}}}"#,
            d.uuid,
            Uuid::from_u128(1)
        ),
    )
    .unwrap();
    let (mut p, rec, _) = pipeline(Ledger::open(&path).unwrap());
    feed(&mut p, listing_runs(&[(d.clone(), 5, true)])).await;
    feed(&mut p, vec![fire_run(&d, 5, Pause, Origin::Recovered, 2)]).await;
    assert_eq!(ids(&rec), [] as [u128; 0]);
    drop(p);
    assert_eq!(
        Ledger::open(&path).unwrap().get(&d.uuid).unwrap().run_id,
        Some(5)
    );
    // From now on a new run is told apart.
    let (mut p, rec, _) = pipeline(Ledger::open(&path).unwrap());
    feed(&mut p, listing_runs(&[(d.clone(), 6, true)])).await;
    feed(&mut p, vec![fire_run(&d, 6, Pause, Origin::Recovered, 3)]).await;
    assert_eq!(ids(&rec), [3]);
}

/// Fails every delivery, so that whatever the spool accepted stays on disk.
struct Down;

#[async_trait]
impl Notifier for Down {
    async fn notify(&self, _: &Notification) -> Result<(), NotifyError> {
        Err(NotifyError::retryable("endpoint down"))
    }
}

/// Issue 10, failure 4, without libvirt: pause, hard reboot, pause again
/// within the coalescing window, through the real `Coalesce` and `Spool`.
/// After every step, each episode the ledger calls accepted has its own
/// event id in the spool on disk; after a crash (nothing shut down) and a
/// restart, both pauses are pending with their own ids, and the catch-up
/// announces neither again.
#[tokio::test]
async fn the_ledger_accepts_a_pause_only_once_its_own_event_id_is_on_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    let ledger_path = dir.join("episodes.json");
    let d = dom(11);
    let on_disk = |dir: &std::path::Path| -> Vec<Uuid> {
        wd_notify::scan(dir)
            .unwrap()
            .pending
            .iter()
            .map(|(_, n)| n.event_id)
            .collect()
    };
    {
        let spool = Arc::new(
            wd_notify::Spool::open(&dir, wd_notify::QueueConfig::default(), Down).unwrap(),
        );
        let coalesce = Arc::new(wd_notify::Coalesce::new(
            spool.clone(),
            wd_notify::CoalesceConfig::default(),
        ));
        let mut p = Pipeline::new(
            "compute-1",
            Arc::new(NovaDirectory::new()),
            coalesce.clone(),
            Ledger::open(&ledger_path).unwrap(),
        );
        feed(&mut p, listing_runs(&[(d.clone(), 1, false)])).await;
        let steps = vec![
            fire_run(&d, 1, Pause, Origin::Live, 1),
            life(&d, Lifecycle::Stopped),
            life(&d, Lifecycle::Started),
            fire_run(&d, 2, Pause, Origin::Live, 2),
        ];
        for step in steps {
            feed(&mut p, vec![step]).await;
            let ledger = Ledger::open(&ledger_path).unwrap();
            if let Some(e) = ledger.get(&d.uuid).filter(|e| e.accepted) {
                assert!(
                    on_disk(&dir).contains(&e.event_id),
                    "the ledger accepted {} but the spool does not hold it",
                    e.event_id
                );
            }
        }
        assert_eq!(coalesce.stats().folded, 0);
        assert_eq!(on_disk(&dir), [Uuid::from_u128(1), Uuid::from_u128(2)]);
        // A crash: nothing is shut down or flushed (a dropped spool stops
        // delivering and releases its directory; what it accepted is on
        // disk already).
        drop(p);
        drop(coalesce);
        drop(spool);
        // Let the runtime drop the aborted timer task, the last holder of
        // the spool.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // The restarted agent delivers both, each with its own id, and its
    // catch-up does not announce the second pause a third time.
    let (tx, mut rx) = wd_notify::ChannelNotifier::channel(8);
    let _spool = wd_notify::Spool::open(&dir, wd_notify::QueueConfig::default(), tx).unwrap();
    let mut got = vec![
        rx.recv().await.unwrap().event_id,
        rx.recv().await.unwrap().event_id,
    ];
    got.sort();
    assert_eq!(got, [Uuid::from_u128(1), Uuid::from_u128(2)]);
    let (mut p, rec, _) = pipeline(Ledger::open(&ledger_path).unwrap());
    feed(&mut p, listing_runs(&[(d.clone(), 2, true)])).await;
    feed(&mut p, vec![fire_run(&d, 2, Pause, Origin::Recovered, 3)]).await;
    assert!(rec.got.lock().unwrap().is_empty());
}

/// A notifier that hangs until released, like a delivery layer stuck on
/// a dead disk.
#[derive(Default)]
struct Stuck {
    release: tokio::sync::Notify,
    got: Mutex<u32>,
}

#[async_trait]
impl Notifier for Stuck {
    async fn notify(&self, _n: &Notification) -> Result<(), NotifyError> {
        self.release.notified().await;
        *self.got.lock().unwrap() += 1;
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn pulses_say_caught_up_and_tick_only_while_the_loop_goes_round() {
    let d = dom(8);
    let stuck = Arc::new(Stuck::default());
    let pulses = Arc::new(Mutex::new(Vec::<Pulse>::new()));
    let sink = pulses.clone();
    let hook = PulseHook::new(Duration::from_secs(1), move |p| {
        sink.lock().unwrap().push(p)
    });
    let p = Pipeline::new(
        "compute-1",
        Arc::new(NovaDirectory::new()),
        stuck.clone(),
        Ledger::in_memory(),
    )
    .with_pulse(hook);
    let (tx, rx) = futures::channel::mpsc::unbounded::<Item>();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(p.run(rx, async move {
        let _ = stopped.await;
    }));
    let ticks = |ps: &[Pulse]| {
        ps.iter()
            .filter(|p| matches!(p, Pulse::Tick { .. }))
            .count()
    };

    for i in listing(&[(d.clone(), false)]) {
        tx.unbounded_send(i).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let before = pulses.lock().unwrap().clone();
    assert!(
        before.contains(&Pulse::CaughtUp {
            generation: 2,
            domains: 1
        }),
        "{before:?}"
    );
    assert!(ticks(&before) >= 3, "an idle loop ticks: {before:?}");
    assert!(before.iter().any(|p| matches!(
        p,
        Pulse::Tick {
            connected: true,
            ..
        }
    )));

    // The delivery layer hangs: once this firing's delivery has been in
    // flight for longer than a tick interval (1 s), however long we wait,
    // no tick comes.
    tx.unbounded_send(fire(&d, Reset, Origin::Live, 50))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let stuck_at = ticks(&pulses.lock().unwrap());
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(
        ticks(&pulses.lock().unwrap()),
        stuck_at,
        "a stuck loop must not tick"
    );

    // Unstuck: it goes round again, and the tick carries the firing.
    stuck.release.notify_one();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let after = pulses.lock().unwrap().clone();
    assert!(ticks(&after) >= stuck_at + 2, "{after:?}");
    assert!(
        matches!(after.last(), Some(Pulse::Tick { stats, .. }) if stats.firings == 1 && stats.accepted == 1)
    );

    tx.unbounded_send(Item::Disconnected {
        generation: 2,
        reason: wd_events::DisconnectReason::NotAlive,
    })
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let last = pulses.lock().unwrap().clone();
    assert!(last.contains(&Pulse::Disconnected { generation: 2 }));
    assert!(matches!(
        last.last(),
        Some(Pulse::Tick {
            connected: false,
            ..
        })
    ));
    let _ = stop.send(());
    assert_eq!(task.await.unwrap().accepted, 1);
}

fn life_xml(d: &DomainId, event: Lifecycle, xml: Option<String>) -> Item {
    Item::Lifecycle(LifecycleEvent {
        domain: d.clone(),
        event: Enum::Known(event),
        detail: LifecycleDetail::Unknown(0),
        received_at: SystemTime::now(),
        seq: 1,
        generation: 1,
        episode: None,
        xml,
    })
}

#[tokio::test]
async fn a_flood_of_100k_lifecycle_events_leaves_the_directory_bounded() {
    use crate::directory::DirectoryConfig;
    for (grace, expired) in [(Duration::ZERO, true), (Duration::from_secs(3600), false)] {
        let rec = Arc::new(Recorder::default());
        let dir = Arc::new(NovaDirectory::with_config(
            DirectoryConfig::default()
                .retire_after(grace)
                .max_entries(1_000),
        ));
        let mut p = Pipeline::new("compute-1", dir.clone(), rec.clone(), Ledger::in_memory());
        // A long-lived guest, listed at the start, outlives the churn.
        let keeper = dom(u128::MAX);
        feed(&mut p, listing(&[(keeper.clone(), false)])).await;
        // 25,000 instances come and go: defined, started, stopped,
        // undefined.
        for n in 0..25_000u128 {
            let d = dom(n);
            let xml = Some(nova_xml(&d));
            // (The XML is parsed once per instance, to keep the test quick.)
            feed(&mut p, vec![life_xml(&d, Lifecycle::Defined, None)]).await;
            feed(&mut p, vec![life_xml(&d, Lifecycle::Started, xml)]).await;
            feed(&mut p, vec![life_xml(&d, Lifecycle::Stopped, None)]).await;
            feed(&mut p, vec![life_xml(&d, Lifecycle::Undefined, None)]).await;
            assert!(dir.len() <= 1_000);
        }
        let stats = dir.stats();
        if expired {
            assert_eq!(stats.entries, 1, "{stats:?}");
            assert_eq!(stats.evicted_expired, 25_000, "{stats:?}");
            assert_eq!(stats.evicted_full, 0, "{stats:?}");
        } else {
            // Within their grace period, retired entries are evicted
            // first when the directory is full; the live guest stays.
            assert_eq!(stats.entries, 1_000, "{stats:?}");
            assert_eq!(stats.retired, 999, "{stats:?}");
            assert_eq!(stats.evicted_full, 25_001 - 1_000, "{stats:?}");
        }
        feed(&mut p, vec![fire(&keeper, Reset, Origin::Live, 1)]).await;
        let got = rec.got.lock().unwrap().clone();
        assert_eq!(got[0].instance.project_id.as_deref(), Some(PROJECT));
    }
}

#[tokio::test]
async fn a_catch_up_retires_vanished_and_shut_off_domains_and_is_timed() {
    let (gone, off, on) = (dom(10), dom(11), dom(12));
    let (mut p, _, dir) = pipeline(Ledger::in_memory());
    let mut first = vec![Item::Connected {
        generation: 2,
        uri: "test:///x".into(),
    }];
    first.extend(listing(&[(gone.clone(), false), (off.clone(), false)]));
    feed(&mut p, first).await;
    assert_eq!(dir.stats().retired, 0);
    let mut items = vec![Item::Connected {
        generation: 3,
        uri: "test:///x".into(),
    }];
    let mut second = listing(&[(off.clone(), false), (on.clone(), false)]);
    if let Item::InitDomain(info) = &mut second[1] {
        info.id = None; // shut off now
    }
    items.extend(second);
    feed(&mut p, items).await;
    let stats = dir.stats();
    assert_eq!((stats.entries, stats.retired), (3, 2), "{stats:?}");
    assert_eq!(p.stats().catch_ups, 2);
    assert!(p.stats().last_catch_up.is_some());
    // A settle listing (the same markers, no new connection) is not a
    // catch-up, and keeps the catch-up's time.
    feed(
        &mut p,
        listing(&[(off.clone(), false), (on.clone(), false)]),
    )
    .await;
    assert_eq!(p.stats().catch_ups, 2);
    assert!(p.stats().last_catch_up.is_some());
}

/// A firing found by a catch-up says when it was observed, as a bound: the
/// guest fired at or before then. A live firing's time is exact.
#[tokio::test]
async fn a_recovered_firing_gives_its_time_as_a_bound() {
    let (live, found) = (dom(21), dom(22));
    let (mut p, rec, _) = pipeline(Ledger::in_memory());
    feed(
        &mut p,
        listing(&[(live.clone(), false), (found.clone(), true)]),
    )
    .await;
    feed(
        &mut p,
        vec![
            fire(&found, Pause, Origin::Recovered, 1),
            fire(&live, Reset, Origin::Live, 2),
        ],
    )
    .await;
    let got = rec.got.lock().unwrap().clone();
    let json: Vec<serde_json::Value> = got
        .iter()
        .map(|n| serde_json::from_str(&n.to_json()).unwrap())
        .collect();
    assert_eq!(json[0]["fired_at_bound"], "at_or_before");
    assert_eq!(json[0]["recovered"], true);
    assert!(json[1].get("fired_at_bound").is_none(), "{}", json[1]);
}
