//! Reloading `wdctl watch` on SIGHUP, and the log filter a reload swaps.
//!
//! A reload reads the config file (and the environment) again and checks it
//! exactly as at startup, building every backend first. Only a
//! configuration that passes replaces the running one:
//!
//! - destinations (webhook endpoints, their secrets and TLS files, the
//!   broker, `log`) are swapped in one step; queued notifications are kept
//!   and go to the destinations current when they are delivered;
//! - the log filter (`log_level`) changes at once.
//!
//! A configuration that fails is refused with the error logged, and the
//! running one keeps running. Settings that need a restart (the libvirt
//! URI, the host name, the spool directory, the metrics address, spool,
//! retry and coalescing limits) are logged as such when they change.

use anyhow::{Context as _, Result};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Registry, reload};
use wd_compute::{Metrics, Runtime};

use crate::watch::{Args, Plan, plan_with};

/// The default log filter.
pub const DEFAULT_LOG_LEVEL: &str = "info";

/// The installed log filter, replaceable while running.
pub struct LogControl {
    handle: reload::Handle<EnvFilter, Registry>,
    /// Whether `RUST_LOG` set the filter (it then wins over `log_level`).
    from_env: bool,
}

/// Installs the global subscriber (text to stderr) with a reloadable
/// filter: `RUST_LOG` if set, else `level` (the config's `log_level`), else
/// [`DEFAULT_LOG_LEVEL`].
pub fn init_logging(level: Option<&str>) -> LogControl {
    let (filter, from_env) = match EnvFilter::try_from_default_env() {
        Ok(f) => (f, true),
        Err(_) => (
            level
                .and_then(|l| EnvFilter::try_new(l).ok())
                .unwrap_or_else(|| EnvFilter::new(DEFAULT_LOG_LEVEL)),
            false,
        ),
    };
    let (filter, handle) = reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_target(false),
        )
        .init();
    LogControl { handle, from_env }
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
    runtime: &Runtime,
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
    if !log.from_env {
        let level = next.log_level.as_deref().unwrap_or(DEFAULT_LOG_LEVEL);
        // Checked by `plan_with` already.
        if let Ok(filter) = EnvFilter::try_new(level)
            && let Err(e) = log.handle.reload(filter)
        {
            tracing::warn!(error = %e, "cannot change the log filter");
        }
    }
    let (added, removed) = runtime.set_backends(next.backends);
    if !removed.is_empty() {
        tracing::warn!(removed = ?removed,
            "destinations removed: notifications still queued go to the current destinations only");
    }
    tracing::info!(added = ?added, removed = ?removed, "configuration reloaded");
}
