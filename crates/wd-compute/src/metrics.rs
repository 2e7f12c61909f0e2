//! Observability: Prometheus metrics, health and a status snapshot.
//!
//! One [`Metrics`] value (cheap to clone) is shared by everything that
//! reports, so no registry is threaded through the other crates:
//!
//! - the [`Pipeline`](crate::Pipeline) feeds the listener's view: firings by
//!   action, catch-up firings, libvirt connected or not, reconnects;
//! - the delivery figures are the router's: [`Metrics::watch`] reads
//!   [`Router::status`] at each scrape and status request (queue gauges,
//!   each destination's deliveries, failures and last error), and counts
//!   each attempt's outcome and duration as the router reports it
//!   ([`DeliveryObserver`]);
//! - long-running tasks hold a [`WorkerGuard`]; a task that ends or panics
//!   drops its guard and the agent becomes unhealthy.
//!
//! Labels never carry instance or project ids: `destination` is the
//! destination's kind ([`DestinationKind`]), so the series count stays
//! fixed however many projects a host serves.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::Serialize;
use wd_notify::{DeliveryObserver, DestinationKind, DestinationStatus, FailureKind, Router};

/// The `Content-Type` of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A health check: `Some(reason)` when something is wrong.
pub type HealthSource = Box<dyn Fn() -> Option<String> + Send + Sync>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    destination: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DestinationLabels {
    destination: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: String,
}

#[derive(Debug)]
struct Libvirt {
    connected: bool,
    since: Instant,
    ever_connected: bool,
}

struct State {
    libvirt: Mutex<Libvirt>,
    workers: Mutex<BTreeMap<String, bool>>,
    /// The routers whose destinations are reported (one, in an agent).
    routers: Mutex<Vec<Weak<Router>>>,
    health_sources: Mutex<Vec<HealthSource>>,
    /// The last failed write per target (`queue`, `ledger`, `spool`), until
    /// writes there succeed again.
    write_error: Mutex<BTreeMap<String, String>>,
}

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("State").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl State {
    /// Every watched router's destinations now.
    fn destinations(&self) -> Vec<DestinationStatus> {
        lock(&self.routers)
            .iter()
            .filter_map(Weak::upgrade)
            .flat_map(|r| r.status())
            .collect()
    }
}

/// Samples the queue sources at each scrape.
#[derive(Debug)]
struct QueueCollector(Arc<State>);

/// Queue figures summed per destination kind.
#[derive(Default)]
struct Totals {
    entries: i64,
    oldest: f64,
    dropped: u64,
}

impl Collector for QueueCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        let mut per: BTreeMap<&'static str, Totals> = BTreeMap::new();
        for s in self.0.destinations() {
            let t = per.entry(s.kind.as_str()).or_default();
            t.entries = t
                .entries
                .saturating_add(i64::try_from(s.backlog).unwrap_or(i64::MAX));
            t.oldest = t.oldest.max(s.oldest.map_or(0.0, |d| d.as_secs_f64()));
            t.dropped = t
                .dropped
                .saturating_add(s.dropped_full)
                .saturating_add(s.dropped_permanent);
        }
        let labels = |d: &str| DestinationLabels {
            destination: d.to_owned(),
        };
        let gauge = ConstGauge::new(0i64);
        let mut family = encoder.encode_descriptor(
            "wd_queue_entries",
            "Entries waiting for delivery, per destination kind",
            None,
            gauge.metric_type(),
        )?;
        for (d, t) in &per {
            ConstGauge::new(t.entries).encode(family.encode_family(&labels(d))?)?;
        }
        let mut family = encoder.encode_descriptor(
            "wd_queue_oldest_age_seconds",
            "How long the oldest waiting entry has waited (0 when none)",
            None,
            ConstGauge::new(0f64).metric_type(),
        )?;
        for (d, t) in &per {
            ConstGauge::new(t.oldest).encode(family.encode_family(&labels(d))?)?;
        }
        let mut family = encoder.encode_descriptor(
            "wd_queue_dropped",
            "Entries dropped from a queue (full, or refused for good)",
            None,
            ConstCounter::new(0u64).metric_type(),
        )?;
        for (d, t) in &per {
            ConstCounter::new(t.dropped).encode(family.encode_family(&labels(d))?)?;
        }
        Ok(())
    }
}

