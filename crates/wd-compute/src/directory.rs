//! Mapping a domain to its instance and owner.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use uuid::Uuid;
use wd_events::DomainId;

/// An instance and its owner, as a notification needs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// The instance's display name, when known.
    pub display_name: Option<String>,
    /// The owning project (tenant) id.
    pub project_id: String,
    /// The owning user id, when known.
    pub user_id: Option<String>,
    /// The instance's flavor, when the metadata names one.
    pub flavor: Option<wd_notify::Flavor>,
    /// The instance's image, when the metadata names one.
    pub image: Option<wd_notify::Image>,
}

/// Maps a domain to the owner of the instance it runs.
///
/// The pipeline feeds it every domain XML it sees (the catch-up listing, and
/// `defined`/`started` lifecycle events), so that a lookup on the hot path
/// never needs a libvirt round-trip and still works after a transient domain
/// has vanished (with `poweroff`, libvirt drops it at once).
pub trait InstanceDirectory: Send + Sync {
    /// Records what `xml` says about `domain`'s owner.
    fn observe(&self, domain: &DomainId, xml: &str);

    /// The owner of `domain`, or `None` when it is unknown. An unknown owner
    /// means the notification goes to operator channels only.
    fn lookup(&self, domain: &DomainId) -> Option<Owner>;

    /// `domain` stopped, was undefined, or is gone: its entry may be
    /// forgotten later (see [`DirectoryConfig::retire_after`]) unless it is
    /// observed again first. The default keeps everything.
    fn retire(&self, domain: &DomainId) {
        let _ = domain;
    }

    /// A complete catch-up listing ended: every cached domain for which
    /// `listed` is false is gone and is retired. The default does nothing.
    fn retire_unlisted(&self, listed: &dyn Fn(&Uuid) -> bool) {
        let _ = listed;
    }
}

/// Bounds of a [`NovaDirectory`].
///
/// ```
/// use std::time::Duration;
/// use wd_compute::directory::DirectoryConfig;
///
/// let config = DirectoryConfig::default()
///     .retire_after(Duration::from_secs(60))
///     .max_entries(1_000);
/// assert_eq!(config.max_entries, 1_000);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectoryConfig {
    /// How long the entry of a stopped, undefined or vanished domain is
    /// kept. The cache keeps entries past `undefined` on purpose: a
    /// `poweroff` firing of a transient domain is followed at once by the
    /// domain's disappearance, and the notification (built after the
    /// lifecycle events were seen, when the listener or the pipeline is
    /// behind) still needs the owner. A started domain's XML is fetched again
    /// on `started`, so a forgotten entry comes back when it matters.
    /// Default: 60 s, far longer than the pipeline takes to reach a firing
    /// queued before the domain's stop.
    pub retire_after: Duration,
    /// The most entries kept. Beyond it, retired entries go first (oldest
    /// first), then the least recently observed. Far above any host's
    /// domain count, so that it only ever bites on pathological churn.
    pub max_entries: usize,
}

impl Default for DirectoryConfig {
    fn default() -> Self {
        DirectoryConfig {
            retire_after: Duration::from_secs(60),
            max_entries: 16_384,
        }
    }
}

impl DirectoryConfig {
    /// Sets how long a retired entry is kept.
    #[must_use]
    pub fn retire_after(mut self, grace: Duration) -> Self {
        self.retire_after = grace;
        self
    }

    /// Sets the most entries kept (at least 1).
    #[must_use]
    pub fn max_entries(mut self, max: usize) -> Self {
        self.max_entries = max.max(1);
        self
    }
}

/// `[directory]` in the agent's configuration file: the bounds of the
/// owner cache. Every key is optional; unknown keys are errors.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectorySettings {
    /// How long a stopped, undefined or vanished domain's owner is kept, in
    /// seconds [default 60].
    pub retire_after_secs: Option<f64>,
    /// The most domains cached [default 16384].
    pub max_entries: Option<usize>,
}

impl DirectorySettings {
    /// The checked bounds.
    ///
    /// # Errors
    ///
    /// A [`SettingsError`](wd_notify::settings::SettingsError) naming the
    /// key out of range.
    pub fn config(&self) -> Result<DirectoryConfig, wd_notify::settings::SettingsError> {
        use wd_notify::settings::{MAX_SECS, SettingsError, seconds};
        let mut c = DirectoryConfig::default();
        if let Some(v) = self.retire_after_secs {
            c = c.retire_after(seconds("directory.retire_after_secs", v, MAX_SECS)?);
        }
        match self.max_entries {
            Some(0) => {
                return Err(SettingsError::key(
                    "directory.max_entries",
                    "must be at least 1, not 0",
                ));
            }
            Some(n) => c = c.max_entries(n),
            None => {}
        }
        Ok(c)
    }
}

