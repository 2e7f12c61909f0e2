//! Changing the destinations of a running router: [`Router::reconfigure`],
//! and what becomes of a removed destination's backlog
//! ([`Router::drain`], [`Router::drop_backlog`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{
    ACTIVE, DRAINING, Destination, DestinationState, Queue, RETIRED, Router, RouterDefaults,
    check_unique, stack,
};
use crate::error::{Error, Result};

/// What a [`Router::reconfigure`] did, by destination name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Reconfigured {
    /// Destinations that were running and took their new transport (new
    /// secrets, TLS files, timeouts) at once; their queues, with everything
    /// waiting in them, are kept.
    pub updated: Vec<String>,
    /// New destinations, their queues opened (with any backlog a removed
    /// destination of the same identity left) and started.
    pub added: Vec<String>,
    /// Destinations removed: they sent nothing more from that moment; their
    /// backlogs wait on disk ([`DestinationState::Retired`]).
    pub removed: Vec<String>,
    /// Settings that changed but need a restart, each named
    /// (`queue settings of destination NAME`): a queue keeps the bounds it
    /// was opened with.
    pub needs_restart: Vec<String>,
}

impl Router {
    /// Replaces the set of destinations with `next`, checked exactly as
    /// [`Router::open`] checks its destinations, or changes nothing:
    ///
    /// - every queue setting is validated and every new queue is opened
    ///   first; if any of that fails, the error is returned and nothing
    ///   has changed (the queues just opened are closed again);
    /// - a destination already running (same [`Destination::dir_name`])
    ///   takes its new transport at once, keeping its queue; a change of
    ///   its queue settings is reported in
    ///   [`Reconfigured::needs_restart`];
    /// - a new destination gets its queue and worker, taking over a removed
    ///   or orphaned queue of the same identity (and its backlog);
    /// - a destination not in `next` is removed: it takes nothing new and
    ///   sends nothing more, not even the next attempt of a retry already
    ///   running; its backlog stays (on disk, for a durable router) and is
    ///   shown by [`Router::status`] until [`Router::drain`] or
    ///   [`Router::drop_backlog`].
    ///
    /// Must run inside a Tokio runtime.
    ///
    /// # Errors
    ///
    /// As [`Router::open`]: two destinations share a key, a queue setting
    /// is out of range, a new queue cannot be opened.
    pub fn reconfigure(
        &self,
        next: Vec<Destination>,
        defaults: &RouterDefaults,
    ) -> Result<Reconfigured> {
        check_unique(&next)?;
        defaults.queue.validate()?;
        for d in &next {
            defaults.resolve(d).validate()?;
        }
        let current = self.queues();
        let wanted: Vec<String> = next.iter().map(Destination::dir_name).collect();
        let mut kept = Vec::new();
        let mut fresh = Vec::new();
        for d in next {
            let dir = d.dir_name();
            match current.iter().find(|q| q.dir == dir) {
                Some(q) => kept.push((q.clone(), d)),
                None => fresh.push(d),
            }
        }
        // Everything that can fail, first.
        let mut opened = Vec::with_capacity(fresh.len());
        for d in fresh {
            // On an error, the queues opened so far are dropped (closed).
            opened.push(Arc::new(self.open_queue(d, defaults)?));
        }

        let mut done = Reconfigured::default();
        for (q, d) in kept {
            let config = defaults.resolve(&d);
            if config != q.config {
                done.needs_restart
                    .push(format!("queue settings of destination {}", d.name));
            }
            *q.tally.name.write().unwrap_or_else(|p| p.into_inner()) = d.name.clone();
            q.stack.set(stack(&q.tally, d.notifier));
            let was = q.state.swap(ACTIVE, Ordering::SeqCst);
            q.tally.removed.store(false, Ordering::SeqCst);
            q.spool.set_paused(false);
            if was == ACTIVE {
                done.updated.push(d.name);
            } else {
                tracing::info!(destination = %d.name, backlog = q.spool.stats().pending,
                    "destination configured again; its queue delivers again");
                done.added.push(d.name);
            }
        }
        for q in &current {
            if wanted.contains(&q.dir) || q.state.load(Ordering::SeqCst) != ACTIVE {
                continue;
            }
            q.state.store(RETIRED, Ordering::SeqCst);
            q.tally.removed.store(true, Ordering::SeqCst);
            q.spool.set_paused(true);
            let name = q.tally.name();
            tracing::warn!(destination = %name, backlog = q.spool.stats().pending,
                "destination removed: it takes and sends nothing more; its backlog is kept (`wdguard queue drain|drop`)");
            done.removed.push(name);
        }
        for q in &opened {
            let name = q.tally.name();
            tracing::info!(destination = %name, "destination added; its queue started");
            done.added.push(name);
        }
        self.queues
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .extend(opened);
        Ok(done)
    }

