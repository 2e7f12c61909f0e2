//! The whole agent as a library, and a driver's one front door:
//! [`AgentSettings`] (the configuration file that `wdguard watch` reads) or
//! an [`AgentBuilder`] (parts a driver brings itself) in, a supervised
//! [`RunningAgent`] out.
//!
//! [`Agent::new`] checks everything and builds every destination before
//! anything starts; each section is checked by the crate that owns it.
//! [`Agent::builder`] takes destinations, an owner directory or an event
//! stream that a driver already has.
//! [`Agent::start`] probes libvirt (unless `wait`), opens the queues and
//! starts listening; the [`RunningAgent`] reloads a new configuration
//! without losing a queued entry, reports the death of a core task, and
//! shuts down cleanly. [`Agent::run`] does all of that until a stop signal.
//!
//! ```no_run
//! # async fn driver() -> Result<(), Box<dyn std::error::Error>> {
//! let text = std::fs::read_to_string("/etc/wd/wd.toml")?;
//! let config: wd_compute::AgentSettings = toml::from_str(&text)?;
//! let agent = wd_compute::Agent::new(&config, &|k| std::env::var(k).ok())?;
//! let report = agent.run(async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! println!("{} firings", report.pipeline.firings);
//! # Ok(()) }
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use wd_events::ListenerConfig;
use wd_notify::settings::{MAX_SECS, SettingsError, seconds};
use wd_notify::{Destination, DestinationKind, LogNotifier, Scope};

use crate::runtime::Runtime;
use crate::{AgentConfig, AgentReport, InstanceDirectory, Metrics, NovaDirectory, PulseHook};

mod builder;
mod reload;
mod settings;

pub use builder::AgentBuilder;
pub use settings::{AgentSettings, ConnectAuthSettings, display_target, target_holds_secret};

/// The environment variable of the test-only fault hook, read only by debug
/// builds: `pipeline-panic-after-ms=N` makes the pipeline task panic after
/// N ms, to show that a core task's death ends the agent;
/// `spool-fault=ERRNO:CALL:FLAG` (ERRNO `enospc`, `eio` or `erofs`; CALL
/// `write`, `fsync`, `create` or `all`) makes every queue's CALL fail with
/// ERRNO while the file FLAG exists: removing it heals the disk.
pub const FAULT_ENV: &str = "WD_TEST_FAULT";

/// Why the agent could not be built, started or kept running. Messages
/// name the key or value that is wrong and never hold a secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The configuration is invalid.
    #[error("{0}")]
    Config(String),
    /// libvirt could not be reached at startup (and `wait` is off).
    #[error(
        "cannot connect to libvirt at {uri}: {reason} (use --wait or `wait = true` to keep retrying)"
    )]
    Unreachable {
        /// The libvirt URI.
        uri: String,
        /// libvirt's reason.
        reason: String,
    },
    /// The runtime could not start (a queue, the ledger, the listener).
    #[error("{}", wd_notify::error_chain(.0))]
    Start(crate::Error),
    /// A core task died; a service manager should restart the agent.
    #[error("core task died: {0}")]
    Died(String),
}

impl From<SettingsError> for AgentError {
    fn from(e: SettingsError) -> Self {
        AgentError::Config(e.0)
    }
}

fn config_err(msg: impl Into<String>) -> AgentError {
    AgentError::Config(msg.into())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// A checked agent, every destination built, nothing started.
pub struct Agent {
    runtime: AgentConfig,
    directory: crate::DirectoryConfig,
    /// Owners from the driver; else Nova's metadata, read from libvirt.
    owners: Option<Arc<dyn InstanceDirectory>>,
    /// Listener items from the driver; else the agent's own listener.
    events: Option<builder::Events>,
    destinations: Vec<Destination>,
    wait: bool,
    metrics: Metrics,
    name: String,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.destinations.iter().map(|d| d.name.as_str()).collect();
        f.debug_struct("Agent")
            .field("runtime", &self.runtime)
            .field("destinations", &names)
            .field("wait", &self.wait)
            .finish_non_exhaustive()
    }
}

