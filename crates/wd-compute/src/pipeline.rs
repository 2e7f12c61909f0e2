//! The runtime pipeline: listener items in, owner notifications out.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt as _, Stream, StreamExt};
use time::OffsetDateTime;
use tokio::time::MissedTickBehavior;
use uuid::Uuid;
use wd_events::{DomainId, Item, Lifecycle, LifecycleEvent, Origin, WatchdogEvent};
use wd_notify::{
    Domain, Instance, Notification, Notifier, NotifyError, Occurrences, SCHEMA_VERSION,
};

use crate::directory::InstanceDirectory;
use crate::ledger::{Entry, Ledger};
use crate::metrics::Metrics;
use crate::pulse::{Pulse, PulseHook};

/// What the pipeline has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PipelineStats {
    /// Watchdog firings received from the listener.
    pub firings: u64,
    /// Notifications handed to the delivery layer and accepted by it.
    pub accepted: u64,
    /// Pause firings not announced again because the ledger shows their
    /// episode was already accepted (after a reconnect or a restart).
    pub already_notified: u64,
    /// Firings whose domain had no known owner (sent to operator channels only).
    pub unknown_owner: u64,
    /// Notifications the delivery layer refused (logged; a pause is retried
    /// at the next catch-up).
    pub delivery_errors: u64,
    /// Catch-ups completed (one per libvirt connection).
    pub catch_ups: u64,
    /// How long the last catch-up took, from the `Connected` item to the
    /// `InitDone` item handled (libvirt's listing, the XML of the domains
    /// that needed it, and this pipeline's handling of each domain).
    pub last_catch_up: Option<Duration>,
}

/// Turns listener items into notifications for the instance owner.
///
/// It keeps the [`InstanceDirectory`] fed from the catch-up listing and from
/// `defined`/`started` lifecycle events, keeps the [`Ledger`] of pause
/// episodes, and hands each new firing to the delivery layer (usually
/// coalesce → spool → fanout → retry → backends).
pub struct Pipeline {
    host: String,
    directory: Arc<dyn InstanceDirectory>,
    notifier: Arc<dyn Notifier>,
    ledger: Ledger,
    listing: Option<Listing>,
    connected_at: Option<Instant>,
    stats: PipelineStats,
    pulse: Option<PulseHook>,
    /// Connected and caught up (for [`Pulse::Tick`]).
    connected: bool,
    metrics: Option<Metrics>,
}

