//! The ledger's file: reopening, runs and boots, corrupt and torn files,
//! power cuts, appends.

use wd_notify::fault::SimFs;

use super::*;

fn id(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

fn entry(event: u128, accepted: bool, run: Option<u32>) -> Entry {
    Entry {
        event_id: id(event),
        accepted,
        run_id: run,
    }
}

#[test]
fn survives_reopen_and_tracks_acceptance() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("episodes.json");
    let mut l = Ledger::open(&path).unwrap();
    assert_eq!(l.get(&id(1)), None);
    l.put(id(1), entry(10, false, Some(4))).unwrap();
    l.put(id(2), entry(20, true, Some(5))).unwrap();
    l.put(id(1), entry(10, true, Some(4))).unwrap();
    drop(l);
    let mut l = Ledger::open(&path).unwrap();
    assert_eq!(l.get(&id(1)), Some(entry(10, true, Some(4))));
    assert_eq!(l.get(&id(2)), Some(entry(20, true, Some(5))));
    assert!(l.remove(&id(2)).unwrap());
    assert!(!l.remove(&id(2)).unwrap());
    l.retain(|d| *d != id(1)).unwrap();
    drop(l);
    let l = Ledger::open(&path).unwrap();
    assert_eq!(l.domains().count(), 0);
    assert!(!path.with_extension("tmp").exists());
}

#[test]
fn an_episode_belongs_to_one_run_of_its_domain() {
    let mut l = Ledger::in_memory();
    l.put(id(1), entry(10, true, Some(4))).unwrap();
    assert_eq!(l.episode(&id(1), Some(4)), Some(entry(10, true, Some(4))));
    // Started again (a hard reboot): another run, another episode.
    assert_eq!(l.episode(&id(1), Some(5)), None);
    // An unknown run cannot prove a restart.
    assert!(l.episode(&id(1), None).is_some());
    l.put(id(2), entry(20, true, None)).unwrap();
    assert!(l.episode(&id(2), Some(9)).is_some());
    // A new run's entry replaces the old run's.
    l.put(id(1), entry(11, false, Some(5))).unwrap();
    assert_eq!(l.episode(&id(1), Some(4)), None);
    assert_eq!(l.domains().count(), 2);
}

#[test]
fn a_version_1_file_loads_with_unknown_runs_and_is_rewritten_as_a_version_3_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("episodes.json");
    // Exactly what the previous version wrote.
    let v1 = format!(
        "{{\n  \"version\": 1,\n  \"episodes\": {{\n    \"{}\": {{\n      \"event_id\": \"{}\",\n      \"accepted\": true\n    }}\n  }}\n}}",
        id(1),
        id(10)
    );
    fs::write(&path, v1).unwrap();
    let mut l = Ledger::open_on_boot(path.clone(), Some("boot-a".into())).unwrap();
    assert_eq!(l.get(&id(1)), Some(entry(10, true, None)));
    l.put(id(1), entry(10, true, Some(3))).unwrap();
    let text = fs::read_to_string(&path).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["version"], 3, "{text}");
    assert_eq!(lines[0]["boot_id"], "boot-a", "{text}");
    assert_eq!(lines[1]["domain"], id(1).to_string(), "{text}");
    assert_eq!(lines[1]["episode"]["run_id"], 3, "{text}");
    assert_eq!(
        Ledger::open_on_boot(path, Some("boot-a".into()))
            .unwrap()
            .get(&id(1)),
        Some(entry(10, true, Some(3)))
    );
}

#[test]
fn episodes_from_an_earlier_boot_of_the_host_have_ended() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("episodes.json");
    let mut l = Ledger::open_on_boot(path.clone(), Some("boot-a".into())).unwrap();
    l.put(id(1), entry(10, true, Some(1))).unwrap();
    drop(l);
    // The same boot, or a system that publishes no boot id: kept.
    for boot in [Some("boot-a"), None] {
        let l = Ledger::open_on_boot(path.clone(), boot.map(Into::into)).unwrap();
        assert_eq!(l.domains().count(), 1, "{boot:?}");
    }
    // After a reboot runtime ids start again from 1: run 1 of this boot
    // is not the run 1 the entry was about.
    let l = Ledger::open_on_boot(path.clone(), Some("boot-b".into())).unwrap();
    assert_eq!(l.episode(&id(1), Some(1)), None);
    // The real boot id is read from the system.
    let now = current_boot_id();
    if std::path::Path::new(BOOT_ID_PATH).exists() {
        assert!(now.is_some_and(|b| b.len() == 36));
    }
}

