//! Crash safety of the spool with real processes: a child process spools
//! notifications and is killed with SIGKILL at random points, again and
//! again, sometimes with a torn or corrupted tail injected afterwards.
//! Nothing accepted may be lost, duplicates carry the same event id, and
//! nothing panics.

use std::collections::{HashMap, HashSet};
use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use uuid::Uuid;
use wd_notify::{
    Domain, Instance, Notification, Notifier, NotifyError, QueueConfig, RECORD_MAGIC, RecordBody,
    Spool, SyncMode, recover, scan,
};

const CHILD_DIR: &str = "WD_NOTIFY_CRASH_DIR";
const CHILD_LOG: &str = "WD_NOTIFY_CRASH_LOG";
const CHILD_SYNC: &str = "WD_NOTIFY_CRASH_SYNC";

/// The notifier of the child: fails a third of the time (retryably), and
/// otherwise records the event id durably before it reports success.
struct DurableLog {
    path: PathBuf,
}

#[async_trait]
impl Notifier for DurableLog {
    async fn notify(&self, n: &Notification) -> Result<(), NotifyError> {
        if fastrand::u8(..3) == 0 {
            return Err(NotifyError::retryable("crash test notifier: flaky"));
        }
        let write = || -> std::io::Result<()> {
            let mut f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            f.write_all(format!("{}\n", n.event_id).as_bytes())?;
            f.sync_data()
        };
        write().map_err(|e| NotifyError::retryable("crash test notifier: log").with_source(e))
    }
}

fn notification(id: Uuid) -> Notification {
    let mut n = Notification::new(
        Instance::new(Uuid::new_v4()),
        "compute-1",
        Domain::new(Uuid::new_v4(), "instance-crash"),
        "reset",
        time::OffsetDateTime::now_utc(),
    );
    n.event_id = id;
    // Lets the parent check that a recovered entry is the one written.
    n.instance.name = Some(id.to_string());
    n
}

/// The child: spools from several producers until it is killed. It prints
/// `T id` before offering a notification and `A id` once the spool has
/// accepted it.
#[test]
#[ignore = "run only as the child process of spool_survives_sigkill"]
fn crash_child() {
    let (Ok(dir), Ok(log)) = (std::env::var(CHILD_DIR), std::env::var(CHILD_LOG)) else {
        panic!("{CHILD_DIR} and {CHILD_LOG} must be set");
    };
    let sync = match std::env::var(CHILD_SYNC).as_deref() {
        Ok("per-entry") => SyncMode::PerEntry,
        _ => SyncMode::GroupCommit,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let config = QueueConfig::default()
            .sync(sync)
            .segment_bytes(8192)
            .retry_delays(Duration::from_millis(2), Duration::from_millis(20));
        let notifier = DurableLog { path: log.into() };
        let spool = Arc::new(Spool::open(&dir, config, notifier).unwrap());
        let producers: Vec<_> = (0..4)
            .map(|_| {
                let spool = spool.clone();
                tokio::spawn(async move {
                    let stop = Instant::now() + Duration::from_secs(5);
                    while Instant::now() < stop {
                        let id = Uuid::new_v4();
                        println!("T {id}");
                        if spool.notify(&notification(id)).await.is_ok() {
                            println!("A {id}");
                        }
                    }
                })
            })
            .collect();
        for p in producers {
            p.await.unwrap();
        }
    });
}

fn read_ids(path: &Path) -> Vec<Uuid> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| Uuid::parse_str(l).ok())
        .collect()
}

/// Damages the newest segment's tail, as a crash mid-write or a bad disk
/// would, and returns the event ids whose records it destroyed.
fn damage(spool_dir: &Path, round: usize) -> HashSet<Uuid> {
    let mut destroyed = HashSet::new();
    let Some(seg) = scan(spool_dir).unwrap().segments.last().cloned() else {
        return destroyed;
    };
    let mut bytes = fs::read(&seg).unwrap();
    let (records, _) = recover(&bytes);
    let Some(last) = records.last() else {
        return destroyed;
    };
    let mut lose = |body: &RecordBody| {
        if let RecordBody::Entry(n) = body {
            destroyed.insert(n.event_id);
        }
    };
    match round % 3 {
        // A torn partial record after the last one.
        0 => {
            bytes.extend_from_slice(&RECORD_MAGIC);
            bytes.extend_from_slice(&[0x40, 0x01, 0, 0, 1, 9, 9]);
        }
        // The last record cut in half.
        1 => {
            lose(&last.body);
            bytes.truncate(last.offset + last.len / 2);
        }
        // A flipped byte inside a random recent record.
        _ => {
            let r = &records[fastrand::usize(records.len().saturating_sub(5)..records.len())];
            lose(&r.body);
            let at = r.offset + fastrand::usize(..r.len);
            bytes[at] ^= 1 << fastrand::u8(..8);
        }
    }
    fs::write(&seg, &bytes).unwrap();
    destroyed
}

