//! Mapping a domain to its instance and owner.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

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
}

/// The built-in directory: reads Nova's libvirt metadata
/// (`<nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">`,
/// with `<nova:name>` and `<nova:owner>`) and caches it per domain UUID. The
/// instance UUID is the domain UUID.
#[derive(Debug, Default)]
pub struct NovaDirectory {
    cache: Mutex<HashMap<Uuid, Option<Owner>>>,
    unknown: AtomicU64,
}

impl NovaDirectory {
    /// An empty directory.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many lookups found no owner.
    pub fn unknown_owner_count(&self) -> u64 {
        self.unknown.load(Ordering::Relaxed)
    }

    /// How many domains are cached.
    pub fn len(&self) -> usize {
        self.cache.lock().map(|c| c.len()).unwrap_or(0)
    }

    /// Whether no domain is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Reads the owner from Nova's metadata in a domain XML; `None` when there is
/// no (complete) Nova metadata.
pub fn nova_owner(xml: &str) -> Option<Owner> {
    let meta = wd_xml::NovaMetadata::parse(xml).ok()??;
    Some(Owner {
        display_name: meta.instance_name,
        project_id: meta.project_uuid?,
        user_id: meta.user_uuid,
    })
}

impl InstanceDirectory for NovaDirectory {
    fn observe(&self, domain: &DomainId, xml: &str) {
        let owner = nova_owner(xml);
        if owner.is_none() {
            tracing::debug!(domain = %domain, "no Nova owner metadata in domain XML");
        }
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(domain.uuid, owner);
        }
    }

    fn lookup(&self, domain: &DomainId) -> Option<Owner> {
        let owner = self
            .cache
            .lock()
            .ok()
            .and_then(|c| c.get(&domain.uuid).cloned().flatten());
        if owner.is_none() {
            self.unknown.fetch_add(1, Ordering::Relaxed);
        }
        owner
    }
}