#[test]
fn corrupt_or_unknown_version_file_is_set_aside_not_fatal() {
    for bad in [
        "{\"version\":1,\"episodes\":{\"not-a-uu",
        "{\"version\":3,\"episodes\":{}}",
        "{\"version\":4}\n",
        "{\"version\":3}\n{\"domain\":\"nope\",\"episode\":null}\n",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("episodes.json");
        fs::write(&path, bad).unwrap();
        let mut l = Ledger::open(&path).unwrap();
        assert_eq!(l.domains().count(), 0);
        assert_eq!(
            fs::read_to_string(path.with_extension("corrupt")).unwrap(),
            bad
        );
        l.put(id(3), entry(30, true, None)).unwrap();
        assert_eq!(
            Ledger::open(&path).unwrap().get(&id(3)).map(|e| e.event_id),
            Some(id(30))
        );
    }
}

/// The names and modification times of everything in `dir`.
fn snapshot(dir: &Path) -> Vec<(std::ffi::OsString, Option<std::time::SystemTime>)> {
    let mut all: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name(),
                e.metadata().ok().and_then(|m| m.modified().ok()),
            )
        })
        .collect();
    all.sort();
    all
}

#[test]
fn in_memory_ledger_writes_nothing() {
    // The same operations on a file-backed ledger change its directory,
    // so the snapshot would notice a write.
    let dir = tempfile::tempdir().unwrap();
    let ops = |l: &mut Ledger| {
        l.put(id(1), entry(2, false, Some(1))).unwrap();
        l.put(id(1), entry(2, true, Some(1))).unwrap();
        l.put(id(3), entry(4, true, None)).unwrap();
        assert!(l.remove(&id(3)).unwrap());
        l.retain(|_| false).unwrap();
    };
    let before = snapshot(dir.path());
    ops(&mut Ledger::open(dir.path().join("episodes.json")).unwrap());
    assert_ne!(snapshot(dir.path()), before);

    // The in-memory one: the working directory (where a relative
    // default file would go) is untouched, and it has no file at all.
    let cwd = std::env::current_dir().unwrap();
    let before = snapshot(&cwd);
    let mut l = Ledger::in_memory();
    ops(&mut l);
    l.put(id(5), entry(6, true, Some(2))).unwrap();
    assert_eq!(l.get(&id(5)).map(|e| e.accepted), Some(true));
    assert!(l.path.is_none());
    assert_eq!(snapshot(&cwd), before);
}

/// Rewrites a ledger through a power-cut model over its directory
/// (whose syncs `lie` may turn off) and checks every cut point: what survives is the old or
/// the new ledger, never a torn or missing one, and once the write has
/// returned, the new one.
fn cuts_keep_old_or_new(lie: fn(SimFs) -> SimFs) -> std::result::Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("episodes.json");
    let mut l = Ledger::open(&path).unwrap();
    l.put(id(1), entry(10, true, Some(1))).unwrap();
    let old = l.entries.clone();
    drop(l);
    // A temporary file an earlier, interrupted rewrite left.
    fs::write(path.with_extension("tmp"), b"{\"torn").unwrap();
    let fs = lie(SimFs::over(dir.path()).unwrap()).every_cut();
    let mut l = Ledger::open(&path).unwrap().with_fs(Arc::new(fs.clone()));
    l.stage(id(2), entry(20, false, Some(3)));
    l.compact().unwrap();
    let new = l.entries.clone();
    let cuts = fs.cuts();
    assert!(cuts.len() >= 6, "{:?}", fs.ops());
    for (at, cut) in cuts.iter().enumerate() {
        let out = tempfile::tempdir().unwrap();
        cut.restore(dir.path(), out.path()).unwrap();
        let after = out.path().join("episodes.json");
        let bytes = fs::read(&after)
            .map_err(|e| format!("cut {at}: the ledger is missing ({e}): {cut:?}"))?;
        let got = log::parse(&bytes)
            .map_err(|e| format!("cut {at}: the ledger is torn ({e}): {cut:?}"))?
            .episodes;
        if got != old && got != new {
            return Err(format!("cut {at}: neither old nor new: {got:?}"));
        }
        // What the agent reads after the power cut.
        let reopened = Ledger::open(&after).unwrap();
        assert_eq!(reopened.entries, got);
    }
    let last = cuts.last().map(|c| c.files.get(&path).cloned());
    let done = last.flatten().map(|b| log::parse(&b).map(|f| f.episodes));
    if !matches!(&done, Some(Ok(e)) if *e == new) {
        return Err(format!(
            "the rewrite returned, but a power cut then loses it: {:?}",
            fs.ops()
        ));
    }
    Ok(())
}

#[test]
fn a_power_cut_at_any_point_of_a_rewrite_leaves_the_old_or_the_new_ledger() {
    cuts_keep_old_or_new(|fs| fs).unwrap();
    // The model catches a writer without the file fsync (a torn or
    // empty ledger) or without the directory fsync (the rename is lost
    // after the write returned).
    let e = cuts_keep_old_or_new(SimFs::lying_fsync).unwrap_err();
    assert!(e.contains("torn"), "{e}");
    let e = cuts_keep_old_or_new(SimFs::lying_dir_sync).unwrap_err();
    assert!(e.contains("returned"), "{e}");
}

