//! Reloading `wdctl watch` on SIGHUP.
//!
//! A reload reads the config file (and the environment) again and checks it
//! exactly as at startup, building every destination first. Only a
//! configuration that passes is applied:
//!
//! - each running destination (same kind, project and URL) takes its new
//!   notifier: secrets, TLS files and timeouts change at once, and its
//!   queue, with everything waiting in it, is kept;
//! - a new destination (a new project's endpoint) gets its queue and
//!   worker at once;
//! - a removed destination takes nothing new; its queue keeps delivering
//!   until it has drained, then closes (both logged). What is still queued
//!   at shutdown stays on disk, and is delivered if it comes back;
//! - the log filter (`log_level`) changes at once.
//!
//! A configuration that fails is refused with the error logged, and the
//! running one keeps running. Settings that need a restart (the libvirt
//! URI, the host name, the spool directory, the metrics address, spool,
//! retry and coalescing limits) are logged as such when they change.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use anyhow::{Context as _, Result};
use tracing_subscriber::EnvFilter;
use wd_compute::Metrics;
use wd_notify::{Destination, Notification, Notifier, NotifyError, Router};

use crate::logging::LogControl;
use crate::watch::{Args, Plan, plan_with};

/// A destination's notifier, replaceable while its queue keeps running.
pub struct Swappable(RwLock<Arc<dyn Notifier>>);

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
    async fn notify(&self, n: &Notification) -> std::result::Result<(), NotifyError> {
        // A delivery in flight at a swap finishes with the old notifier.
        let current = self.current();
        current.notify(n).await
    }
}

/// Every destination's notifier seen since start, by its directory name
/// ([`Destination::dir_name`]).
pub type Live = BTreeMap<String, Arc<Swappable>>;

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
pub fn swappable(destinations: &mut [Destination]) -> Live {
    let mut live = Live::new();
    for d in destinations {
        attach(&mut live, d);
    }
    live
}

/// What a reload compares against: the settings only a restart changes.
#[derive(Debug, Clone, PartialEq)]
pub struct Fixed {
    uri: String,
    host: String,
    spool: Option<std::path::PathBuf>,
    metrics: Option<String>,
    limits: String,
}

impl Fixed {
    /// The restart-only settings of `plan`.
    pub fn of(plan: &Plan) -> Fixed {
        let r = &plan.runtime;
        Fixed {
            uri: r.listener.uri.clone(),
            host: r.host.clone(),
            spool: r.spool_dir.clone(),
            metrics: plan.metrics_addr.clone(),
            limits: format!("{:?} {:?} {:?}", r.spool, r.retry, r.coalesce),
        }
    }

    fn changes(&self, next: &Fixed) -> Vec<&'static str> {
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
            out.push("spool-limits/retry/coalesce");
        }
        out
    }
}

/// Parses a log filter as `log_level` would be, for checking a config.
pub fn check_log_level(level: &str) -> Result<()> {
    EnvFilter::try_new(level)
        .map(drop)
        .with_context(|| format!("config key `log_level` is `{level}`, which is not a valid log filter (e.g. `info`, `warn,wd_notify=debug`)"))
}

/// Handles one SIGHUP: re-reads and checks the configuration, and applies
/// it, or refuses it and keeps the running one.
pub fn reload(
    args: &Args,
    env: &dyn Fn(&str) -> Option<String>,
    live: &mut Live,
    router: &Arc<Router>,
    metrics: &Metrics,
    log: &LogControl,
    fixed: &Fixed,
) {
    tracing::info!("SIGHUP: reloading the configuration");
    let next = match plan_with(args, env, metrics.clone()) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %crate::one_line(e.chain()),
                "reload refused: the new configuration is invalid; the running one stays in effect");
            return;
        }
    };
    let needs_restart = fixed.changes(&Fixed::of(&next));
    if !needs_restart.is_empty() {
        tracing::warn!(settings = ?needs_restart,
            "these settings changed but take effect only at the next restart");
    }
    log.set_level(next.log_level.as_deref());
    let active = router.active();
    let wanted: Vec<String> = next
        .destinations
        .iter()
        .map(Destination::dir_name)
        .collect();
    let mut updated = Vec::new();
    let mut added = Vec::new();
    for mut d in next.destinations {
        let dir = d.dir_name();
        let name = d.name.clone();
        attach(live, &mut d);
        if active.contains(&dir) {
            updated.push(name);
        } else if let Err(e) = router.add(d) {
            tracing::error!(destination = %name, error = %crate::one_line(anyhow::Error::new(e).chain()),
                "cannot start the new destination's queue");
        } else {
            added.push(name);
        }
    }
    let mut removed = 0usize;
    for dir in active.iter().filter(|d| !wanted.contains(d)) {
        if router.retire(dir) {
            removed = removed.saturating_add(1);
        }
    }
    tracing::info!(updated = ?updated, added = ?added, removed, "configuration reloaded");
}
