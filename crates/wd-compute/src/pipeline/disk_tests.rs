//! The pipeline over real spools whose file-system calls fail or slow down
//! on demand (`wd_notify::fault::FaultyFs`): what a full or failing disk
//! does to firings, end to end below the process.

use std::sync::Mutex;

use async_trait::async_trait;
use wd_events::WatchdogAction;
use wd_notify::fault::FaultyFs;
use wd_notify::{QueueConfig, Spool, error_chain};

use super::tests::{dom, fire, resumed};
use super::*;
use crate::directory::NovaDirectory;

/// Records each event id it delivers.
#[derive(Default)]
struct Sink(Mutex<Vec<Uuid>>);

#[async_trait]
impl Notifier for Sink {
    async fn notify(&self, n: &Notification) -> Result<(), NotifyError> {
        self.0.lock().unwrap().push(n.event_id);
        Ok(())
    }
}

/// Two queues as the router has them: every notification goes to both,
/// and the call fails (retryable) when one of them did not take it.
struct Both(Arc<Spool>, Arc<Spool>);

#[async_trait]
impl Notifier for Both {
    async fn notify(&self, n: &Notification) -> Result<(), NotifyError> {
        let (a, b) = futures::join!(self.0.notify(n), self.1.notify(n));
        match (a, b) {
            (Ok(()), Ok(())) => Ok(()),
            (Err(e), _) | (_, Err(e)) => Err(NotifyError::retryable(format!(
                "not accepted by every queue: {}",
                error_chain(&e)
            ))),
        }
    }
}

