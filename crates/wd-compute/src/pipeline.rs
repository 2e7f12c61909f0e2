//! The runtime pipeline: listener items in, owner notifications out.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, Shared};
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

mod order;

use order::{Order, Outcome};
use wd_backoff::Backoff;

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
    /// Hand-overs and ledger writes that failed for now (a disk full, an
    /// I/O error, a read-only filesystem): the firing was held and retried.
    pub write_failures: u64,
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
/// coalesce → router → one queue per destination → its notifier).
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
    /// Which domain's items may go next, and when held firings are due.
    order: Order<Work>,
    /// The hand-overs in flight.
    tasks: FuturesUnordered<Delivery>,
    /// The firings held after a failed write, by domain (one each: a
    /// domain's later firings wait in `order`).
    held: HashMap<Uuid, Prepared>,
    /// The last ledger write failed.
    ledger_failing: bool,
    /// The syncs of the ledger's appended lines in flight (each also
    /// awaited by the hand-overs it was written for).
    ledger_syncs: FuturesUnordered<Synced>,
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
            order: Order::new(HOLD_BACKOFF),
            tasks: FuturesUnordered::new(),
            held: HashMap::new(),
            ledger_failing: false,
            ledger_syncs: FuturesUnordered::new(),
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
    /// are finished first; firings still held after a failed write are
    /// given up then (each logged with its event id; see
    /// docs/reliability.md for what a restart recovers).
    ///
    /// Firings of different domains are handed to the delivery layer
    /// concurrently (at most 256 at once, held firings and items waiting
    /// included), so that a burst of firings costs a few disk syncs, not
    /// one or more each: the firings ready together have their ledger
    /// entries written in one go, then go out together, and each queue's
    /// group commit takes them in one sync. A domain's own items (firings
    /// and lifecycle events) are applied one after the other, in order
    /// (see `order.rs`).
    pub async fn run<S, F>(mut self, items: S, shutdown: F) -> PipelineStats
    where
        S: Stream<Item = Item>,
        F: Future<Output = ()>,
    {
        self.drive(items, shutdown).await;
        self.give_up_held();
        self.stats
    }

    /// The loop of [`Pipeline::run`], keeping what is held for a later call.
    async fn drive<S, F>(&mut self, items: S, shutdown: F)
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
        loop {
            let retry_at = self.order.next_due();
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                // Before items, so that a flood of them cannot starve it. A
                // delivery stuck for longer than a tick is a stuck loop:
                // no tick then, as when the loop itself is stuck. Firings
                // held for a retry do not stop the ticks.
                _ = ticks.tick(), if period.is_some() => {
                    let now = tokio::time::Instant::now();
                    if !self.order.stalled(period.unwrap_or_default(), now) {
                        self.pulse(Pulse::Tick {
                            stats: self.stats,
                            connected: self.connected,
                        });
                    }
                }
                Some(done) = self.tasks.next(), if !self.tasks.is_empty() => {
                    self.complete(done);
                    // Whatever else is done by now shares one ledger write.
                    while let Some(Some(done)) = self.tasks.next().now_or_never() {
                        self.complete(done);
                    }
                    self.write_ledger();
                    if self.tasks.is_empty() && self.ledger.compaction_due() {
                        // Nothing in flight: a rewrite waits for no firing.
                        self.tidy_ledger();
                    }
                }
                Some(synced) = self.ledger_syncs.next(), if !self.ledger_syncs.is_empty() => {
                    self.ledger_synced(synced);
                }
                () = sleep_until(retry_at), if retry_at.is_some() => {
                    let synced = self.write_ledger();
                    let now = tokio::time::Instant::now();
                    for uuid in self.order.due(now) {
                        if let Some(p) = self.held.remove(&uuid) {
                            self.hand_over(p, synced.clone());
                        }
                    }
                }
                item = items.next(), if self.order.load() < MAX_IN_FLIGHT => {
                    let Some(item) = item else { break };
                    let mut batch = Vec::new();
                    self.take(item, &mut batch);
                    // The items ready now join the batch: one ledger write.
                    let mut ended = false;
                    while self.order.load() < MAX_IN_FLIGHT {
                        match items.next().now_or_never() {
                            Some(Some(item)) => self.take(item, &mut batch),
                            Some(None) => {
                                ended = true;
                                break;
                            }
                            None => break,
                        }
                    }
                    self.launch(batch);
                    if ended {
                        break;
                    }
                }
            }
        }
        // Finish what is in flight, and the items waiting behind it.
        while let Some(done) = self.tasks.next().await {
            self.complete(done);
        }
        self.write_ledger();
        while let Some(synced) = self.ledger_syncs.next().await {
            self.ledger_synced(synced);
        }
    }

    /// Logs and forgets the firings still held (at shutdown).
    fn give_up_held(&mut self) {
        for (_, p) in self.held.drain() {
            tracing::error!(event_id = %p.n.event_id, domain = %p.n.instance.uuid, action = %p.n.action,
                "shutting down with a watchdog notification not yet written; it is lost unless a catch-up finds the guest still paused");
        }
        self.report_held();
    }

    /// Handles `item` in order: a domain's item waits while that domain has
    /// a firing in flight or held; a firing that may go now is prepared
    /// into `batch` (its ledger entry staged).
    fn take(&mut self, item: Item, batch: &mut Vec<Prepared>) {
        let work = match item {
            Item::Watchdog(ev) => Work::Firing(ev),
            Item::Lifecycle(ev) => Work::Lifecycle(ev),
            other => return self.apply_other(other),
        };
        if let Some(work) = self.order.offer(work.domain(), work) {
            self.apply(work, batch);
        }
    }

    /// Applies one domain item: a lifecycle event at once, a firing
    /// prepared into `batch`, its domain busy until it is handed over.
    fn apply(&mut self, work: Work, batch: &mut Vec<Prepared>) {
        match work {
            Work::Lifecycle(ev) => self.lifecycle(ev),
            Work::Firing(ev) => {
                if let Some(p) = self.prepare(ev) {
                    self.order
                        .start(p.n.instance.uuid, tokio::time::Instant::now());
                    batch.push(p);
                }
            }
        }
    }

    /// Records a finished hand-over, and applies the items waiting for its
    /// domain, in order, until one makes it busy again.
    fn complete(&mut self, (p, result): (Prepared, Result<(), NotifyError>)) {
        let uuid = p.n.instance.uuid;
        let now = tokio::time::Instant::now();
        if let Err(e) = &result
            && e.is_retryable()
        {
            self.stats.write_failures += 1;
            let reason = format!("cannot write a watchdog notification: {}", one_line(e));
            tracing::error!(event_id = %p.n.event_id, domain = %uuid, error = %reason,
                "holding the firing; retrying");
            if let Some(m) = &self.metrics {
                m.write_failed("queue", &reason);
            }
            self.order
                .finish(uuid, Outcome::Retry, now, fastrand_unit());
            self.held.insert(uuid, p);
            self.report_held();
            return;
        }
        self.order.finish(uuid, Outcome::Done, now, 0.0);
        let was_held = p.attempts > 0;
        self.finish((p, result));
        if was_held {
            self.report_held();
        }
        let mut batch = Vec::new();
        while let Some(work) = self.order.next(uuid) {
            self.apply(work, &mut batch);
        }
        if !batch.is_empty() {
            self.launch(batch);
        }
    }

    /// Appends the staged ledger entries once (one `write(2)`), then hands
    /// the notifications of `batch` to the delivery layer while the
    /// ledger's sync runs beside the queues' (see the `ledger` module docs for why
    /// that order is crash-safe).
    fn launch(&mut self, batch: Vec<Prepared>) {
        let synced = self.write_ledger();
        for p in batch {
            if p.attempts == 0 {
                wd_notify::stages::record(wd_notify::stages::Stage::Ledgered, &p.n);
            }
            self.hand_over(p, synced.clone());
        }
    }

    /// Hands `p` to the delivery layer; the hand-over is done once the
    /// delivery layer answered and `synced` (the ledger's sync of `p`'s
    /// entry, if it has one in flight) finished, both running at once.
    fn hand_over(&mut self, mut p: Prepared, synced: Option<Synced>) {
        p.attempts = p.attempts.saturating_add(1);
        let notifier = self.notifier.clone();
        self.tasks.push(
            async move {
                let ledger = async {
                    // Its result is reported once, by the run loop.
                    if let Some(synced) = synced {
                        let _ = synced.await;
                    }
                };
                let (result, ()) = futures::join!(notifier.notify(&p.n), ledger);
                (p, result)
            }
            .boxed(),
        );
    }

    /// Tells the metrics how many firings are held, and clears the queue
    /// write failure once none is.
    fn report_held(&self) {
        if let Some(m) = &self.metrics {
            m.set_held(self.held.len());
            if self.held.is_empty() {
                m.writes_recovered("queue");
            }
        }
    }

    /// Handles a listener item that belongs to no single domain.
    fn apply_other(&mut self, item: Item) {
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
                // With libvirt's reason (a refused password, a missing
                // socket), not only "cannot connect".
                tracing::warn!(attempt, error = %wd_notify::error_chain(&error),
                    retry_in_ms = retry_in.as_millis() as u64, "cannot connect to libvirt; retrying");
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
                    self.ledger.keep(|d| listing.paused.contains(d));
                    // Written and synced now, rewriting the file if it is
                    // missing or old: before the first firing, not on its way.
                    // An empty ledger that cannot be written (a full disk at
                    // start) loses nothing: not reported, so that it does
                    // not hold /healthz at 503 once the disk is fine (the
                    // queues' probe reports the disk); tried again at the
                    // first write.
                    if self.ledger.is_empty() {
                        if let Err(e) = self.ledger.tidy() {
                            tracing::debug!(error = %one_line(&e), "episode ledger not created yet");
                        }
                    } else {
                        self.tidy_ledger();
                    }
                    // Domains that vanished while we were not listening.
                    self.directory
                        .retire_unlisted(&|uuid: &Uuid| listing.all.contains(uuid));
                }
                // The listener's settle listings after a catch-up come with
                // the same markers: only the first after connecting is the
                // catch-up (counted and timed).
                if let Some(t) = self.connected_at.take() {
                    let took = t.elapsed();
                    self.stats.catch_ups += 1;
                    self.stats.last_catch_up = Some(took);
                    tracing::info!(
                        domains,
                        duration_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
                        "catch-up listing done"
                    );
                } else {
                    tracing::debug!(domains, "settle listing done");
                }
                self.connected = true;
                self.pulse(Pulse::CaughtUp {
                    generation,
                    domains,
                });
            }
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
        if ends_episode && self.ledger.end(&ev.domain.uuid) {
            tracing::debug!(domain = %ev.domain, event = %ev.event, "pause episode ended");
            self.write_ledger();
        }
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
                flavor: owner.as_ref().and_then(|o| o.flavor.clone()),
                image: owner.as_ref().and_then(|o| o.image.clone()),
            },
            host: self.host.clone(),
            domain: domain(&ev.domain, run),
            action: ev.action.to_string(),
            fired_at,
            // A firing found by a catch-up happened while nobody listened:
            // `fired_at` (when the catch-up found it) is only a bound.
            fired_at_bound: ev
                .is_recovered()
                .then_some(wd_notify::FiredAtBound::AtOrBefore),
            recovered: ev.is_recovered(),
            occurrences: Occurrences::single(fired_at),
        };
        tracing::info!(domain = %ev.domain, action = %n.action, %event_id, origin = %ev.origin,
            project = n.instance.project_id.as_deref().unwrap_or("-"), "watchdog fired");
        wd_notify::stages::record(wd_notify::stages::Stage::Prepared, &n);
        Some(Prepared {
            n,
            run,
            is_pause,
            attempts: 0,
        })
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
    /// Appends what the ledger has staged, and starts its sync on a
    /// blocking thread; returns that sync, to await beside a hand-over.
    fn write_ledger(&mut self) -> Option<Synced> {
        match self.ledger.write() {
            Ok(None) => {
                self.ledger_written(Ok(()));
                None
            }
            Ok(Some(sync)) => {
                let synced = tokio::task::spawn_blocking(move || sync.run())
                    .map(|r| match r {
                        Ok(r) => r.map_err(|e| one_line(&e)),
                        Err(e) => Err(format!("the ledger's sync ended: {e}")),
                    })
                    .boxed()
                    .shared();
                self.ledger_syncs.push(synced.clone());
                Some(synced)
            }
            Err(e) => {
                self.ledger_written(Err(one_line(&e)));
                None
            }
        }
    }

    /// Writes, syncs and compacts the ledger now, on this task (off a
    /// firing's way).
    fn tidy_ledger(&mut self) {
        let r = self.ledger.tidy().map_err(|e| one_line(&e));
        self.ledger_written(r);
    }

    /// Records how a sync of the ledger ended.
    fn ledger_synced(&mut self, synced: Result<(), String>) {
        match synced {
            // A rewrite still due means a write failed since.
            Ok(()) if self.ledger.must_rewrite() => {}
            Ok(()) => self.ledger_written(Ok(())),
            Err(e) => {
                self.ledger.sync_failed();
                self.ledger_written(Err(e));
            }
        }
    }

    /// Counts and reports a failed ledger write (the ledger keeps its
    /// entries in memory and writes them all at the next write, on the next
    /// item or retry), and clears the report once a write succeeds.
    fn ledger_written(&mut self, result: Result<(), String>) {
        match result {
            Ok(()) => {
                if std::mem::take(&mut self.ledger_failing) {
                    tracing::info!("the episode ledger is written again");
                    if let Some(m) = &self.metrics {
                        m.writes_recovered("ledger");
                    }
                }
            }
            Err(e) => {
                self.stats.write_failures += 1;
                let reason = format!("cannot write the episode ledger: {e}");
                if !self.ledger_failing {
                    tracing::error!(error = %reason, "the episode ledger is not durable; retrying");
                }
                self.ledger_failing = true;
                if let Some(m) = &self.metrics {
                    m.write_failed("ledger", &reason);
                }
            }
        }
    }
}

