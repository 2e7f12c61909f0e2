//! Reloading a running agent: every destination's notifier is replaceable
//! while its queue keeps running.
//!
//! A reload builds the whole new configuration first (every destination,
//! every check); only one that passes is applied:
//!
//! - each running destination (same kind, project and URL) takes its new
//!   notifier: secrets, TLS files and timeouts change at once, and its
//!   queue, with everything waiting in it, is kept;
//! - a new destination (a new project's endpoint) gets its queue and
//!   worker at once;
//! - a removed destination takes nothing new; its queue keeps delivering
//!   until it has drained, then closes (both logged). What is still queued
//!   at shutdown stays on disk, and is delivered if it comes back.
//!
//! Settings that need a restart (the libvirt URI, the host name, the spool
//! directory, the metrics address, spool, retry, coalescing and owner-cache
//! limits) are
//! logged as such when they change.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use wd_notify::{Destination, Notification, Notifier, NotifyError, Router};

use crate::RuntimeConfig;

/// A destination's notifier, replaceable while its queue keeps running.
pub(crate) struct Swappable(RwLock<Arc<dyn Notifier>>);

impl Swappable {
    fn current(&self) -> Arc<dyn Notifier> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, next: Arc<dyn Notifier>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = next;
    }
}

#[async_trait::async_trait]
impl Notifier for Swappable {
    async fn notify(&self, n: &Notification) -> Result<(), NotifyError> {
        // A delivery in flight at a swap finishes with the old notifier.
        let current = self.current();
        current.notify(n).await
    }
}

/// Every destination's notifier seen since start, by its directory name
/// ([`Destination::dir_name`]).
pub(crate) type Live = BTreeMap<String, Arc<Swappable>>;

/// Makes `d`'s notifier replaceable: the one `live` has for it, given
/// `d`'s notifier, or a new one.
fn attach(live: &mut Live, d: &mut Destination) {
    let s = live
        .entry(d.dir_name())
        .or_insert_with(|| Arc::new(Swappable(RwLock::new(d.notifier.clone()))));
    s.set(d.notifier.clone());
    d.notifier = s.clone();
}

/// Makes every destination's notifier replaceable, and returns them.
pub(crate) fn swappable(destinations: &mut [Destination]) -> Live {
    let mut live = Live::new();
    for d in destinations {
        attach(&mut live, d);
    }
    live
}

/// What a reload compares against: the settings only a restart changes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Fixed {
    uri: String,
    host: String,
    spool: Option<std::path::PathBuf>,
    metrics: Option<String>,
    limits: String,
}

impl Fixed {
    /// The restart-only settings of a runtime, its owner cache and its
    /// metrics address.
    pub(crate) fn of(
        r: &RuntimeConfig,
        directory: crate::DirectoryConfig,
        metrics: Option<&str>,
    ) -> Fixed {
        Fixed {
            uri: r.listener.uri.clone(),
            host: r.host.clone(),
            spool: r.spool_dir.clone(),
            metrics: metrics.map(str::to_owned),
            limits: format!("{:?} {:?} {:?} {directory:?}", r.spool, r.retry, r.coalesce),
        }
    }

    /// The keys whose change `next` would need a restart for.
    pub(crate) fn changes(&self, next: &Fixed) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.uri != next.uri {
            out.push("connect");
        }
        if self.host != next.host {
            out.push("host");
        }
        if self.spool != next.spool {
            out.push("spool");
        }
        if self.metrics != next.metrics {
            out.push("metrics");
        }
        if self.limits != next.limits {
            out.push("spool-limits/retry/coalesce/directory");
        }
        out
    }
}

/// What a reload did, by destination name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Reloaded {
    /// Running destinations that took their new notifier.
    pub updated: Vec<String>,
    /// New destinations, started.
    pub added: Vec<String>,
    /// New destinations whose queue could not be started (each logged).
    pub failed: Vec<String>,
    /// Destinations retired: they drain, then close.
    pub removed: usize,
    /// Changed settings that take effect only at the next restart.
    pub needs_restart: Vec<&'static str>,
}

/// Applies `next` to the running `router`.
pub(crate) fn apply(live: &mut Live, router: &Arc<Router>, next: Vec<Destination>) -> Reloaded {
    let mut done = Reloaded::default();
    let active = router.active();
    let wanted: Vec<String> = next.iter().map(Destination::dir_name).collect();
    for mut d in next {
        let dir = d.dir_name();
        let name = d.name.clone();
        attach(live, &mut d);
        if active.contains(&dir) {
            done.updated.push(name);
        } else if let Err(e) = router.add(d) {
            tracing::error!(destination = %name, error = %crate::agent::chain(&e),
                "cannot start the new destination's queue");
            done.failed.push(name);
        } else {
            done.added.push(name);
        }
    }
    for dir in active.iter().filter(|d| !wanted.contains(d)) {
        if router.retire(dir) {
            done.removed = done.removed.saturating_add(1);
        }
    }
    done
}
