//! Observability: Prometheus metrics, health and a status snapshot.
//!
//! One [`Metrics`] value (cheap to clone) is shared by everything that
//! reports, so no registry is threaded through the other crates:
//!
//! - the [`Pipeline`](crate::Pipeline) feeds the listener's view: firings by
//!   action, catch-up firings, libvirt connected or not, reconnects;
//! - each destination's notifier is wrapped in a [`Metered`] notifier, which
//!   counts outcomes (`delivered`, `failed`, `rejected`, `certificate`),
//!   times each delivery attempt and keeps the destination's last error;
//! - queue gauges are sampled at scrape time from [`QueueSource`]s (status
//!   snapshots of the delivery queues), through a custom collector;
//! - long-running tasks hold a [`WorkerGuard`]; a task that ends or panics
//!   drops its guard and the agent becomes unhealthy.
//!
//! Labels never carry instance or project ids: `destination` is the kind of
//! destination ([`Destination`]), so the series count stays fixed however
//! many projects a host serves.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::Serialize;
use wd_notify::{FailureKind, Notification, Notifier, NotifyError};

/// The `Content-Type` of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The kind of a delivery destination: the `destination` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Destination {
    /// An operator webhook: receives every notification.
    Operator,
    /// A project's own webhook endpoint.
    Project,
    /// The OpenStack message bus (AMQP).
    Bus,
    /// The agent's own log.
    Log,
}

impl Destination {
    /// The label value: `operator`, `project`, `bus` or `log`.
    pub fn as_str(self) -> &'static str {
        match self {
            Destination::Operator => "operator",
            Destination::Project => "project",
            Destination::Bus => "bus",
            Destination::Log => "log",
        }
    }
}