#[cfg(unix)]
fn inode(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    fs::metadata(path).unwrap().ino()
}

/// After the first write (a rewrite: the file was missing), a change is one
/// line appended to the same file, and an agent that opens the ledger
/// before that line's sync has run (a restart after `kill -9`: the page
/// cache survives) already reads it.
#[cfg(unix)]
#[test]
fn a_change_is_one_appended_line_read_by_a_restart_before_its_sync() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("episodes.json");
    let mut l = Ledger::open(&path).unwrap();
    assert!(!path.exists(), "opening writes nothing");
    // Nothing to write: still nothing written.
    assert!(l.write().unwrap().is_none());
    assert!(!path.exists());
    assert!(l.rewrite);
    l.tidy().unwrap();
    assert!(path.exists() && !l.rewrite);
    let (ino, len) = (inode(&path), fs::metadata(&path).unwrap().len());
    l.stage(id(1), entry(10, false, Some(2)));
    let sync = l.write().unwrap().expect("appended, to be synced");
    assert_eq!(inode(&path), ino, "appended, not rewritten");
    let grown = fs::metadata(&path).unwrap().len();
    assert!(grown > len);
    let text = fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), 2, "{text}");
    assert_eq!(
        Ledger::open(&path).unwrap().get(&id(1)),
        Some(entry(10, false, Some(2)))
    );
    sync.run().unwrap();
    // Nothing staged: nothing written.
    assert!(l.write().unwrap().is_none());
    assert!(l.end(&id(1)));
    l.write().unwrap().unwrap().run().unwrap();
    assert_eq!(Ledger::open(&path).unwrap().domains().count(), 0);
    assert_eq!(inode(&path), ino);
}

/// A last line cut short at any byte (a power cut, a full disk) is ignored:
/// the ledger reads as it was before that line; the next write rewrites the
/// file whole instead of appending after the torn bytes.
#[test]
fn a_torn_last_line_is_ignored_and_the_next_write_rewrites_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("episodes.json");
    let mut l = Ledger::open_on_boot(path.clone(), Some("b".into())).unwrap();
    l.put(id(1), entry(10, true, Some(1))).unwrap();
    let old = fs::read(&path).unwrap();
    l.put(id(2), entry(20, false, Some(1))).unwrap();
    let new = fs::read(&path).unwrap();
    assert!(new.starts_with(&old) && new.len() > old.len() + 10);
    for cut in old.len()..new.len() {
        fs::write(&path, &new[..cut]).unwrap();
        let mut l = Ledger::open_on_boot(path.clone(), Some("b".into())).unwrap();
        assert_eq!(l.domains().count(), 1, "cut at {cut}");
        assert_eq!(l.rewrite, cut > old.len(), "cut at {cut}");
        l.put(id(3), entry(30, true, None)).unwrap();
        let again = Ledger::open_on_boot(path.clone(), Some("b".into())).unwrap();
        assert_eq!(
            again.domains().copied().collect::<Vec<_>>(),
            [id(1), id(3)],
            "cut at {cut}"
        );
        assert!(!again.rewrite, "cut at {cut}");
    }
    fs::write(&path, &new).unwrap();
    assert_eq!(
        Ledger::open_on_boot(path, Some("b".into()))
            .unwrap()
            .domains()
            .count(),
        2
    );
}

/// A log that grew to many times its open episodes is compacted to one
/// line per episode by `tidy`, and reads the same.
#[test]
fn a_long_log_is_compacted_by_tidy() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("episodes.json");
    let mut l = Ledger::open(&path).unwrap();
    l.put(id(1), entry(1, true, Some(1))).unwrap();
    for n in 0..(COMPACT_AFTER as u128 / 2 + 1) {
        // Appended, not synced (the test needs no disk sync per line).
        l.stage(id(100 + n), entry(n, false, Some(1)));
        let _ = l.write().unwrap();
        assert!(l.end(&id(100 + n)));
        let _ = l.write().unwrap();
    }
    assert!(l.compaction_due());
    let long = fs::metadata(&path).unwrap().len();
    l.tidy().unwrap();
    assert!(!l.compaction_due());
    assert!(fs::metadata(&path).unwrap().len() < long / 100);
    assert_eq!(
        fs::read_to_string(&path).unwrap().lines().count(),
        2,
        "the header and one episode"
    );
    assert_eq!(
        Ledger::open(&path).unwrap().get(&id(1)),
        Some(entry(1, true, Some(1)))
    );
}