    /// The removed destination named `name` (its name, or its queue
    /// directory), or why not.
    fn removed(&self, name: &str) -> Result<Arc<Queue>> {
        let queues = self.queues();
        let allowed = || {
            let names: Vec<String> = queues
                .iter()
                .filter(|q| !q.is_active())
                .map(|q| q.dir.clone())
                .collect();
            if names.is_empty() {
                "the name of a removed destination (there is none now)".to_owned()
            } else {
                format!("one of {}", names.join(", "))
            }
        };
        match queues
            .iter()
            .find(|q| q.dir == name || q.tally.name() == name)
        {
            Some(q) if !q.is_active() => Ok(q.clone()),
            Some(_) => Err(Error::Destination {
                name: name.to_owned(),
                problem: "is configured; remove it from the configuration first",
                allowed: allowed(),
            }),
            None => Err(Error::Destination {
                name: name.to_owned(),
                problem: "no such destination",
                allowed: allowed(),
            }),
        }
    }

    /// Delivers the backlog of removed destination `name` with the
    /// transport and settings it had when it was removed; once its queue
    /// is empty it leaves the router. Must run inside a Tokio runtime.
    ///
    /// # Errors
    ///
    /// [`Error::Destination`]: no removed destination of that name, or an
    /// orphaned queue (found on disk at start, so nothing knows where to
    /// deliver it: configure its destination again, or drop it).
    pub fn drain(self: &Arc<Self>, name: &str) -> Result<()> {
        let q = self.removed(name)?;
        if q.state() == DestinationState::Orphaned {
            return Err(Error::Destination {
                name: name.to_owned(),
                problem: "is an orphaned queue with no destination to deliver to",
                allowed: "configure its destination again, or drop it".to_owned(),
            });
        }
        q.state.store(DRAINING, Ordering::SeqCst);
        q.tally.removed.store(false, Ordering::SeqCst);
        q.spool.set_paused(false);
        tracing::info!(destination = %name, backlog = q.spool.stats().pending,
            "removed destination draining its backlog");
        let router = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if q.state.load(Ordering::SeqCst) != DRAINING {
                    return;
                }
                let Some(router) = router.upgrade() else {
                    return;
                };
                if q.spool.stats().pending == 0 {
                    router.forget(&q).await;
                    tracing::info!(destination = %q.tally.name(), "removed destination drained; its queue is closed");
                    return;
                }
            }
        });
        Ok(())
    }

    /// Drops the backlog of removed (or orphaned) destination `name`: its
    /// queue is closed and its directory deleted. Returns how many entries
    /// were dropped.
    ///
    /// # Errors
    ///
    /// [`Error::Destination`] when there is no removed destination of that
    /// name; [`Error::SpoolIo`] when its directory cannot be deleted.
    pub async fn drop_backlog(&self, name: &str) -> Result<u64> {
        let q = self.removed(name)?;
        // Stop it first: nothing of it may run while its files go.
        q.state.store(RETIRED, Ordering::SeqCst);
        let dropped = q.spool.stats().pending;
        self.forget(&q).await;
        if let Some(dir) = q.spool.dir() {
            std::fs::remove_dir_all(dir).map_err(|source| Error::SpoolIo {
                path: dir.to_owned(),
                source,
            })?;
            if let Some(root) = &self.root {
                crate::spool::sync_root(&root.join("dest"))?;
            }
        }
        tracing::warn!(destination = %name, dropped, "removed destination's backlog dropped");
        Ok(dropped)
    }

    /// Takes `q` out of the router and closes its queue (what it still
    /// holds stays on disk).
    async fn forget(&self, q: &Arc<Queue>) {
        self.queues
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|other| !Arc::ptr_eq(other, q));
        q.spool.shutdown(Duration::ZERO).await;
    }
}
