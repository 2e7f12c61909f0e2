//! The pipeline's `run` loop hands firings of different domains over
//! concurrently, a domain's own in order, and finishes what is in flight.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use wd_events::WatchdogAction;

use super::tests::{dom, fire, resumed};
use super::*;
use crate::directory::NovaDirectory;

/// Takes `hold` per notification and records how many were in flight at
/// once, overall and per instance, and the order each instance's arrived.
#[derive(Default)]
struct Slow {
    hold: Duration,
    state: Mutex<SlowState>,
}

#[derive(Default)]
struct SlowState {
    now: usize,
    max: usize,
    per_instance: HashMap<Uuid, usize>,
    max_per_instance: usize,
    order: HashMap<Uuid, Vec<Uuid>>,
    done: usize,
}

#[async_trait]
impl Notifier for Slow {
    async fn notify(&self, n: &Notification) -> Result<(), NotifyError> {
        {
            let mut s = self.state.lock().unwrap();
            s.now += 1;
            s.max = s.max.max(s.now);
            let mine = s.per_instance.entry(n.instance.uuid).or_default();
            *mine += 1;
            let mine = *mine;
            s.max_per_instance = s.max_per_instance.max(mine);
            s.order.entry(n.instance.uuid).or_default().push(n.event_id);
        }
        tokio::time::sleep(self.hold).await;
        let mut s = self.state.lock().unwrap();
        s.now -= 1;
        *s.per_instance.entry(n.instance.uuid).or_default() -= 1;
        s.done += 1;
        Ok(())
    }
}

fn firing(domain: u128, action: WatchdogAction, episode: u128) -> Item {
    fire(&dom(domain), action, Origin::Live, episode)
}

fn pipeline(notifier: Arc<dyn Notifier>, ledger: Ledger) -> Pipeline {
    Pipeline::new(
        "compute-1",
        Arc::new(NovaDirectory::new()),
        notifier,
        ledger,
    )
}

#[tokio::test]
async fn other_domains_go_out_together_and_a_domains_own_in_order() {
    let slow = Arc::new(Slow {
        hold: Duration::from_millis(50),
        ..Slow::default()
    });
    // 20 domains fire once each; domain 100 fires five times among them.
    let mut items = Vec::new();
    for i in 0..20u128 {
        items.push(firing(i, WatchdogAction::Reset, 1000 + i));
        if i % 4 == 0 {
            items.push(firing(100, WatchdogAction::Reset, 2000 + i));
        }
    }
    let p = pipeline(slow.clone(), Ledger::in_memory());
    let stats = p
        .run(futures::stream::iter(items), std::future::pending())
        .await;
    assert_eq!((stats.firings, stats.accepted), (25, 25));
    let s = slow.state.lock().unwrap();
    assert_eq!(s.done, 25, "everything in flight was finished");
    assert!(s.max >= 10, "only {} were handed over at once", s.max);
    assert_eq!(s.max_per_instance, 1, "a domain's firings overlapped");
    let order: Vec<u128> = s.order[&Uuid::from_u128(100)]
        .iter()
        .map(|u| u.as_u128())
        .collect();
    assert_eq!(order, [2000, 2004, 2008, 2012, 2016]);
}

#[tokio::test]
async fn a_pause_whose_episode_ends_while_in_flight_is_not_marked_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("episodes.json");
    let slow = Arc::new(Slow {
        hold: Duration::from_millis(100),
        ..Slow::default()
    });
    let d = Uuid::from_u128(7);
    let resumed = resumed(&dom(7));
    // Pauses of domains 7 and 8 go out; 7 is resumed before its pause is
    // accepted, 8 stays paused.
    let items = vec![
        firing(7, WatchdogAction::Pause, 1),
        firing(8, WatchdogAction::Pause, 2),
        resumed,
    ];
    let p = pipeline(slow.clone(), Ledger::open(&path).unwrap());
    let stats = p
        .run(futures::stream::iter(items), std::future::pending())
        .await;
    assert_eq!(stats.accepted, 2);
    let ledger = Ledger::open(&path).unwrap();
    assert_eq!(ledger.get(&d), None, "an ended episode came back");
    let open = ledger
        .get(&Uuid::from_u128(8))
        .expect("8's episode is open");
    assert!(
        open.accepted && open.event_id == Uuid::from_u128(2),
        "{open:?}"
    );
}

#[tokio::test]
async fn shutdown_finishes_the_deliveries_in_flight() {
    let slow = Arc::new(Slow {
        hold: Duration::from_millis(200),
        ..Slow::default()
    });
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    for i in 0..3u128 {
        tx.send(firing(i, WatchdogAction::Reset, 10 + i))
            .await
            .unwrap();
    }
    let items = tokio_stream_from(rx);
    let p = pipeline(slow.clone(), Ledger::in_memory());
    // Shut down while all three are still being handed over.
    let stats = p
        .run(items, tokio::time::sleep(Duration::from_millis(50)))
        .await;
    assert_eq!(stats.accepted, 3);
    assert_eq!(slow.state.lock().unwrap().done, 3);
    drop(tx);
}

