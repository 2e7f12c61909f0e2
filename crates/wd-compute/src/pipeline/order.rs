//! The pipeline's per-domain order: pure logic, no I/O and no clock.
//!
//! The pipeline hands firings of different domains to the delivery layer
//! concurrently, but everything about **one** domain happens in the order
//! libvirt reported it: a firing, then the `resumed` that ended its pause,
//! then the next pause. While a domain has a firing being handed over (or
//! held after a failed write), every later item of that domain — firing or
//! lifecycle event — waits here, and is released only when that firing is
//! done with. So a `resumed` that arrives while its pause is still being
//! written ends that very episode, never the next one (the race where
//! pause, resume, pause, resume all arrive while the first pause is in
//! flight announces each pause exactly once).
//!
//! A firing whose hand-over failed with a retryable error (a queue or the
//! ledger could not be written: disk full, an I/O error, a read-only
//! filesystem) is **held**: its domain stays busy, and it is offered again
//! after a wait from the one backoff policy ([`wd_backoff::Backoff`]).
//!
//! The shell (`Pipeline::run`) owns the notifications and the futures;
//! this core owns only which domain may go next, and when a held one is
//! due. Times are given by the caller, so every decision is tested without
//! a runtime (see the tests below, and the model test).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;
use uuid::Uuid;
use wd_backoff::Backoff;

/// Where a busy domain's firing is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Busy {
    /// Being handed over (or prepared to be) since this moment.
    InFlight { since: Instant, attempt: u32 },
    /// Its hand-over failed `attempt` times; offered again at `due`.
    Held { due: Instant, attempt: u32 },
}

#[derive(Debug)]
struct Domain<W> {
    busy: Option<Busy>,
    waiting: VecDeque<W>,
}

/// What became of a hand-over, as the core needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Accepted, or refused for good: the domain is free again.
    Done,
    /// Refused for now (a write failed): hold it and try again.
    Retry,
}

/// The per-domain order of the pipeline, over work items `W`.
#[derive(Debug)]
pub(crate) struct Order<W> {
    domains: HashMap<Uuid, Domain<W>>,
    /// Held domains by when they are due.
    due: BTreeSet<(Instant, Uuid)>,
    in_flight: usize,
    held: usize,
    waiting: usize,
    backoff: Backoff,
}

impl<W> Order<W> {
    pub(crate) fn new(backoff: Backoff) -> Self {
        Order {
            domains: HashMap::new(),
            due: BTreeSet::new(),
            in_flight: 0,
            held: 0,
            waiting: 0,
            backoff,
        }
    }

    /// Offers `work` of `domain`: returned when it may be applied now (the
    /// domain is free and nothing of it waits), kept in order otherwise.
    pub(crate) fn offer(&mut self, domain: Uuid, work: W) -> Option<W> {
        match self.domains.get_mut(&domain) {
            None => Some(work),
            Some(d) => {
                d.waiting.push_back(work);
                self.waiting += 1;
                None
            }
        }
    }

    /// The domain's firing is being handed over from `now` on.
    pub(crate) fn start(&mut self, domain: Uuid, now: Instant) {
        let d = self.domains.entry(domain).or_insert_with(|| Domain {
            busy: None,
            waiting: VecDeque::new(),
        });
        if let Some(Busy::InFlight { .. }) = d.busy {
            return;
        }
        if let Some(Busy::Held { due, .. }) = d.busy {
            self.due.remove(&(due, domain));
            self.held -= 1;
        }
        let attempt = match d.busy {
            Some(Busy::Held { attempt, .. }) => attempt,
            _ => 0,
        };
        d.busy = Some(Busy::InFlight {
            since: now,
            attempt,
        });
        self.in_flight += 1;
    }

    /// The hand-over of `domain`'s firing ended at `now` with `outcome`.
    /// With [`Outcome::Retry`] the firing is held until the returned
    /// moment; `jitter` in `[0, 1]` is the backoff's random draw.
    pub(crate) fn finish(
        &mut self,
        domain: Uuid,
        outcome: Outcome,
        now: Instant,
        jitter: f64,
    ) -> Option<Instant> {
        let d = self.domains.get_mut(&domain)?;
        let Some(Busy::InFlight { attempt, .. }) = d.busy else {
            return None;
        };
        self.in_flight -= 1;
        match outcome {
            Outcome::Done => {
                d.busy = None;
                if d.waiting.is_empty() {
                    self.domains.remove(&domain);
                }
                None
            }
            Outcome::Retry => {
                let wait = self.backoff.delay_with(attempt, jitter);
                let due = now.checked_add(wait).unwrap_or(now);
                d.busy = Some(Busy::Held {
                    due,
                    attempt: attempt.saturating_add(1),
                });
                self.due.insert((due, domain));
                self.held += 1;
                Some(due)
            }
        }
    }

    /// The next item of a free `domain`, in order; `None` while the domain
    /// is busy or has nothing waiting. Call until `None` (or until an item
    /// makes it busy again).
    pub(crate) fn next(&mut self, domain: Uuid) -> Option<W> {
        let d = self.domains.get_mut(&domain)?;
        if d.busy.is_some() {
            return None;
        }
        let work = d.waiting.pop_front();
        if work.is_some() {
            self.waiting -= 1;
        }
        if d.waiting.is_empty() {
            self.domains.remove(&domain);
        }
        work
    }

    /// The held domains due at `now`, oldest first; each is in flight again.
    pub(crate) fn due(&mut self, now: Instant) -> Vec<Uuid> {
        let mut ready = Vec::new();
        while let Some(&(at, domain)) = self.due.first() {
            if at > now {
                break;
            }
            ready.push(domain);
            self.start(domain, now);
        }
        ready
    }

    /// When the next held firing is due.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.due.first().map(|(at, _)| *at)
    }

    /// Firings in flight, held, and items waiting: what the loop holds.
    pub(crate) fn load(&self) -> usize {
        self.in_flight + self.held + self.waiting
    }

    /// Firings held after a failed hand-over.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.held
    }

    /// Whether a hand-over in flight started more than `limit` before
    /// `now` (a stuck delivery layer). Held firings do not count: the
    /// loop goes round while it waits to retry them.
    pub(crate) fn stalled(&self, limit: Duration, now: Instant) -> bool {
        self.domains.values().any(|d| {
            matches!(d.busy, Some(Busy::InFlight { since, .. })
                if now.saturating_duration_since(since) > limit)
        })
    }

    /// Whether `domain` has a firing in flight or held.
    #[cfg(test)]
    pub(crate) fn is_busy(&self, domain: &Uuid) -> bool {
        self.domains.get(domain).is_some_and(|d| d.busy.is_some())
    }
}

#[cfg(test)]
#[path = "order_tests.rs"]
mod tests;
