//! systemd's service protocol for `wdguard watch` (`Type=notify`,
//! `WatchdogSec=`), over the `sd-notify` crate.
//!
//! * `READY=1` once the first catch-up listing is done: from then on no
//!   watchdog event is missed.
//! * `WATCHDOG=1` at every [`Pulse::Tick`] of the pipeline's core loop, every
//!   half of `WATCHDOG_USEC`, as `sd_watchdog_enabled(3)` advises. The ticks
//!   come from the loop itself (see `wd_compute::pulse`), so a stuck loop
//!   stops the pings and systemd restarts the agent.
//! * `EXTEND_TIMEOUT_USEC` at each tick before `READY=1`: while libvirt is
//!   unreachable at start, a live loop keeps the start job from timing out.
//! * `STATUS=` lines saying what the agent is doing, and `STOPPING=1`.
//!
//! Without `NOTIFY_SOCKET` (not started by systemd) all of this is off.

use std::sync::Mutex;
use std::time::Duration;

use sd_notify::NotifyState;
use wd_compute::{Pulse, PulseHook};

/// The environment variable systemd sets to its notification socket.
pub const NOTIFY_SOCKET_ENV: &str = "NOTIFY_SOCKET";

/// How often the loop reports when systemd wants no watchdog pings: for
/// the `STATUS=` line only.
const STATUS_INTERVAL: Duration = Duration::from_secs(15);

/// Sends states, logging (once) a failure to reach the socket: the agent's
/// job is the guests, not systemd, so it goes on.
fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::debug!(error = %e, "cannot notify systemd");
    }
}

/// What the hook remembers between pulses.
#[derive(Debug, Default)]
struct State {
    ready: bool,
    last_status: String,
}

/// Tells systemd that the agent is starting: `STATUS=` with the URI.
pub fn starting(uri: &str) {
    if std::env::var_os(NOTIFY_SOCKET_ENV).is_some() {
        send(&[NotifyState::Status(&format!(
            "connecting to libvirt at {uri}"
        ))]);
    }
}

/// Tells systemd that the agent is stopping.
pub fn stopping() {
    if std::env::var_os(NOTIFY_SOCKET_ENV).is_some() {
        send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }
}

/// The watchdog timeout systemd asked for (`WATCHDOG_USEC`, for this
/// process per `WATCHDOG_PID`), if any.
pub fn watchdog_timeout() -> Option<Duration> {
    let mut usec = 0;
    (sd_notify::watchdog_enabled(false, &mut usec) && usec > 0).then(|| Duration::from_micros(usec))
}

/// The pulse hook that speaks systemd's protocol, or `None` when the agent
/// was not started by systemd (no `NOTIFY_SOCKET`).
pub fn hook() -> Option<PulseHook> {
    std::env::var_os(NOTIFY_SOCKET_ENV)?;
    let watchdog = watchdog_timeout();
    let interval = watchdog.map_or(STATUS_INTERVAL, |t| t / 2);
    if let Some(t) = watchdog {
        tracing::info!(
            timeout_ms = t.as_millis() as u64,
            "systemd watchdog on; pinging from the core loop"
        );
    }
    let state = Mutex::new(State::default());
    Some(PulseHook::new(interval, move |pulse| {
        let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
        on_pulse(&mut st, pulse, watchdog, interval);
    }))
}

fn on_pulse(st: &mut State, pulse: Pulse, watchdog: Option<Duration>, interval: Duration) {
    match pulse {
        Pulse::CaughtUp { domains, .. } => {
            let status = format!("watching {domains} domain(s)");
            if st.ready {
                send(&[NotifyState::Status(&status)]);
            } else {
                st.ready = true;
                send(&[NotifyState::Ready, NotifyState::Status(&status)]);
            }
            st.last_status = status;
        }
        Pulse::Disconnected { .. } => {
            let status = "libvirt connection lost; reconnecting".to_owned();
            send(&[NotifyState::Status(&status)]);
            st.last_status = status;
        }
        Pulse::Tick { stats, connected } => {
            let mut states = Vec::with_capacity(3);
            if watchdog.is_some() {
                states.push(NotifyState::Watchdog);
            }
            let extend = u32::try_from((interval * 3).as_micros()).unwrap_or(u32::MAX);
            if !st.ready {
                states.push(NotifyState::ExtendTimeoutUsec(extend));
            }
            let status = if connected {
                format!(
                    "watching; {} firings, {} notifications accepted, {} refused",
                    stats.firings, stats.accepted, stats.delivery_errors
                )
            } else if st.ready {
                "libvirt connection lost; reconnecting".to_owned()
            } else {
                "waiting for libvirt".to_owned()
            };
            let changed = status != st.last_status;
            if changed {
                states.push(NotifyState::Status(&status));
            }
            if !states.is_empty() {
                send(&states);
            }
            if changed {
                st.last_status = status;
            }
        }
        _ => {}
    }
}
