//! The spool's tests.

use super::delivery::retry_delay;
use super::*;
use crate::error_chain;
use crate::notifier::MockNotifier;
use crate::testing::firing;
use crate::testing::until;
use std::collections::HashSet;
use uuid::Uuid;

type Log = Arc<Mutex<Vec<Uuid>>>;

/// A mock that delivers, recording event ids, except that `answer`
/// may fail a call (given the call index and the notification).
fn notifier(
    answer: impl Fn(usize, &Notification) -> Result<(), NotifyError> + Send + 'static,
) -> (MockNotifier, Log) {
    let log: Log = Arc::default();
    let seen = log.clone();
    let mut call = 0;
    let mut m = MockNotifier::new();
    m.expect_notify().returning(move |n| {
        call += 1;
        answer(call - 1, n)?;
        seen.lock().unwrap().push(n.event_id);
        Ok(())
    });
    (m, log)
}

fn quick() -> QueueConfig {
    QueueConfig::default().retry_delays(Duration::from_millis(5), Duration::from_millis(20))
}

fn ids(ns: &[Notification]) -> Vec<Uuid> {
    ns.iter().map(|n| n.event_id).collect()
}

#[tokio::test]
async fn a_spool_directory_has_one_owner_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let (m, _) = notifier(|_, _| Ok(()));
    let first = Spool::open(dir.path(), quick(), m).unwrap();
    let (m2, _) = notifier(|_, _| Ok(()));
    let err = Spool::open(dir.path(), quick(), m2).unwrap_err();
    assert!(matches!(err, Error::SpoolLocked { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "spool directory {} is in use by another process (lock file {})",
            dir.path().display(),
            dir.path().join("LOCK").display()
        )
    );
    first.shutdown(Duration::from_secs(1)).await;
    drop(first);
    let (m3, _) = notifier(|_, _| Ok(()));
    Spool::open(dir.path(), quick(), m3).expect("the lock is released with the spool");
}

#[tokio::test]
async fn delivers_acks_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    for mode in [SyncMode::PerEntry, SyncMode::GroupCommit] {
        let (m, log) = notifier(|_, _| Ok(()));
        let spool = Spool::open(dir.path(), quick().sync(mode), m).unwrap();
        let ns: Vec<_> = (0..20).map(firing).collect();
        for n in &ns {
            spool.notify(n).await.unwrap();
        }
        until("delivery", || spool.stats().delivered == 20).await;
        let stats = spool.shutdown(Duration::from_secs(1)).await;
        assert_eq!((stats.accepted, stats.pending), (20, 0));
        let mut got = log.lock().unwrap().clone();
        got.sort();
        let mut want = ids(&ns);
        want.sort();
        assert_eq!(got, want);
        assert!(scan(dir.path()).unwrap().pending.is_empty());
        assert!(spool.notify(&ns[0]).await.is_err(), "closed after shutdown");
    }
}

#[tokio::test]
async fn retries_retryable_failures_and_drops_permanent_ones() {
    let dir = tempfile::tempdir().unwrap();
    let bad = firing(9);
    let bad_id = bad.event_id;
    let (m, log) = notifier(move |call, n| {
        if n.event_id == bad_id {
            Err(NotifyError::permanent("rejected"))
        } else if call < 4 {
            Err(NotifyError::retryable("down"))
        } else {
            Ok(())
        }
    });
    let spool = Spool::open(dir.path(), quick().concurrency(1), m).unwrap();
    let good = firing(1);
    spool.notify(&good).await.unwrap();
    spool.notify(&bad).await.unwrap();
    until("delivery", || {
        let s = spool.stats();
        s.delivered == 1 && s.dropped_permanent == 1
    })
    .await;
    assert_eq!(*log.lock().unwrap(), vec![good.event_id]);
    assert_eq!(spool.stats().pending, 0);
    spool.shutdown(Duration::ZERO).await;
    assert!(scan(dir.path()).unwrap().pending.is_empty());
}