#[test]
fn spool_survives_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let spool_dir = tmp.path().join("spool");
    let log = tmp.path().join("delivered.log");
    let exe = std::env::current_exe().unwrap();
    // Rounds go on until the children accepted enough to prove something
    // (a condition, not a time budget: a slow machine runs more rounds);
    // the cap only stops a machine that accepts nothing at all.
    let cap = Instant::now() + Duration::from_secs(180);
    // Kill points and damage are random; the seed reproduces them.
    let seed = std::env::var("WD_NOTIFY_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    fastrand::seed(seed);
    println!("seed {seed} (set WD_NOTIFY_CRASH_SEED to repeat)");

    let mut tried: HashSet<Uuid> = HashSet::new();
    let mut accepted: HashSet<Uuid> = HashSet::new();
    let mut destroyed: HashSet<Uuid> = HashSet::new();
    let mut rounds = 0;
    let mut damaged_rounds = 0;
    while (rounds < 30 || accepted.len() <= 100) && rounds < 400 && Instant::now() < cap {
        let mode = if rounds % 2 == 0 {
            "group"
        } else {
            "per-entry"
        };
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR, &spool_dir)
            .env(CHILD_LOG, &log)
            .env(CHILD_SYNC, mode)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<String>>()
        });
        std::thread::sleep(Duration::from_millis(fastrand::u64(40..400)));
        let exited_early = child.try_wait().unwrap();
        let _ = child.kill(); // SIGKILL
        let status = child.wait().unwrap();
        let mut stderr = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
        }
        assert!(
            exited_early.is_none() && !stderr.contains("panicked"),
            "round {rounds}: child exited by itself ({status:?}) or panicked:\n{stderr}"
        );
        for line in reader.join().unwrap() {
            // A line cut by the kill has no valid id and counts for nothing.
            // The first line follows libtest's "test crash_child ... ".
            let mut words = line.split_whitespace().rev();
            let (Some(id), Some(tag)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(id) = Uuid::parse_str(id) else {
                continue;
            };
            match tag {
                "T" => tried.insert(id),
                "A" => accepted.insert(id),
                _ => false,
            };
        }

        if rounds % 2 == 1 {
            destroyed.extend(damage(&spool_dir, rounds / 2));
            damaged_rounds += 1;
        }

        let found = scan(&spool_dir).unwrap();
        let pending: HashSet<Uuid> = found.pending.iter().map(|(_, n)| n.event_id).collect();
        for (_, n) in &found.pending {
            assert_eq!(
                n.instance.name.as_deref(),
                Some(n.event_id.to_string().as_str())
            );
            assert!(
                tried.contains(&n.event_id),
                "round {rounds}: unknown id {}",
                n.event_id
            );
        }
        let delivered: HashSet<Uuid> = read_ids(&log).into_iter().collect();
        let unknown: Vec<_> = delivered.difference(&tried).collect();
        assert!(
            unknown.is_empty(),
            "round {rounds}: delivered ids never offered: {unknown:?} ({} offered)",
            tried.len()
        );
        let lost: Vec<&Uuid> = accepted
            .iter()
            .filter(|id| {
                !pending.contains(id) && !delivered.contains(id) && !destroyed.contains(id)
            })
            .collect();
        assert!(
            lost.is_empty(),
            "round {rounds} (seed {seed}): accepted but lost: {lost:?}"
        );
        rounds += 1;
    }
    assert!(rounds >= 10, "only {rounds} rounds before the cap");

    // Finally deliver everything left, in process.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let stats = rt.block_on(async {
        let spool = Spool::open(
            &spool_dir,
            QueueConfig::default(),
            DurableLogAlways { path: log.clone() },
        )
        .unwrap();
        let t0 = Instant::now();
        while spool.stats().pending > 0 && t0.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        spool.shutdown(Duration::from_secs(1)).await
    });
    assert_eq!(stats.pending, 0);
    let all = read_ids(&log);
    let mut counts: HashMap<Uuid, usize> = HashMap::new();
    for id in &all {
        *counts.entry(*id).or_default() += 1;
    }
    let lost: Vec<&Uuid> = accepted
        .iter()
        .filter(|id| !counts.contains_key(id) && !destroyed.contains(id))
        .collect();
    assert!(lost.is_empty(), "accepted but never delivered: {lost:?}");
    let duplicates = counts.values().filter(|c| **c > 1).count();
    println!(
        "{rounds} rounds ({damaged_rounds} with injected damage): {} offered, {} accepted, {} delivered, \
         {duplicates} delivered more than once (same event id), {} destroyed by injected damage",
        tried.len(),
        accepted.len(),
        counts.len(),
        destroyed.len()
    );
    assert!(
        accepted.len() > 100,
        "the child accepted too little to prove anything"
    );
}

