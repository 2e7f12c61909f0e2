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

/// A backoff that alone would keep the listener away for an hour: only its
/// probe of the socket or port can bring it back within a test.
const AN_HOUR: Backoff = Backoff::new(Duration::from_secs(3600), Duration::from_secs(3600));

/// Starts listening with `config` and waits for the first catch-up.
async fn listening(config: ListenerConfig) -> (EventStream, Vec<Item>) {
    let mut stream = wd_events::listen(config).unwrap();
    let mut items = Vec::new();
    until(&mut stream, Duration::from_secs(30), &mut items, |i| {
        matches!(i, Item::InitDone { .. })
    })
    .await;
    (stream, items)
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

/// Creates a `pause` guest, stops libvirtd before its watchdog fires (about
/// 6 s after the create; QEMU keeps running and fires while nobody
/// listens), waits until the listener has noticed, starts libvirtd again
/// once the guest has fired, and collects items until the recovered firing
/// and 3 s more.
async fn fire_while_down(
    libvirtd: wd_testkit::Libvirtd,
    assets: &guest::GuestAssets,
    stream: &mut EventStream,
    items: &mut Vec<Item>,
) -> Guest {
    let guest = create_guest(assets, "pause");
    let created = Instant::now();
    // Declared after the guest, so dropped before it: libvirtd is up again
    // when the guest is destroyed.
    let _up = KeepUp;
    libvirtd.stop();
    let stopped_after = created.elapsed();
    until(stream, Duration::from_secs(30), items, |i| {
        matches!(i, Item::Disconnected { generation: 1, .. })
    })
    .await;
    assert!(
        firings_of(items, guest.uuid).is_empty(),
        "the firing came before libvirtd stopped ({stopped_after:?} after create); items: {items:#?}"
    );
    // Give the guest time to fire, then bring libvirtd back.
    tokio::time::sleep(Duration::from_secs(25).saturating_sub(created.elapsed())).await;
    wd_testkit::Libvirtd::start().unwrap();
    until(
        stream,
        Duration::from_secs(120),
        items,
        |i| matches!(i, Item::Watchdog(w) if w.domain.uuid == guest.uuid),
    )
    .await;
    // Anything more about this guest would come right away.
    while let Some(item) = next(stream, Duration::from_secs(3)).await {
        items.push(item);
    }
    guest
}

/// The listener reconnected on its first attempt after losing generation 1.
fn assert_reconnected_at_once(items: &[Item]) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libvirtd_pause_firing_arrives_live_and_the_domain_is_paused_by_watchdog() {
    let Some((_serial, _libvirtd, assets)) = setup().await else {
        return;
    };
    let (mut stream, mut items) = listening(config()).await;
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
    let (mut stream, mut items) = listening(config()).await;
    let guest = fire_while_down(libvirtd, &assets, &mut stream, &mut items).await;
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
    let (mut stream, mut items) = listening(config()).await;
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
    let config = config().backoff(AN_HOUR);
    let (mut stream, mut items) = listening(config).await;
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
    assert_reconnected_at_once(&items);
}

/// Writes an `auth.conf` (mode 0600) in a fresh directory: `body`, or
/// nothing. Returns the directory (remove it) and the file.
fn auth_conf(body: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(wd_testkit::unique_name("wd-events-auth"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("auth.conf");
    std::fs::write(&file, body).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    (dir, file)
}

/// Probes on a blocking thread, failing the test if it does not answer
/// within 30 s (a prompt on a terminal would never answer).
async fn probe_within(config: ListenerConfig) -> wd_events::Result<()> {
    let probe = tokio::task::spawn_blocking(move || wd_events::probe(&config));
    tokio::time::timeout(Duration::from_secs(30), probe)
        .await
        .expect("the probe hung (waiting for a prompt?)")
        .unwrap()
}

/// `qemu+tcp://` with SASL (DIGEST-MD5, a `saslpasswd2` user): credentials
/// from libvirt's `auth.conf` or from the configuration, never a prompt; a
/// missing credential is a clear error, a wrong password libvirt's. The
/// listener then loses libvirtd while a guest's watchdog fires, is back as
/// soon as the TCP port accepts (not after its hour-long backoff), and
/// recovers the pause once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libvirtd_tcp_sasl_credentials_never_prompt_and_a_restart_is_caught_up() {
    let Some((_serial, libvirtd, assets)) = setup().await else {
        return;
    };
    let t = Instant::now();
    let Some(_tcp) = wd_testkit::libvirtd_tcp() else {
        return;
    };
    eprintln!("TCP listener up after {:?}", t.elapsed());
    let user = wd_testkit::SaslUser::create("wdev").unwrap();
    let base = wd_testkit::Libvirtd::tcp_uri();
    let (empty_dir, empty) = auth_conf("");
    let with_empty = format!("{base}?authfile={}", empty.display());
    let tcp = |uri: &str| config().uri(uri).read_only(true);

    // Nothing anywhere: a clear error at once, naming what is missing.
    let t = Instant::now();
    let err = probe_within(tcp(&with_empty)).await.unwrap_err();
    eprintln!("missing credentials refused in {:?}", t.elapsed());
    let msg = err.to_string();
    assert!(matches!(err, wd_events::Error::Credentials { .. }), "{msg}");
    for needle in [
        with_empty.as_str(),
        "`authname`",
        "`password`",
        "[auth-libvirt-127.0.0.1]",
    ] {
        assert!(msg.contains(needle), "{needle:?} not in {msg}");
    }
    // A wrong password: libvirt's refusal, which never shows the password.
    let wrong = wd_events::Credentials::new(&user.name, "not-the-password");
    let err = probe_within(tcp(&with_empty).credentials(Some(wrong)))
        .await
        .unwrap_err();
    eprintln!(
        "wrong password refused {:?} after the first probe",
        t.elapsed()
    );
    let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(matches!(err, wd_events::Error::Connect { .. }), "{chain}");
    assert!(chain.contains("authentication failed"), "{chain}");
    assert!(!chain.contains("not-the-password"), "{chain}");
    // The configured credentials, where auth.conf has none.
    let right = wd_events::Credentials::new(&user.name, &user.password);
    probe_within(tcp(&with_empty).credentials(Some(right)))
        .await
        .unwrap();
    std::fs::remove_dir_all(&empty_dir).unwrap();

    // libvirt's auth.conf, as kolla writes it for masakari-instancemonitor.
    let (dir, file) = auth_conf(&format!(
        "[credentials-wd]\nauthname={}\npassword={}\n\n[auth-libvirt-127.0.0.1]\ncredentials=wd\n",
        user.name, user.password
    ));
    let uri = format!("{base}?authfile={}", file.display());
    probe_within(tcp(&uri)).await.unwrap();
    let config = tcp(&uri).backoff(AN_HOUR);
    let (mut stream, mut items) = listening(config).await;
    eprintln!("listening after {:?}", t.elapsed());
    let guest = fire_while_down(libvirtd, &assets, &mut stream, &mut items).await;
    eprintln!("recovered after {:?}", t.elapsed());
    assert!(wd_testkit::Libvirtd::tcp_is_up());
    let firings = firings_of(&items, guest.uuid);
    assert_eq!(firings.len(), 1, "exactly one report: {firings:#?}");
    assert_eq!(firings[0].origin, Origin::Recovered);
    assert_eq!(firings[0].action, Enum::Known(WatchdogAction::Pause));
    assert_reconnected_at_once(&items);
    assert!(paused_by_watchdog(&guest.name));
    drop(stream);
    std::fs::remove_dir_all(&dir).unwrap();
}