fn sorted(v: &Mutex<Vec<Uuid>>) -> Vec<u128> {
    let mut v: Vec<u128> = v.lock().unwrap().iter().map(|u| u.as_u128()).collect();
    v.sort_unstable();
    v
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let t0 = std::time::Instant::now();
    while !done() {
        assert!(t0.elapsed() < Duration::from_secs(30), "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Disk full, an I/O error, a read-only filesystem (on write, fsync and
/// creation at once) under one queue, the other queue on a healthy disk:
/// pause, reset and poweroff firings are held, not lost; the healthy queue
/// delivers at once; `/healthz` names the failing directory and error;
/// when the fault clears every firing reaches each destination once, with
/// its id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_disk_holds_firings_and_each_goes_out_once_when_it_recovers() {
    for errno in [28, 5, 30] {
        let tmp = tempfile::tempdir().unwrap();
        let fs = FaultyFs::new();
        let faults = fs.faults();
        let (bad_sink, good_sink) = (Arc::new(Sink::default()), Arc::new(Sink::default()));
        let bad_dir = tmp.path().join("bad");
        let config = QueueConfig::default().segment_bytes(4096);
        let bad = Spool::open_with_fs(Arc::new(fs), &bad_dir, config.clone(), bad_sink.clone())
            .map(Arc::new)
            .unwrap();
        let good = Spool::open(tmp.path().join("good"), config, good_sink.clone())
            .map(Arc::new)
            .unwrap();
        let metrics = Metrics::new();
        metrics.libvirt_connected(1);
        let p = Pipeline::new(
            "compute-1",
            Arc::new(NovaDirectory::new()),
            Arc::new(Both(bad.clone(), good.clone())),
            Ledger::open(tmp.path().join("episodes.json")).unwrap(),
        )
        .with_metrics(metrics.clone());
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let items = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let task = tokio::spawn(p.run(items, std::future::pending()));
        faults.fail_all(Some(errno));
        let actions = [
            WatchdogAction::Pause,
            WatchdogAction::Reset,
            WatchdogAction::Poweroff,
        ];
        let mut ids = Vec::new();
        for i in 0..30u128 {
            let action = actions[(i % 3) as usize];
            tx.send(fire(&dom(i), action, Origin::Live, 1000 + i))
                .await
                .unwrap();
            ids.push(1000 + i);
        }
        until("every firing delivered by the healthy queue", || {
            sorted(&good_sink.0) == ids
        })
        .await;
        // The writer fails the call before the pipeline hears of it: wait
        // for the pipeline to report it.
        until("the failure reported", || metrics.health().is_err()).await;
        assert!(faults.failed() > 0);
        let reason = metrics.health().unwrap_err();
        let os = std::io::Error::from_raw_os_error(errno).to_string();
        assert!(
            reason.contains(&bad_dir.display().to_string()) && reason.contains(&os),
            "{errno}: {reason}"
        );
        assert!(bad_sink.0.lock().unwrap().is_empty());
        faults.fail_all(None);
        until("every held firing written and delivered", || {
            sorted(&bad_sink.0) == ids
        })
        .await;
        until("healthy again", || metrics.health().is_ok()).await;
        assert_eq!(sorted(&good_sink.0), ids, "{errno}: a duplicate");
        assert_eq!(bad.stats().pending, 0);
        drop(tx);
        let stats = task.await.unwrap();
        assert_eq!(stats.accepted, 30);
        assert!(stats.write_failures > 0);
    }
}

/// Runs a pipeline over `items` into `spool`, with the ledger at `ledger`.
async fn run_on(spool: &Arc<Spool>, ledger: &std::path::Path, items: Vec<Item>) -> PipelineStats {
    Pipeline::new(
        "compute-1",
        Arc::new(NovaDirectory::new()),
        spool.clone(),
        Ledger::open(ledger).unwrap(),
    )
    .run(futures::stream::iter(items), std::future::pending())
    .await
}

/// The race of issue 20 on a real spool whose fsync is slowed (through the
/// seam): pause, resume, pause, resume of each guest all arrive while its
/// first pause is still being written. Each pause episode is notified
/// exactly once, and none is left open: a pause found by a later catch-up
/// is announced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_resume_storm_on_a_slow_disk_notifies_each_episode_once() {
    let tmp = tempfile::tempdir().unwrap();
    let fs = FaultyFs::new();
    fs.faults().slow_syncs(Duration::from_millis(50));
    let sink = Arc::new(Sink::default());
    let spool = Spool::open_with_fs(
        Arc::new(fs),
        tmp.path().join("q"),
        QueueConfig::default(),
        sink.clone(),
    )
    .map(Arc::new)
    .unwrap();
    let ledger = tmp.path().join("episodes.json");
    let mut items = Vec::new();
    let mut ids = Vec::new();
    for g in 0..10u128 {
        for k in 0..3u128 {
            let id = 100 * (g + 1) + k;
            items.push(fire(&dom(g), WatchdogAction::Pause, Origin::Live, id));
            items.push(resumed(&dom(g)));
            ids.push(id);
        }
    }
    let stats = run_on(&spool, &ledger, items).await;
    assert_eq!((stats.accepted, stats.already_notified), (30, 0));
    // Each guest is paused again, as a catch-up finds it after a restart.
    let later: Vec<Item> = (0..10u128)
        .map(|g| fire(&dom(g), WatchdogAction::Pause, Origin::Recovered, 9000 + g))
        .collect();
    ids.extend(9000..9010u128);
    ids.sort_unstable();
    let stats = run_on(&spool, &ledger, later).await;
    assert_eq!((stats.accepted, stats.already_notified), (10, 0));
    until("every episode delivered", || {
        sorted(&sink.0).len() >= ids.len()
    })
    .await;
    assert_eq!(sorted(&sink.0), ids);
}

/// A crash while a pause is held (its queue's disk failing) loses only the
/// held notification itself: the restarted agent's catch-up finds the guest
/// still paused, and the ledger (not accepted) makes it announce the pause
/// again, with the same event id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_held_at_a_crash_is_announced_again_by_the_catch_up() {
    let tmp = tempfile::tempdir().unwrap();
    let ledger = tmp.path().join("episodes.json");
    let fs = FaultyFs::new();
    fs.faults().fail_all(Some(28));
    let sink = Arc::new(Sink::default());
    let spool = Spool::open_with_fs(
        Arc::new(fs.clone()),
        tmp.path().join("q"),
        QueueConfig::default(),
        sink.clone(),
    )
    .map(Arc::new)
    .unwrap();
    let metrics = Metrics::new();
    // Connected, so that /healthz fails only for the held write (a fresh
    // Metrics is unhealthy until libvirt connects, which would end the wait
    // below before the pipeline has written anything).
    metrics.libvirt_connected(1);
    let p = Pipeline::new(
        "compute-1",
        Arc::new(NovaDirectory::new()),
        spool.clone(),
        Ledger::open(&ledger).unwrap(),
    )
    .with_metrics(metrics.clone());
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    let items = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let task = tokio::spawn(p.run(items, std::future::pending()));
    tx.send(fire(&dom(1), WatchdogAction::Pause, Origin::Live, 77))
        .await
        .unwrap();
    until("the pause held", || {
        metrics.health().is_err() && metrics.encode().contains("wd_firings_held 1")
    })
    .await;
    // The crash.
    task.abort();
    let _ = task.await;
    drop(spool);
    // The disk is back; the restarted agent's catch-up finds the guest
    // paused.
    fs.faults().fail_all(None);
    let spool = Spool::open(tmp.path().join("q2"), QueueConfig::default(), sink.clone())
        .map(Arc::new)
        .unwrap();
    let later = vec![fire(&dom(1), WatchdogAction::Pause, Origin::Recovered, 78)];
    let stats = run_on(&spool, &ledger, later).await;
    assert_eq!((stats.accepted, stats.already_notified), (1, 0));
    until("delivered", || !sink.0.lock().unwrap().is_empty()).await;
    assert_eq!(sorted(&sink.0), [77]);
}