struct Inner {
    registry: Registry,
    firings: Family<ActionLabels, Counter>,
    catchup: Counter,
    notifications: Family<OutcomeLabels, Counter>,
    duration: Family<DestinationLabels, Histogram>,
    connected: Gauge,
    reconnects: Counter,
    write_failures: Family<TargetLabels, Counter>,
    held: Gauge,
    state: Arc<State>,
}

/// The agent's metrics, health and status; clone it freely (it is shared).
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn delivery_buckets() -> impl Iterator<Item = f64> {
    // 5 ms to about 19 s: a webhook answers in milliseconds, a timeout
    // takes the configured request timeout (15 s by default).
    exponential_buckets(0.005, 2.5, 10)
}

impl Metrics {
    /// A fresh set of metrics, libvirt not yet connected, no workers.
    pub fn new() -> Self {
        let state = Arc::new(State {
            libvirt: Mutex::new(Libvirt {
                connected: false,
                since: Instant::now(),
                ever_connected: false,
            }),
            workers: Mutex::new(BTreeMap::new()),
            routers: Mutex::new(Vec::new()),
            health_sources: Mutex::new(Vec::new()),
            write_error: Mutex::new(BTreeMap::new()),
        });
        let mut registry = Registry::default();
        let firings = Family::<ActionLabels, Counter>::default();
        registry.register(
            "wd_watchdog_firings",
            "Guest watchdog firings seen (live or found by catch-up), by action",
            firings.clone(),
        );
        let catchup = Counter::default();
        registry.register(
            "wd_catchup_firings",
            "Firings found by a catch-up listing (after a reconnect or a restart), not seen live",
            catchup.clone(),
        );
        let notifications = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "wd_notifications",
            "Delivery attempts by destination kind and outcome (delivered, failed, rejected, certificate)",
            notifications.clone(),
        );
        let duration = Family::<DestinationLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(delivery_buckets())) as fn() -> Histogram,
        );
        registry.register_with_unit(
            "wd_delivery_duration",
            "Time one delivery attempt took, by destination kind",
            prometheus_client::registry::Unit::Seconds,
            duration.clone(),
        );
        let connected = Gauge::default();
        registry.register(
            "wd_libvirt_connected",
            "1 while the libvirt connection is up, else 0",
            connected.clone(),
        );
        let reconnects = Counter::default();
        registry.register(
            "wd_libvirt_reconnects",
            "Connections to libvirt made after the first one",
            reconnects.clone(),
        );
        let write_failures = Family::<TargetLabels, Counter>::default();
        for target in ["queue", "ledger"] {
            drop(write_failures.get_or_create(&TargetLabels {
                target: target.to_owned(),
            }));
        }
        registry.register(
            "wd_write_failures",
            "Writes of a queue or of the episode ledger that failed (disk full, I/O error, read-only), by target",
            write_failures.clone(),
        );
        let held = Gauge::default();
        registry.register(
            "wd_firings_held",
            "Firings held in memory because a queue write failed; retried until written",
            held.clone(),
        );
        let build = Family::<VersionLabels, Gauge>::default();
        build
            .get_or_create(&VersionLabels {
                version: env!("CARGO_PKG_VERSION").to_owned(),
            })
            .set(1);
        registry.register("wd_build_info", "The agent's version (value 1)", build);
        registry.register_collector(Box::new(QueueCollector(state.clone())));
        registry.register_collector(Box::new(stages::StageCollector));
        // The family is registered with the histogram constructor type.
        Metrics {
            inner: Arc::new(Inner {
                registry,
                firings,
                catchup,
                notifications,
                duration,
                connected,
                reconnects,
                write_failures,
                held,
                state,
            }),
        }
    }

    /// The metrics in the OpenMetrics text format ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail; a collector error would only cut
        // the output short.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.inner.registry) {
            tracing::warn!(error = %e, "cannot encode the metrics");
        }
        out
    }

    /// Counts one watchdog firing. `action` is libvirt's spelling; unknown
    /// values count as `unknown`, so the label set stays bounded.
    pub fn firing(&self, action: &str, caught_up: bool) {
        const KNOWN: [&str; 7] = [
            "none",
            "pause",
            "reset",
            "poweroff",
            "shutdown",
            "debug",
            "inject-nmi",
        ];
        let action = if KNOWN.contains(&action) {
            action
        } else {
            "unknown"
        };
        self.inner
            .firings
            .get_or_create(&ActionLabels {
                action: action.to_owned(),
            })
            .inc();
        if caught_up {
            self.inner.catchup.inc();
        }
    }

    /// Records that connection `generation` to libvirt is up.
    pub fn libvirt_connected(&self, generation: u64) {
        let mut l = lock(&self.inner.state.libvirt);
        if !l.connected {
            l.since = Instant::now();
        }
        l.connected = true;
        l.ever_connected = true;
        self.inner.connected.set(1);
        if generation > 1 {
            self.inner.reconnects.inc();
        }
    }

    /// Records that libvirt is unreachable (lost, or an attempt failed).
    pub fn libvirt_disconnected(&self) {
        let mut l = lock(&self.inner.state.libvirt);
        if l.connected {
            l.since = Instant::now();
        }
        l.connected = false;
        self.inner.connected.set(0);
    }

    /// Reports `router`'s destinations from now on: their queues and
    /// records at each scrape and status request, each delivery attempt's
    /// outcome and duration as it happens, and a dead queue writer as
    /// unhealthy. The router is not kept alive by this.
    pub fn watch(&self, router: &Arc<Router>) {
        lock(&self.inner.state.routers).push(Arc::downgrade(router));
        router.observe(Arc::new(self.clone()));
        let weak = Arc::downgrade(router);
        self.add_health_source(Box::new(move || {
            weak.upgrade()
                .and_then(|r| r.dead_writer())
                .map(|name| format!("the queue writer of destination {name} died"))
        }));
    }

    /// Registers a health check, asked at every `/healthz`: `Some(reason)`
    /// makes the agent unhealthy.
    pub fn add_health_source(&self, source: HealthSource) {
        lock(&self.inner.state.health_sources).push(source);
    }

    /// Marks worker `name` alive until the returned guard is dropped (when
    /// its task ends or panics).
    pub fn worker(&self, name: impl Into<String>) -> WorkerGuard {
        let name = name.into();
        lock(&self.inner.state.workers).insert(name.clone(), true);
        WorkerGuard {
            state: self.inner.state.clone(),
            name,
        }
    }

    /// `Ok` when libvirt is connected and every worker is alive; otherwise
    /// one line saying why not, e.g. `libvirt disconnected for 42 s`.
    pub fn health(&self) -> Result<(), String> {
        let dead: Vec<String> = lock(&self.inner.state.workers)
            .iter()
            .filter(|(_, alive)| !**alive)
            .map(|(n, _)| n.clone())
            .collect();
        if !dead.is_empty() {
            return Err(format!("worker stopped: {}", dead.join(", ")));
        }
        if let Some(reason) = lock(&self.inner.state.write_error).values().next() {
            return Err(reason.clone());
        }
        if let Some(reason) = lock(&self.inner.state.health_sources)
            .iter()
            .find_map(|s| s())
        {
            return Err(reason);
        }
        // Notifications wait (nothing is dropped) until the operator fixes
        // the configuration: say so, by destination and cause. A project's
        // own endpoint is the tenant's to fix: a tenant must not be able to
        // make the agent unhealthy. A removed destination's backlog is shown
        // by `status`, not here: it is no longer delivered.
        if let Some(d) = self.inner.state.destinations().into_iter().find(|d| {
            d.kind != DestinationKind::Project
                && d.state == wd_notify::DestinationState::Active
                && d.backlog > 0
                && d.last_failure
                    .is_some_and(|(_, kind)| kind.needs_operator())
        }) {
            let kind = d.last_failure.map(|(_, k)| k.as_str()).unwrap_or_default();
            let why = d.last_error.as_deref().unwrap_or("");
            return Err(format!("destination {} refused: {kind}: {why}", d.name));
        }
        let l = lock(&self.inner.state.libvirt);
        if !l.connected {
            let secs = l.since.elapsed().as_secs();
            return Err(if l.ever_connected {
                format!("libvirt disconnected for {secs} s")
            } else {
                format!("libvirt not connected yet ({secs} s since start)")
            });
        }
        Ok(())
    }

    /// Everything `wdguard status` shows, at this moment.
    pub fn status(&self) -> Status {
        let (connected, for_secs) = {
            let l = lock(&self.inner.state.libvirt);
            (l.connected, l.since.elapsed().as_secs())
        };
        let mut destinations = self.inner.state.destinations();
        destinations.sort_by(|a, b| a.name.cmp(&b.name));
        Status {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            health: match self.health() {
                Ok(()) => "ok".to_owned(),
                Err(why) => why,
            },
            libvirt_connected: connected,
            libvirt_state_secs: for_secs,
            destinations,
        }
    }
}

