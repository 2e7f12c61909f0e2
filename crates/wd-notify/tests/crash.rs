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
    Domain, Instance, Notification, Notifier, NotifyError, RECORD_MAGIC, RecordBody, Spool,
    SpoolConfig, SyncMode, recover, scan,
};

const CHILD_DIR: &str = "WD_NOTIFY_CRASH_DIR";
const CHILD_LOG: &str = "WD_NOTIFY_CRASH_LOG";
const CHILD_SYNC: &str = "WD_NOTIFY_CRASH_SYNC";

/// The backend of the child: fails a third of the time (retryably), and
/// otherwise records the event id durably before it reports success.
struct DurableLog {
    path: PathBuf,
}

#[async_trait]
impl Notifier for DurableLog {
    async fn notify(&self, n: &Notification) -> Result<(), NotifyError> {
        if fastrand::u8(..3) == 0 {
            return Err(NotifyError::retryable("crash test backend: flaky"));
        }
        let write = || -> std::io::Result<()> {
            let mut f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            f.write_all(format!("{}\n", n.event_id).as_bytes())?;
            f.sync_data()
        };
        write().map_err(|e| NotifyError::retryable("crash test backend: log").with_source(e))
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
        let config = SpoolConfig::default()
            .sync(sync)
            .segment_bytes(8192)
            .retry_delays(Duration::from_millis(2), Duration::from_millis(20));
        let backend = DurableLog { path: log.into() };
        let spool = Arc::new(Spool::open(&dir, config, backend).unwrap());
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
    let budget = Instant::now() + Duration::from_secs(20);
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
    while rounds < 30 && Instant::now() < budget {
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
    assert!(rounds >= 10, "only {rounds} rounds in the time budget");

    // Finally deliver everything left, in process.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let stats = rt.block_on(async {
        let spool = Spool::open(
            &spool_dir,
            SpoolConfig::default(),
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

/// The final, reliable backend.
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
