//! The pipeline's pulse: what its loop reports to a supervisor, such as
//! systemd's readiness and watchdog protocol (`wdguard watch` turns pulses
//! into `READY=1`, `WATCHDOG=1` and `STATUS=` lines).
//!
//! A [`Pulse::Tick`] is produced by the pipeline's own loop, between two
//! items, never by a timer task beside it: when the loop is stuck (a ledger
//! write that never returns), or a firing it handed over has not been
//! accepted within one tick interval (a delivery layer that never accepts),
//! the ticks stop, and a supervisor that forwards them as watchdog pings
//! stops pinging and restarts the process. A live timer thread proves
//! nothing; a tick proves the loop went round and its deliveries move.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::pipeline::PipelineStats;

/// One report from the pipeline's loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Pulse {
    /// A catch-up listing finished (after every connect): every event from
    /// now on is seen. The first one since start means the agent is ready.
    CaughtUp {
        /// The connection generation (1 for the first connection).
        generation: u64,
        /// How many domains were listed.
        domains: usize,
    },
    /// The connection to libvirt was lost; the listener reconnects.
    Disconnected {
        /// The generation that was lost.
        generation: u64,
    },
    /// The loop went round: sent every [`PulseHook::interval`] while the
    /// loop is free to take items and no firing it handed over has waited
    /// longer than an interval for the delivery layer; never while it is
    /// stuck.
    Tick {
        /// The pipeline's counters so far.
        stats: PipelineStats,
        /// Whether the listener is connected and caught up.
        connected: bool,
    },
}

/// Where the pipeline sends its [`Pulse`]s, and how often it ticks.
///
/// The callback runs on the pipeline's task: it must be quick and must not
/// block (a datagram to a local socket is fine).
#[derive(Clone)]
pub struct PulseHook {
    /// How often the loop sends [`Pulse::Tick`] (at least 10 ms).
    pub interval: Duration,
    /// The callback.
    pub on_pulse: Arc<dyn Fn(Pulse) + Send + Sync>,
}

impl PulseHook {
    /// A hook that calls `on_pulse` for every pulse, ticking every
    /// `interval`.
    pub fn new(interval: Duration, on_pulse: impl Fn(Pulse) + Send + Sync + 'static) -> Self {
        PulseHook {
            interval: interval.max(Duration::from_millis(10)),
            on_pulse: Arc::new(on_pulse),
        }
    }
}

impl fmt::Debug for PulseHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PulseHook")
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}