impl DeliveryObserver for Metrics {
    fn opened(&self, kind: DestinationKind) {
        // Series exist from the start, so that rate() sees the first delivery.
        let d = kind.as_str().to_owned();
        drop(self.inner.duration.get_or_create(&DestinationLabels {
            destination: d.clone(),
        }));
        for outcome in ["delivered", "failed"] {
            drop(self.inner.notifications.get_or_create(&OutcomeLabels {
                destination: d.clone(),
                outcome: outcome.to_owned(),
            }));
        }
    }

    fn attempt(&self, kind: DestinationKind, elapsed: Duration, outcome: Result<(), FailureKind>) {
        let d = kind.as_str().to_owned();
        self.inner
            .duration
            .get_or_create(&DestinationLabels {
                destination: d.clone(),
            })
            .observe(elapsed.as_secs_f64());
        let outcome = match outcome {
            Ok(()) => "delivered",
            Err(kind) => kind.as_str(),
        };
        self.inner
            .notifications
            .get_or_create(&OutcomeLabels {
                destination: d,
                outcome: outcome.to_owned(),
            })
            .inc();
    }
}

/// A worker's liveness: dropping it (the task ended or panicked) marks the
/// worker stopped, and [`Metrics::health`] reports it.
#[derive(Debug)]
pub struct WorkerGuard {
    state: Arc<State>,
    name: String,
}