impl From<wd_notify::DestinationKind> for Destination {
    fn from(kind: wd_notify::DestinationKind) -> Self {
        match kind {
            wd_notify::DestinationKind::Operator => Destination::Operator,
            wd_notify::DestinationKind::Project => Destination::Project,
            wd_notify::DestinationKind::Bus => Destination::Bus,
            wd_notify::DestinationKind::Log => Destination::Log,
            // A kind added later: counted with the operator's channels
            // until it gets its own label.
            _ => Destination::Operator,
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One delivery queue as seen at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueSnapshot {
    /// The queue's name (e.g. `webhook operator`); shown by `wdguard status`,
    /// never used as a metric label.
    pub name: String,
    /// Its destination kind: the metric label.
    pub destination: Destination,
    /// Entries waiting.
    pub entries: u64,
    /// Bytes waiting, if known.
    pub bytes: Option<u64>,
    /// How long the oldest waiting entry has waited, if known.
    #[serde(with = "opt_secs")]
    pub oldest_age: Option<Duration>,
    /// Entries dropped since start (queue full, or refused for good).
    pub dropped: u64,
}

/// Something that can report its queues' state at scrape time.
pub type QueueSource = Box<dyn Fn() -> Vec<QueueSnapshot> + Send + Sync>;

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
struct VersionLabels {
    version: String,
}

/// The last failure at one destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastError {
    /// When it happened.
    #[serde(with = "time::serde::rfc3339")]
    pub at: time::OffsetDateTime,
    /// Its kind: `failed`, `rejected` or `certificate`.
    pub kind: String,
    /// What failed, on one line; URLs redacted, never a secret.
    pub message: String,
}

/// One destination's delivery record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DeliveryRecord {
    /// Deliveries that succeeded.
    pub delivered: u64,
    /// Attempts that failed, whatever the kind.
    pub failed: u64,
    /// The last failure, if any.
    pub last_error: Option<LastError>,
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
    deliveries: Mutex<BTreeMap<String, (Destination, DeliveryRecord)>>,
    sources: Mutex<Vec<QueueSource>>,
    health_sources: Mutex<Vec<HealthSource>>,
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
    fn snapshots(&self) -> Vec<QueueSnapshot> {
        lock(&self.sources).iter().flat_map(|s| s()).collect()
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
        let mut per: BTreeMap<Destination, Totals> = BTreeMap::new();
        for s in self.0.snapshots() {
            let t = per.entry(s.destination).or_default();
            t.entries = t
                .entries
                .saturating_add(i64::try_from(s.entries).unwrap_or(i64::MAX));
            t.oldest = t.oldest.max(s.oldest_age.map_or(0.0, |d| d.as_secs_f64()));
            t.dropped = t.dropped.saturating_add(s.dropped);
        }
        let labels = |d: Destination| DestinationLabels {
            destination: d.as_str().to_owned(),
        };
        let gauge = ConstGauge::new(0i64);
        let mut family = encoder.encode_descriptor(
            "wd_queue_entries",
            "Entries waiting for delivery, per destination kind",
            None,
            gauge.metric_type(),
        )?;
        for (d, t) in &per {
            ConstGauge::new(t.entries).encode(family.encode_family(&labels(*d))?)?;
        }
        let mut family = encoder.encode_descriptor(
            "wd_queue_oldest_age_seconds",
            "How long the oldest waiting entry has waited (0 when none)",
            None,
            ConstGauge::new(0f64).metric_type(),
        )?;
        for (d, t) in &per {
            ConstGauge::new(t.oldest).encode(family.encode_family(&labels(*d))?)?;
        }
        let mut family = encoder.encode_descriptor(
            "wd_queue_dropped",
            "Entries dropped from a queue (full, or refused for good)",
            None,
            ConstCounter::new(0u64).metric_type(),
        )?;
        for (d, t) in &per {
            ConstCounter::new(t.dropped).encode(family.encode_family(&labels(*d))?)?;
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
            deliveries: Mutex::new(BTreeMap::new()),
            sources: Mutex::new(Vec::new()),
            health_sources: Mutex::new(Vec::new()),
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

    /// Registers a source of queue snapshots, sampled at every scrape and
    /// status request. Sources are kept for the life of the metrics.
    pub fn add_queue_source(&self, source: QueueSource) {
        lock(&self.inner.state.sources).push(source);
    }

    /// Registers a health check, asked at every `/healthz`: `Some(reason)`
    /// makes the agent unhealthy (e.g. a queue writer thread died).
    pub fn add_health_source(&self, source: HealthSource) {
        lock(&self.inner.state.health_sources).push(source);
    }

    /// Replaces every queue source (after the delivery stack is rebuilt).
    pub fn set_queue_sources(&self, sources: Vec<QueueSource>) {
        *lock(&self.inner.state.sources) = sources;
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

    /// Wraps `inner`, the notifier of destination `name` of kind
    /// `destination`, so that its outcomes and durations are counted.
    pub fn meter<N: Notifier>(
        &self,
        name: impl Into<String>,
        destination: Destination,
        inner: N,
    ) -> Metered<N> {
        let name = name.into();
        // Series exist from the start, so that rate() sees the first delivery.
        let d = destination.as_str().to_owned();
        drop(self.inner.duration.get_or_create(&DestinationLabels {
            destination: d.clone(),
        }));
        for outcome in ["delivered", "failed"] {
            drop(self.inner.notifications.get_or_create(&OutcomeLabels {
                destination: d.clone(),
                outcome: outcome.to_owned(),
            }));
        }
        lock(&self.inner.state.deliveries)
            .entry(name.clone())
            .or_insert_with(|| (destination, DeliveryRecord::default()));
        Metered {
            inner,
            metrics: self.clone(),
            name,
            destination,
        }
    }

    fn record(
        &self,
        name: &str,
        destination: Destination,
        elapsed: Duration,
        result: &Result<(), NotifyError>,
    ) {
        let d = destination.as_str().to_owned();
        self.inner
            .duration
            .get_or_create(&DestinationLabels {
                destination: d.clone(),
            })
            .observe(elapsed.as_secs_f64());
        let outcome = match result {
            Ok(()) => "delivered",
            Err(e) => FailureKind::of(e).as_str(),
        };
        self.inner
            .notifications
            .get_or_create(&OutcomeLabels {
                destination: d,
                outcome: outcome.to_owned(),
            })
            .inc();
        let mut deliveries = lock(&self.inner.state.deliveries);
        let (_, rec) = deliveries
            .entry(name.to_owned())
            .or_insert_with(|| (destination, DeliveryRecord::default()));
        match result {
            Ok(()) => rec.delivered = rec.delivered.saturating_add(1),
            Err(e) => {
                rec.failed = rec.failed.saturating_add(1);
                rec.last_error = Some(LastError {
                    at: time::OffsetDateTime::now_utc(),
                    kind: outcome.to_owned(),
                    message: one_line(e),
                });
            }
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
        if let Some(reason) = lock(&self.inner.state.health_sources)
            .iter()
            .find_map(|s| s())
        {
            return Err(reason);
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
        let mut destinations: BTreeMap<String, DestinationStatus> = BTreeMap::new();
        for q in self.inner.state.snapshots() {
            destinations.insert(
                q.name.clone(),
                DestinationStatus {
                    name: q.name,
                    destination: q.destination,
                    queue: Some(QueueStatus {
                        entries: q.entries,
                        bytes: q.bytes,
                        oldest_age_secs: q.oldest_age.map(|d| d.as_secs_f64()),
                        dropped: q.dropped,
                    }),
                    record: DeliveryRecord::default(),
                },
            );
        }
        for (name, (destination, rec)) in lock(&self.inner.state.deliveries).iter() {
            destinations
                .entry(name.clone())
                .or_insert_with(|| DestinationStatus {
                    name: name.clone(),
                    destination: *destination,
                    queue: None,
                    record: DeliveryRecord::default(),
                })
                .record = rec.clone();
        }
        Status {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            health: match self.health() {
                Ok(()) => "ok".to_owned(),
                Err(why) => why,
            },
            libvirt_connected: connected,
            libvirt_state_secs: for_secs,
            destinations: destinations.into_values().collect(),
        }
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

/// A notifier whose outcomes and delivery durations are counted under one
/// destination. Made by [`Metrics::meter`].
pub struct Metered<N> {
    inner: N,
    metrics: Metrics,
    name: String,
    destination: Destination,
}

impl<N> fmt::Debug for Metered<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metered")
            .field("name", &self.name)
            .field("destination", &self.destination)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl<N: Notifier> Notifier for Metered<N> {
    async fn notify(&self, n: &Notification) -> Result<(), NotifyError> {
        // An attempt abandoned by a caller's deadline (its future dropped)
        // still counts, as a failure.
        struct Abandoned<'a, N> {
            m: &'a Metered<N>,
            start: Instant,
            armed: bool,
        }
        impl<N> Drop for Abandoned<'_, N> {
            fn drop(&mut self) {
                if self.armed {
                    let err = NotifyError::retryable(format!(
                        "{}: attempt abandoned after {:?} (deadline)",
                        self.m.name,
                        self.start.elapsed()
                    ));
                    self.m.metrics.record(
                        &self.m.name,
                        self.m.destination,
                        self.start.elapsed(),
                        &Err(err),
                    );
                }
            }
        }
        let mut guard = Abandoned {
            m: self,
            start: Instant::now(),
            armed: true,
        };
        let result = self.inner.notify(n).await;
        guard.armed = false;
        let start = guard.start;
        self.metrics
            .record(&self.name, self.destination, start.elapsed(), &result);
        if let Err(e) = &result
            && FailureKind::of(e) == FailureKind::Certificate
        {
            tracing::error!(destination = %self.name, event_id = %n.event_id, error = %one_line(e),
                "tls certificate error: check the destination's ca_file and client certificate");
        }
        result
    }
}

/// An error and its causes on one line, at most a few causes deep.
fn one_line(e: &NotifyError) -> String {
    let mut msg = e.to_string();
    let mut cause = std::error::Error::source(e);
    for _ in 0..6 {
        let Some(c) = cause else { break };
        let text = c.to_string();
        if !msg.ends_with(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        cause = c.source();
    }
    let msg = msg.split_whitespace().collect::<Vec<_>>().join(" ");
    // Bounded: an endpoint's error text ends up in status output.
    match msg.char_indices().nth(500) {
        Some((i, _)) => format!("{}…", &msg[..i]),
        None => msg,
    }
}

/// One queue's figures in a [`Status`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueueStatus {
    /// Entries waiting.
    pub entries: u64,
    /// Bytes waiting, if known.
    pub bytes: Option<u64>,
    /// The oldest waiting entry's age in seconds, if known.
    pub oldest_age_secs: Option<f64>,
    /// Entries dropped since start.
    pub dropped: u64,
}

/// One destination in a [`Status`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DestinationStatus {
    /// The destination's name (e.g. `webhook operator`, `amqp amqp://***@h/`).
    pub name: String,
    /// Its kind.
    pub destination: Destination,
    /// Its queue, if it has one of its own.
    pub queue: Option<QueueStatus>,
    /// Its deliveries.
    #[serde(flatten)]
    pub record: DeliveryRecord,
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
    /// Every destination and queue.
    pub destinations: Vec<DestinationStatus>,
}

mod stages;

mod opt_secs {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests;