#[tokio::test]
async fn undelivered_entries_survive_a_restart_with_their_event_ids() {
    let dir = tempfile::tempdir().unwrap();
    let ns: Vec<_> = (0..5).map(firing).collect();
    {
        let (m, _) = notifier(|_, _| Err(NotifyError::retryable("down")));
        let spool = Spool::open(dir.path(), quick(), m).unwrap();
        for n in &ns {
            spool.notify(n).await.unwrap();
        }
        let stats = spool.shutdown(Duration::from_millis(20)).await;
        assert_eq!(stats.pending, 5);
    }
    let found = scan(dir.path()).unwrap();
    assert_eq!(
        found
            .pending
            .iter()
            .map(|(_, n)| n.clone())
            .collect::<Vec<_>>(),
        ns
    );
    let (m, log) = notifier(|_, _| Ok(()));
    let spool = Spool::open(dir.path(), quick(), m).unwrap();
    until("redelivery", || spool.stats().delivered == 5).await;
    let got: HashSet<Uuid> = log.lock().unwrap().iter().copied().collect();
    assert_eq!(got, ids(&ns).into_iter().collect());
    // New entries get seqs above the recovered ones.
    spool.notify(&firing(7)).await.unwrap();
    spool.shutdown(Duration::from_secs(1)).await;
    assert!(scan(dir.path()).unwrap().pending.is_empty());
}

#[tokio::test]
async fn a_full_spool_drops_the_oldest_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let (m, _) = notifier(|_, _| {
        Err(NotifyError::retryable("down").with_retry_after(Duration::from_secs(60)))
    });
    let spool = Spool::open(dir.path(), quick().max_entries(3).concurrency(1), m).unwrap();
    let ns: Vec<_> = (0..6).map(firing).collect();
    for n in &ns {
        spool.notify(n).await.unwrap();
    }
    let stats = spool.shutdown(Duration::ZERO).await;
    assert_eq!((stats.accepted, stats.pending), (6, 3));
    // The one in flight (the oldest) may be spared; the rest go oldest first.
    assert_eq!(stats.dropped_full, 3);
    let kept: Vec<Uuid> = scan(dir.path())
        .unwrap()
        .pending
        .iter()
        .map(|(_, n)| n.event_id)
        .collect();
    assert_eq!(kept.len(), 3);
    assert_eq!(kept[1..], ids(&ns)[4..]);
}

#[tokio::test]
async fn damage_is_skipped_and_counted_and_the_rest_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let ns: Vec<_> = (0..4).map(firing).collect();
    {
        let (m, _) = notifier(|_, _| Err(NotifyError::retryable("down")));
        let spool = Spool::open(dir.path(), quick(), m).unwrap();
        for n in &ns {
            spool.notify(n).await.unwrap();
        }
        spool.shutdown(Duration::ZERO).await;
    }
    let found = scan(dir.path()).unwrap();
    let seg = found.segments.last().unwrap().clone();
    let mut bytes = fs::read(&seg).unwrap();
    let (records, _) = recover(&bytes);
    let victim = records
        .iter()
        .find(|r| matches!(&r.body, RecordBody::Entry(n) if n.event_id == ns[1].event_id))
        .unwrap();
    bytes[victim.offset + RECORD_HEADER_LEN + 10] ^= 0xff;
    bytes.extend_from_slice(&RECORD_MAGIC);
    bytes.extend_from_slice(&[7, 0, 0]);
    fs::write(&seg, &bytes).unwrap();

    let (m, log) = notifier(|_, _| Ok(()));
    let spool = Spool::open(dir.path(), quick(), m).unwrap();
    assert_eq!(spool.stats().corrupt_skipped, 2);
    until("delivery", || spool.stats().delivered == 3).await;
    let got: HashSet<Uuid> = log.lock().unwrap().iter().copied().collect();
    let want: HashSet<Uuid> = [0, 2, 3].iter().map(|i| ns[*i].event_id).collect();
    assert_eq!(got, want);
    spool.shutdown(Duration::ZERO).await;
    // Recovery rewrote the survivors; the damage is gone from disk.
    assert!(scan(dir.path()).unwrap().skipped.is_empty());
}

