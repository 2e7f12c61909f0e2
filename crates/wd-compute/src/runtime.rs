//! The whole runtime in one value: listener → pipeline → coalesce → spool →
//! fanout → retry → backends, started and stopped cleanly.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use wd_events::ListenerConfig;
use wd_notify::{
    Coalesce, CoalesceConfig, CoalesceStats, Fanout, FanoutConfig, Notifier, Retry, RetryConfig,
    Spool, SpoolConfig, SpoolStats,
};

use crate::directory::InstanceDirectory;
use crate::error::{Error, Result};
use crate::ledger::Ledger;
use crate::pipeline::{Pipeline, PipelineStats};
use crate::pulse::PulseHook;

/// Everything the runtime needs besides its backends.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// The compute host's name, carried in every notification.
    pub host: String,
    /// Where and how to listen to libvirt.
    pub listener: ListenerConfig,
    /// The durable spool's directory (which also holds the episode ledger).
    /// `None` delivers straight from memory: nothing survives a crash.
    pub spool_dir: Option<PathBuf>,
    /// Spool settings.
    pub spool: SpoolConfig,
    /// Storm control.
    pub coalesce: CoalesceConfig,
    /// Retry around each backend.
    pub retry: RetryConfig,
    /// Fan-out settings.
    pub fanout: FanoutConfig,
    /// How long a graceful shutdown keeps delivering before it leaves the
    /// rest in the spool.
    pub shutdown_grace: Duration,
    /// Where the pipeline reports readiness and liveness (for systemd's
    /// `Type=notify` and `WatchdogSec=`), if anywhere.
    pub pulse: Option<PulseHook>,
}

impl RuntimeConfig {
    /// Defaults for compute host `host`: `qemu:///system`, no spool.
    pub fn new(host: impl Into<String>) -> Self {
        RuntimeConfig {
            host: host.into(),
            listener: ListenerConfig::default(),
            spool_dir: None,
            spool: SpoolConfig::default(),
            coalesce: CoalesceConfig::default(),
            retry: RetryConfig::default(),
            fanout: FanoutConfig::default(),
            shutdown_grace: Duration::from_secs(5),
            pulse: None,
        }
    }

    /// Sets the durable spool directory.
    #[must_use]
    pub fn spool_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.spool_dir = Some(dir.into());
        self
    }

    /// Sets the listener configuration.
    #[must_use]
    pub fn listener(mut self, listener: ListenerConfig) -> Self {
        self.listener = listener;
        self
    }
}

/// What a stopped runtime did.
#[derive(Debug, Clone)]
pub struct RuntimeReport {
    /// The pipeline's counters.
    pub pipeline: PipelineStats,
    /// Storm control's counters.
    pub coalesce: CoalesceStats,
    /// The spool's final counters, if there was a spool.
    pub spool: Option<SpoolStats>,
}

enum Delivery {
    Spooled(Arc<Spool>),
    Direct(Arc<Fanout>),
}

impl Delivery {
    fn notifier(&self) -> Arc<dyn Notifier> {
        match self {
            Delivery::Spooled(s) => s.clone(),
            Delivery::Direct(f) => f.clone(),
        }
    }
}

/// A running watchdog runtime. Stop it with [`Runtime::shutdown`].
pub struct Runtime {
    task: JoinHandle<PipelineStats>,
    stop: oneshot::Sender<()>,
    coalesce: Arc<Coalesce<Arc<dyn Notifier>>>,
    delivery: Delivery,
    grace: Duration,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").finish_non_exhaustive()
    }
}

impl Runtime {
    /// Builds the delivery stack over `backends` (name, notifier), opens the
    /// spool (delivering what earlier runs left) and starts listening.
    /// Must be called inside a Tokio runtime.
    ///
    /// # Errors
    ///
    /// The spool or the ledger cannot be opened, or the libvirt event loop
    /// cannot be started.
    pub fn start(
        config: RuntimeConfig,
        directory: Arc<dyn InstanceDirectory>,
        backends: Vec<(String, Arc<dyn Notifier>)>,
    ) -> Result<Runtime> {
        let items = wd_events::listen(config.listener.clone()).map_err(Error::Listen)?;
        Self::start_with(config, directory, backends, items)
    }

    /// [`Runtime::start`] over any stream of listener items (for tests, or a
    /// driver that runs its own listener).
    ///
    /// # Errors
    ///
    /// The spool or the ledger cannot be opened.
    pub fn start_with<S>(
        config: RuntimeConfig,
        directory: Arc<dyn InstanceDirectory>,
        backends: Vec<(String, Arc<dyn Notifier>)>,
        items: S,
    ) -> Result<Runtime>
    where
        S: futures::Stream<Item = wd_events::Item> + Send + 'static,
    {
        let fanout = backends
            .into_iter()
            .fold(Fanout::new(config.fanout.clone()), |f, (name, b)| {
                f.with(name, Retry::new(b, config.retry.clone()))
            });
        let (delivery, ledger) = match &config.spool_dir {
            Some(dir) => {
                let spool = Spool::open(dir, config.spool.clone(), fanout).map_err(Error::Spool)?;
                let ledger = Ledger::open(dir.join("episodes.json"))?;
                (Delivery::Spooled(Arc::new(spool)), ledger)
            }
            None => (Delivery::Direct(Arc::new(fanout)), Ledger::in_memory()),
        };
        let coalesce = Arc::new(Coalesce::new(delivery.notifier(), config.coalesce.clone()));
        let mut pipeline = Pipeline::new(config.host.clone(), directory, coalesce.clone(), ledger);
        if let Some(hook) = config.pulse.clone() {
            pipeline = pipeline.with_pulse(hook);
        }
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(pipeline.run(items, async move {
            let _ = stopped.await;
        }));
        Ok(Runtime {
            task,
            stop,
            coalesce,
            delivery,
            grace: config.shutdown_grace,
        })
    }

    /// Stops listening, flushes folded repeats, delivers what it can within
    /// the grace period and leaves the rest in the spool.
    pub async fn shutdown(self) -> RuntimeReport {
        let _ = self.stop.send(());
        let pipeline = self.task.await.unwrap_or_else(|e| {
            tracing::error!(error = %e, "the watchdog pipeline task failed; its counters are lost");
            PipelineStats::default()
        });
        if let Err(e) = self.coalesce.shutdown().await {
            tracing::warn!(error = %e, "could not hand over folded repeats at shutdown");
        }
        let coalesce = self.coalesce.stats();
        let spool = match &self.delivery {
            Delivery::Spooled(s) => Some(s.shutdown(self.grace).await),
            Delivery::Direct(_) => None,
        };
        RuntimeReport {
            pipeline,
            coalesce,
            spool,
        }
    }
}
