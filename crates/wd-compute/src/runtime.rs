//! What a started [`Agent`](crate::Agent) runs, in one value: listener →
//! pipeline → coalesce → router → one queue per destination (its retry
//! loop) → destination, started, watched and stopped cleanly. Private: a
//! driver reaches it through `Agent` and its builder.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use wd_events::ListenerConfig;
use wd_notify::{
    Coalesce, CoalesceConfig, CoalesceStats, Destination, DestinationStatus, Notifier, QueueConfig,
    Router, RouterDefaults, SpoolStats,
};

use crate::directory::InstanceDirectory;
use crate::error::{Error, Result};
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, PipelineStats};
use crate::pulse::PulseHook;

/// Everything an agent runs with besides its destinations: what
/// [`AgentSettings`](crate::AgentSettings) (the file) becomes once checked,
/// or what an [`AgentBuilder`](crate::AgentBuilder) sets.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The compute host's name, carried in every notification.
    pub host: String,
    /// Where and how to listen to libvirt.
    pub listener: ListenerConfig,
    /// The spool root: each destination's durable queue lives in
    /// `<spool_dir>/dest/<kind>-<hash>/`, beside the episode ledger. `None`
    /// keeps the queues in memory: refused notifications are still retried
    /// while the process runs, but nothing survives a crash.
    pub spool_dir: Option<PathBuf>,
    /// Each destination's queue settings (bounds, retry delays, attempt
    /// timeout), unless the destination sets its own.
    pub queue: QueueConfig,
    /// Storm control.
    pub coalesce: CoalesceConfig,
    /// How long a graceful shutdown keeps delivering before it leaves the
    /// rest in the queues.
    pub shutdown_grace: Duration,
    /// Where the pipeline reports readiness and liveness (for systemd's
    /// `Type=notify` and `WatchdogSec=`), if anywhere.
    pub pulse: Option<PulseHook>,
    /// How often the delivery health line is logged. Default 5 min.
    pub health_interval: Duration,
    /// Test hook: the pipeline task panics after this long, to show that a
    /// core task's death is reported by
    /// [`RunningAgent::failed`](crate::RunningAgent::failed).
    #[doc(hidden)]
    pub fault_pipeline_panic_after: Option<Duration>,
    /// Test hook: every queue makes its file-system calls through this
    /// (a [`FaultyFs`](wd_notify::fault::FaultyFs)), to fail the disk of a
    /// running agent.
    #[doc(hidden)]
    pub fault_spool_fs: Option<Arc<dyn wd_notify::fault::SpoolFs>>,
    /// Where to report metrics and health; `None` reports nothing.
    pub metrics: Option<Metrics>,
}

impl AgentConfig {
    /// Defaults for compute host `host`: `qemu:///system`, no spool.
    pub fn new(host: impl Into<String>) -> Self {
        AgentConfig {
            host: host.into(),
            listener: ListenerConfig::default(),
            spool_dir: None,
            queue: QueueConfig::default(),
            coalesce: CoalesceConfig::default(),
            shutdown_grace: Duration::from_secs(5),
            pulse: None,
            health_interval: Duration::from_secs(300),
            fault_pipeline_panic_after: None,
            fault_spool_fs: None,
            metrics: None,
        }
    }

    /// Sets the spool root.
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

/// What a stopped agent did.
#[derive(Debug, Clone)]
pub struct AgentReport {
    /// The pipeline's counters.
    pub pipeline: PipelineStats,
    /// Storm control's counters.
    pub coalesce: CoalesceStats,
    /// Each destination's final queue counters.
    pub destinations: Vec<(String, SpoolStats)>,
}

impl AgentReport {
    /// Entries left waiting in all queues.
    pub fn pending(&self) -> u64 {
        self.destinations.iter().map(|(_, s)| s.pending).sum()
    }
}

/// A running watchdog runtime. Stop it with [`Runtime::shutdown`]; watch it
/// with [`Runtime::failed`].
pub(crate) struct Runtime {
    task: Option<JoinHandle<PipelineStats>>,
    finished: Option<PipelineStats>,
    stop: oneshot::Sender<()>,
    coalesce: Arc<Coalesce<Arc<dyn Notifier>>>,
    router: Arc<Router>,
    health: JoinHandle<()>,
    /// The spool probe (with metrics and a spool only).
    probe: Option<JoinHandle<()>>,
    grace: Duration,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("router", &self.router)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// Opens one queue per destination (delivering what earlier runs left),
    /// and starts listening.
    /// Must be called inside a Tokio runtime.
    ///
    /// # Errors
    ///
    /// A queue or the ledger cannot be opened, or the libvirt event loop
    /// cannot be started.
    pub fn start<D: Into<Destination>>(
        config: AgentConfig,
        directory: Arc<dyn InstanceDirectory>,
        destinations: Vec<D>,
    ) -> Result<Runtime> {
        let items = wd_events::listen(config.listener.clone()).map_err(Error::Listen)?;
        Self::start_with(config, directory, destinations, items)
    }