/// What a [`NovaDirectory`] holds and has done, for logs and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirectoryStats {
    /// Domains cached now.
    pub entries: usize,
    /// Of those, retired ones waiting out their grace period.
    pub retired: usize,
    /// Entries forgotten after their grace period.
    pub evicted_expired: u64,
    /// Entries forgotten because the directory was full.
    pub evicted_full: u64,
    /// Lookups that found no owner.
    pub unknown_owner: u64,
}

#[derive(Debug)]
struct Entry {
    owner: Option<Owner>,
    /// The entry's key in `Cache::order` (its last observation).
    touched: u64,
    /// When it was retired; `None` while the domain is in use.
    retired_at: Option<Instant>,
}

#[derive(Debug, Default)]
struct Cache {
    entries: HashMap<Uuid, Entry>,
    /// Observation order: the oldest observation first.
    order: BTreeMap<u64, Uuid>,
    /// Retirements in the order they happened (so, with one grace period,
    /// in the order they expire). An item is stale when its entry has been
    /// observed again or retired again since.
    retired: VecDeque<(Instant, Uuid)>,
    retired_now: usize,
    next: u64,
    evicted_expired: u64,
    evicted_full: u64,
}

impl Cache {
    fn remove(&mut self, uuid: &Uuid) {
        if let Some(e) = self.entries.remove(uuid) {
            self.order.remove(&e.touched);
            if e.retired_at.is_some() {
                self.retired_now = self.retired_now.saturating_sub(1);
            }
        }
    }

    /// Whether the queued retirement `(at, uuid)` is the entry's current one.
    fn is_current(&self, at: Instant, uuid: &Uuid) -> bool {
        self.entries
            .get(uuid)
            .is_some_and(|e| e.retired_at == Some(at))
    }

    /// Forgets the entries whose grace period is over at `now`, and drops
    /// stale queue items from the front.
    fn expire(&mut self, now: Instant, grace: Duration) {
        while let Some(&(at, uuid)) = self.retired.front() {
            let current = self.is_current(at, &uuid);
            if current && now.saturating_duration_since(at) < grace {
                break;
            }
            self.retired.pop_front();
            if current {
                self.remove(&uuid);
                self.evicted_expired += 1;
            }
        }
        shrink(&mut self.entries);
        if self.retired.capacity() > 64 && self.retired.len() * 4 < self.retired.capacity() {
            self.retired.shrink_to(self.retired.len() * 2);
        }
        // Stale items (entries observed again) are dropped above only when
        // they reach the front; bound them by compacting when they dominate.
        if self.retired.len() > 64 && self.retired.len() > 2 * self.retired_now {
            let entries = &self.entries;
            self.retired
                .retain(|(at, uuid)| entries.get(uuid).is_some_and(|e| e.retired_at == Some(*at)));
        }
    }

    /// Makes room for one more entry.
    fn make_room(&mut self, max: usize) {
        while self.entries.len() >= max {
            // The oldest retirement first, then the oldest observation.
            let victim = loop {
                match self.retired.pop_front() {
                    Some((at, uuid)) if self.is_current(at, &uuid) => break Some(uuid),
                    Some(_) => continue,
                    None => break self.order.values().next().copied(),
                }
            };
            let Some(uuid) = victim else { return };
            self.remove(&uuid);
            self.evicted_full += 1;
        }
    }
}

/// Gives memory back after a wave of churn: a map keeps its largest
/// capacity otherwise.
fn shrink<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>) {
    if map.capacity() > 64 && map.len() * 4 < map.capacity() {
        map.shrink_to(map.len() * 2);
    }
}

/// The built-in directory: reads Nova's libvirt metadata
/// (`<nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">`,
/// with `<nova:name>`, `<nova:owner>`, `<nova:flavor>` and `<nova:image>`) and caches it per domain UUID. The
/// instance UUID is the domain UUID.
///
/// It is bounded: the entry of a retired domain (stopped, undefined, or
/// missing from a catch-up listing) is forgotten after
/// [`DirectoryConfig::retire_after`], and there are never more than
/// [`DirectoryConfig::max_entries`]. Both evictions are counted
/// ([`NovaDirectory::stats`]).
#[derive(Debug, Default)]
pub struct NovaDirectory {
    config: DirectoryConfig,
    cache: Mutex<Cache>,
    unknown: AtomicU64,
}

impl NovaDirectory {
    /// An empty directory with the default bounds.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty directory with these bounds.
    pub fn with_config(config: DirectoryConfig) -> Self {
        NovaDirectory {
            config: config.max_entries(config.max_entries),
            ..Self::default()
        }
    }