#[tokio::test]
async fn segments_roll_over_and_a_stuck_entry_does_not_pin_them() {
    let dir = tempfile::tempdir().unwrap();
    let stuck = firing(0);
    let stuck_id = stuck.event_id;
    let (m, _) = notifier(move |_, n| {
        if n.event_id == stuck_id {
            Err(NotifyError::retryable("down").with_retry_after(Duration::from_secs(60)))
        } else {
            Ok(())
        }
    });
    let spool = Spool::open(dir.path(), quick().segment_bytes(4096), m).unwrap();
    spool.notify(&stuck).await.unwrap();
    for i in 1..200 {
        spool.notify(&firing(i)).await.unwrap();
        until("delivery", || spool.stats().delivered == i as u64).await;
    }
    // The last ack reaches the disk just after the delivery is counted.
    until("the last ack on disk", || {
        scan(dir.path()).unwrap().pending.len() == 1
    })
    .await;
    let found = scan(dir.path()).unwrap();
    // 200 entries of ~450 bytes fill ~25 segments; compaction and removal
    // keep only the last few.
    assert!(found.segments.len() <= 3, "{:?}", found.segments);
    assert_eq!(found.pending.len(), 1);
    assert_eq!(found.pending[0].1.event_id, stuck_id);
    spool.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_serves_concurrent_callers() {
    let dir = tempfile::tempdir().unwrap();
    let (m, _) = notifier(|_, _| Ok(()));
    let spool = Arc::new(Spool::open(dir.path(), quick(), m).unwrap());
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let spool = spool.clone();
            tokio::spawn(async move {
                for j in 0..10 {
                    spool.notify(&firing(i * 100 + j)).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    until("delivery", || spool.stats().delivered == 320).await;
    assert_eq!(spool.shutdown(Duration::ZERO).await.accepted, 320);
}

#[test]
fn retry_delays_grow_capped_and_honour_retry_after() {
    let config = quick(); // 5 ms .. 20 ms
    let check = |attempt: u32, retry_after: Option<u64>, min: u64, max: u64| {
        for _ in 0..20 {
            let d = retry_delay(&config, attempt, retry_after.map(Duration::from_millis));
            let ms = d.as_millis() as u64;
            assert!(
                (min..=max).contains(&ms),
                "attempt {attempt}: {d:?} not in {min}..={max} ms"
            );
        }
    };
    // wd_backoff::Backoff: 5 ms doubling, jittered into [d/2, d], capped.
    check(1, None, 2, 5);
    check(2, None, 5, 10);
    check(9, None, 10, 20);
    check(40, None, 10, 20);
    // A remote retry-after is honoured up to the configured maximum, and
    // any value, even u64::MAX seconds, is safe.
    check(1, Some(15), 15, 20);
    check(1, Some(500), 20, 20);
    check(1, Some(u64::MAX), 20, 20);
    let d = retry_delay(&config, u32::MAX, Some(Duration::MAX));
    assert_eq!(d, Duration::from_millis(20));
}

#[tokio::test]
async fn an_oversized_notification_is_refused_permanently() {
    let dir = tempfile::tempdir().unwrap();
    let (m, _) = notifier(|_, _| Ok(()));
    let spool = Spool::open(dir.path(), quick(), m).unwrap();
    let mut n = firing(1);
    n.instance.name = Some("x".repeat(MAX_PAYLOAD));
    let err = spool.notify(&n).await.unwrap_err();
    assert!(
        !err.is_retryable() && err.to_string().contains("at most 1048576"),
        "{err}"
    );
    assert_eq!(spool.shutdown(Duration::ZERO).await.accepted, 0);
}

#[tokio::test]
async fn a_panicking_backend_is_retried_not_fatal() {
    // Not a mock: mockall poisons its own state when a closure panics.
    #[derive(Default)]
    struct PanicsOnce(std::sync::atomic::AtomicUsize);
    #[async_trait]
    impl Notifier for PanicsOnce {
        async fn notify(&self, _: &Notification) -> Result<(), NotifyError> {
            assert!(
                self.0.fetch_add(1, Ordering::SeqCst) > 0,
                "notifier bug on the first call"
            );
            Ok(())
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), quick(), PanicsOnce::default()).unwrap();
    spool.notify(&firing(1)).await.unwrap();
    until("delivery after the panic", || spool.stats().delivered == 1).await;
    spool.shutdown(Duration::ZERO).await;
}

#[test]
fn open_outside_a_runtime_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = Spool::open(dir.path(), quick(), crate::LogNotifier).unwrap_err();
    assert!(matches!(err, Error::NoRuntime), "{err}");
}

#[test]
fn config_is_validated() {
    let check = |config: QueueConfig, msg: &str| {
        let err = config.validate().unwrap_err();
        assert_eq!(err.to_string(), msg);
    };
    check(
        QueueConfig::default().max_entries(0),
        "spool setting max_entries=0 is invalid; allowed: at least 1",
    );
    check(
        QueueConfig::default().segment_bytes(10),
        "spool setting segment_bytes=10 is invalid; allowed: at least 4096",
    );
    check(
        QueueConfig::default().concurrency(0),
        "spool setting concurrency=0 is invalid; allowed: at least 1",
    );
    assert!(QueueConfig::default().validate().is_ok());
}

/// A write that fails (ENOSPC, EIO, EROFS; on write, on fsync, or on
/// creating the next segment: that only delays the roll-over) is refused as retryable, naming the spool's
/// directory and the error; nothing half-written is ever delivered or left
/// as a segment file; once the fault clears the same notification is
/// accepted, and offering it again does not queue it twice.
#[tokio::test]
async fn a_failed_write_is_refused_for_now_and_accepted_once_when_it_clears() {
    use super::faulty::FaultyFs;
    for errno in [28, 5, 30] {
        for (what, set) in [
            ("write", (true, false, false)),
            ("fsync", (false, true, false)),
            ("create", (false, false, true)),
        ] {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("q");
            let fs = FaultyFs::new();
            let faults = fs.faults();
            let (m, log) = notifier(|_, _| Ok(()));
            let spool = Spool::open_dyn(
                Arc::new(fs),
                &dir,
                "q".into(),
                quick().segment_bytes(4096),
                Arc::new(m),
            )
            .unwrap();
            let first = firing(1);
            spool.notify(&first).await.unwrap();
            faults.fail_writes(set.0.then_some(errno));
            faults.fail_syncs(set.1.then_some(errno));
            faults.fail_creates(set.2.then_some(errno));
            let mut held = Vec::new();
            // Enough to need a new segment (for the `create` fault).
            for i in 0..40u128 {
                let n = firing(100 + i);
                if let Err(e) = spool.notify(&n).await {
                    assert!(e.is_retryable(), "{what} {errno}: {e}");
                    let chain = error_chain(&e);
                    assert!(
                        chain.contains(&dir.display().to_string())
                            && chain
                                .contains(&std::io::Error::from_raw_os_error(errno).to_string()),
                        "{what} {errno}: {chain}"
                    );
                    held.push(n);
                }
            }
            // A segment that cannot be created only delays the roll-over:
            // the current one takes the entries meanwhile.
            assert!(
                what == "create" || !held.is_empty(),
                "{what} {errno}: no write failed"
            );
            assert!(faults.failed() > 0);
            faults.fail_all(None);
            for n in &held {
                spool.notify(n).await.unwrap();
                // Offered again (as a retry after another queue failed).
                spool.notify(n).await.unwrap();
            }
            until("everything delivered", || spool.stats().pending == 0).await;
            let mut got = log.lock().unwrap().clone();
            let len = got.len();
            got.sort();
            got.dedup();
            assert_eq!(len, got.len(), "{what} {errno}: a duplicate was delivered");
            assert_eq!(
                got.len(),
                41,
                "{what} {errno}: not everything was delivered"
            );
            // No partial segment is left: each file left is a valid one.
            drop(spool);
            let found = scan(&dir).unwrap();
            assert!(
                found
                    .skipped
                    .iter()
                    .all(|(_, s)| s.reason != SkipReason::BadHeader),
                "{what} {errno}: {:?}",
                found.skipped
            );
        }
    }
}

/// Recovery in place: a spool with a backlog restarts on a disk where no
/// write succeeds (full, or failing) again and again, and each start
/// writes nothing: no segment file is added, none is changed. Writes are
/// refused until the disk recovers; then the backlog and the new entries
/// are delivered, and the old segments go.
#[tokio::test]
async fn a_restart_with_a_backlog_writes_nothing_even_on_a_full_disk() {
    use super::faulty::FaultyFs;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("q");
    let files = |dir: &Path| -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let config = quick().segment_bytes(4096);
    {
        let (m, _) = notifier(|_, _| Err(NotifyError::retryable("down")));
        let spool = Spool::open(&dir, config.clone(), m).unwrap();
        for i in 0..60u128 {
            spool.notify(&firing(i)).await.unwrap();
        }
        spool.shutdown(Duration::from_millis(100)).await;
    }
    let before = files(&dir);
    let segments = before.iter().filter(|(n, _)| n.starts_with("seg-")).count();
    assert!(segments > 2, "{before:?}");
    for _ in 0..5 {
        let fs = FaultyFs::new();
        fs.faults().fail_all(Some(28));
        let (m, _) = notifier(|_, _| Err(NotifyError::retryable("down")));
        let spool = Spool::open_dyn(Arc::new(fs), &dir, "q".into(), config.clone(), Arc::new(m))
            .expect("a start on a full disk succeeds");
        assert_eq!(spool.stats().pending, 60);
        let e = spool.notify(&firing(1000)).await.unwrap_err();
        assert!(
            e.is_retryable() && error_chain(&e).contains("No space left"),
            "{e}"
        );
        drop(spool);
        assert_eq!(files(&dir), before, "a failed start changed the directory");
    }
    let (m, log) = notifier(|_, _| Ok(()));
    let spool = Spool::open(&dir, config, m).unwrap();
    spool.notify(&firing(1000)).await.unwrap();
    until("everything delivered", || log.lock().unwrap().len() == 61).await;
    until("the old segments removed", || {
        files(&dir)
            .iter()
            .filter(|(n, _)| n.starts_with("seg-"))
            .count()
            == 1
    })
    .await;
}

/// Fair shares in a shared queue: one project fires ten times the queue's
/// bound while the destination is down; every other project's
/// notifications stay, and are delivered when it comes back. Only the
/// flooding project's own (oldest) entries are dropped.
#[tokio::test]
async fn a_flooding_project_evicts_only_its_own_notifications() {
    let tmp = tempfile::tempdir().unwrap();
    let up = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = up.clone();
    let (m, log) = notifier(move |_, _| {
        if flag.load(std::sync::atomic::Ordering::SeqCst) {
            Ok(())
        } else {
            Err(NotifyError::retryable("bus down"))
        }
    });
    let spool = Spool::open(tmp.path().join("bus"), quick().max_entries(20), m).unwrap();
    let of = |k: u128, project: &str| {
        let mut n = firing(k);
        n.instance.project_id = Some(project.to_owned());
        n
    };
    let mut quiet = Vec::new();
    for i in 0..5u128 {
        let n = of(i, &format!("quiet-{i}"));
        quiet.push(n.event_id);
        spool.notify(&n).await.unwrap();
    }
    let mut flood = Vec::new();
    for i in 0..200u128 {
        let n = of(1000 + i, "noisy");
        flood.push(n.event_id);
        spool.notify(&n).await.unwrap();
        if i == 100 {
            // A quiet project fires in the middle of the flood.
            let n = of(99, "quiet-late");
            quiet.push(n.event_id);
            spool.notify(&n).await.unwrap();
        }
    }
    assert_eq!(spool.stats().pending, 20);
    assert_eq!(spool.stats().dropped_full, 186);
    up.store(true, std::sync::atomic::Ordering::SeqCst);
    until("the queue drained", || spool.stats().pending == 0).await;
    let got: HashSet<Uuid> = log.lock().unwrap().iter().copied().collect();
    for id in &quiet {
        assert!(
            got.contains(id),
            "a quiet project's notification was evicted"
        );
    }
    // The flood kept its newest entries.
    let kept: Vec<usize> = (0..flood.len())
        .filter(|i| got.contains(&flood[*i]))
        .collect();
    assert_eq!(kept, (186..200).collect::<Vec<_>>());
}

/// A queue directory the spool creates is made durable in its parents
/// (up to the first directory that existed), through the filesystem seam,
/// so a power cut cannot take the directory with the entries in it.
#[tokio::test]
async fn creating_a_queue_directory_syncs_its_parents() {
    use super::disk::{FsOp, SimFs};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool").join("dest").join("webhook-1");
    let fs = SimFs::default();
    let (m, _) = notifier(|_, _| Ok(()));
    let spool =
        Spool::open_dyn(Arc::new(fs.clone()), &dir, "q".into(), quick(), Arc::new(m)).unwrap();
    let synced: Vec<std::path::PathBuf> = fs
        .ops()
        .into_iter()
        .filter_map(|o| match o {
            FsOp::SyncDir(d) => Some(d),
            _ => None,
        })
        .collect();
    assert_eq!(
        synced,
        [
            tmp.path().join("spool").join("dest"),
            tmp.path().join("spool"),
            tmp.path().to_owned()
        ]
    );
    drop(spool);
    // Opening it again creates nothing, and syncs nothing at start.
    let fs = SimFs::default();
    let (m, _) = notifier(|_, _| Ok(()));
    let _spool =
        Spool::open_dyn(Arc::new(fs.clone()), &dir, "q".into(), quick(), Arc::new(m)).unwrap();
    assert!(fs.ops().is_empty(), "{:?}", fs.ops());
}

#[tokio::test]
async fn the_end_of_a_writer_thread_wakes_writer_exits_without_polling() {
    let dir = tempfile::tempdir().unwrap();
    let (m, _) = notifier(|_, _| Ok(()));
    let spool = Spool::open(dir.path(), quick(), m).unwrap();
    let exited = writer_exits();
    tokio::pin!(exited);
    exited.as_mut().enable();
    // Alive: nothing to wake for.
    assert!(
        tokio::time::timeout(Duration::from_millis(100), exited.as_mut())
            .await
            .is_err(),
        "woken while the writer thread runs"
    );
    assert!(!spool.writer_died());
    // Shutdown ends the writer thread: the enabled waiter is woken, and a
    // writer that ended on shutdown is not reported as dead.
    spool.shutdown(Duration::from_secs(1)).await;
    tokio::time::timeout(Duration::from_secs(5), exited)
        .await
        .expect("the writer thread's end wakes writer_exits");
    assert!(!spool.writer_died());
}
