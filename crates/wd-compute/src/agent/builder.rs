//! [`AgentBuilder`]: an [`Agent`] from parts a driver brings itself (its own
//! destinations, owner directory or event stream) rather than from a
//! configuration file.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use wd_events::ListenerConfig;
use wd_notify::{CoalesceConfig, Destination, QueueConfig};

use super::Agent;
use crate::{AgentConfig, DirectoryConfig, InstanceDirectory, Metrics};

/// The listener items an agent runs on, when they do not come from its own
/// libvirt listener.
pub(crate) type Events = Pin<Box<dyn Stream<Item = wd_events::Item> + Send>>;

/// Builds an [`Agent`] from parts; [`Agent::builder`] starts one.
///
/// ```no_run
/// # async fn driver() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use wd_notify::{Destination, DestinationKind, LogNotifier, Scope};
///
/// let agent = wd_compute::Agent::builder("compute-1")
///     .spool_dir("/var/lib/wd/spool")
///     .destination(Destination::new(
///         "log",
///         DestinationKind::Log,
///         Scope::All,
///         Arc::new(LogNotifier::new()),
///     ))
///     .build();
/// let running = agent.start().await?;
/// // ... until the driver stops:
/// let report = running.shutdown().await;
/// println!("{} firings", report.pipeline.firings);
/// # Ok(()) }
/// ```
pub struct AgentBuilder {
    config: AgentConfig,
    directory: DirectoryConfig,
    owners: Option<Arc<dyn InstanceDirectory>>,
    destinations: Vec<Destination>,
    events: Option<Events>,
    metrics: Option<Metrics>,
}

impl std::fmt::Debug for AgentBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.destinations.iter().map(|d| d.name.as_str()).collect();
        f.debug_struct("AgentBuilder")
            .field("config", &self.config)
            .field("destinations", &names)
            .field("own_events", &self.events.is_some())
            .finish_non_exhaustive()
    }
}

impl AgentBuilder {
    pub(super) fn new(host: String) -> Self {
        AgentBuilder {
            config: AgentConfig::new(host),
            directory: DirectoryConfig::default(),
            owners: None,
            destinations: Vec::new(),
            events: None,
            metrics: None,
        }
    }

    /// Adds a destination, with its own queue.
    #[must_use]
    pub fn destination(mut self, destination: impl Into<Destination>) -> Self {
        self.destinations.push(destination.into());
        self
    }

    /// Adds destinations, each with its own queue.
    #[must_use]
    pub fn destinations<D: Into<Destination>>(mut self, all: impl IntoIterator<Item = D>) -> Self {
        self.destinations.extend(all.into_iter().map(Into::into));
        self
    }

    /// Where and how to listen to libvirt [default `qemu:///system`,
    /// read-only].
    #[must_use]
    pub fn listener(mut self, listener: ListenerConfig) -> Self {
        self.config.listener = listener;
        self
    }

    /// Runs on these listener items instead of its own libvirt listener,
    /// for a driver that already listens (or a test). The agent then does
    /// not probe libvirt at start.
    #[must_use]
    pub fn events<S>(mut self, items: S) -> Self
    where
        S: Stream<Item = wd_events::Item> + Send + 'static,
    {
        self.events = Some(Box::pin(items));
        self
    }

    /// Maps domains to owners with `owners` instead of reading Nova's
    /// metadata from libvirt ([`crate::NovaDirectory`]).
    #[must_use]
    pub fn directory(mut self, owners: Arc<dyn InstanceDirectory>) -> Self {
        self.owners = Some(owners);
        self
    }

    /// The bounds of the default owner cache.
    #[must_use]
    pub fn directory_config(mut self, config: DirectoryConfig) -> Self {
        self.directory = config;
        self
    }

    /// The spool root: durable queues and the episode ledger [default: in
    /// memory].
    #[must_use]
    pub fn spool_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.spool_dir = Some(dir.into());
        self
    }

    /// Each destination's queue settings, unless it sets its own.
    #[must_use]
    pub fn queue(mut self, queue: QueueConfig) -> Self {
        self.config.queue = queue;
        self
    }

    /// Storm control.
    #[must_use]
    pub fn coalesce(mut self, coalesce: CoalesceConfig) -> Self {
        self.config.coalesce = coalesce;
        self
    }

    /// How long a graceful shutdown keeps delivering [default 5 s].
    #[must_use]
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.config.shutdown_grace = grace;
        self
    }

    /// How often the delivery health line is logged [default 5 min].
    #[must_use]
    pub fn health_interval(mut self, every: Duration) -> Self {
        self.config.health_interval = every;
        self
    }

    /// Reports to existing `metrics` [default: its own].
    #[must_use]
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Test hook: the pipeline task panics after `after`, to show that a
    /// core task's death is reported by [`crate::RunningAgent::failed`].
    #[doc(hidden)]
    #[must_use]
    pub fn fault_pipeline_panic_after(mut self, after: Duration) -> Self {
        self.config.fault_pipeline_panic_after = Some(after);
        self
    }

    /// The agent, nothing started.
    pub fn build(self) -> Agent {
        let metrics = self.metrics.unwrap_or_default();
        let mut config = self.config;
        config.metrics = Some(metrics.clone());
        Agent {
            runtime: config,
            directory: self.directory,
            owners: self.owners,
            events: self.events,
            destinations: self.destinations,
            wait: false,
            metrics,
            name: "watchdog agent".into(),
        }
    }
}
