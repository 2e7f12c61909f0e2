//! Reloading `wdctl watch` on SIGHUP.
//!
//! A reload reads the config file (and the environment) again and checks it
//! exactly as at startup, building every destination first. Only a
//! configuration that passes is applied:
//!
//! - each running destination (same kind, project and URL) takes its new
//!   notifier: secrets, TLS files and timeouts change at once, and its
//!   queue, with everything waiting in it, is kept;
//! - the log filter (`log_level`) changes at once;
//! - destinations added or removed are logged and take effect at the next
//!   restart (a removed destination's queue keeps delivering until then;
//!   on restart its backlog is left in its directory, not deleted).
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
use wd_notify::{Destination, Notification, Notifier, NotifyError};

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

/// The running destinations' notifiers, by destination key.
pub type Live = BTreeMap<String, Arc<Swappable>>;

/// Makes every destination's notifier replaceable, and returns them by key.
pub fn swappable(destinations: &mut [Destination]) -> Live {
    let mut live = Live::new();
    for d in destinations {
        let s = Arc::new(Swappable(RwLock::new(d.notifier.clone())));
        d.notifier = s.clone();
        live.insert(d.key.clone(), s);
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
    live: &Live,
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
    let mut updated = Vec::new();
    let mut added = Vec::new();
    for d in &next.destinations {
        match live.get(&d.key) {
            Some(s) => {
                s.set(d.notifier.clone());
                updated.push(d.name.clone());
            }
            None => added.push(d.name.clone()),
        }
    }
    let removed: Vec<&String> = live
        .keys()
        .filter(|k| !next.destinations.iter().any(|d| &d.key == *k))
        .collect();
    if !added.is_empty() {
        tracing::warn!(added = ?added,
            "new destinations take effect at the next restart (their queues start then)");
    }
    if !removed.is_empty() {
        tracing::warn!(
            removed = removed.len(),
            "destinations removed from the configuration keep delivering their queues until the next restart"
        );
    }
    tracing::info!(updated = ?updated, "configuration reloaded");
}