    fn cache(&self) -> MutexGuard<'_, Cache> {
        // The cache stays consistent at every await-free step; a panic
        // elsewhere while holding the lock leaves nothing half-done.
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many lookups found no owner.
    pub fn unknown_owner_count(&self) -> u64 {
        self.unknown.load(Ordering::Relaxed)
    }

    /// How many domains are cached.
    pub fn len(&self) -> usize {
        self.cache().entries.len()
    }

    /// Whether no domain is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What the directory holds and has evicted (expired entries are
    /// forgotten first).
    pub fn stats(&self) -> DirectoryStats {
        let mut cache = self.cache();
        cache.expire(Instant::now(), self.config.retire_after);
        DirectoryStats {
            entries: cache.entries.len(),
            retired: cache.retired_now,
            evicted_expired: cache.evicted_expired,
            evicted_full: cache.evicted_full,
            unknown_owner: self.unknown_owner_count(),
        }
    }

    fn observe_at(&self, domain: &DomainId, owner: Option<Owner>, now: Instant) {
        let mut cache = self.cache();
        cache.expire(now, self.config.retire_after);
        let touched = cache.next;
        cache.next += 1;
        if let Some(e) = cache.entries.get_mut(&domain.uuid) {
            let old = std::mem::replace(&mut e.touched, touched);
            let was_retired = e.retired_at.take().is_some();
            e.owner = owner;
            cache.order.remove(&old);
            if was_retired {
                cache.retired_now = cache.retired_now.saturating_sub(1);
            }
        } else {
            cache.make_room(self.config.max_entries);
            cache.entries.insert(
                domain.uuid,
                Entry {
                    owner,
                    touched,
                    retired_at: None,
                },
            );
        }
        cache.order.insert(touched, domain.uuid);
    }

    fn retire_at(&self, uuid: &Uuid, now: Instant) {
        let mut cache = self.cache();
        cache.expire(now, self.config.retire_after);
        let Some(e) = cache.entries.get_mut(uuid) else {
            return;
        };
        if e.retired_at.is_some() {
            return;
        }
        e.retired_at = Some(now);
        cache.retired_now += 1;
        cache.retired.push_back((now, *uuid));
        // A zero grace period forgets at once.
        cache.expire(now, self.config.retire_after);
    }
}

/// Reads the owner from Nova's metadata in a domain XML, with the
/// instance's flavor and image where the metadata has them; `None` when
/// there is no (complete) Nova metadata.
pub fn nova_owner(xml: &str) -> Option<Owner> {
    let meta = wd_xml::NovaMetadata::parse(xml).ok()??;
    let f = meta.flavor;
    let flavor = wd_notify::Flavor {
        name: meta.flavor_name,
        id: f.id,
        memory_mb: f.memory_mb,
        vcpus: f.vcpus,
        root_gb: f.root_gb,
        ephemeral_gb: f.ephemeral_gb,
        swap_mb: f.swap_mb,
    };
    let i = meta.image;
    let image = wd_notify::Image {
        uuid: i.uuid,
        container_format: i.container_format,
        disk_format: i.disk_format,
        min_disk: i.min_disk,
        min_ram: i.min_ram,
    };
    Some(Owner {
        display_name: meta.instance_name,
        project_id: meta.project_uuid?,
        user_id: meta.user_uuid,
        flavor: (flavor != wd_notify::Flavor::default()).then_some(flavor),
        image: (image != wd_notify::Image::default()).then_some(image),
    })
}

impl InstanceDirectory for NovaDirectory {
    fn observe(&self, domain: &DomainId, xml: &str) {
        let owner = nova_owner(xml);
        if owner.is_none() {
            tracing::debug!(domain = %domain, "no Nova owner metadata in domain XML");
        }
        self.observe_at(domain, owner, Instant::now());
    }

    fn lookup(&self, domain: &DomainId) -> Option<Owner> {
        let owner = self
            .cache()
            .entries
            .get(&domain.uuid)
            .and_then(|e| e.owner.clone());
        if owner.is_none() {
            self.unknown.fetch_add(1, Ordering::Relaxed);
        }
        owner
    }

    fn retire(&self, domain: &DomainId) {
        self.retire_at(&domain.uuid, Instant::now());
    }

    fn retire_unlisted(&self, listed: &dyn Fn(&Uuid) -> bool) {
        let gone: Vec<Uuid> = self
            .cache()
            .entries
            .iter()
            .filter(|(uuid, e)| e.retired_at.is_none() && !listed(uuid))
            .map(|(uuid, _)| *uuid)
            .collect();
        let now = Instant::now();
        for uuid in &gone {
            self.retire_at(uuid, now);
        }
    }
}

#[cfg(test)]
mod tests;