/// What a catch-up listing has shown so far.
#[derive(Debug, Default)]
struct Listing {
    /// Every listed domain.
    all: HashSet<Uuid>,
    /// The listed domains paused by their watchdog.
    paused: HashSet<Uuid>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("host", &self.host)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Pipeline {
    /// A pipeline for compute host `host`.
    pub fn new(
        host: impl Into<String>,
        directory: Arc<dyn InstanceDirectory>,
        notifier: Arc<dyn Notifier>,
        ledger: Ledger,
    ) -> Self {
        Pipeline {
            host: host.into(),
            directory,
            notifier,
            ledger,
            listing: None,
            connected_at: None,
            stats: PipelineStats::default(),
            pulse: None,
            connected: false,
            metrics: None,
        }
    }

    /// Reports the loop's [`Pulse`]s to `hook` (see [`crate::pulse`]).
    #[must_use]
    pub fn with_pulse(mut self, hook: PulseHook) -> Self {
        self.pulse = Some(hook);
        self
    }

    fn pulse(&self, pulse: Pulse) {
        if let Some(hook) = &self.pulse {
            (hook.on_pulse)(pulse);
        }
    }

    /// Reports firings and the libvirt connection's state to `metrics`.
    #[must_use]
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// What the pipeline has done so far.
    pub fn stats(&self) -> PipelineStats {
        self.stats
    }

    /// Handles items until `items` ends or `shutdown` completes, and returns
    /// the final statistics. Deliveries in flight when `shutdown` completes
    /// are finished first.
    ///
    /// Firings of different domains are handed to the delivery layer
    /// concurrently (at most 256 at once), so that a burst of
    /// firings costs a few disk syncs, not one or more each: the firings
    /// ready together have their ledger entries written in one go, then go
    /// out together, and each queue's group commit takes them in one sync.
    /// A domain's own firings are handed over one after the other, in order.
    pub async fn run<S, F>(mut self, items: S, shutdown: F) -> PipelineStats
    where
        S: Stream<Item = Item>,
        F: Future<Output = ()>,
    {
        let mut items = std::pin::pin!(items);
        let mut shutdown = std::pin::pin!(shutdown);
        // Ticks come from this loop itself (see `crate::pulse`); without a
        // hook the timer never fires.
        let period = self.pulse.as_ref().map(|h| h.interval);
        let mut ticks = tokio::time::interval(period.unwrap_or(Duration::from_secs(3600)));
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut flight = Flight::default();
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                // Before items, so that a flood of them cannot starve it. A
                // delivery stuck for longer than a tick is a stuck loop:
                // no tick then, as when the loop itself is stuck.
                _ = ticks.tick(), if period.is_some() => {
                    if !flight.stalled(period.unwrap_or_default()) {
                        self.pulse(Pulse::Tick {
                            stats: self.stats,
                            connected: self.connected,
                        });
                    }
                }
                Some(done) = flight.next(), if !flight.is_empty() => {
                    self.complete(done, &mut flight);
                    // Whatever else is done by now shares one ledger write.
                    while let Some(Some(done)) = flight.next().now_or_never() {
                        self.complete(done, &mut flight);
                    }
                    self.flush_ledger();
                }
                item = items.next(), if flight.load() < MAX_IN_FLIGHT => {
                    let Some(item) = item else { break };
                    let mut batch = Vec::new();
                    self.take(item, &mut batch, &mut flight).await;
                    // The items ready now join the batch: one ledger write.
                    let mut ended = false;
                    while flight.load() + batch.len() < MAX_IN_FLIGHT {
                        match items.next().now_or_never() {
                            Some(Some(item)) => self.take(item, &mut batch, &mut flight).await,
                            Some(None) => {
                                ended = true;
                                break;
                            }
                            None => break,
                        }
                    }
                    self.launch(batch, &mut flight);
                    if ended {
                        break;
                    }
                }
            }
        }
        // Finish what is in flight, and the firings waiting behind it.
        while let Some(done) = flight.next().await {
            self.complete(done, &mut flight);
        }
        self.flush_ledger();
        self.stats
    }

    /// Handles `item` as part of a batch: a firing is prepared into `batch`
    /// (its ledger entry staged); anything else is handled at once. A
    /// firing of a domain that already has one in the batch, in flight or
    /// waiting waits behind it, unprepared, so that a domain's firings are
    /// decided and handed over in order without holding up other domains.
    async fn take(&mut self, item: Item, batch: &mut Vec<Prepared>, flight: &mut Flight) {
        let Item::Watchdog(ev) = item else {
            return self.handle(item).await;
        };
        let uuid = ev.domain.uuid;
        if flight.busy.contains_key(&uuid)
            || flight.waiting.contains_key(&uuid)
            || batch.iter().any(|p| p.n.instance.uuid == uuid)
        {
            flight.waiting.entry(uuid).or_default().push_back(ev);
            flight.waiting_len += 1;
            return;
        }
        if let Some(p) = self.prepare(ev) {
            batch.push(p);
        }
    }

    /// Records a finished delivery, and starts the next firing waiting for
    /// its domain, if any.
    fn complete(&mut self, done: (Prepared, Result<(), NotifyError>), flight: &mut Flight) {
        let uuid = done.0.n.instance.uuid;
        self.finish(done);
        while let Some(ev) = flight.pop_waiting(&uuid) {
            if let Some(p) = self.prepare(ev) {
                self.launch(vec![p], flight);
                break;
            }
        }
    }

    /// Writes the staged ledger entries once, then hands the notifications
    /// of `batch` to the delivery layer.
    fn launch(&mut self, batch: Vec<Prepared>, flight: &mut Flight) {
        self.flush_ledger();
        for p in batch {
            flight
                .busy
                .insert(p.n.instance.uuid, tokio::time::Instant::now());
            let notifier = self.notifier.clone();
            flight.tasks.push(
                async move {
                    let result = notifier.notify(&p.n).await;
                    (p, result)
                }
                .boxed(),
            );
        }
    }

    /// Handles one listener item.
    pub async fn handle(&mut self, item: Item) {
        match item {
            Item::Connected { generation, uri } => {
                if let Some(m) = &self.metrics {
                    m.libvirt_connected(generation);
                }
                self.connected_at = Some(Instant::now());
                tracing::info!(generation, uri = %uri, "connected to libvirt");
            }
            Item::Disconnected { generation, reason } => {
                self.connected = false;
                self.pulse(Pulse::Disconnected { generation });
                if let Some(m) = &self.metrics {
                    m.libvirt_disconnected();
                }
                tracing::warn!(generation, reason = %reason, "lost the libvirt connection; reconnecting");
            }
            Item::ConnectFailed {
                attempt,
                error,
                retry_in,
            } => {
                if let Some(m) = &self.metrics {
                    m.libvirt_disconnected();
                }
                tracing::warn!(attempt, error = %error, retry_in_ms = retry_in.as_millis() as u64,
                    "cannot connect to libvirt; retrying");
            }
            Item::InitStart { .. } => self.listing = Some(Listing::default()),
            Item::InitDomain(info) => {
                if let Some(xml) = &info.xml {
                    self.directory.observe(&info.domain, xml);
                }
                if info.id.is_none() {
                    // Shut off: it cannot fire before a `started` event,
                    // which brings its XML again.
                    self.directory.retire(&info.domain);
                }
                if let Some(listing) = &mut self.listing {
                    listing.all.insert(info.domain.uuid);
                    if info.is_paused_by_watchdog() {
                        listing.paused.insert(info.domain.uuid);
                    }
                }
            }
            Item::InitDone {
                domains,
                generation,
            } => {
                if let Some(listing) = self.listing.take() {
                    // Episodes of domains no longer paused by their watchdog
                    // ended while we were not listening.
                    if let Err(e) = self.ledger.retain(|d| listing.paused.contains(d)) {
                        tracing::error!(error = %e, "cannot update the episode ledger");
                    }
                    // Domains that vanished while we were not listening.
                    self.directory
                        .retire_unlisted(&|uuid: &Uuid| listing.all.contains(uuid));
                }
                self.stats.catch_ups += 1;
                let took = self.connected_at.take().map(|t| t.elapsed());
                self.stats.last_catch_up = took;
                tracing::info!(
                    domains,
                    duration_ms =
                        took.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                    "catch-up listing done"
                );
                self.connected = true;
                self.pulse(Pulse::CaughtUp {
                    generation,
                    domains,
                });
            }
            Item::Lifecycle(ev) => self.lifecycle(ev),
            Item::Watchdog(ev) => self.watchdog(ev).await,
            Item::Error(e) => tracing::warn!(error = %e, "libvirt listener error"),
            other => tracing::debug!(item = ?other, "ignored listener item"),
        }
    }

    fn lifecycle(&mut self, ev: LifecycleEvent) {
        if let Some(xml) = &ev.xml {
            self.directory.observe(&ev.domain, xml);
        }
        if ev.event.is(Lifecycle::Stopped) || ev.event.is(Lifecycle::Undefined) {
            self.directory.retire(&ev.domain);
        }
        let ends_episode = [
            Lifecycle::Resumed,
            Lifecycle::Stopped,
            Lifecycle::Undefined,
            Lifecycle::Started,
        ]
        .into_iter()
        .any(|l| ev.event.is(l));
        if ends_episode {
            match self.ledger.remove(&ev.domain.uuid) {
                Ok(true) => {
                    tracing::debug!(domain = %ev.domain, event = %ev.event, "pause episode ended")
                }
                Ok(false) => {}
                Err(e) => tracing::error!(error = %e, "cannot update the episode ledger"),
            }
        }
    }

    /// One firing handled alone: prepared, its ledger entry written, handed
    /// over, finished.
    async fn watchdog(&mut self, ev: WatchdogEvent) {
        let prepared = self.prepare(ev);
        self.flush_ledger();
        let Some(p) = prepared else { return };
        let result = self.notifier.notify(&p.n).await;
        self.finish((p, result));
        self.flush_ledger();
    }

    /// Counts a firing, decides its event id (staging a pause's ledger
    /// entry) and builds its notification; `None` when it was already
    /// notified.
    fn prepare(&mut self, ev: WatchdogEvent) -> Option<Prepared> {
        self.stats.firings += 1;
        let is_pause = ev.action.is(wd_events::WatchdogAction::Pause);
        let run = ev.run_id;
        let event_id = if !is_pause {
            ev.episode
        } else {
            // A live pause is always a new episode: wd-events reports each
            // real firing live once (and drops the live echo of a pause
            // its catch-up already recovered). Only a recovered pause may be
            // one this agent, or an earlier one, already announced: the
            // ledger tells, for the same run of the domain.
            let known = match ev.origin {
                Origin::Live => None,
                Origin::Recovered => self.ledger.episode(&ev.domain.uuid, run),
            };
            match known {
                Some(entry @ Entry { accepted: true, .. }) => {
                    self.stats.already_notified += 1;
                    // Seen before (and counted then): not a new firing.
                    tracing::info!(domain = %ev.domain, event_id = %entry.event_id, origin = %ev.origin,
                        "watchdog pause already notified; not announcing it again");
                    if entry.run_id.is_none() && run.is_some() {
                        // An entry from a ledger that did not record runs
                        // learns the run it belongs to.
                        self.ledger.stage(
                            ev.domain.uuid,
                            Entry {
                                run_id: run,
                                ..entry
                            },
                        );
                    }
                    return None;
                }
                Some(Entry { event_id, .. }) => event_id,
                None => {
                    let entry = Entry {
                        event_id: ev.episode,
                        accepted: false,
                        run_id: run,
                    };
                    self.ledger.stage(ev.domain.uuid, entry);
                    ev.episode
                }
            }
        };

        if let Some(m) = &self.metrics {
            m.firing(
                &ev.action.to_string(),
                ev.origin == wd_events::Origin::Recovered,
            );
        }
        let owner = self.directory.lookup(&ev.domain);
        if owner.is_none() {
            self.stats.unknown_owner += 1;
            tracing::warn!(domain = %ev.domain, "watchdog fired on a domain with no known owner; notifying operator channels only");
        }
        let fired_at = OffsetDateTime::from(ev.received_at);
        let n = Notification {
            version: SCHEMA_VERSION,
            event_id,
            instance: Instance {
                uuid: ev.domain.uuid,
                name: owner.as_ref().and_then(|o| o.display_name.clone()),
                project_id: owner.as_ref().map(|o| o.project_id.clone()),
                user_id: owner.as_ref().and_then(|o| o.user_id.clone()),
            },
            host: self.host.clone(),
            domain: domain(&ev.domain, run),
            action: ev.action.to_string(),
            fired_at,
            recovered: ev.is_recovered(),
            occurrences: Occurrences::single(fired_at),
        };
        tracing::info!(domain = %ev.domain, action = %n.action, %event_id, origin = %ev.origin,
            project = n.instance.project_id.as_deref().unwrap_or("-"), "watchdog fired");
        Some(Prepared { n, run, is_pause })
    }

    /// Records what the delivery layer said of a prepared firing. A pause it
    /// accepted is marked accepted in the ledger (staged), unless its
    /// episode ended meanwhile.
    fn finish(&mut self, (p, result): (Prepared, Result<(), NotifyError>)) {
        let uuid = p.n.instance.uuid;
        let event_id = p.n.event_id;
        match result {
            Ok(()) => {
                self.stats.accepted += 1;
                let open = self
                    .ledger
                    .get(&uuid)
                    .is_some_and(|e| e.event_id == event_id);
                if p.is_pause && open {
                    // The delivery layer accepted this very notification
                    // (with a spool: its event id is on disk); it never
                    // folds a pause into another one.
                    let entry = Entry {
                        event_id,
                        accepted: true,
                        run_id: p.run,
                    };
                    self.ledger.stage(uuid, entry);
                }
            }
            Err(e) => {
                self.stats.delivery_errors += 1;
                tracing::error!(%event_id, error = %e, "the delivery layer refused a watchdog notification");
            }
        }
    }
}

