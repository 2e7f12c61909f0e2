//! The runtime pipeline: listener items in, owner notifications out.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use time::OffsetDateTime;
use uuid::Uuid;
use wd_events::{DomainId, Item, Lifecycle, LifecycleEvent, WatchdogEvent};
use wd_notify::{Domain, Instance, Notification, Notifier, Occurrences, SCHEMA_VERSION};

use crate::directory::InstanceDirectory;
use crate::ledger::{Entry, Ledger};

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
        }
    }

    /// What the pipeline has done so far.
    pub fn stats(&self) -> PipelineStats {
        self.stats
    }

    /// Handles items until `items` ends or `shutdown` completes, and returns
    /// the final statistics. An item being handled when `shutdown` completes
    /// is finished first.
    pub async fn run<S, F>(mut self, items: S, shutdown: F) -> PipelineStats
    where
        S: Stream<Item = Item>,
        F: Future<Output = ()>,
    {
        let mut items = std::pin::pin!(items);
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                item = items.next() => match item {
                    Some(item) => self.handle(item).await,
                    None => break,
                },
            }
        }
        self.stats
    }

    /// Handles one listener item.
    pub async fn handle(&mut self, item: Item) {
        match item {
            Item::Connected { generation, uri } => {
                self.connected_at = Some(Instant::now());
                tracing::info!(generation, uri = %uri, "connected to libvirt");
            }
            Item::Disconnected { generation, reason } => {
                tracing::warn!(generation, reason = %reason, "lost the libvirt connection; reconnecting");
            }
            Item::ConnectFailed {
                attempt,
                error,
                retry_in,
            } => {
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
            Item::InitDone { domains, .. } => {
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

    async fn watchdog(&mut self, ev: WatchdogEvent) {
        self.stats.firings += 1;
        let is_pause = ev.action.is(wd_events::WatchdogAction::Pause);
        let event_id = if is_pause {
            match self.ledger.get(&ev.domain.uuid) {
                Some(Entry {
                    accepted: true,
                    event_id,
                }) => {
                    self.stats.already_notified += 1;
                    tracing::info!(domain = %ev.domain, %event_id, origin = %ev.origin,
                        "watchdog pause already notified; not announcing it again");
                    return;
                }
                Some(Entry { event_id, .. }) => event_id,
                None => {
                    let entry = Entry {
                        event_id: ev.episode,
                        accepted: false,
                    };
                    if let Err(e) = self.ledger.put(ev.domain.uuid, entry) {
                        tracing::error!(error = %e, "cannot update the episode ledger");
                    }
                    ev.episode
                }
            }
        } else {
            ev.episode
        };

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
            domain: domain(&ev.domain),
            action: ev.action.to_string(),
            fired_at,
            recovered: ev.is_recovered(),
            occurrences: Occurrences::single(fired_at),
        };
        tracing::info!(domain = %ev.domain, action = %n.action, %event_id, origin = %ev.origin,
            project = n.instance.project_id.as_deref().unwrap_or("-"), "watchdog fired");
        match self.notifier.notify(&n).await {
            Ok(()) => {
                self.stats.accepted += 1;
                if is_pause {
                    let entry = Entry {
                        event_id,
                        accepted: true,
                    };
                    if let Err(e) = self.ledger.put(ev.domain.uuid, entry) {
                        tracing::error!(error = %e, "cannot update the episode ledger");
                    }
                }
            }
            Err(e) => {
                self.stats.delivery_errors += 1;
                tracing::error!(%event_id, error = %e, "the delivery layer refused a watchdog notification");
            }
        }
    }
}

fn domain(d: &DomainId) -> Domain {
    Domain {
        uuid: d.uuid,
        name: d.name.clone(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::SystemTime;

    use async_trait::async_trait;
    use wd_events::{DomainInfo, DomainState, Enum, LifecycleDetail, Origin, ResumedDetail};
    use wd_notify::NotifyError;

    use super::*;
    use crate::directory::NovaDirectory;

    const PROJECT: &str = "6f70656e737461636b20697320636f6f6c";

    /// Records what it is given; fails while `fail` is set.
    #[derive(Default)]
    struct Recorder {
        got: Mutex<Vec<Notification>>,
        fail: Mutex<bool>,
    }

    #[async_trait]
    impl Notifier for Recorder {
        async fn notify(&self, n: &Notification) -> Result<(), NotifyError> {
            if *self.fail.lock().unwrap() {
                return Err(NotifyError::retryable("disk full"));
            }
            self.got.lock().unwrap().push(n.clone());
            Ok(())
        }
    }

    fn dom(n: u128) -> DomainId {
        DomainId {
            uuid: Uuid::from_u128(n),
            name: format!("instance-{n:08x}"),
        }
    }

    fn nova_xml(d: &DomainId) -> String {
        format!(
            r#"<domain type="kvm"><uuid>{}</uuid><name>{}</name><metadata>
<nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">
<nova:name>web-1</nova:name><nova:flavor name="m1.small"/>
<nova:owner><nova:user uuid="u-1">alice</nova:user><nova:project uuid="{PROJECT}">demo</nova:project></nova:owner>
</nova:instance></metadata><devices/></domain>"#,
            d.uuid, d.name
        )
    }

    fn fire(
        d: &DomainId,
        action: wd_events::WatchdogAction,
        origin: Origin,
        episode: u128,
    ) -> Item {
        Item::Watchdog(WatchdogEvent {
            domain: d.clone(),
            action: Enum::Known(action),
            received_at: SystemTime::now(),
            seq: 1,
            generation: 1,
            origin,
            episode: Uuid::from_u128(episode),
        })
    }

    fn listing(domains: &[(DomainId, bool)]) -> Vec<Item> {
        let mut items = vec![Item::InitStart { generation: 2 }];
        for (d, paused) in domains {
            items.push(Item::InitDomain(DomainInfo {
                domain: d.clone(),
                id: Some(1),
                state: Enum::Known(if *paused {
                    DomainState::Paused
                } else {
                    DomainState::Running
                }),
                reason: if *paused {
                    wd_events::PAUSED_REASON_WATCHDOG
                } else {
                    1
                },
                xml: Some(nova_xml(d)),
                generation: 2,
            }));
        }
        items.push(Item::InitDone {
            generation: 2,
            domains: domains.len(),
        });
        items
    }

    fn resumed(d: &DomainId) -> Item {
        Item::Lifecycle(LifecycleEvent {
            domain: d.clone(),
            event: Enum::Known(Lifecycle::Resumed),
            detail: LifecycleDetail::Resumed(Enum::Known(ResumedDetail::Unpaused)),
            received_at: SystemTime::now(),
            seq: 2,
            generation: 1,
            episode: None,
            xml: None,
        })
    }

    fn pipeline(ledger: Ledger) -> (Pipeline, Arc<Recorder>, Arc<NovaDirectory>) {
        let rec = Arc::new(Recorder::default());
        let dir = Arc::new(NovaDirectory::new());
        (
            Pipeline::new("compute-1", dir.clone(), rec.clone(), ledger),
            rec,
            dir,
        )
    }

    async fn feed(p: &mut Pipeline, items: Vec<Item>) {
        for i in items {
            p.handle(i).await;
        }
    }

    use wd_events::WatchdogAction::{Pause, Reset};

    #[tokio::test]
    async fn live_pause_carries_the_owner_and_is_not_repeated_after_a_reconnect() {
        let d = dom(1);
        let (mut p, rec, _) = pipeline(Ledger::in_memory());
        feed(&mut p, listing(&[(d.clone(), false)])).await;
        feed(&mut p, vec![fire(&d, Pause, Origin::Live, 77)]).await;
        // Reconnect: the catch-up finds the pause again and (as after a
        // restart of the listener) reports it as recovered.
        feed(&mut p, listing(&[(d.clone(), true)])).await;
        feed(&mut p, vec![fire(&d, Pause, Origin::Recovered, 78)]).await;

        let got = rec.got.lock().unwrap().clone();
        assert_eq!(got.len(), 1, "{got:#?}");
        let n = &got[0];
        assert_eq!(n.event_id, Uuid::from_u128(77));
        assert_eq!(n.instance.uuid, d.uuid);
        assert_eq!(n.instance.project_id.as_deref(), Some(PROJECT));
        assert_eq!(n.instance.user_id.as_deref(), Some("u-1"));
        assert_eq!(n.instance.name.as_deref(), Some("web-1"));
        assert_eq!(n.action, "pause");
        assert_eq!(n.host, "compute-1");
        assert!(!n.recovered);
        assert_eq!(p.stats().already_notified, 1);
    }

    #[tokio::test]
    async fn the_ledger_survives_a_restart_and_a_resume_ends_the_episode() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("episodes.json");
        let d = dom(2);
        {
            let (mut p, rec, _) = pipeline(Ledger::open(&path).unwrap());
            feed(&mut p, listing(&[(d.clone(), false)])).await;
            feed(&mut p, vec![fire(&d, Pause, Origin::Live, 1)]).await;
            assert_eq!(rec.got.lock().unwrap().len(), 1);
        }
        // A new process: its catch-up recovers the same pause.
        let (mut p, rec, _) = pipeline(Ledger::open(&path).unwrap());
        feed(&mut p, listing(&[(d.clone(), true)])).await;
        feed(&mut p, vec![fire(&d, Pause, Origin::Recovered, 2)]).await;
        assert!(rec.got.lock().unwrap().is_empty());
        // Resumed, then paused again: a new episode, announced.
        feed(&mut p, vec![resumed(&d), fire(&d, Pause, Origin::Live, 3)]).await;
        let got = rec.got.lock().unwrap().clone();
        assert_eq!(
            got.iter().map(|n| n.event_id).collect::<Vec<_>>(),
            [Uuid::from_u128(3)]
        );
    }

    #[tokio::test]
    async fn a_refused_pause_is_offered_again_with_the_same_event_id() {
        let d = dom(3);
        let (mut p, rec, _) = pipeline(Ledger::in_memory());
        feed(&mut p, listing(&[(d.clone(), false)])).await;
        *rec.fail.lock().unwrap() = true;
        feed(&mut p, vec![fire(&d, Pause, Origin::Live, 10)]).await;
        assert_eq!(p.stats().delivery_errors, 1);
        *rec.fail.lock().unwrap() = false;
        feed(&mut p, listing(&[(d.clone(), true)])).await;
        feed(&mut p, vec![fire(&d, Pause, Origin::Recovered, 11)]).await;
        let got = rec.got.lock().unwrap().clone();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].event_id, Uuid::from_u128(10));
        assert!(got[0].recovered);
    }

    #[tokio::test]
    async fn catch_up_forgets_episodes_of_guests_no_longer_paused() {
        let d = dom(4);
        let (mut p, rec, _) = pipeline(Ledger::in_memory());
        feed(&mut p, listing(&[(d.clone(), false)])).await;
        feed(&mut p, vec![fire(&d, Pause, Origin::Live, 20)]).await;
        // Resumed while we were disconnected: the listing shows it running.
        feed(&mut p, listing(&[(d.clone(), false)])).await;
        feed(&mut p, vec![fire(&d, Pause, Origin::Live, 21)]).await;
        assert_eq!(rec.got.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn resets_are_each_announced_and_unknown_owners_get_no_project() {
        let known = dom(5);
        let stranger = dom(6);
        let (mut p, rec, dir) = pipeline(Ledger::in_memory());
        feed(&mut p, listing(&[(known.clone(), false)])).await;
        feed(
            &mut p,
            vec![
                fire(&known, Reset, Origin::Live, 30),
                fire(&known, Reset, Origin::Live, 31),
                fire(&stranger, Reset, Origin::Live, 32),
            ],
        )
        .await;
        let got = rec.got.lock().unwrap().clone();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].action, "reset");
        assert_eq!(got[2].instance.project_id, None);
        assert_eq!(got[2].instance.uuid, stranger.uuid);
        assert_eq!(p.stats().unknown_owner, 1);
        assert_eq!(dir.unknown_owner_count(), 1);
    }

    #[tokio::test]
    async fn the_owner_is_cached_from_a_started_event_and_outlives_the_domain() {
        let d = dom(7);
        let (mut p, rec, _) = pipeline(Ledger::in_memory());
        let started = Item::Lifecycle(LifecycleEvent {
            domain: d.clone(),
            event: Enum::Known(Lifecycle::Started),
            detail: LifecycleDetail::Unknown(0),
            received_at: SystemTime::now(),
            seq: 1,
            generation: 1,
            episode: None,
            xml: Some(nova_xml(&d)),
        });
        let undefined = Item::Lifecycle(LifecycleEvent {
            domain: d.clone(),
            event: Enum::Known(Lifecycle::Undefined),
            detail: LifecycleDetail::Unknown(0),
            received_at: SystemTime::now(),
            seq: 2,
            generation: 1,
            episode: None,
            xml: None,
        });
        feed(
            &mut p,
            vec![
                started,
                undefined,
                fire(&d, wd_events::WatchdogAction::Poweroff, Origin::Live, 40),
            ],
        )
        .await;
        let got = rec.got.lock().unwrap().clone();
        assert_eq!(got[0].instance.project_id.as_deref(), Some(PROJECT));
        assert_eq!(got[0].action, "poweroff");
    }

    fn life(d: &DomainId, event: Lifecycle, xml: Option<String>) -> Item {
        Item::Lifecycle(LifecycleEvent {
            domain: d.clone(),
            event: Enum::Known(event),
            detail: LifecycleDetail::Unknown(0),
            received_at: SystemTime::now(),
            seq: 1,
            generation: 1,
            episode: None,
            xml,
        })
    }

    #[tokio::test]
    async fn a_flood_of_100k_lifecycle_events_leaves_the_directory_bounded() {
        use crate::directory::DirectoryConfig;
        for (grace, expired) in [(Duration::ZERO, true), (Duration::from_secs(3600), false)] {
            let rec = Arc::new(Recorder::default());
            let dir = Arc::new(NovaDirectory::with_config(
                DirectoryConfig::default()
                    .retire_after(grace)
                    .max_entries(1_000),
            ));
            let mut p = Pipeline::new("compute-1", dir.clone(), rec.clone(), Ledger::in_memory());
            // A long-lived guest, listed at the start, outlives the churn.
            let keeper = dom(u128::MAX);
            feed(&mut p, listing(&[(keeper.clone(), false)])).await;
            // 25,000 instances come and go: defined, started, stopped,
            // undefined.
            for n in 0..25_000u128 {
                let d = dom(n);
                let xml = Some(nova_xml(&d));
                // (The XML is parsed once per instance, to keep the test quick.)
                p.handle(life(&d, Lifecycle::Defined, None)).await;
                p.handle(life(&d, Lifecycle::Started, xml)).await;
                p.handle(life(&d, Lifecycle::Stopped, None)).await;
                p.handle(life(&d, Lifecycle::Undefined, None)).await;
                assert!(dir.len() <= 1_000);
            }
            let stats = dir.stats();
            if expired {
                assert_eq!(stats.entries, 1, "{stats:?}");
                assert_eq!(stats.evicted_expired, 25_000, "{stats:?}");
                assert_eq!(stats.evicted_full, 0, "{stats:?}");
            } else {
                // Within their grace period, retired entries are evicted
                // first when the directory is full; the live guest stays.
                assert_eq!(stats.entries, 1_000, "{stats:?}");
                assert_eq!(stats.retired, 999, "{stats:?}");
                assert_eq!(stats.evicted_full, 25_001 - 1_000, "{stats:?}");
            }
            feed(&mut p, vec![fire(&keeper, Reset, Origin::Live, 1)]).await;
            let got = rec.got.lock().unwrap().clone();
            assert_eq!(got[0].instance.project_id.as_deref(), Some(PROJECT));
        }
    }

    #[tokio::test]
    async fn a_catch_up_retires_vanished_and_shut_off_domains_and_is_timed() {
        let (gone, off, on) = (dom(10), dom(11), dom(12));
        let (mut p, _, dir) = pipeline(Ledger::in_memory());
        feed(
            &mut p,
            listing(&[(gone.clone(), false), (off.clone(), false)]),
        )
        .await;
        assert_eq!(dir.stats().retired, 0);
        let mut items = vec![Item::Connected {
            generation: 3,
            uri: "test:///x".into(),
        }];
        let mut second = listing(&[(off.clone(), false), (on.clone(), false)]);
        if let Item::InitDomain(info) = &mut second[1] {
            info.id = None; // shut off now
        }
        items.extend(second);
        feed(&mut p, items).await;
        let stats = dir.stats();
        assert_eq!((stats.entries, stats.retired), (3, 2), "{stats:?}");
        assert_eq!(p.stats().catch_ups, 2);
        assert!(p.stats().last_catch_up.is_some());
    }
}
