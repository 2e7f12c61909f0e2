//! The libvirt event listener: turns libvirt's watchdog and lifecycle
//! callbacks into a dependable async stream of owned Rust values.
//!
//! This crate knows libvirt and nothing about notifications: it must never
//! depend on `wd-notify` or its transports. It is the only crate in the
//! workspace allowed `unsafe`, and all of it lives in one module (`ffi`).
//!
//! # What the stream gives
//!
//! [`listen`] connects to a URI (by default `qemu:///system`) and yields
//! [`Item`]s:
//!
//! * [`Item::Watchdog`]: a firing, with the domain's UUID and name, the
//!   action ([`Enum<WatchdogAction>`](WatchdogAction), `Known` or
//!   `Unknown(raw)`), when it was received, a sequence number, the
//!   connection generation, whether it was seen live or recovered, and its
//!   episode id.
//! * [`Item::Lifecycle`]: a domain was defined, started, paused, resumed,
//!   stopped, undefined, ... (event and detail, `Known`/`Unknown` too), with
//!   the XML of defined and started domains so a consumer can cache owners.
//! * Connection state: [`Item::Connected`], [`Item::Disconnected`],
//!   [`Item::ConnectFailed`]; and [`Item::Error`] for a failure worked
//!   around. Errors never end the stream.
//! * After every connect, a catch-up bracketed by [`Item::InitStart`] and
//!   [`Item::InitDone`]: every domain with its state ([`Item::InitDomain`]),
//!   then the watchdog pauses that happened while disconnected, as recovered
//!   firings. A domain's XML comes with it only when it matters: an active
//!   domain whose XML this listener has not handed out since it started, or
//!   one paused by its watchdog. A shut-off domain costs nothing but its
//!   entry in the listing; its XML comes with its `started` event. The
//!   duration is logged and kept in [`EventStream::stats`].
//!
//! ```no_run
//! use futures::StreamExt;
//! use wd_events::{Item, ListenerConfig};
//!
//! # async fn run() -> wd_events::Result<()> {
//! let mut events = wd_events::listen(ListenerConfig::default())?;
//! while let Some(item) = events.next().await {
//!     if let Item::Watchdog(firing) = item {
//!         println!("{} fired: {} ({}, episode {})",
//!             firing.domain, firing.action, firing.origin, firing.episode);
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # Once per firing
//!
//! A `pause` firing leaves the guest paused (reason `watchdog`) until it is
//! resumed or stopped; that is one *episode*, reported exactly once, with
//! the same [`WatchdogEvent::episode`] whether it was seen live, recovered by
//! a catch-up, or both, across any number of reconnects. Other actions are
//! one episode per firing.
//!
//! # What cannot be recovered
//!
//! libvirt does not queue events for absent clients: a firing while the
//! listener is disconnected is only found if it left state behind. A `pause`
//! does (the domain stays paused with reason `watchdog`), so the catch-up
//! reports it. (libvirtd learns of a pause that happened while *it* was
//! down only when it reconnects to QEMU, and it emits no event for that:
//! the settle listings after each catch-up,
//! [`ListenerConfig::settle_interval`], list the domains again, markers
//! included, until libvirtd is no longer busy with any of them, and a
//! periodic re-check, [`ListenerConfig::recheck_interval`], repeats that
//! search while connected.) `reset`, `none`, `debug` and `inject-nmi` leave the guest
//! running as if nothing happened, and `poweroff`/`shutdown` leave a shut-off
//! domain indistinguishable from any other stop: those firings are lost
//! while disconnected. Also undetectable: a guest paused by its watchdog,
//! resumed and paused by it again, all while disconnected and without a
//! restart of the domain, looks like the first pause and is not reported
//! again. Episode ids live in memory: after a restart of the process, a
//! pause found by the first catch-up is reported again (as recovered) with a
//! new episode id; consumers that must not repeat it across restarts keep
//! their own record of (domain UUID, pause) they have handled.
//!
//! # Thread model
//!
//! * **`wd-libvirt-loop`** (one per process, started by
//!   [`init_event_loop`]) runs `virEventRunDefaultImpl` forever. libvirt
//!   runs every callback here: domain events, the close callback,
//!   keepalive. Callbacks only copy data into owned values and put them in
//!   the listener's inbox; they never block. The inbox is bounded by folding
//!   a domain's redundant lifecycle events once it is full; watchdog
//!   firings and pause episodes are never folded (see [`ListenerStats`]).
//!   One shortcut: while the `wd-events` thread waits with nothing in hand
//!   and the consumer has room, a live event that needs no domain XML (a
//!   firing, and every lifecycle event but `defined` and `started`) is
//!   turned into its [`Item`] right in the callback, under the inbox's
//!   lock, and handed to the consumer: one thread wake-up less on a
//!   firing's way, in the same order ([`ListenerStats::direct`] counts
//!   them).
//! * **`wd-events`** (one per listener, started by [`listen`]) owns the
//!   connection and the state machine: it connects, registers, lists
//!   domains, fetches XML, backs off between attempts, turns the callbacks'
//!   messages into [`Item`]s and sends them to the consumer. It makes all
//!   the blocking libvirt calls, so the loop thread never waits on libvirt
//!   or on the consumer. This thread never waits for the consumer either:
//!   while [`ListenerConfig::channel_capacity`] items wait, it stops taking
//!   events from the inbox (which then folds) and starts no catch-up, but
//!   its liveness checks and re-checks keep their schedule.
//! * **The consumer** polls the [`EventStream`] on any async runtime.
//!   Dropping the stream stops the `wd-events` thread, which deregisters
//!   and closes its connection; the drop waits (up to 2 s) until the
//!   thread has ended, so that a process exiting next never exits while
//!   that thread is inside libvirt (the libraries' exit handlers, OpenSSL's
//!   among them, would race it and could kill the process with a signal).
//!
//! `virEventRegisterDefaultImpl` must run before any connection in the
//! process is opened. [`listen`] and [`register`] see to it for their own
//! connections; an application that opens other libvirt connections should
//! call [`init_event_loop`] first thing.
//!
//! # Reconnecting
//!
//! Keepalive (`virConnectSetKeepAlive`) and the close callback detect a
//! lost connection (libvirtd restarted: `eof`; unresponsive: `keepalive`),
//! backed by a periodic `virConnectIsAlive`. The listener then reconnects
//! with capped exponential backoff and jitter ([`Backoff`] from
//! `wd-backoff`: 0.8 s doubling to 30 s, each wait drawn from its upper half,
//! reset after two minutes of health), so it never spins
//! while libvirtd is down, registers again, and catches up. For a local
//! URI it also probes the daemon's Unix socket while it waits
//! ([`ListenerConfig::socket_probe_interval`], 100 ms: one `connect(2)`),
//! and reconnects as soon as the socket accepts again: back within about
//! a probe interval of libvirtd's return, however long it was away. For a
//! remote URI (`qemu+tcp://`, `qemu+tls://`) it probes the server's TCP port
//! the same way, at most every half second.
//!
//! # Remote libvirt and credentials
//!
//! Every connection is opened with `virConnectOpenAuth`. A server that asks
//! for credentials (SASL over `qemu+tcp://` or `qemu+tls://`) gets what
//! libvirt's own client file `auth.conf` holds for it (see [`auth_file`]),
//! then what [`ListenerConfig::credentials`] gives; anything still missing
//! fails the connection with [`Error::Credentials`], naming it. Nothing ever
//! prompts, so a daemon never blocks on a terminal.
#![deny(unsafe_code)]

mod backend;
mod config;
mod credentials;
mod error;
#[allow(unsafe_code)]
mod ffi;
mod inbox;
mod kinds;
mod listener;
mod machine;
mod model;
mod probe;
mod socket;

pub use config::ListenerConfig;
pub use credentials::{Credentials, auth_file};
pub use error::{Error, Result};
pub use ffi::{Registration, init_event_loop, register};
pub use inbox::ListenerStats;
pub use kinds::{
    CEnum, CloseReason, CrashedDetail, DefinedDetail, DomainState, Enum, Lifecycle,
    LifecycleDetail, PAUSED_REASON_WATCHDOG, PmSuspendedDetail, ResumedDetail, ShutdownDetail,
    StartedDetail, StoppedDetail, SuspendedDetail, UndefinedDetail, WatchdogAction,
};
#[cfg(any(test, feature = "mock"))]
pub use listener::MockEventSource;
pub use listener::{EventSource, EventStream, listen};
pub use machine::{RawEvent, RawKind};
pub use model::{
    DisconnectReason, DomainId, DomainInfo, Item, LifecycleEvent, Origin, WatchdogEvent,
};
pub use probe::{library_version, probe, quiet_default_errors};
pub use wd_backoff::Backoff;