/// `e` and its sources on one line.
fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    wd_notify::error_chain(e)
}

/// A uniform draw in `[0, 1]` for the backoff's jitter.
fn fastrand_unit() -> f64 {
    fastrand::f64()
}

/// Sleeps until `at` (never, when `None`: the branch is disabled then).
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The most firings handed to the delivery layer and not yet accepted,
/// plus those held after a failed write and the items waiting behind a
/// firing of their domain. At the bound the loop stops taking items: the
/// listener's inbox keeps them (it never folds a firing).
const MAX_IN_FLIGHT: usize = 256;

/// How a held firing is retried: from 0.5 s, doubling up to 30 s.
const HOLD_BACKOFF: Backoff = Backoff {
    initial: Duration::from_millis(500),
    max: Duration::from_secs(30),
    factor: 2.0,
    jitter: true,
};

/// A firing ready to be handed over.
struct Prepared {
    n: Notification,
    run: Option<u32>,
    is_pause: bool,
    /// Times it was handed over (more than once after failed writes).
    attempts: u32,
}

/// One domain's item, applied in the order it came (see `order.rs`).
enum Work {
    Firing(WatchdogEvent),
    Lifecycle(LifecycleEvent),
}

impl Work {
    fn domain(&self) -> Uuid {
        match self {
            Work::Firing(ev) => ev.domain.uuid,
            Work::Lifecycle(ev) => ev.domain.uuid,
        }
    }
}

type Delivery = BoxFuture<'static, (Prepared, Result<(), NotifyError>)>;

/// The sync of lines appended to the ledger, awaited by the run loop (which
/// reports its result) and by the hand-overs it was written for.
type Synced = Shared<BoxFuture<'static, Result<(), String>>>;

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
mod disk_tests;
#[cfg(test)]
mod tests;