/// The final, reliable notifier.
struct DurableLogAlways {
    path: PathBuf,
}

#[async_trait]
impl Notifier for DurableLogAlways {
    async fn notify(&self, n: &Notification) -> Result<(), NotifyError> {
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .unwrap();
        f.write_all(format!("{}\n", n.event_id).as_bytes()).unwrap();
        Ok(())
    }
}

/// A notifier that delivers most notifications at once and refuses (for
/// now) those whose event id starts with a byte divisible by 8, so that
/// segments roll over, fill with acks, are compacted and removed while
/// others stay pending; once `up` is set it takes everything. It records
/// what it delivered.
#[derive(Default)]
struct HalfDown {
    delivered: std::sync::Mutex<HashSet<Uuid>>,
    up: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl Notifier for HalfDown {
    async fn notify(&self, n: &Notification) -> Result<(), NotifyError> {
        if !self.up.load(std::sync::atomic::Ordering::SeqCst)
            && n.event_id.as_bytes()[0].is_multiple_of(8)
        {
            return Err(NotifyError::retryable("power-cut test notifier: down"));
        }
        self.delivered.lock().unwrap().insert(n.event_id);
        Ok(())
    }
}

/// Runs a spool whose file-system calls go through `fs` (a power-cut
/// model), with several producers, and cuts the power (takes the durable
/// state) again and again while they run. Each cut is restored into a fresh
/// directory and recovered with the real code: every notification the spool
/// had accepted before the cut must be pending there, unless the notifier
/// had already taken it. Each producer cuts the power itself after every
/// tenth notification (so the number of cuts does not depend on timing);
/// then the notifier comes back, the test waits until everything is
/// delivered, which makes the writer remove every delivered segment, and
/// cuts once more. Returns the first loss found, or the number of cuts
/// checked.
fn power_cut_check(fs: wd_notify::fault::SimFs, sync: SyncMode) -> Result<usize, String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    let notifier = Arc::new(HalfDown::default());
    let accepted = Arc::new(std::sync::Mutex::new(HashSet::<Uuid>::new()));
    let cuts = rt.block_on(async {
        let config = QueueConfig::default()
            .sync(sync)
            .segment_bytes(4096)
            .retry_delays(Duration::from_millis(1), Duration::from_millis(5));
        let spool = Arc::new(
            Spool::open_with_fs(Arc::new(fs.clone()), &dir, config, notifier.clone()).unwrap(),
        );
        type Cut = (HashSet<Uuid>, wd_notify::fault::PowerCut, HashSet<Uuid>);
        let take_cut = {
            let (fs, accepted, notifier) = (fs.clone(), accepted.clone(), notifier.clone());
            move || -> Cut {
                // What was accepted before the cut must survive it.
                let before = accepted.lock().unwrap().clone();
                let cut = fs.power_cut();
                let delivered = notifier.delivered.lock().unwrap().clone();
                (before, cut, delivered)
            }
        };
        let mut producers = Vec::new();
        for _ in 0..4 {
            let (spool, accepted, take_cut) = (spool.clone(), accepted.clone(), take_cut.clone());
            producers.push(tokio::spawn(async move {
                let mut cuts = Vec::new();
                for i in 0..150 {
                    let n = notification(Uuid::new_v4());
                    if spool.notify(&n).await.is_ok() {
                        accepted.lock().unwrap().insert(n.event_id);
                    }
                    if i % 10 == 9 {
                        cuts.push(take_cut());
                    }
                }
                cuts
            }));
        }
        let mut cuts = Vec::new();
        for p in producers {
            cuts.extend(p.await.unwrap());
        }
        cuts.push(take_cut());
        // Everything is delivered: the writer removes the delivered
        // segments (a condition, not a timing: wait until it holds).
        notifier.up.store(true, std::sync::atomic::Ordering::SeqCst);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while spool.stats().pending > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "not delivered in 60 s: {:?}",
                spool.stats()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The acks reach the writer after the entries leave `pending`:
        // wait until it has removed every delivered segment.
        let removed_all = || {
            let ops = fs.ops();
            let count =
                |f: fn(&wd_notify::fault::FsOp) -> bool| ops.iter().filter(|o| f(o)).count();
            count(|o| matches!(o, wd_notify::fault::FsOp::Remove(_)))
                >= count(|o| matches!(o, wd_notify::fault::FsOp::Create(_))) - 1
        };
        while !removed_all() {
            assert!(
                std::time::Instant::now() < deadline,
                "delivered segments not removed in 60 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        cuts.push(take_cut());
        cuts
    });
    for (i, (before, cut, delivered)) in cuts.iter().enumerate() {
        let after = tmp.path().join(format!("after-cut-{i}"));
        cut.restore(&dir, &after).unwrap();
        let found = scan(&after).map_err(|e| format!("cut {i}: recovery failed: {e}"))?;
        let pending: HashSet<Uuid> = found.pending.iter().map(|(_, n)| n.event_id).collect();
        let lost: Vec<&Uuid> = before
            .iter()
            .filter(|id| !pending.contains(id) && !delivered.contains(id))
            .collect();
        if !lost.is_empty() {
            return Err(format!(
                "cut {i} of {}: {} of {} accepted notifications lost, e.g. {}",
                cuts.len(),
                lost.len(),
                before.len(),
                lost[0]
            ));
        }
    }
    Ok(cuts.len())
}

/// A power cut keeps only what was `fsync`ed (a SIGKILL keeps the page
/// cache, so `spool_survives_sigkill` cannot see a missing `fsync`): at any
/// instant, the durable state holds every accepted notification.
#[test]
fn spool_survives_power_cuts() {
    for sync in [SyncMode::GroupCommit, SyncMode::PerEntry] {
        let fs = wd_notify::fault::SimFs::default();
        let cuts = power_cut_check(fs.clone(), sync).unwrap_or_else(|e| panic!("{sync:?}: {e}"));
        assert_eq!(cuts, 62, "{sync:?}: 4 producers x 15 cuts, and 2 more");
        // The run exercised roll-over and removal of delivered segments.
        let ops = fs.ops();
        let creates = ops
            .iter()
            .filter(|o| matches!(o, wd_notify::fault::FsOp::Create(_)))
            .count();
        let removes = ops
            .iter()
            .filter(|o| matches!(o, wd_notify::fault::FsOp::Remove(_)))
            .count();
        eprintln!(
            "{sync:?}: {cuts} power cuts checked; {creates} segments created, {removes} removed"
        );
        assert!(creates > 3, "{sync:?}: {ops:?}");
        // Every segment but the active one was delivered and removed
        // before the last cut, so the cuts covered removal too.
        assert!(removes >= creates - 1, "{sync:?}: {ops:?}");
    }
}

/// The check above catches a writer that skips its `fsync`s, or the
/// directory `fsync` after creating a segment: the same run on a file
/// system whose syncs do nothing loses accepted notifications.
#[test]
fn the_power_cut_check_catches_a_missing_fsync() {
    let broken = [
        (
            "no file fsync",
            wd_notify::fault::SimFs::default().lying_fsync(),
        ),
        (
            "no directory fsync",
            wd_notify::fault::SimFs::default().lying_dir_sync(),
        ),
    ];
    for (what, fs) in broken {
        let result = power_cut_check(fs, SyncMode::GroupCommit);
        assert!(result.is_err(), "{what}: the check saw no loss: {result:?}");
        eprintln!("{what}: {}", result.unwrap_err());
    }
}
