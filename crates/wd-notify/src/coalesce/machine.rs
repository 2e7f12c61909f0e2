//! Storm control's decisions: pure logic, no timers, no tasks, no I/O.
//!
//! The [`Machine`] is driven by a few inputs — a firing (with the time it
//! arrived), the clock reaching its next deadline, the outcome of a
//! follow-up's delivery, shutdown — and answers each with what to do: send
//! the firing now or not, which follow-ups are due, what was given up on.
//! The shell in `mod.rs` does the sending and the sleeping. Every rule below
//! is unit-tested here without a runtime.
//!
//! # Rules
//!
//! * **A firing that stops the guest is its own notification, sent at
//!   once.** `pause`, `poweroff`, `shutdown` (and any action this version
//!   does not know) are never folded: the guest cannot fire again in the
//!   same run, so a second such firing is a second *episode* (a hard reboot
//!   or a start came in between) and its owner must hear of it promptly.
//!   Such a firing also ends the domain's open episode: a follow-up that
//!   episode was building is due at once.
//! * **Only repeats of a firing that leaves the guest running are folded**
//!   (`none`, `reset`, `debug`, `inject-nmi`: a guest in a loop), and only
//!   within the same *run* of the domain ([`Domain::id`], libvirt's runtime
//!   id). The first firing of a run opens an episode and is sent at once;
//!   repeats within the window are folded into one follow-up; a firing of
//!   another run ends the old episode (its follow-up is due at once) and
//!   opens a new one. An unknown run id matches any run: it cannot prove a
//!   restart.
//! * At the end of a window that had repeats, the follow-up is due and a
//!   new window starts; a window without repeats ends the episode.
//! * A first firing whose delivery failed closes its episode again (unless
//!   repeats were folded meanwhile), so the caller's retry is sent at once.
//! * A follow-up whose delivery failed retryably is kept and due again one
//!   window later (at most `max_instances` are kept; past that the oldest
//!   is dropped); one that failed permanently is dropped.
//! * A full episode table passes new instances' firings through.
//! * After [`Machine::close`], every firing passes through.
//!
//! [`Domain::id`]: crate::Domain::id

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;
use uuid::Uuid;

use super::{CoalesceConfig, CoalesceStats};
use crate::model::Notification;

/// Whether a firing with `action` (libvirt's spelling) leaves the guest
/// running, so that the same run may fire again: only those are folded.
pub(crate) fn leaves_the_guest_running(action: &str) -> bool {
    matches!(action, "none" | "reset" | "debug" | "inject-nmi")
}

/// Why a firing is sent on at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Why {
    /// It opened an episode (the first firing of a run).
    Opened,
    /// Its action stops the guest: never folded.
    StopsTheGuest,
    /// The episode table is full: passed through uncoalesced.
    TableFull,
    /// Coalescing was shut down.
    Closed,
}

/// What to do with a firing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Send it on now. `episode` is the episode it opened, if any: report
    /// a failed delivery with [`Machine::first_failed`].
    Send { why: Why, episode: Option<u64> },
    /// Folded into its episode's follow-up: nothing to send now.
    Folded,
}

/// How a follow-up's delivery went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Delivered,
    Retryable,
    Permanent,
}

/// Why a follow-up was given up on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DropReason {
    /// Its delivery failed permanently.
    Permanent,
    /// More than `max_instances` follow-ups waited for a retry: the oldest.
    TooManyUnsent,
}

#[derive(Debug)]
struct Episode {
    /// Tells this episode's timer from a stale one of an earlier episode.
    id: u64,
    /// The run of the domain it belongs to.
    run: Option<u32>,
    /// When its window ends (its entry in `timers`).
    window_end: Instant,
    /// The follow-up being built from this window's repeats. Its event id is
    /// chosen once, at the first repeat, and kept through every retry.
    followup: Option<Notification>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    forwarded: u64,
    folded: u64,
    followups: u64,
    untracked: u64,
    dropped: u64,
}

