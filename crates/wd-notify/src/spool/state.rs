//! What a spool shares between its writer thread and its delivery task.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::config::QueueConfig;
use crate::model::Notification;

/// A spool's counters. `accepted`, `delivered`, `failed` and the drops
/// count since the spool was opened; `corrupt_skipped` counts damaged spans
/// found when it was opened; `pending`, `bytes` and `oldest` describe what
/// waits now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SpoolStats {
    /// Entries made durable and accepted.
    pub accepted: u64,
    /// Entries delivered (and then acked).
    pub delivered: u64,
    /// Delivery attempts that failed and will be retried.
    pub failed: u64,
    /// Entries dropped, oldest first, because the spool was full.
    pub dropped_full: u64,
    /// Entries dropped because delivery failed permanently.
    pub dropped_permanent: u64,
    /// Damaged spans skipped when the spool was opened.
    pub corrupt_skipped: u64,
    /// Entries waiting for delivery.
    pub pending: u64,
    /// Bytes (of the entries' JSON) waiting for delivery.
    pub bytes: u64,
    /// How long the oldest waiting entry has waited.
    pub oldest: Option<Duration>,
    /// How many times the delivery worker panicked and was restarted.
    pub worker_restarts: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) accepted: AtomicU64,
    pub(crate) delivered: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) dropped_full: AtomicU64,
    pub(crate) dropped_permanent: AtomicU64,
    pub(crate) corrupt_skipped: AtomicU64,
    pub(crate) worker_restarts: AtomicU64,
}

/// An entry waiting for delivery.
pub(crate) struct Entry {
    pub(crate) n: Arc<Notification>,
    pub(crate) size: u64,
    pub(crate) attempts: u32,
    /// When it may be tried next; `None` while a delivery is in flight.
    pub(crate) due: Option<Instant>,
    /// When it was accepted (or recovered).
    pub(crate) since: Instant,
}

/// What is waiting, shared by the writer thread and the delivery task.
#[derive(Default)]
pub(crate) struct Pending {
    pub(crate) entries: BTreeMap<u64, Entry>,
    /// The entries not in flight, by when they may be tried.
    pub(crate) ready: BTreeSet<(Instant, u64)>,
    pub(crate) bytes: u64,
    /// Entries per project (`None`: no known owner), for fair eviction.
    per_project: HashMap<Option<String>, usize>,
}

impl Pending {
    pub(crate) fn insert(&mut self, seq: u64, n: Arc<Notification>, size: u64, due: Instant) {
        self.bytes = self.bytes.saturating_add(size);
        self.ready.insert((due, seq));
        *self
            .per_project
            .entry(n.instance.project_id.clone())
            .or_default() += 1;
        self.entries.insert(
            seq,
            Entry {
                n,
                size,
                attempts: 0,
                due: Some(due),
                since: due,
            },
        );
    }

    pub(crate) fn remove(&mut self, seq: u64) -> Option<Entry> {
        let e = self.entries.remove(&seq)?;
        self.bytes = self.bytes.saturating_sub(e.size);
        let project = &e.n.instance.project_id;
        if let Some(count) = self.per_project.get_mut(project) {
            *count -= 1;
            if *count == 0 {
                self.per_project.remove(project);
            }
        }
        if let Some(due) = e.due {
            self.ready.remove(&(due, seq));
        }
        Some(e)
    }

    /// The oldest entry not in flight of the project with the most entries
    /// (see [`Shared::enforce_bounds`]).
    fn victim(&self) -> Option<u64> {
        let most = self.per_project.values().copied().max()?;
        // In seq order (oldest first): the first not in flight whose
        // project holds `most` entries.
        self.entries
            .iter()
            .find(|(_, e)| {
                e.due.is_some() && self.per_project.get(&e.n.instance.project_id) == Some(&most)
            })
            .or_else(|| self.entries.iter().find(|(_, e)| e.due.is_some()))
            .map(|(seq, _)| *seq)
    }