/// A stream over a channel's receiver (the sender stays open: the stream
/// never ends by itself).
fn tokio_stream_from(mut rx: tokio::sync::mpsc::Receiver<Item>) -> impl Stream<Item = Item> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Issue 20's race: pause, resume, pause, resume all arrive while the first
/// pause is still being handed over (a slow disk). Each lifecycle event
/// applies in order behind the firing before it, so each pause is
/// announced once and the guest, running at the end, has no open episode:
/// a later pause found by a catch-up is announced, not suppressed.
#[tokio::test]
async fn the_pause_resume_race_announces_each_episode_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("episodes.json");
    let slow = Arc::new(Slow {
        hold: Duration::from_millis(100),
        ..Slow::default()
    });
    let d = dom(7);
    let items = vec![
        firing(7, WatchdogAction::Pause, 1),
        resumed(&d),
        firing(7, WatchdogAction::Pause, 2),
        resumed(&d),
    ];
    let p = pipeline(slow.clone(), Ledger::open(&path).unwrap());
    let stats = p
        .run(futures::stream::iter(items), std::future::pending())
        .await;
    assert_eq!((stats.accepted, stats.already_notified), (2, 0));
    assert_eq!(Ledger::open(&path).unwrap().get(&d.uuid), None);
    // Paused again, found by a catch-up after a restart: a new episode.
    let items = vec![fire(&d, WatchdogAction::Pause, Origin::Recovered, 3)];
    let p = pipeline(slow.clone(), Ledger::open(&path).unwrap());
    let stats = p
        .run(futures::stream::iter(items), std::future::pending())
        .await;
    assert_eq!((stats.accepted, stats.already_notified), (1, 0));
    let order: Vec<u128> = slow.state.lock().unwrap().order[&d.uuid]
        .iter()
        .map(|u| u.as_u128())
        .collect();
    assert_eq!(order, [1, 2, 3]);
}

/// Fails every hand-over with a retryable error (a queue write failed)
/// while `broken` is set; records what it accepts.
#[derive(Default)]
struct Disk {
    broken: std::sync::atomic::AtomicBool,
    tries: Mutex<Vec<Uuid>>,
    accepted: Mutex<Vec<Uuid>>,
}

#[async_trait]
impl Notifier for Disk {
    async fn notify(&self, n: &Notification) -> Result<(), NotifyError> {
        self.tries.lock().unwrap().push(n.event_id);
        if self.broken.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(NotifyError::retryable(
                "not accepted by every queue: webhook-1: spool: cannot write to /var/spool/wd/dest/webhook-1: No space left on device (os error 28)",
            ));
        }
        self.accepted.lock().unwrap().push(n.event_id);
        Ok(())
    }
}

/// A write that fails is not a loss: the firing is held, retried with the
/// backoff, `/healthz` names the error and the metric counts it; the
/// domain's later items wait behind it; once the disk recovers the held
/// firing goes out once, with its id, and health comes back.
#[tokio::test(start_paused = true)]
async fn a_failed_write_holds_the_firing_until_the_disk_recovers() {
    let disk = Arc::new(Disk::default());
    disk.broken.store(true, std::sync::atomic::Ordering::SeqCst);
    let metrics = Metrics::new();
    metrics.libvirt_connected(1);
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let p = pipeline(disk.clone(), Ledger::in_memory()).with_metrics(metrics.clone());
    let task = tokio::spawn(p.run(tokio_stream_from(rx), std::future::pending()));
    tx.send(firing(1, WatchdogAction::Reset, 10)).await.unwrap();
    tx.send(firing(2, WatchdogAction::Poweroff, 20))
        .await
        .unwrap();
    tx.send(firing(1, WatchdogAction::Reset, 11)).await.unwrap();
    // A minute of failures: retried with growing waits, never given up.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let tries = disk.tries.lock().unwrap().len();
    assert!((6..=60).contains(&tries), "{tries} attempts in a minute");
    assert!(
        !disk.tries.lock().unwrap().contains(&Uuid::from_u128(11)),
        "domain 1's second firing waits behind its first"
    );
    let reason = metrics.health().unwrap_err();
    assert!(
        reason.contains("/var/spool/wd/dest/webhook-1") && reason.contains("No space left"),
        "{reason}"
    );
    let text = metrics.encode();
    assert!(text.contains("wd_firings_held 2"), "{text}");
    assert!(
        text.lines().any(
            |l| l.starts_with("wd_write_failures_total{target=\"queue\"}") && !l.ends_with(" 0")
        ),
        "{text}"
    );
    // The disk recovers: each firing goes out once, in order per domain.
    disk.broken
        .store(false, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(61)).await;
    let mut got: Vec<u128> = disk
        .accepted
        .lock()
        .unwrap()
        .iter()
        .map(|u| u.as_u128())
        .collect();
    let pos = |id| got.iter().position(|g| *g == id).unwrap();
    assert!(pos(10) < pos(11));
    got.sort_unstable();
    assert_eq!(got, [10, 11, 20]);
    assert_eq!(metrics.health(), Ok(()));
    assert!(metrics.encode().contains("wd_firings_held 0"));
    drop(tx);
    let stats = task.await.unwrap();
    assert_eq!(stats.accepted, 3);
    assert!(stats.write_failures >= 6);
}
