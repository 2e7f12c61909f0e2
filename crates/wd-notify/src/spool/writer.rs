//! The spool's writer thread: it owns the segment files.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::disk::{SpoolFile, SpoolFs};
use super::format::{SEGMENT_MAGIC, encode_ack, encode_entry};
use super::{Shared, SyncMode, segment_name};
use crate::error::Result;
use crate::model::Notification;

/// The most messages one group commit takes.
const MAX_BATCH: usize = 4096;

/// An entry written in this batch: seq, notification, size, caller.
type Appended = (u64, Arc<Notification>, u64, oneshot::Sender<io::Result<()>>);

pub(crate) enum Msg {
    /// Make this entry durable, then answer.
    Append {
        payload: Vec<u8>,
        n: Arc<Notification>,
        reply: oneshot::Sender<io::Result<()>>,
    },
    /// The entry is done with: record that (without waiting for the disk).
    Ack { seq: u64 },
    /// Sync and stop.
    Stop { done: oneshot::Sender<()> },
}

/// What a writer starts from (see [`Writer::create`]).
pub(crate) struct Start {
    /// The segment ids found, oldest first.
    pub(crate) existing: Vec<u64>,
    /// Each undelivered seq and the segment holding it.
    pub(crate) located: BTreeMap<u64, u64>,
    /// Recovered seqs dropped by the bounds: acked with the first batch.
    pub(crate) dropped: Vec<u64>,
    /// The next seq to give.
    pub(crate) next_seq: u64,
}

struct Segment {
    /// Entries in this segment not yet acked.
    live: HashSet<u64>,
    /// Entries ever written to it.
    total: usize,
}

pub(crate) struct Writer {
    dir: PathBuf,
    shared: Arc<Shared>,
    /// Every file-system call goes through this seam (a power-cut model in
    /// tests).
    fs: Arc<dyn SpoolFs>,
    /// The active segment; `None` until the first batch creates it.
    file: Option<Box<dyn SpoolFile>>,
    active: u64,
    active_bytes: u64,
    /// A failed write may have left a partial record: start a new segment.
    broken: bool,
    segments: BTreeMap<u64, Segment>,
    segment_of: HashMap<u64, u64>,
    next_seq: u64,
    buf: Vec<u8>,
    /// Encoded acks not yet written (entries dropped while recovering, or
    /// acks whose write failed): written first by the next batch.
    owed_acks: Vec<u8>,
}

fn copy_err(e: &io::Error) -> io::Error {
    io::Error::new(e.kind(), e.to_string())
}

impl Writer {
    /// A writer over the segments a scan found. Nothing is written: the
    /// recovered entries stay in their segments, and the first batch starts a new active segment (so a
    /// start on a full disk succeeds, and its writes fail until space is
    /// freed). Segments with nothing live are removed at once.
    pub(crate) fn create(
        fs: Arc<dyn SpoolFs>,
        dir: PathBuf,
        start: Start,
        shared: Arc<Shared>,
    ) -> Result<Writer> {
        let mut segments: BTreeMap<u64, Segment> = start
            .existing
            .iter()
            .map(|id| {
                let seg = Segment {
                    live: HashSet::new(),
                    total: 0,
                };
                (*id, seg)
            })
            .collect();
        let mut segment_of = HashMap::new();
        for (seq, id) in &start.located {
            if start.dropped.contains(seq) {
                continue;
            }
            if let Some(s) = segments.get_mut(id) {
                s.live.insert(*seq);
                s.total += 1;
                segment_of.insert(*seq, *id);
            }
        }
        // The last existing segment stands for the active one until the
        // first batch rolls over to a new one.
        let last = start.existing.last().copied();
        let mut w = Writer {
            dir,
            shared,
            fs,
            file: None,
            active: last.unwrap_or(0),
            active_bytes: 0,
            broken: true,
            segments,
            segment_of,
            next_seq: start.next_seq,
            buf: Vec::new(),
            owed_acks: Vec::new(),
        };
        for seq in &start.dropped {
            encode_ack(*seq, &mut w.owed_acks);
        }
        if last.is_none() {
            // No segment yet: the first roll-over creates segment 0.
            w.active = u64::MAX;
        }
        w.delete_dead_prefix();
        Ok(w)
    }

