//! Integration tests against the real system libvirtd (`qemu:///system`)
//! running real QEMU guests whose watchdog fires. Skipped when libvirtd or
//! the guest assets are missing, unless `WD_REQUIRE_REAL=1`.

use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{Mutex, MutexGuard};
use uuid::Uuid;
use virt::connect::Connect;
use virt::domain::{DomainPausedReason, DomainState, DomainStateReason};
use virt::enumutil::Enum as VirtEnum;
use wd_events::{
    Backoff, Enum, EventStream, Item, LifecycleDetail, ListenerConfig, Origin, SuspendedDetail,
    WatchdogAction, WatchdogEvent,
};
use wd_testkit::guest::{self, GuestSpec};

/// Destroys the (transient) guest when the test ends, even on panic. Opens a
/// fresh connection: libvirtd may have restarted.
struct Guest {
    name: String,
    uuid: Uuid,
}

impl Drop for Guest {
    fn drop(&mut self) {
        if let Ok(conn) = Connect::open(Some(wd_testkit::Libvirtd::URI))
            && let Ok(dom) = conn.lookup_domain_by_name(&self.name)
        {
            let _ = dom.destroy();
        }
    }
}

/// Starts libvirtd again when dropped if a test left it stopped (say, by
/// panicking while it was down), so later tests find it.
struct KeepUp;

impl Drop for KeepUp {
    fn drop(&mut self) {
        if !wd_testkit::Libvirtd::is_up() {
            let _ = wd_testkit::Libvirtd::start();
        }
    }
}

/// These tests stop and restart the shared libvirtd, so they must not
/// overlap. nextest runs `libvirtd_*` tests one at a time; this lock does the
/// same under plain `cargo test`.
static SERIAL: Mutex<()> = Mutex::const_new(());

/// What the tests need (holding the lock), or `None` to skip.
async fn setup() -> Option<(
    MutexGuard<'static, ()>,
    wd_testkit::Libvirtd,
    guest::GuestAssets,
)> {
    let serial = SERIAL.lock().await;
    let libvirtd = wd_testkit::libvirtd()?;
    let assets = guest::assets()?;
    wd_events::init_event_loop().unwrap();
    Some((serial, libvirtd, assets))
}

fn create_guest(assets: &guest::GuestAssets, action: &str) -> Guest {
    let spec = GuestSpec::new(&wd_testkit::unique_name("wdtest"), action);
    let conn = Connect::open(Some(wd_testkit::Libvirtd::URI)).unwrap();
    conn.create_domain_xml(&spec.domain_xml(assets), 0)
        .unwrap_or_else(|e| panic!("create {}: {e}", spec.name));
    Guest {
        name: spec.name.clone(),
        uuid: spec.uuid.parse().unwrap(),
    }
}

fn config() -> ListenerConfig {
    // A short backoff cap keeps the tests quick once libvirtd is back.
    ListenerConfig::default()
        .uri(wd_testkit::Libvirtd::URI)
        .backoff(Backoff::new(
            Duration::from_millis(200),
            Duration::from_secs(2),
        ))
}

async fn next(stream: &mut EventStream, within: Duration) -> Option<Item> {
    tokio::time::timeout(within, stream.recv())
        .await
        .ok()
        .flatten()
}

/// Collects items until `done` says so, or panics after `timeout`.
async fn until(
    stream: &mut EventStream,
    timeout: Duration,
    seen: &mut Vec<Item>,
    mut done: impl FnMut(&Item) -> bool,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(item) = next(stream, left).await else {
            panic!("timed out after {timeout:?}; items so far: {seen:#?}");
        };
        let stop = done(&item);
        seen.push(item);
        if stop {
            return;
        }
    }
}

fn firings_of(items: &[Item], uuid: Uuid) -> Vec<WatchdogEvent> {
    items
        .iter()
        .filter_map(|i| match i {
            Item::Watchdog(w) if w.domain.uuid == uuid => Some(w.clone()),
            _ => None,
        })
        .collect()
}