/// The state machine. See the module docs.
#[derive(Debug)]
pub(crate) struct Machine {
    window: Duration,
    max_instances: usize,
    /// Open episodes, by domain UUID (one run per domain at a time).
    episodes: HashMap<Uuid, Episode>,
    /// Window ends: (when, episode id, domain).
    timers: BTreeSet<(Instant, u64, Uuid)>,
    /// Follow-ups of episodes that ended early: due now.
    ready: VecDeque<Notification>,
    /// Follow-ups whose delivery failed, waiting for `retry_unsent_at`.
    unsent: VecDeque<Notification>,
    retry_unsent_at: Option<Instant>,
    next_id: u64,
    closed: bool,
    counts: Counts,
}

/// Whether two runtime ids may be the same run: an unknown one matches any.
fn same_run(a: Option<u32>, b: Option<u32>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    }
}

impl Machine {
    pub(crate) fn new(config: &CoalesceConfig) -> Self {
        Machine {
            window: config.window,
            max_instances: config.max_instances,
            episodes: HashMap::new(),
            timers: BTreeSet::new(),
            ready: VecDeque::new(),
            unsent: VecDeque::new(),
            retry_unsent_at: None,
            next_id: 0,
            closed: false,
            counts: Counts::default(),
        }
    }

    /// The counters.
    pub(crate) fn stats(&self) -> CoalesceStats {
        let c = self.counts;
        CoalesceStats {
            forwarded: c.forwarded,
            folded: c.folded,
            followups: c.followups,
            untracked: c.untracked,
            tracked: self.episodes.len() as u64,
            unsent: self.unsent.len() as u64,
            dropped: c.dropped,
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed
    }

    /// When [`Machine::due`] next has something to give: `now` or earlier
    /// when a follow-up is ready, `None` when nothing is scheduled.
    pub(crate) fn next_deadline(&self, now: Instant) -> Option<Instant> {
        if !self.ready.is_empty() {
            return Some(now);
        }
        let timer = self.timers.first().map(|t| t.0);
        match (timer, self.retry_unsent_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// A firing arrived at `now`.
    pub(crate) fn firing(&mut self, n: &Notification, now: Instant) -> Verdict {
        let key = n.domain.uuid;
        let run = n.domain.id;
        if self.closed {
            self.counts.forwarded += 1;
            return Verdict::Send {
                why: Why::Closed,
                episode: None,
            };
        }
        if !leaves_the_guest_running(&n.action) {
            // The guest stopped: whatever episode it had is over.
            self.end_episode(&key);
            self.counts.forwarded += 1;
            return Verdict::Send {
                why: Why::StopsTheGuest,
                episode: None,
            };
        }
        if let Some(ep) = self.episodes.get_mut(&key) {
            if same_run(ep.run, run) {
                fold(&mut ep.followup, n);
                if ep.run.is_none() {
                    ep.run = run;
                }
                self.counts.folded += 1;
                return Verdict::Folded;
            }
            // A firing of a new run: the old run cannot repeat any more.
            self.end_episode(&key);
        }
        if self.episodes.len() >= self.max_instances {
            self.counts.untracked += 1;
            self.counts.forwarded += 1;
            return Verdict::Send {
                why: Why::TableFull,
                episode: None,
            };
        }
        self.next_id += 1;
        let id = self.next_id;
        let window_end = now + self.window;
        self.episodes.insert(
            key,
            Episode {
                id,
                run,
                window_end,
                followup: None,
            },
        );
        self.timers.insert((window_end, id, key));
        self.counts.forwarded += 1;
        Verdict::Send {
            why: Why::Opened,
            episode: Some(id),
        }
    }

    /// Ends `key`'s episode now; its follow-up, if any, is due at once.
    fn end_episode(&mut self, key: &Uuid) {
        if let Some(ep) = self.episodes.remove(key) {
            self.timers.remove(&(ep.window_end, ep.id, *key));
            if let Some(f) = ep.followup {
                self.ready.push_back(f);
            }
        }
    }

    /// The first firing of `episode` (of `domain`) was not delivered.
    pub(crate) fn first_failed(&mut self, domain: Uuid, episode: u64) {
        // Close the episode again so that the caller's retry is sent at
        // once, unless repeats were folded meanwhile: they still need the
        // episode's follow-up.
        if self
            .episodes
            .get(&domain)
            .is_some_and(|ep| ep.id == episode && ep.followup.is_none())
        {
            self.end_episode(&domain);
        }
    }

    /// The clock reached `now`: ends due windows and returns the follow-ups
    /// to send now, in order.
    pub(crate) fn due(&mut self, now: Instant) -> Vec<Notification> {
        let mut due: Vec<Notification> = self.ready.drain(..).collect();
        if self.retry_unsent_at.is_some_and(|at| at <= now) {
            self.retry_unsent_at = None;
            due.extend(self.unsent.drain(..));
        }
        while let Some(&(at, id, key)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            // A timer whose episode has ended is removed with it; this is
            // only a guard.
            let Some(ep) = self.episodes.get_mut(&key).filter(|ep| ep.id == id) else {
                continue;
            };
            match ep.followup.take() {
                Some(f) => {
                    due.push(f);
                    ep.window_end = now + self.window;
                    self.timers.insert((ep.window_end, id, key));
                }
                None => {
                    self.episodes.remove(&key);
                }
            }
        }
        due
    }

    /// A follow-up's delivery ended with `outcome` at `now`. Returns a
    /// follow-up given up on, if any (to be logged).
    pub(crate) fn followup_done(
        &mut self,
        f: Notification,
        outcome: Outcome,
        now: Instant,
    ) -> Option<(Notification, DropReason)> {
        match outcome {
            Outcome::Delivered => {
                self.counts.followups += 1;
                None
            }
            Outcome::Permanent => {
                self.counts.dropped += 1;
                Some((f, DropReason::Permanent))
            }
            Outcome::Retryable => {
                let mut dropped = None;
                if self.unsent.len() >= self.max_instances.max(1)
                    && let Some(old) = self.unsent.pop_front()
                {
                    self.counts.dropped += 1;
                    dropped = Some((old, DropReason::TooManyUnsent));
                }
                self.unsent.push_back(f);
                if self.retry_unsent_at.is_none() {
                    self.retry_unsent_at = Some(now + self.window);
                }
                dropped
            }
        }
    }

    /// Every follow-up built or waiting so far, to send now (episodes stay
    /// open).
    pub(crate) fn drain(&mut self) -> Vec<Notification> {
        self.retry_unsent_at = None;
        let mut due: Vec<Notification> = self.ready.drain(..).collect();
        due.extend(self.unsent.drain(..));
        due.extend(self.episodes.values_mut().filter_map(|e| e.followup.take()));
        due
    }

    /// Stops coalescing: later firings pass through.
    pub(crate) fn close(&mut self) {
        self.closed = true;
    }
}

/// Adds firing `n` to the follow-up being built.
fn fold(followup: &mut Option<Notification>, n: &Notification) {
    match followup {
        None => {
            let mut f = n.clone();
            f.event_id = Uuid::new_v4();
            *followup = Some(f);
        }
        Some(f) => {
            let (id, mut occ, recovered) = (f.event_id, f.occurrences, f.recovered);
            occ.count = occ.count.saturating_add(n.occurrences.count);
            occ.first_at = occ.first_at.min(n.occurrences.first_at);
            occ.last_at = occ.last_at.max(n.occurrences.last_at);
            *f = n.clone();
            f.event_id = id;
            f.occurrences = occ;
            f.recovered = recovered && n.recovered;
        }
    }
}

#[cfg(test)]
mod tests;