/// Checks, when it is handed a notification, that the ledger a restarted
/// agent would open already has the pause's entry, then lets the ledger's
/// sync go on.
struct LedgerFirst {
    ledger: std::path::PathBuf,
    seen: Mutex<Vec<Option<Entry>>>,
    called: Mutex<std::sync::mpsc::Sender<()>>,
}

#[async_trait]
impl Notifier for LedgerFirst {
    async fn notify(&self, n: &Notification) -> Result<(), NotifyError> {
        let entry = Ledger::open(&self.ledger).unwrap().get(&n.instance.uuid);
        self.seen.lock().unwrap().push(entry);
        let _ = self.called.lock().unwrap().send(());
        Ok(())
    }
}

/// Issue 19: a pause's ledger line is in the file before the delivery layer
/// is handed the notification (so a restart after `kill -9` at any point
/// finds it whenever a queue may hold it), and the ledger's sync runs while
/// the delivery layer writes, not before: the sync here waits until the
/// notifier was called, which would never happen if the hand-over waited
/// for the sync. The entry is marked accepted once both are done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_is_in_the_ledger_before_any_queue_has_it_and_its_sync_runs_beside_the_queue() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("episodes.json");
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let rx = Mutex::new(rx);
    let overlapped = Arc::new(Mutex::new(Vec::new()));
    let hook = {
        let overlapped = overlapped.clone();
        Arc::new(move || {
            let mut overlapped = overlapped.lock().unwrap();
            if overlapped.is_empty() {
                // The pause's own line (the accepted mark comes later).
                let called = rx.lock().unwrap().recv_timeout(Duration::from_secs(20));
                overlapped.push(called.is_ok());
            }
        })
    };
    let notifier = Arc::new(LedgerFirst {
        ledger: path.clone(),
        seen: Mutex::new(Vec::new()),
        called: Mutex::new(tx),
    });
    let d = dom(5);
    let mut items = super::tests::listing(&[(d.clone(), false)]);
    items.push(fire(&d, WatchdogAction::Pause, Origin::Live, 55));
    let stats = Pipeline::new(
        "compute-1",
        Arc::new(NovaDirectory::new()),
        notifier.clone(),
        Ledger::open(&path).unwrap().with_sync_hook(hook),
    )
    .run(futures::stream::iter(items), std::future::pending())
    .await;
    assert_eq!(stats.accepted, 1);
    let seen = notifier.seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [Some(Entry {
            event_id: Uuid::from_u128(55),
            accepted: false,
            run_id: Some(1),
        })]
    );
    let overlapped = overlapped.lock().unwrap().clone();
    assert_eq!(
        overlapped,
        [true],
        "the sync did not run beside the hand-over"
    );
    assert_eq!(
        Ledger::open(&path)
            .unwrap()
            .get(&d.uuid)
            .map(|e| e.accepted),
        Some(true)
    );
}
