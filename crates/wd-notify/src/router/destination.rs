//! What a destination is ([`Destination`], [`DestinationKind`], its
//! [`Scope`])
//! and what the router reports about it ([`DestinationStatus`]).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::kind::FailureKind;
use crate::model::Notification;
use crate::notifier::Notifier;
use crate::spool::QueueConfig;

/// What kind of destination a queue feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DestinationKind {
    /// An operator channel: receives every notification.
    Operator,
    /// A project's (tenant's) own endpoint: only its project's notifications.
    Project,
    /// The message bus (AMQP).
    Bus,
    /// The agent's own log.
    Log,
}

impl DestinationKind {
    /// The lowercase name: `operator`, `project`, `bus` or `log`.
    pub fn as_str(self) -> &'static str {
        match self {
            DestinationKind::Operator => "operator",
            DestinationKind::Project => "project",
            DestinationKind::Bus => "bus",
            DestinationKind::Log => "log",
        }
    }

    /// The kind named `s` (as [`DestinationKind::as_str`] spells it).
    pub fn parse(s: &str) -> Option<DestinationKind> {
        [
            DestinationKind::Operator,
            DestinationKind::Project,
            DestinationKind::Bus,
            DestinationKind::Log,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

impl fmt::Display for DestinationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which notifications a destination receives.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Scope {
    /// Every notification (operator channels, the bus, the log).
    All,
    /// Only notifications whose instance belongs to exactly this project
    /// (case-sensitive). A notification with no known owner never matches.
    Project(String),
}

impl Scope {
    /// Whether `n` goes to a destination with this scope.
    pub fn matches(&self, n: &Notification) -> bool {
        match self {
            Scope::All => true,
            Scope::Project(p) => n.instance.project_id.as_deref() == Some(p.as_str()),
        }
    }
}

/// One destination: where it delivers, what it receives, and its own
/// queue bounds and retries.
pub struct Destination {
    /// The name in logs and status (never a secret; URLs redacted).
    pub name: String,
    /// What kind it is.
    pub kind: DestinationKind,
    /// Which notifications it receives.
    pub scope: Scope,
    /// The notifier.
    pub notifier: Arc<dyn Notifier>,
    /// A stable identity, from which the queue's directory name is derived
    /// (hashed, so nothing tenant-controlled reaches a path). It must not
    /// change between runs, or the queue's backlog is left behind. Defaults
    /// to `name`.
    pub key: String,
    /// Its queue's bounds and retry delays (`retry_max_delay` is also the
    /// most its `Retry-After` is honoured); `None` takes the router's
    /// default.
    pub queue: Option<QueueConfig>,
}

impl From<(String, Arc<dyn Notifier>)> for Destination {
    /// An operator destination that receives every notification.
    fn from((name, notifier): (String, Arc<dyn Notifier>)) -> Self {
        Destination::new(name, DestinationKind::Operator, Scope::All, notifier)
    }
}

impl fmt::Debug for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Destination")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl Destination {
    /// A destination with default queue and retry settings.
    pub fn new(
        name: impl Into<String>,
        kind: DestinationKind,
        scope: Scope,
        notifier: Arc<dyn Notifier>,
    ) -> Self {
        let name = name.into();
        Destination {
            key: name.clone(),
            name,
            kind,
            scope,
            notifier,
            queue: None,
        }
    }

    /// Sets [`Destination::key`].
    #[must_use]
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = key.into();
        self
    }

    /// Sets [`Destination::queue`].
    #[must_use]
    pub fn queue(mut self, config: QueueConfig) -> Self {
        self.queue = Some(config);
        self
    }

    /// The queue's directory under a spool root: `dest/<kind>-<hash>`, where
    /// the hash (FNV-1a, 64 bits, hex) is of the kind and the key.
    pub fn dir_name(&self) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self
            .kind
            .as_str()
            .bytes()
            .chain([0])
            .chain(self.key.bytes())
        {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        format!("{}-{h:016x}", self.kind)
    }
}

/// Where a destination stands in the router.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DestinationState {
    /// Configured: takes new notifications and delivers them.
    Active,
    /// Removed from the configuration: takes nothing new and sends
    /// nothing; its backlog waits on disk until [`Router::drain`] or
    /// [`Router::drop_backlog`] (or until it is configured again).
    ///
    /// [`Router::drain`]: crate::Router::drain
    /// [`Router::drop_backlog`]: crate::Router::drop_backlog
    Retired,
    /// Removed, and told to deliver its backlog with the settings it had;
    /// it leaves the router once that backlog is empty.
    Draining,
    /// A queue found on disk at start that no configured destination owns
    /// (its destination was removed while the agent was down). Nothing can
    /// deliver it; it waits until a destination with its identity is
    /// configured again, or [`Router::drop_backlog`].
    ///
    /// [`Router::drop_backlog`]: crate::Router::drop_backlog
    Orphaned,
}

impl DestinationState {
    /// The lowercase name: `active`, `retired`, `draining` or `orphaned`.
    pub fn as_str(self) -> &'static str {
        match self {
            DestinationState::Active => "active",
            DestinationState::Retired => "retired",
            DestinationState::Draining => "draining",
            DestinationState::Orphaned => "orphaned",
        }
    }
}

impl fmt::Display for DestinationState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One destination's state: its queue, its deliveries, its failures. The
/// one status type of a destination; metrics, `wdguard status` and the
/// health line all read it from [`Router::status`](crate::Router::status).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DestinationStatus {
    /// The destination's name.
    pub name: String,
    /// Its kind.
    pub kind: DestinationKind,
    /// Where it stands: active, or removed with a backlog.
    pub state: DestinationState,
    /// Its queue's directory name ([`Destination::dir_name`]).
    pub dir: String,
    /// Entries waiting in its queue.
    pub backlog: u64,
    /// Bytes waiting in its queue.
    pub bytes: u64,
    /// How long its oldest waiting entry has waited.
    pub oldest: Option<Duration>,
    /// Entries dropped because the queue was full.
    pub dropped_full: u64,
    /// Entries dropped because delivery failed permanently.
    pub dropped_permanent: u64,
    /// Entries delivered since start.
    pub delivered: u64,
    /// Failed delivery attempts since start, whatever the kind.
    pub failed: u64,
    /// Times its worker panicked and was restarted.
    pub worker_restarts: u64,
    /// Its last failure with the cause chain, redacted by the transport.
    pub last_error: Option<String>,
    /// When the last failure happened and its kind.
    pub last_failure: Option<(time::OffsetDateTime, FailureKind)>,
}
