//! The watchdog notification model, the [`Notifier`] interface, and the
//! pieces that make delivery dependable: [`Router`] (one queue per
//! destination), [`Coalesce`] (storm control), [`Spool`] (a
//! durable write-ahead log, one per destination, whose worker is the
//! destination's retry loop), plus two transport-free notifiers, [`LogNotifier`] and
//! [`ChannelNotifier`].
//!
//! Architecture invariant: this crate knows nothing of libvirt or of any
//! network transport, and must never depend on them. Transports (webhooks,
//! the OpenStack message bus) live in their own crates and implement
//! [`Notifier`].
//!
//! # Recommended composition: one queue per destination
//!
//! Fan out first, then give every destination its own durable queue, whose
//! worker is the destination's one retry loop (Vector's model: one disk
//! buffer per sink). A [`Router`] does exactly that:
//!
//! ```text
//! event listener
//!   -> Coalesce                      one notification per window for a looping guest
//!                                    (a pause or poweroff always goes out at once)
//!   -> Router                        routes by owner; Ok once every matching queue has it on disk
//!        [ Spool(root/dest/operator-…) -> operator webhook,
//!          Spool(root/dest/project-…)  -> project A's endpoint,   only A's notifications
//!          Spool(root/dest/project-…)  -> project B's endpoint,   only B's notifications
//!          Spool(root/dest/bus-…)      -> amqp,
//!          Spool(root/dest/log-…)      -> log ]
//! ```
//!
//! Each queue has its own bounds, its own supervised worker and its own
//! retry delays and attempt timeout, all in its [`QueueConfig`] (a
//! `Retry-After` is clamped to [`QueueConfig::retry_max_delay`]), and keeps its own acks on disk: a
//! destination that hangs, fails, throttles or resets fills only its own
//! queue and delays no other, and after a restart a destination is offered
//! only what it has not taken. Directory names are a hash of the
//! destination's kind and key ([`Destination::dir_name`]), so nothing a
//! tenant controls reaches a path. Without a spool root the queues live in
//! memory ([`Spool::memory`]): a refused notification is still retried in
//! the background, bounded and counted, while the process runs.
//! [`Router::status`] gives each destination's backlog, drops, deliveries,
//! failures and last error.
//!
//! On shutdown call [`Coalesce::shutdown`] first (it flushes folded firings
//! into the queues), then [`Router::shutdown`] (or [`Spool::shutdown`] on a
//! lone spool).
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use wd_notify::*;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let root = tempfile::tempdir()?;
//! // Stands in for a project's webhook endpoint.
//! let (inbox, mut rx) = ChannelNotifier::channel(16);
//! let router = Arc::new(Router::open(
//!     Some(root.path()),
//!     vec![
//!         Destination::new("project p1", DestinationKind::Project,
//!                          Scope::Project("p1".into()), Arc::new(inbox)),
//!         Destination::new("log", DestinationKind::Log, Scope::All, Arc::new(LogNotifier::new())),
//!     ],
//!     &RouterDefaults {
//!         queue: QueueConfig::default().attempt_timeout(Duration::from_secs(10)),
//!     },
//! )?);
//! let storm = Coalesce::new(router.clone(), CoalesceConfig::default());
//!
//! let mut n = Notification::new(
//!     Instance::new(uuid::Uuid::new_v4()),
//!     "compute-1",
//!     Domain::new(uuid::Uuid::new_v4(), "instance-0000002a"),
//!     "reset",
//!     time::OffsetDateTime::now_utc(),
//! );
//! n.instance.project_id = Some("p1".into());
//! storm.notify(&n).await?; // durable in both queues once this returns
//! assert_eq!(rx.recv().await.unwrap().event_id, n.event_id);
//!
//! storm.shutdown().await?;
//! let stats = router.shutdown(Duration::from_secs(5)).await;
//! assert_eq!((stats[0].1.accepted, stats[0].1.delivered, stats[0].1.pending), (1, 1, 0));
//! # Ok(()) }
//! ```
//!
//! # The JSON form, version 1
//!
//! [`Notification::to_json`] and [`Notification::from_json`] use this form
//! (one object; the example is wrapped for reading):
//!
//! ```json
//! {"version":1,
//!  "event_id":"33333333-3333-4333-8333-333333333333",
//!  "instance":{"uuid":"11111111-1111-4111-8111-111111111111","name":"web-1",
//!              "project_id":"p1","user_id":null},
//!  "host":"compute-1",
//!  "domain":{"uuid":"22222222-2222-4222-8222-222222222222","name":"instance-0000002a"},
//!  "action":"reset",
//!  "fired_at":"2026-11-25T19:14:30.123456789Z",
//!  "recovered":false,
//!  "occurrences":{"count":1,"first_at":"2026-11-25T19:14:30.123456789Z",
//!                 "last_at":"2026-11-25T19:14:30.123456789Z"}}
//! ```
//!
//! | field | meaning |
//! |-------|---------|
//! | `version` | always `1` for this form ([`SCHEMA_VERSION`]) |
//! | `event_id` | UUID; the idempotency key: the same firing always carries the same id, across retries and restarts; deduplicate on it |
//! | `instance` | `uuid`; `name`, `project_id`, `user_id` are strings or `null` when unknown |
//! | `host` | the compute host |
//! | `domain` | the libvirt domain's `uuid` and `name`, and `id`, its runtime id when it fired (absent when unknown; it changes on every start of the domain) |
//! | `action` | libvirt's spelling: `none`, `pause`, `reset`, `poweroff`, `shutdown`, `debug`, `inject-nmi`, or `unknown-N` |
//! | `fired_at` | when the firing was observed: RFC 3339, UTC, up to nanoseconds; exact for a live firing |
//! | `fired_at_bound` | `"at_or_before"` when `fired_at` is only a bound (a firing found by a catch-up); absent when exact |
//! | `recovered` | `true` when found by catch-up after a reconnect or restart, not seen live |
//! | `occurrences` | `count` firings between `first_at` and `last_at`; `count` is 1 for a single firing and larger for a [`Coalesce`] follow-up |
//!
//! Compatibility rules: readers ignore fields they do not know; a new
//! optional field does not change `version`; a field that changes meaning
//! or goes away does. [`Notification::from_json`] rejects any version but 1.
//!
//! # The spool format
//!
//! A spool root (what `wdguard watch --spool` names) holds `LOCK`, the episode
//! ledger, and `dest/<kind>-<16 hex>/`, one spool directory per destination
//! ([`Destination::dir_name`]). A queue directory that no configured
//! destination owns is opened, paused, and reported by [`Router::status`]
//! as orphaned until its destination is configured again or it is dropped
//! ([`Router::drop_backlog`]).
//!
//! A spool directory holds segment files named `seg-XXXXXXXXXXXXXXXX.wal`
//! (16 lowercase hex digits, the segment id, increasing). Nothing else in
//! the directory is read. Each segment is:
//!
//! | offset | size | content |
//! |--------|------|---------|
//! | 0 | 8 | [`SEGMENT_MAGIC`], `WDSPOOL1` |
//! | 8 | … | records, back to back |
//!
//! Each record (all integers little-endian):
//!
//! | offset | size | field |
//! |--------|------|-------|
//! | 0 | 4 | [`RECORD_MAGIC`], `wdR1` |
//! | 4 | 4 | `len`: payload length, at most [`MAX_PAYLOAD`] (1 MiB) |
//! | 8 | 1 | `kind`: 1 = entry, 2 = ack |
//! | 9 | 8 | `seq`: the entry's sequence number, unique in the directory |
//! | 17 | 4 | CRC-32 (IEEE) of bytes 4..17 followed by the payload |
//! | 21 | `len` | payload: an entry's notification in the JSON form above; empty for an ack |
//!
//! Writing rules:
//!
//! - Entries are appended to the newest (active) segment; `notify` returns
//!   `Ok` only after `fdatasync` of that segment ([`SyncMode`]: one per
//!   entry, or shared by a group of concurrent callers).
//! - A new segment is written with its header (and, when recovering, its
//!   entries), `fsync`ed, and then the directory is `fsync`ed.
//! - An ack record is appended when an entry is delivered or dropped; acks
//!   are not synced on their own (a lost ack means a duplicate delivery with
//!   the same event id, never a loss).
//! - A segment is removed only when every entry in it is acked and every
//!   older segment is gone, so an ack never disappears before its entry.
//! - Compaction: when a closed segment is the oldest and at most a quarter
//!   of its entries are live, those entries are copied (same seq) into the
//!   active segment, synced, and only then is the old segment removed.
//!
//! Recovery ([`recover`] for one segment, [`scan`] for a directory, done by
//! [`Spool::open`]):
//!
//! - Segments are read oldest first. A record counts only if its magic,
//!   length, checksum, kind and payload are all valid.
//! - A damaged span (torn tail, flipped bytes, bad length) is skipped: the
//!   reader resynchronises at the next offset where a valid record starts,
//!   and reports the span ([`Skipped`]). It never fails and never panics.
//! - The same seq seen twice is one entry (a compaction copy). An entry is
//!   pending unless an ack with its seq exists in any segment.
//! - [`Spool::open`] then writes every pending entry into one new segment,
//!   syncs it and the directory, and removes the old segments; new seqs
//!   continue above the highest seen.
//!
//! Bounds: when more than [`QueueConfig::max_entries`] entries or
//! [`QueueConfig::max_bytes`] bytes wait, the oldest entries not being
//! delivered right now are dropped, each with a `warn` log and counted in
//! [`SpoolStats::dropped_full`]. Disk use is about the pending bytes plus up
//! to a few segments of acked records awaiting removal.
#![forbid(unsafe_code)]