impl Pipeline {
    fn flush_ledger(&mut self) {
        if let Err(e) = self.ledger.flush() {
            tracing::error!(error = %e, "cannot update the episode ledger");
        }
    }
}

/// The most firings handed to the delivery layer and not yet accepted, plus
/// those waiting behind an earlier firing of their domain.
const MAX_IN_FLIGHT: usize = 256;

/// A firing ready to be handed over.
struct Prepared {
    n: Notification,
    run: Option<u32>,
    is_pause: bool,
}

type Delivery = BoxFuture<'static, (Prepared, Result<(), NotifyError>)>;

/// The deliveries in flight, their domains, and the firings waiting for a
/// domain's delivery to finish.
#[derive(Default)]
struct Flight {
    tasks: FuturesUnordered<Delivery>,
    /// Each domain with a delivery in flight, and when it started (on
    /// Tokio's clock, like the ticks).
    busy: HashMap<Uuid, tokio::time::Instant>,
    waiting: HashMap<Uuid, VecDeque<WatchdogEvent>>,
    waiting_len: usize,
}

impl Flight {
    fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Deliveries in flight plus firings waiting: what the loop holds.
    fn load(&self) -> usize {
        self.tasks.len().saturating_add(self.waiting_len)
    }

    /// Whether a delivery has been in flight for longer than `limit`.
    fn stalled(&self, limit: Duration) -> bool {
        self.busy.values().any(|t| t.elapsed() > limit)
    }

    fn pop_waiting(&mut self, uuid: &Uuid) -> Option<WatchdogEvent> {
        let queue = self.waiting.get_mut(uuid)?;
        let ev = queue.pop_front();
        if queue.is_empty() {
            self.waiting.remove(uuid);
        }
        if ev.is_some() {
            self.waiting_len = self.waiting_len.saturating_sub(1);
        }
        ev
    }

    /// The next delivery done, its domain no longer busy.
    async fn next(&mut self) -> Option<(Prepared, Result<(), NotifyError>)> {
        let done = self.tasks.next().await?;
        self.busy.remove(&done.0.n.instance.uuid);
        Some(done)
    }
}

fn domain(d: &DomainId, run: Option<u32>) -> Domain {
    Domain {
        uuid: d.uuid,
        name: d.name.clone(),
        id: run,
    }
}

#[cfg(test)]
mod concurrency_tests;
#[cfg(test)]
mod tests;