    /// Makes every in-flight entry ready again at `at`: after the delivery
    /// worker died, nobody is delivering them.
    pub(crate) fn requeue_in_flight(&mut self, at: Instant) {
        for (seq, e) in &mut self.entries {
            if e.due.is_none() {
                e.due = Some(at);
                self.ready.insert((at, *seq));
            }
        }
    }
}

pub(crate) struct Shared {
    /// The name used in logs: the destination's, or the directory.
    pub(crate) name: String,
    pub(crate) config: QueueConfig,
    pending: Mutex<Pending>,
    pub(crate) counters: Counters,
    /// The last delivery failure, cause chain included (already redacted by
    /// the notifier that produced it).
    pub(crate) last_error: Mutex<Option<String>>,
    /// New entries, or the end of an in-flight delivery.
    pub(crate) wake: Notify,
    /// Tells the delivery task to stop.
    pub(crate) stop: AtomicBool,
    pub(crate) closed: AtomicBool,
    /// Starts no new delivery while set (a destination removed from the
    /// configuration keeps its backlog, undelivered, until told otherwise).
    pub(crate) paused: AtomicBool,
    /// Test hook: the delivery worker panics at its next turn.
    pub(crate) panic_next: AtomicBool,
}

impl Shared {
    pub(crate) fn new(name: String, config: QueueConfig) -> Shared {
        Shared {
            name,
            config,
            pending: Mutex::new(Pending::default()),
            counters: Counters::default(),
            last_error: Mutex::new(None),
            wake: Notify::new(),
            stop: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            panic_next: AtomicBool::new(false),
        }
    }

    pub(crate) fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn idle(&self) -> bool {
        self.pending().entries.is_empty()
    }

    pub(crate) fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn set_last_error(&self, text: String) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(text);
    }

    pub(crate) fn stats(&self) -> SpoolStats {
        let c = &self.counters;
        let (pending, bytes, oldest) = {
            let p = self.pending();
            let oldest = p.entries.values().map(|e| e.since).min();
            (
                p.entries.len() as u64,
                p.bytes,
                oldest.map(|t| Instant::now().saturating_duration_since(t)),
            )
        };
        SpoolStats {
            accepted: c.accepted.load(Ordering::Relaxed),
            delivered: c.delivered.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            dropped_full: c.dropped_full.load(Ordering::Relaxed),
            dropped_permanent: c.dropped_permanent.load(Ordering::Relaxed),
            corrupt_skipped: c.corrupt_skipped.load(Ordering::Relaxed),
            pending,
            bytes,
            oldest,
            worker_restarts: c.worker_restarts.load(Ordering::Relaxed),
        }
    }

    /// Drops entries not in flight while the spool is over its bounds;
    /// returns their seqs, to be acked.
    ///
    /// Fair shares: the victim is the oldest entry of the project that
    /// holds the most entries (ties: the project of the oldest such entry).
    /// In a shared queue (the operator's, the bus), a project that floods
    /// it evicts its own notifications, never another project's while it
    /// holds more than they do. In a project's own queue this is simply
    /// the oldest entry.
    pub(crate) fn enforce_bounds(&self, pending: &mut Pending) -> Vec<u64> {
        let mut dropped = Vec::new();
        let over = |p: &Pending| {
            p.entries.len() > self.config.max_entries || p.bytes > self.config.max_bytes
        };
        while over(pending) {
            let Some(seq) = pending.victim() else {
                break;
            };
            if let Some(e) = pending.remove(seq) {
                let total = self.counters.dropped_full.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::warn!(
                    destination = %self.name, event_id = %e.n.event_id, instance = %e.n.instance.uuid,
                    project = e.n.instance.project_id.as_deref().unwrap_or("-"),
                    dropped_full = total, max_entries = self.config.max_entries,
                    max_bytes = self.config.max_bytes,
                    "queue full; dropped the oldest undelivered notification of the project holding the most"
                );
                dropped.push(seq);
            }
        }
        dropped
    }
}