mod builtin;
mod coalesce;
mod error;
mod kind;
mod model;
mod notifier;
mod redact;
mod router;
pub mod settings;
mod spool;
pub mod stages;
#[cfg(any(test, feature = "mock"))]
pub mod testing;

pub use builtin::{ChannelNotifier, LogNotifier};
pub use coalesce::{Coalesce, CoalesceConfig, CoalesceStats};
pub use error::{Error, Result, error_chain};
pub use kind::{CertificateError, ConfigurationError, FailureKind};
pub use model::{
    Domain, FiredAtBound, Flavor, Image, Instance, Notification, Occurrences, SCHEMA_VERSION,
};
#[cfg(feature = "mock")]
pub use notifier::MockNotifier;
pub use notifier::{BoxError, Notifier, NotifyError};
pub use redact::redact_url;
pub use router::{
    DeliveryObserver, Destination, DestinationKind, DestinationState, DestinationStatus,
    Reconfigured, Router, RouterDefaults, Scope,
};
/// The file-system seam of the spool, also used by the episode ledger.
pub use spool::disk::{RealFs, SpoolFile, SpoolFs};
/// Fault injection for the spool's file-system calls (feature
/// `fault-injection`): a model of what a power cut keeps, for crash tests
/// that a `SIGKILL` cannot make (it keeps the page cache), and a file
/// system that fails on demand (`ENOSPC`, `EIO`, `EROFS` on write, sync or
/// creation) or syncs slowly.
#[cfg(feature = "fault-injection")]
pub mod fault {
    pub use crate::spool::disk::{FsOp, PowerCut, RealFs, SimFs, SpoolFile, SpoolFs};
    pub use crate::spool::faulty::{Faults, FaultyFs};
}

pub use spool::{
    MAX_PAYLOAD, QueueConfig, RECORD_HEADER_LEN, RECORD_MAGIC, Record, RecordBody, RecoveryReport,
    SEGMENT_MAGIC, ScanReport, SkipReason, Skipped, Spool, SpoolStats, SyncMode, drop_queue_dir,
    recover, scan, writer_exits,
};