/// Applies the test-only fault hook [`FAULT_ENV`] (debug builds only).
fn test_fault(fault: &str, runtime: &mut AgentConfig) -> Result<(), AgentError> {
    let bad = || {
        config_err(format!(
            "{FAULT_ENV} `{fault}`; allowed: pipeline-panic-after-ms=N, \
             spool-fault=enospc|eio|erofs:write|fsync|create|all:FLAG_FILE"
        ))
    };
    if let Some(ms) = fault.strip_prefix("pipeline-panic-after-ms=") {
        let ms = ms.parse::<u64>().map_err(|_| bad())?;
        runtime.fault_pipeline_panic_after = Some(Duration::from_millis(ms));
        return Ok(());
    }
    let spec = fault.strip_prefix("spool-fault=").ok_or_else(bad)?;
    let mut parts = spec.splitn(3, ':');
    let (Some(errno), Some(call), Some(flag)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    let errno = match errno {
        "enospc" => 28,
        "eio" => 5,
        "erofs" => 30,
        _ => return Err(bad()),
    };
    if flag.is_empty() {
        return Err(bad());
    }
    let fs = wd_notify::fault::FaultyFs::new();
    let faults = fs.faults();
    faults.only_while_exists(flag.into());
    match call {
        "write" => faults.fail_writes(Some(errno)),
        "fsync" => faults.fail_syncs(Some(errno)),
        "create" => faults.fail_creates(Some(errno)),
        "all" => faults.fail_all(Some(errno)),
        _ => return Err(bad()),
    }
    runtime.fault_spool_fs = Some(Arc::new(fs));
    Ok(())
}

impl Agent {
    /// An agent for compute host `host` from parts the driver brings: its
    /// destinations, and optionally its owner directory and event stream.
    pub fn builder(host: impl Into<String>) -> AgentBuilder {
        AgentBuilder::new(host.into())
    }

    /// Checks `config` and builds every destination, reading secrets that
    /// are not in the file through `env` (`WD_WEBHOOK_SECRET`,
    /// `WD_AMQP_PASSWORD`). Must be called inside a Tokio runtime (the HTTP
    /// and AMQP clients are created here).
    ///
    /// # Errors
    ///
    /// [`AgentError::Config`], naming the key or target that is wrong.
    pub fn new(
        config: &AgentSettings,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Agent, AgentError> {
        Self::with_metrics(config, env, Metrics::new())
    }

    /// [`Agent::new`], reporting to existing `metrics`.
    ///
    /// # Errors
    ///
    /// As [`Agent::new`].
    pub fn with_metrics(
        cfg: &AgentSettings,
        env: &dyn Fn(&str) -> Option<String>,
        metrics: Metrics,
    ) -> Result<Agent, AgentError> {
        let uri = cfg
            .connect
            .clone()
            .unwrap_or_else(|| "qemu:///system".into());
        let mut destinations: Vec<Destination> = Vec::new();
        let mut targets: Vec<String> = cfg.notify.clone();
        let mut nova_host = None;
        if let Some(path) = &cfg.nova_config {
            let nova = transports::nova(path)?;
            nova_host = nova.host;
            if nova.log {
                targets.push("log".into());
            }
            match nova.bus {
                Some(d) => destinations.push(d),
                None if targets.is_empty() && !transports::has_projects(cfg) => {
                    return Err(config_err(format!(
                        "nowhere to notify: `{}` [oslo_messaging_notifications] driver is unset or noop, so Nova sends no notifications; set it to messagingv2, or give --notify",
                        path.display()
                    )));
                }
                None => {}
            }
        }
        if let Some(url) = transports::amqp_url(cfg)? {
            targets.push(url);
        }
        let host = cfg.host.clone().or(nova_host).unwrap_or_else(hostname);
        // The same target from two places is one destination, not two (two
        // would deliver every notification twice).
        let mut seen = std::collections::HashSet::new();
        targets.retain(|t| seen.insert(t.clone()));
        if targets.is_empty() && !transports::has_projects(cfg) && destinations.is_empty() {
            return Err(config_err(
                "nowhere to notify: give --notify log|URL, --nova-config, or `notify`/`[[webhook.projects]]` in the config file",
            ));
        }

        let mut runtime = AgentConfig::new(host).listener(ListenerConfig {
            uri,
            read_only: cfg.read_only.unwrap_or(true),
            credentials: cfg.connect_auth.credentials()?,
            ..ListenerConfig::default()
        });
        runtime.spool_dir = cfg.spool.clone();
        runtime.queue = cfg.queue.config()?;
        runtime.coalesce = cfg.coalesce.config()?;
        let directory = cfg.directory.config()?;
        if let Some(v) = cfg.health_interval_secs {
            runtime.health_interval =
                seconds("health_interval_secs", v, MAX_SECS)?.max(Duration::from_secs(1));
        }

        let mut webhooks = Vec::new();
        let mut bus_seen = !destinations.is_empty();
        for t in &targets {
            let shown = display_target(t);
            if t == "log" {
                destinations.push(
                    Destination::new(
                        "log",
                        DestinationKind::Log,
                        Scope::All,
                        Arc::new(LogNotifier::new()),
                    )
                    .key("log"),
                );
            } else if t.starts_with("http://") || t.starts_with("https://") {
                webhooks.push(t.clone());
            } else if ["amqp://", "amqps://", "rabbit://"]
                .iter()
                .any(|s| t.get(..s.len()).is_some_and(|p| p.eq_ignore_ascii_case(s)))
            {
                if bus_seen {
                    return Err(config_err(format!(
                        "only one AMQP broker may be given; got a second one, `{shown}`"
                    )));
                }
                bus_seen = true;
                destinations.push(transports::bus(cfg, t, env)?);
            } else {
                return Err(config_err(format!(
                    "unknown notify target `{shown}`; allowed: log, http://…, https://…, amqp://…, amqps://…, rabbit://…"
                )));
            }
        }
        destinations.extend(transports::webhooks(cfg, &webhooks, env, &runtime.queue)?);

        if cfg!(debug_assertions)
            && let Some(fault) = env(FAULT_ENV)
        {
            test_fault(&fault, &mut runtime)?;
        }
        runtime.metrics = Some(metrics.clone());
        Ok(Agent {
            runtime,
            directory,
            owners: None,
            events: None,
            destinations,
            wait: cfg.wait.unwrap_or(false),
            metrics,
            name: "watchdog agent".into(),
        })
    }

    /// Names the agent in its `… started` and `… stopped` log lines
    /// [default `watchdog agent`].
    #[must_use]
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Reports readiness and liveness to `hook` (systemd's notify protocol,
    /// for one).
    #[must_use]
    pub fn pulse(mut self, hook: Option<PulseHook>) -> Self {
        self.runtime.pulse = hook;
        self
    }

    /// Retries rather than fails when libvirt is unreachable at startup.
    #[must_use]
    pub fn wait(mut self, wait: bool) -> Self {
        self.wait = wait;
        self
    }

    /// The configuration the agent will start with.
    pub fn config(&self) -> &AgentConfig {
        &self.runtime
    }

    /// The owner cache's bounds the agent will start with.
    pub fn directory_config(&self) -> crate::DirectoryConfig {
        self.directory
    }

    /// The destinations, each with its own queue.
    pub fn destinations(&self) -> &[Destination] {
        &self.destinations
    }

    /// Whether the agent waits for libvirt at startup.
    pub fn waits(&self) -> bool {
        self.wait
    }

    /// The metrics every destination and the pipeline report to.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Starts the agent: probes libvirt (unless it waits), opens every
    /// queue, delivers what earlier runs left, and starts listening. Must
    /// be called inside a Tokio runtime.
    ///
    /// # Errors
    ///
    /// [`AgentError::Unreachable`] or [`AgentError::Start`].
    pub async fn start(self) -> Result<RunningAgent, AgentError> {
        let uri = self.runtime.listener.uri.clone();
        let read_only = self.runtime.listener.read_only;
        if self.events.is_none() {
            wd_events::quiet_default_errors();
            // libvirt's event loop must be registered before any connection.
            wd_events::init_event_loop().map_err(|e| AgentError::Start(crate::Error::Listen(e)))?;
        }
        if !self.wait && self.events.is_none() {
            let probe = self.runtime.listener.clone();
            let outcome = tokio::task::spawn_blocking(move || wd_events::probe(&probe))
                .await
                .map_err(|e| AgentError::Died(format!("the libvirt probe: {e}")))?;
            if let Err(e) = outcome {
                let reason = match (&e, std::error::Error::source(&e)) {
                    // What to grant is the message; libvirt's reason follows.
                    (wd_events::Error::ReadWriteRefused { .. }, Some(s)) => format!("{e}: {s}"),
                    // The configured credentials are this file's.
                    (wd_events::Error::Credentials { .. }, Some(s)) => format!(
                        "{e}; or give `[connect_auth]` username and password in the config file: {s}"
                    ),
                    (_, Some(s)) => s.to_string(),
                    (_, None) => e.to_string(),
                };
                return Err(AgentError::Unreachable { uri, reason });
            }
        }
        let fixed = reload::Fixed::of(&self.runtime, self.directory);
        let names: Vec<String> = self.destinations.iter().map(|d| d.name.clone()).collect();
        let spool = self.runtime.spool_dir.clone();
        let host = self.runtime.host.clone();
        let owners = self
            .owners
            .unwrap_or_else(|| Arc::new(NovaDirectory::with_config(self.directory)));
        let runtime = match self.events {
            Some(items) => Runtime::start_with(self.runtime, owners, self.destinations, items),
            None => Runtime::start(self.runtime, owners, self.destinations),
        }
        .map_err(AgentError::Start)?;
        tracing::info!(uri = %uri, read_only, host = %host, destinations = ?names,
            spool = %spool.as_ref().map_or("none".into(), |p| p.display().to_string()),
            "{} started", self.name);
        Ok(RunningAgent {
            runtime,
            fixed,
            metrics: self.metrics,
            name: self.name,
        })
    }

    /// Starts the agent and runs it until `stop` completes (then shuts down
    /// cleanly, leaving what is undelivered in the queues) or a core task
    /// dies.
    ///
    /// # Errors
    ///
    /// As [`Agent::start`], and [`AgentError::Died`] after a clean
    /// shutdown when a core task died.
    pub async fn run(self, stop: impl Future<Output = ()>) -> Result<AgentReport, AgentError> {
        let mut running = self.start().await?;
        let died = tokio::select! {
            () = stop => None,
            why = running.failed() => Some(why),
        };
        let report = running.shutdown().await;
        match died {
            Some(why) => Err(AgentError::Died(why)),
            None => Ok(report),
        }
    }
}

/// A started agent.
pub struct RunningAgent {
    runtime: Runtime,
    fixed: reload::Fixed,
    metrics: Metrics,
    name: String,
}

impl std::fmt::Debug for RunningAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningAgent")
            .field("runtime", &self.runtime)
            .finish_non_exhaustive()
    }
}

impl RunningAgent {
    /// The metrics the agent reports to.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Every destination's state now: backlog, drops, deliveries, failures
    /// and last error.
    pub fn status(&self) -> Vec<wd_notify::DestinationStatus> {
        self.runtime.status()
    }

    /// The router: every destination and its queue.
    pub fn router(&self) -> &Arc<wd_notify::Router> {
        self.runtime.router()
    }

    /// Applies a new configuration, checked exactly as a start checks it,
    /// or refuses it whole. What it did comes back by destination name, with
    /// every changed setting that needs a restart named by its config key.
    /// The outcome is logged (`configuration reloaded`). Must be called
    /// inside a Tokio runtime.
    ///
    /// # Errors
    ///
    /// [`AgentError::Config`] when `config` is invalid, [`AgentError::Start`]
    /// when a new destination's queue cannot be opened: the errors a start
    /// would give. Nothing changes then.
    pub fn reload(
        &mut self,
        config: &AgentSettings,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<wd_notify::Reconfigured, AgentError> {
        let next = Agent::with_metrics(config, env, self.metrics.clone())?;
        let fixed = reload::Fixed::of(&next.runtime, next.directory);
        let defaults = wd_notify::RouterDefaults {
            queue: next.runtime.queue.clone(),
        };
        let mut done = self
            .runtime
            .router()
            .reconfigure(next.destinations, &defaults)
            .map_err(|e| AgentError::Start(crate::Error::Spool(e)))?;
        let mut needs_restart = self.fixed.changes(&fixed);
        needs_restart.append(&mut done.needs_restart);
        if !needs_restart.is_empty() {
            tracing::warn!(settings = ?needs_restart,
                "these settings changed but take effect only at the next restart");
        }
        done.needs_restart = needs_restart;
        tracing::info!(updated = ?done.updated, added = ?done.added, removed = ?done.removed,
            "configuration reloaded");
        Ok(done)
    }

    /// Delivers the backlog of removed destination `name` with the settings
    /// it had; its queue closes once empty.
    ///
    /// # Errors
    ///
    /// No removed destination of that name, or one whose settings are
    /// unknown (an orphaned queue found at start).
    pub fn drain(&self, name: &str) -> Result<(), AgentError> {
        self.runtime
            .router()
            .drain(name)
            .map_err(|e| AgentError::Config(wd_notify::error_chain(&e)))
    }

    /// Drops the backlog of removed destination `name` (its queue directory
    /// is deleted); returns how many entries were dropped.
    ///
    /// # Errors
    ///
    /// No removed destination of that name, or its directory cannot be
    /// deleted.
    pub async fn drop_backlog(&self, name: &str) -> Result<u64, AgentError> {
        self.runtime
            .router()
            .drop_backlog(name)
            .await
            .map_err(|e| AgentError::Config(wd_notify::error_chain(&e)))
    }

    /// Completes when a core task (the pipeline, a queue writer) has died,
    /// with why. Log it and exit non-zero, so that the service manager
    /// restarts the agent and the queues replay.
    pub async fn failed(&mut self) -> String {
        let why = self.runtime.failed().await;
        tracing::error!(
            "core task died: {why}; exiting non-zero so that the service manager restarts the agent and the queues replay"
        );
        why
    }

    /// Stops listening, delivers for up to the shutdown grace, leaves the
    /// rest in the queues, and logs `… stopped` with the figures.
    pub async fn shutdown(self) -> AgentReport {
        let report = self.runtime.shutdown().await;
        tracing::info!(
            firings = report.pipeline.firings,
            accepted = report.pipeline.accepted,
            already_notified = report.pipeline.already_notified,
            unknown_owner = report.pipeline.unknown_owner,
            queued = report.pending(),
            "{} stopped",
            self.name
        );
        report
    }
}

/// The transports, each behind its cargo feature.
mod transports {
    use std::path::Path;
    #[allow(unused_imports)]
    use std::sync::Arc;

    #[allow(unused_imports)]
    use wd_notify::{Destination, DestinationKind, QueueConfig, Scope};

    use super::{AgentError, AgentSettings, config_err};

    /// What `nova.conf` adds.
    pub(super) struct FromNova {
        pub(super) host: Option<String>,
        pub(super) bus: Option<Destination>,
        pub(super) log: bool,
    }

    #[cfg_attr(all(feature = "webhook", feature = "amqp"), allow(dead_code))]
    fn missing(feature: &str, what: &str) -> AgentError {
        config_err(format!(
            "{what} needs wd-compute's `{feature}` feature, which this build lacks"
        ))
    }

    #[cfg(feature = "amqp")]
    pub(super) fn nova(path: &Path) -> Result<FromNova, AgentError> {
        use wd_notify_amqp::{AmqpNotifier, NovaConf};
        let conf = NovaConf::load(path).map_err(|e| config_err(e.to_string()))?;
        let log = conf.logs();
        let bus = match conf.bus {
            Some(config) => {
                // oslo's notifier declares the queue of each topic so that
                // notifications wait for their listeners; so do we.
                let config = config.with_declare_queue(true);
                let name = format!("amqp {} (from {})", config.url, path.display());
                let notifier = AmqpNotifier::new(config)
                    .map_err(|e| config_err(format!("nova config `{}`: {e}", path.display())))?;
                Some(
                    Destination::new(name, DestinationKind::Bus, Scope::All, Arc::new(notifier))
                        .key("bus"),
                )
            }
            None => None,
        };
        Ok(FromNova {
            host: conf.host,
            bus,
            log,
        })
    }

    #[cfg(not(feature = "amqp"))]
    pub(super) fn nova(_path: &Path) -> Result<FromNova, AgentError> {
        Err(missing("amqp", "config key `nova_config`"))
    }

    #[cfg(feature = "amqp")]
    pub(super) fn amqp_url(cfg: &AgentSettings) -> Result<Option<String>, AgentError> {
        Ok(cfg.amqp.url.clone())
    }

    #[cfg(not(feature = "amqp"))]
    pub(super) fn amqp_url(cfg: &AgentSettings) -> Result<Option<String>, AgentError> {
        match cfg.amqp {
            Some(_) => Err(missing("amqp", "the `[amqp]` section")),
            None => Ok(None),
        }
    }

    #[cfg(feature = "amqp")]
    pub(super) fn bus(
        cfg: &AgentSettings,
        target: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Destination, AgentError> {
        let shown = wd_notify::redact_url(target);
        let c = cfg.amqp.config(target, env)?;
        let n = wd_notify_amqp::AmqpNotifier::new(c)
            .map_err(|e| config_err(format!("AMQP target `{shown}`: {e}")))?;
        // One broker: its queue keeps its name (and backlog) when the URL
        // changes.
        Ok(Destination::new(
            format!("amqp {shown}"),
            DestinationKind::Bus,
            Scope::All,
            Arc::new(n),
        )
        .key("bus"))
    }

    #[cfg(not(feature = "amqp"))]
    pub(super) fn bus(
        cfg: &AgentSettings,
        target: &str,
        _env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Destination, AgentError> {
        let _ = cfg;
        Err(missing(
            "amqp",
            &format!("notify target `{}`", wd_notify::redact_url(target)),
        ))
    }

    #[cfg(feature = "webhook")]
    pub(super) fn has_projects(cfg: &AgentSettings) -> bool {
        !cfg.webhook.projects.is_empty()
    }

    #[cfg(not(feature = "webhook"))]
    pub(super) fn has_projects(_cfg: &AgentSettings) -> bool {
        false
    }

    /// One destination per webhook endpoint, each with its own queue.
    #[cfg(feature = "webhook")]
    pub(super) fn webhooks(
        cfg: &AgentSettings,
        operator_urls: &[String],
        env: &dyn Fn(&str) -> Option<String>,
        base: &QueueConfig,
    ) -> Result<Vec<Destination>, AgentError> {
        use wd_notify_webhook::WebhookNotifier;
        let Some(webhook) = cfg.webhook.config(operator_urls, env)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for e in WebhookNotifier::split(webhook).map_err(|e| config_err(format!("webhook: {e}")))? {
            let (name, kind, scope) = match &e.project {
                None => (
                    format!("webhook operator {}", e.shown),
                    DestinationKind::Operator,
                    Scope::All,
                ),
                Some(p) => (
                    format!("webhook project {p} {}", e.shown),
                    DestinationKind::Project,
                    Scope::Project(p.clone()),
                ),
            };
            let mut d =
                Destination::new(name, kind, scope, Arc::new(e.notifier)).key(e.fingerprint);
            if let Some(p) = &e.project
                && let Some(q) = cfg.webhook.project_queue(p, base)?
            {
                d = d.queue(q);
            }
            out.push(d);
        }
        Ok(out)
    }

    #[cfg(not(feature = "webhook"))]
    pub(super) fn webhooks(
        cfg: &AgentSettings,
        operator_urls: &[String],
        _env: &dyn Fn(&str) -> Option<String>,
        _base: &QueueConfig,
    ) -> Result<Vec<Destination>, AgentError> {
        if let Some(url) = operator_urls.first() {
            return Err(missing(
                "webhook",
                &format!("notify target `{}`", super::display_target(url)),
            ));
        }
        if cfg.webhook.is_some() {
            return Err(missing("webhook", "the `[webhook]` section"));
        }
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests;