    pub(crate) fn run(mut self, rx: mpsc::Receiver<Msg>) {
        let group = self.shared.config.sync == SyncMode::GroupCommit;
        loop {
            let Ok(first) = rx.recv() else {
                // Every sender is gone (the spool was dropped): make the acks
                // durable too, and stop.
                self.sync_active();
                return;
            };
            let mut batch = vec![first];
            if group {
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(m) => batch.push(m),
                        Err(_) => break,
                    }
                }
            }
            if let Some(done) = self.process(batch) {
                self.sync_active();
                let _ = done.send(());
                return;
            }
        }
    }

    /// Writes one batch; returns the stop request, if the batch had one.
    fn process(&mut self, batch: Vec<Msg>) -> Option<oneshot::Sender<()>> {
        // Acks first (those a failed write left owed, then this batch's),
        // then the entries: acks that cannot be written are owed to the
        // next batch, so a delivered entry is not delivered again after a
        // restart because its ack met a full disk.
        self.buf.clear();
        self.buf.append(&mut self.owed_acks);
        let mut entries = Vec::new();
        let mut appended = Vec::new();
        let mut stop = None;
        for m in batch {
            match m {
                Msg::Append { payload, n, reply } => {
                    let seq = self.next_seq;
                    self.next_seq += 1;
                    encode_entry(seq, &payload, &mut entries);
                    appended.push((seq, n, payload.len() as u64, reply));
                }
                Msg::Ack { seq } => self.ack(seq),
                Msg::Stop { done } => stop = Some(done),
            }
        }
        let acks = self.buf.len();
        self.buf.extend_from_slice(&entries);
        if self.broken
            && let Err(e) = self.roll_over()
        {
            self.owed_acks = self.buf[..acks].to_vec();
            for (.., reply) in appended {
                let _ = reply.send(Err(copy_err(&e)));
            }
            return stop;
        }
        let Some(file) = self.file.as_mut() else {
            return stop;
        };
        let result = file.write_all(&self.buf).and_then(|()| {
            if appended.is_empty() {
                Ok(())
            } else {
                file.sync_data()
            }
        });
        if let Err(e) = result {
            tracing::error!(dir = %self.dir.display(), error = %e, "spool: write failed; entries not accepted");
            self.broken = true;
            self.owed_acks = self.buf[..acks].to_vec();
            for (.., reply) in appended {
                let _ = reply.send(Err(copy_err(&e)));
            }
            return stop;
        }
        self.active_bytes += self.buf.len() as u64;
        if !appended.is_empty() {
            self.accept(appended);
        }
        self.delete_dead_prefix();
        if self.active_bytes >= self.shared.config.segment_bytes {
            if let Err(e) = self.roll_over() {
                tracing::error!(dir = %self.dir.display(), error = %e, "spool: cannot start a new segment; keeping the current one");
            } else {
                self.compact_head();
            }
        }
        stop
    }

    fn sync_active(&mut self) {
        if let Some(f) = self.file.as_mut() {
            let _ = f.sync_data();
        }
    }

    /// Hands durable entries to the delivery task and answers their callers.
    fn accept(&mut self, appended: Vec<Appended>) {
        let now = Instant::now();
        let active = self.active;
        let count = appended.len() as u64;
        let dropped = {
            let mut pending = self.shared.pending();
            for (seq, n, size, _) in &appended {
                pending.insert(*seq, n.clone(), *size, now);
            }
            self.shared.enforce_bounds(&mut pending)
        };
        let segment = self.segments.entry(active).or_insert(Segment {
            live: HashSet::new(),
            total: 0,
        });
        for (seq, ..) in &appended {
            segment.live.insert(*seq);
            segment.total += 1;
            self.segment_of.insert(*seq, active);
        }
        self.shared
            .counters
            .accepted
            .fetch_add(count, Ordering::Relaxed);
        for (.., reply) in appended {
            let _ = reply.send(Ok(()));
        }
        self.shared.wake.notify_one();
        if !dropped.is_empty() {
            self.buf.clear();
            for seq in dropped {
                self.ack(seq);
            }
            let written = match self.file.as_mut() {
                Some(f) => f.write_all(&self.buf),
                None => Err(io::Error::other("no active segment")),
            };
            if let Err(e) = written {
                tracing::error!(dir = %self.dir.display(), error = %e, "spool: cannot record dropped entries");
                self.broken = true;
            } else {
                self.active_bytes += self.buf.len() as u64;
            }
        }
    }

    /// Records that `seq` is done with, into `buf`.
    fn ack(&mut self, seq: u64) {
        let Some(id) = self.segment_of.remove(&seq) else {
            return;
        };
        if let Some(s) = self.segments.get_mut(&id) {
            s.live.remove(&seq);
        }
        encode_ack(seq, &mut self.buf);
    }

    /// Removes the oldest segments while nothing in them is live. Only a
    /// prefix is removed, so an ack record never disappears before the entry
    /// it acks.
    fn delete_dead_prefix(&mut self) {
        let mut removed = false;
        while let Some((&id, s)) = self.segments.first_key_value() {
            if id == self.active || !s.live.is_empty() {
                break;
            }
            let path = self.dir.join(segment_name(id));
            if let Err(e) = self.fs.remove_file(&path) {
                tracing::error!(file = %path.display(), error = %e, "spool: cannot remove a delivered segment");
                break;
            }
            self.segments.remove(&id);
            removed = true;
        }
        if removed && let Err(e) = self.fs.sync_dir(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "spool: cannot sync the directory");
        }
    }

    /// Starts a new active segment.
    fn roll_over(&mut self) -> io::Result<()> {
        let id = self.active.wrapping_add(1);
        let (file, bytes) = create_segment(&*self.fs, &self.dir, id, &[])?;
        // Make the acks in the old segment durable before leaving it.
        self.sync_active();
        self.file = Some(file);
        self.active = id;
        self.active_bytes = bytes;
        self.broken = false;
        self.segments.insert(
            id,
            Segment {
                live: HashSet::new(),
                total: 0,
            },
        );
        Ok(())
    }

    /// When the oldest segment is mostly delivered, copies its live entries
    /// (same seqs) into the active segment and removes it, so that a few
    /// stuck entries do not pin every later segment on disk.
    fn compact_head(&mut self) {
        let Some((&head, s)) = self.segments.first_key_value() else {
            return;
        };
        if head == self.active || s.live.is_empty() || s.live.len() * 4 > s.total {
            return;
        }
        let mut seqs: Vec<u64> = s.live.iter().copied().collect();
        seqs.sort_unstable();
        self.buf.clear();
        let mut copied = Vec::new();
        {
            let pending = self.shared.pending();
            for seq in seqs {
                match pending.entries.get(&seq) {
                    Some(e) => {
                        encode_entry(seq, e.n.to_json().as_bytes(), &mut self.buf);
                        copied.push(seq);
                    }
                    // Delivered or dropped; its ack is on the way and will
                    // find nothing to do.
                    None => {
                        self.segment_of.remove(&seq);
                    }
                }
            }
        }
        let Some(file) = self.file.as_mut() else {
            return;
        };
        if let Err(e) = file.write_all(&self.buf).and_then(|()| file.sync_data()) {
            tracing::error!(dir = %self.dir.display(), error = %e, "spool: compaction failed; keeping the old segment");
            self.broken = true;
            return;
        }
        self.active_bytes += self.buf.len() as u64;
        let active = self.active;
        if let Some(s) = self.segments.get_mut(&head) {
            s.live.clear();
        }
        if let Some(s) = self.segments.get_mut(&active) {
            for seq in &copied {
                s.live.insert(*seq);
                s.total += 1;
            }
        }
        for seq in copied {
            self.segment_of.insert(seq, active);
        }
        self.delete_dead_prefix();
    }
}

/// Creates segment `id` with the header and `body`, `fsync`s it and the
/// directory. Returns the file, positioned at its end, and its size.
fn create_segment(
    fs: &dyn SpoolFs,
    dir: &std::path::Path,
    id: u64,
    body: &[u8],
) -> io::Result<(Box<dyn SpoolFile>, u64)> {
    let path = dir.join(segment_name(id));
    let mut file = fs.create_new(&path)?;
    let mut bytes = SEGMENT_MAGIC.to_vec();
    bytes.extend_from_slice(body);
    let written = file
        .write_all(&bytes)
        .and_then(|()| file.sync_all())
        .and_then(|()| fs.sync_dir(dir));
    if let Err(e) = written {
        // No partial segment is left behind (a full disk would otherwise
        // keep it, and the next attempt would find the name taken).
        drop(file);
        if let Err(rm) = fs.remove_file(&path) {
            tracing::warn!(file = %path.display(), error = %rm, "spool: cannot remove a partial segment");
        }
        return Err(e);
    }
    Ok((file, bytes.len() as u64))
}