fn paused_by_watchdog(name: &str) -> bool {
    let conn = Connect::open(Some(wd_testkit::Libvirtd::URI)).unwrap();
    let dom = conn.lookup_domain_by_name(name).unwrap();
    let (state, reason) = dom.state().unwrap();
    state == VirtEnum::Known(DomainState::Paused)
        && reason
            == VirtEnum::Known(DomainStateReason::Paused(VirtEnum::Known(
                DomainPausedReason::Watchdog,
            )))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libvirtd_pause_firing_arrives_live_and_the_domain_is_paused_by_watchdog() {
    let Some((_serial, _libvirtd, assets)) = setup().await else {
        return;
    };
    let mut stream = wd_events::listen(config()).unwrap();
    let mut items = Vec::new();
    until(&mut stream, Duration::from_secs(30), &mut items, |i| {
        matches!(i, Item::InitDone { .. })
    })
    .await;
    let guest = create_guest(&assets, "pause");
    let created = Instant::now();
    until(&mut stream, Duration::from_secs(90), &mut items, |i| {
        matches!(i, Item::Lifecycle(l) if l.domain.uuid == guest.uuid
            && l.detail == LifecycleDetail::Suspended(Enum::Known(SuspendedDetail::Watchdog)))
    })
    .await;
    let latency = SystemTime::now();
    let firings = firings_of(&items, guest.uuid);
    assert_eq!(firings.len(), 1, "{firings:#?}");
    let firing = &firings[0];
    eprintln!(
        "watchdog fired {:?} after create; callback-to-consumer (incl. the suspend event) {:?}",
        created.elapsed(),
        latency
            .duration_since(firing.received_at)
            .unwrap_or_default()
    );
    assert_eq!(firing.action, Enum::Known(WatchdogAction::Pause));
    assert_eq!(firing.action.to_string(), "pause");
    assert_eq!(firing.origin, Origin::Live);
    assert_eq!(firing.domain.name, guest.name);
    assert_eq!(firing.generation, 1);
    let Some(Item::Lifecycle(suspended)) = items.last() else {
        unreachable!()
    };
    assert_eq!(suspended.episode, Some(firing.episode));
    assert!(suspended.seq > firing.seq);
    assert!(paused_by_watchdog(&guest.name));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libvirtd_firing_while_libvirtd_is_down_is_recovered_once() {
    let Some((_serial, libvirtd, assets)) = setup().await else {
        return;
    };
    let mut stream = wd_events::listen(config()).unwrap();
    let mut items = Vec::new();
    until(&mut stream, Duration::from_secs(30), &mut items, |i| {
        matches!(i, Item::InitDone { .. })
    })
    .await;
    let guest = create_guest(&assets, "pause");
    let created = Instant::now();
    // Declared after the guest, so dropped before it: libvirtd is up again
    // when the guest is destroyed.
    let _up = KeepUp;
    // Stop libvirtd before the watchdog fires (about 6 s after create);
    // QEMU keeps running and fires while nobody listens.
    libvirtd.stop();
    let stopped_after = created.elapsed();
    until(&mut stream, Duration::from_secs(30), &mut items, |i| {
        matches!(i, Item::Disconnected { generation: 1, .. })
    })
    .await;
    assert!(
        firings_of(&items, guest.uuid).is_empty(),
        "the firing came before libvirtd stopped ({stopped_after:?} after create); items: {items:#?}"
    );
    // Give the guest time to fire, then bring libvirtd back.
    // It fires about 6 s after create; a loaded machine boots the TCG guest
    // slower.
    tokio::time::sleep(Duration::from_secs(25).saturating_sub(created.elapsed())).await;
    wd_testkit::Libvirtd::start().unwrap();
    until(
        &mut stream,
        Duration::from_secs(60),
        &mut items,
        |i| matches!(i, Item::Watchdog(w) if w.domain.uuid == guest.uuid),
    )
    .await;
    // Anything more about this guest would come right away.
    while let Some(item) = next(&mut stream, Duration::from_secs(3)).await {
        items.push(item);
    }
    let firings = firings_of(&items, guest.uuid);
    assert_eq!(firings.len(), 1, "exactly one report: {firings:#?}");
    let firing = &firings[0];
    assert_eq!(firing.origin, Origin::Recovered);
    assert_eq!(firing.action, Enum::Known(WatchdogAction::Pause));
    assert!(firing.generation >= 2, "{firing:?}");
    let listed = items.iter().rev().find_map(|i| match i {
        Item::InitDomain(d) if d.domain.uuid == guest.uuid => Some(d.clone()),
        _ => None,
    });
    let listed = listed.expect("the guest was listed by the catch-up");
    // The catch-up may still list it `running` (the listener is back before
    // libvirtd reattached to the guest's QEMU); the settle listings that
    // follow list it again once libvirtd knows (issue 19), and the last
    // listing says paused by its watchdog.
    assert!(listed.is_paused_by_watchdog(), "{listed:?}");
    assert!(
        listed
            .xml
            .as_deref()
            .is_some_and(|x| x.contains(&guest.name))
    );
    assert!(paused_by_watchdog(&guest.name));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libvirtd_firing_reported_live_is_not_reported_again_after_restart() {
    let Some((_serial, libvirtd, assets)) = setup().await else {
        return;
    };
    let mut stream = wd_events::listen(config()).unwrap();
    let mut items = Vec::new();
    until(&mut stream, Duration::from_secs(30), &mut items, |i| {
        matches!(i, Item::InitDone { .. })
    })
    .await;
    let guest = create_guest(&assets, "pause");
    until(
        &mut stream,
        Duration::from_secs(90),
        &mut items,
        |i| matches!(i, Item::Watchdog(w) if w.domain.uuid == guest.uuid),
    )
    .await;
    let _up = KeepUp;
    libvirtd.restart().unwrap();
    // The listener reconnects by itself and catches up.
    until(
        &mut stream,
        Duration::from_secs(60),
        &mut items,
        |i| matches!(i, Item::InitDone { generation, .. } if *generation >= 2),
    )
    .await;
    while let Some(item) = next(&mut stream, Duration::from_secs(3)).await {
        items.push(item);
    }
    let firings = firings_of(&items, guest.uuid);
    assert_eq!(firings.len(), 1, "reported once: {firings:#?}");
    assert_eq!(firings[0].origin, Origin::Live);
    assert!(
        items
            .iter()
            .any(|i| matches!(i, Item::Disconnected { generation: 1, .. })),
        "{items:#?}"
    );
    let relisted = items.iter().rev().find_map(|i| match i {
        Item::InitDomain(d) if d.domain.uuid == guest.uuid => Some(d.clone()),
        _ => None,
    });
    assert!(
        relisted
            .as_ref()
            .is_some_and(|d| d.is_paused_by_watchdog() && d.generation >= 2),
        "{relisted:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libvirtd_back_after_an_outage_is_caught_up_at_once_not_after_the_backoff() {
    let Some((_serial, libvirtd, _assets)) = setup().await else {
        return;
    };
    // A backoff that alone would keep the listener away for half an hour
    // or more: only the socket watch can bring it back within the test.
    let config = config().backoff(Backoff::new(
        Duration::from_secs(3600),
        Duration::from_secs(3600),
    ));
    let mut stream = wd_events::listen(config).unwrap();
    let mut items = Vec::new();
    until(&mut stream, Duration::from_secs(30), &mut items, |i| {
        matches!(i, Item::InitDone { .. })
    })
    .await;
    let _up = KeepUp;
    libvirtd.stop();
    // The first wait after the loss is already a backoff step (30 to 60
    // minutes here).
    until(&mut stream, Duration::from_secs(30), &mut items, |i| {
        matches!(i, Item::Disconnected { generation: 1, .. })
    })
    .await;
    // Away for longer than any default backoff step would wait.
    tokio::time::sleep(Duration::from_secs(5)).await;
    wd_testkit::Libvirtd::start().unwrap();
    let answered = Instant::now();
    // Generous for a loaded machine, yet far below the backoff; the real
    // figure is measured by `cargo xtask bench`.
    until(&mut stream, Duration::from_secs(120), &mut items, |i| {
        matches!(i, Item::InitDone { generation: 2, .. })
    })
    .await;
    eprintln!(
        "catch-up done {:?} after `virsh version` answered",
        answered.elapsed()
    );
    let lost = items
        .iter()
        .position(|i| matches!(i, Item::Disconnected { generation: 1, .. }))
        .unwrap();
    assert!(
        matches!(
            items.get(lost + 1),
            Some(Item::Connected { generation: 2, .. })
        ),
        "reconnected on the first attempt after the loss: {:#?}",
        &items[lost..]
    );
}