impl Drop for WorkerGuard {
    fn drop(&mut self) {
        lock(&self.state.workers).insert(std::mem::take(&mut self.name), false);
    }
}

/// The agent's state for `wdguard status` (`GET /status`, JSON).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    /// The agent's version.
    pub version: String,
    /// `ok`, or why `/healthz` answers 503.
    pub health: String,
    /// Whether libvirt is connected.
    pub libvirt_connected: bool,
    /// How long libvirt has been in that state, in seconds.
    pub libvirt_state_secs: u64,
    /// Every destination, removed ones with a backlog included.
    #[serde(serialize_with = "rows")]
    pub destinations: Vec<DestinationStatus>,
}

/// The destinations as `/status` gives them: one object each, with `name`,
/// `dir` (its queue directory), `destination` (its kind), `state`, `queue` (`entries`, `bytes`,
/// `oldest_age_secs`, `dropped`), `delivered`, `failed` and `last_error`
/// (`at`, `kind`, `message`, or null).
fn rows<S: serde::Serializer>(all: &[DestinationStatus], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut seq = s.serialize_seq(Some(all.len()))?;
    for d in all {
        let last_error = match (&d.last_error, d.last_failure) {
            (Some(message), Some((at, kind))) => serde_json::json!({
                "at": at.format(&time::format_description::well_known::Rfc3339).ok(),
                "kind": kind.as_str(),
                "message": message,
            }),
            (Some(message), None) => serde_json::json!({
                "at": null, "kind": "failed", "message": message,
            }),
            (None, _) => serde_json::Value::Null,
        };
        seq.serialize_element(&serde_json::json!({
            "name": d.name,
            "dir": d.dir,
            "destination": d.kind.as_str(),
            "state": d.state.as_str(),
            "queue": {
                "entries": d.backlog,
                "bytes": d.bytes,
                "oldest_age_secs": d.oldest.map(|o| o.as_secs_f64()),
                "dropped": d.dropped_full.saturating_add(d.dropped_permanent),
            },
            "delivered": d.delivered,
            "failed": d.failed,
            "last_error": last_error,
        }))?;
    }
    seq.end()
}

mod stages;
mod writes;

#[cfg(test)]
mod tests;