    /// [`Runtime::start`] over any stream of listener items (for tests, or a
    /// driver that runs its own listener).
    ///
    /// # Errors
    ///
    /// A queue or the ledger cannot be opened.
    pub fn start_with<S, D>(
        config: AgentConfig,
        directory: Arc<dyn InstanceDirectory>,
        destinations: Vec<D>,
        items: S,
    ) -> Result<Runtime>
    where
        S: futures::Stream<Item = wd_events::Item> + Send + 'static,
        D: Into<Destination>,
    {
        let destinations: Vec<Destination> = destinations.into_iter().map(Into::into).collect();
        let defaults = RouterDefaults {
            queue: config.queue.clone(),
        };
        let root = config.spool_dir.as_deref();
        let router = Arc::new(
            match &config.fault_spool_fs {
                Some(fs) => Router::open_with_fs(fs.clone(), root, destinations, &defaults),
                None => Router::open(root, destinations, &defaults),
            }
            .map_err(Error::Spool)?,
        );
        let ledger = match &config.spool_dir {
            Some(dir) => Ledger::open(dir.join("episodes.json"))?,
            None => Ledger::in_memory(),
        };
        let delivery: Arc<dyn Notifier> = router.clone();
        let coalesce = Arc::new(Coalesce::new(delivery, config.coalesce.clone()));
        let mut pipeline = Pipeline::new(config.host.clone(), directory, coalesce.clone(), ledger);
        if let Some(hook) = config.pulse.clone() {
            pipeline = pipeline.with_pulse(hook);
        }
        let mut alive = None;
        let mut probe = None;
        if let (Some(m), Some(dir)) = (&config.metrics, &config.spool_dir) {
            probe = Some(tokio::spawn(crate::probe::run(
                dir.clone(),
                m.clone(),
                PROBE_EVERY,
            )));
        }
        if let Some(m) = &config.metrics {
            pipeline = pipeline.with_metrics(m.clone());
            alive = Some(m.worker("pipeline"));
            m.watch(&router);
        }
        let (stop, stopped) = oneshot::channel::<()>();
        let run = pipeline.run(items, async move {
            let _ = stopped.await;
        });
        let fault = config.fault_pipeline_panic_after;
        let task = tokio::spawn(async move {
            // Dropped when the pipeline ends or panics: the agent turns unhealthy.
            let _alive = alive;
            let Some(after) = fault else {
                return run.await;
            };
            tokio::pin!(run);
            tokio::select! {
                stats = &mut run => stats,
                () = tokio::time::sleep(after) => panic!("injected test fault in the pipeline task"),
            }
        });
        let health = tokio::spawn(health(
            router.clone(),
            config.health_interval.max(Duration::from_secs(1)),
        ));
        Ok(Runtime {
            task: Some(task),
            finished: None,
            stop,
            coalesce,
            router,
            health,
            probe,
            grace: config.shutdown_grace,
        })
    }

    /// Every destination's state now: backlog, drops, deliveries, failures
    /// and last error (for metrics and `wdguard status`).
    pub fn status(&self) -> Vec<DestinationStatus> {
        self.router.status()
    }

    /// The router, for a driver (or a test) that needs more than
    /// [`Runtime::status`].
    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    /// Resolves when a core task has died: the pipeline task ended on its
    /// own (it panicked, or the listener's stream ended) or a queue's writer
    /// thread died. Returns one line saying which. The process should log it
    /// and exit non-zero, so that its service manager restarts it and the
    /// queues replay. Cancel-safe; pending forever once reported.
    pub async fn failed(&mut self) -> String {
        loop {
            let Some(task) = self.task.as_mut() else {
                return std::future::pending().await;
            };
            // Woken by a writer thread's end, not by a timer: enabled
            // before the check, so an end in between is not missed.
            let exited = wd_notify::writer_exits();
            tokio::pin!(exited);
            exited.as_mut().enable();
            if let Some(name) = self.router.dead_writer() {
                return format!("the queue writer of destination {name} died");
            }
            tokio::select! {
                joined = task => {
                    self.task = None;
                    return match joined {
                        Ok(stats) => {
                            self.finished = Some(stats);
                            "the pipeline task ended: the libvirt listener stopped".to_owned()
                        }
                        Err(e) if e.is_panic() => {
                            self.finished = Some(PipelineStats::default());
                            let payload = e.into_panic();
                            let what = payload
                                .downcast_ref::<&str>()
                                .map(|s| (*s).to_owned())
                                .or_else(|| payload.downcast_ref::<String>().cloned())
                                .unwrap_or_default();
                            format!("the pipeline task panicked: {what}")
                        }
                        Err(e) => {
                            self.finished = Some(PipelineStats::default());
                            format!("the pipeline task failed: {e}")
                        }
                    };
                }
                () = &mut exited => {}
            }
        }
    }

    /// Stops listening, flushes folded repeats, delivers what it can within
    /// the grace period and leaves the rest in the queues.
    pub async fn shutdown(mut self) -> AgentReport {
        let _ = self.stop.send(());
        let pipeline = match self.task.take() {
            Some(task) => task.await.unwrap_or_else(|e| {
                tracing::error!(error = %e, "the watchdog pipeline task failed; its counters are lost");
                PipelineStats::default()
            }),
            None => self.finished.take().unwrap_or_default(),
        };
        if let Err(e) = self.coalesce.shutdown().await {
            tracing::warn!(error = %e, "could not hand over folded repeats at shutdown");
        }
        let coalesce = self.coalesce.stats();
        self.health.abort();
        if let Some(p) = &self.probe {
            p.abort();
        }
        let destinations = self.router.shutdown(self.grace).await;
        AgentReport {
            pipeline,
            coalesce,
            destinations,
        }
    }
}

/// How often the spool's filesystem is probed for writes.
const PROBE_EVERY: Duration = Duration::from_secs(5);

/// Logs one line with every destination's backlog and last error, every
/// `every` (the first after one interval).
async fn health(router: Arc<Router>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        tracing::info!(destinations = %router.health_line(), "delivery health");
    }
}
