//! libvirt's C enums as Rust enums, each behind a [`Enum`] `Known`/`Unknown`
//! wrapper so that a constant added by a newer libvirt never panics.

use std::fmt;
use std::str::FromStr;

use crate::error::Error;

/// A C enum from libvirt: the value this crate knows, or the raw number of one
/// it does not.
///
/// `Display` uses libvirt's own spelling (as `virsh event` prints it) for
/// known values and `unknown-N` for unknown ones; `FromStr` accepts both
/// forms, so the two round-trip exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Enum<T> {
    /// A value this crate knows.
    Known(T),
    /// A raw value this crate does not know (from a newer libvirt).
    Unknown(i32),
}

/// A fieldless enum mirrored from a libvirt C enum.
///
/// Implemented by this crate's enums only; it exists so that [`Enum`] can
/// convert to and from raw values generically.
pub trait CEnum: Copy + Sized + 'static {
    /// Every known value, in the order of their raw numbers.
    const ALL: &'static [Self];
    /// libvirt's C value.
    fn to_raw(self) -> i32;
    /// libvirt's spelling.
    fn as_str(self) -> &'static str;
    /// The known value with this raw number, if any.
    fn from_raw(raw: i32) -> Option<Self> {
        Self::ALL.iter().copied().find(|v| v.to_raw() == raw)
    }
}

impl<T: CEnum> Enum<T> {
    /// Wraps a raw value from libvirt.
    pub fn from_raw(raw: i32) -> Self {
        T::from_raw(raw).map_or(Enum::Unknown(raw), Enum::Known)
    }

    /// The raw value libvirt uses.
    pub fn to_raw(self) -> i32 {
        match self {
            Enum::Known(v) => v.to_raw(),
            Enum::Unknown(raw) => raw,
        }
    }

    /// The known value, if this is one.
    pub fn known(self) -> Option<T> {
        match self {
            Enum::Known(v) => Some(v),
            Enum::Unknown(_) => None,
        }
    }
}

impl<T: CEnum + PartialEq> Enum<T> {
    /// True when this is the known value `want`.
    pub fn is(self, want: T) -> bool {
        self.known() == Some(want)
    }
}

impl<T: CEnum> From<T> for Enum<T> {
    fn from(v: T) -> Self {
        Enum::Known(v)
    }
}

impl<T: CEnum> fmt::Display for Enum<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Enum::Known(v) => f.write_str(v.as_str()),
            Enum::Unknown(raw) => write!(f, "unknown-{raw}"),
        }
    }
}

impl<T: CEnum> FromStr for Enum<T> {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        if let Some(v) = T::ALL.iter().copied().find(|v| v.as_str() == s) {
            return Ok(Enum::Known(v));
        }
        // `unknown-N` is accepted only for an N that is in fact unknown, so
        // that every text has exactly one value and round-trips.
        match s
            .strip_prefix("unknown-")
            .and_then(|n| n.parse::<i32>().ok())
        {
            Some(raw) if T::from_raw(raw).is_none() => Ok(Enum::Unknown(raw)),
            _ => Err(Error::ParseEnum {
                value: s.to_owned(),
                allowed: T::ALL
                    .iter()
                    .map(|v| v.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }
}

/// Declares a fieldless enum mirrored from libvirt with its raw values and
/// spellings, and implements [`CEnum`] and `Display` for it.
macro_rules! c_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $raw:literal => $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl CEnum for $name {
            const ALL: &'static [Self] = &[$($name::$variant),+];

            fn to_raw(self) -> i32 {
                match self { $($name::$variant => $raw,)+ }
            }

            fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text,)+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

c_enum! {
    /// What the hypervisor did when a guest's watchdog fired
    /// (`virDomainEventWatchdogAction`). libvirt reports the XML action `dump`
    /// as [`Pause`](WatchdogAction::Pause): the guest is paused, dumped, and
    /// resumed by libvirt itself.
    pub enum WatchdogAction {
        /// No action; the watchdog fired and nothing was done.
        None = 0 => "none",
        /// The guest was paused.
        Pause = 1 => "pause",
        /// The guest was reset.
        Reset = 2 => "reset",
        /// The guest was powered off.
        Poweroff = 3 => "poweroff",
        /// The guest was asked to shut down.
        Shutdown = 4 => "shutdown",
        /// The hypervisor logged a debug message.
        Debug = 5 => "debug",
        /// An NMI was injected into the guest.
        InjectNmi = 6 => "inject-nmi",
    }
}

c_enum! {
    /// A lifecycle event's type (`virDomainEventType`).
    pub enum Lifecycle {
        /// The domain's configuration was defined or changed.
        Defined = 0 => "defined",
        /// The domain's configuration was removed.
        Undefined = 1 => "undefined",
        /// The domain started.
        Started = 2 => "started",
        /// The domain's CPUs were paused.
        Suspended = 3 => "suspended",
        /// The domain's CPUs were resumed.
        Resumed = 4 => "resumed",
        /// The domain stopped.
        Stopped = 5 => "stopped",
        /// The guest shut down (the domain may still be running briefly).
        Shutdown = 6 => "shutdown",
        /// The guest entered a power-management suspend.
        PmSuspended = 7 => "pmsuspended",
        /// The guest crashed.
        Crashed = 8 => "crashed",
    }
}

c_enum! {
    /// Detail of [`Lifecycle::Defined`].
    pub enum DefinedDetail {
        /// A new configuration was added.
        Added = 0 => "added",
        /// An existing configuration was changed.
        Updated = 1 => "updated",
        /// The domain was renamed.
        Renamed = 2 => "renamed",
        /// The configuration was restored from a snapshot.
        FromSnapshot = 3 => "from-snapshot",
    }
}

c_enum! {
    /// Detail of [`Lifecycle::Undefined`].
    pub enum UndefinedDetail {
        /// The configuration was removed.
        Removed = 0 => "removed",
        /// The domain was renamed.
        Renamed = 1 => "renamed",
    }
}

c_enum! {
    /// Detail of [`Lifecycle::Started`].
    pub enum StartedDetail {
        /// A normal boot.
        Booted = 0 => "booted",
        /// Incoming migration.
        Migrated = 1 => "migrated",
        /// Restored from a saved state file.
        Restored = 2 => "restored",
        /// Restored from a snapshot.
        FromSnapshot = 3 => "from-snapshot",
        /// Woken up from a power-management suspend.
        Wakeup = 4 => "wakeup",
        /// Re-created (for example after a snapshot revert).
        Recreated = 5 => "recreated",
    }
}

c_enum! {
    /// Detail of [`Lifecycle::Suspended`].
    pub enum SuspendedDetail {
        /// Paused normally (by an API call).
        Paused = 0 => "paused",
        /// Paused for offline migration.
        Migrated = 1 => "migrated",
        /// Paused because of a disk I/O error.
        IoError = 2 => "ioerror",
        /// Paused because the watchdog fired.
        Watchdog = 3 => "watchdog",
        /// Restored from a paused state file.
        Restored = 4 => "restored",
        /// Restored from a paused snapshot.
        FromSnapshot = 5 => "from-snapshot",
        /// Paused after a failed API call.
        ApiError = 6 => "api-error",
        /// Paused for post-copy migration.
        Postcopy = 7 => "postcopy",
        /// Paused after a failed post-copy migration.
        PostcopyFailed = 8 => "postcopy-failed",
        /// Paused after the guest shut down.
        GuestShutdown = 9 => "guest-shutdown",
    }
}

c_enum! {
    /// Detail of [`Lifecycle::Resumed`].
    pub enum ResumedDetail {
        /// Resumed normally.
        Unpaused = 0 => "unpaused",
        /// Resumed after a migration.
        Migrated = 1 => "migrated",
        /// Resumed from a snapshot.
        FromSnapshot = 2 => "from-snapshot",
        /// Resumed while post-copy migration runs.
        Postcopy = 3 => "postcopy",
        /// Resumed after a failed post-copy migration.
        PostcopyFailed = 4 => "postcopy-failed",
    }
}

c_enum! {
    /// Detail of [`Lifecycle::Stopped`].
    pub enum StoppedDetail {
        /// The guest shut down.
        Shutdown = 0 => "shutdown",
        /// The domain was destroyed.
        Destroyed = 1 => "destroyed",
        /// The guest crashed.
        Crashed = 2 => "crashed",
        /// The domain migrated away.
        Migrated = 3 => "migrated",
        /// The domain was saved to a file.
        Saved = 4 => "saved",
        /// The hypervisor failed.
        Failed = 5 => "failed",
        /// Stopped by a snapshot revert.
        FromSnapshot = 6 => "from-snapshot",
        /// Stopped to be re-created.
        Recreated = 7 => "recreated",
    }
}

c_enum! {
    /// Detail of [`Lifecycle::Shutdown`].
    pub enum ShutdownDetail {
        /// The shutdown finished.
        Finished = 0 => "finished",
        /// The guest asked for it.
        Guest = 1 => "guest",
        /// The host asked for it.
        Host = 2 => "host",
    }
}

c_enum! {
    /// Detail of [`Lifecycle::PmSuspended`].
    pub enum PmSuspendedDetail {
        /// Suspended to memory.
        Memory = 0 => "memory",
        /// Suspended to disk.
        Disk = 1 => "disk",
    }
}

c_enum! {
    /// Detail of [`Lifecycle::Crashed`].
    pub enum CrashedDetail {
        /// The guest panicked.
        Panicked = 0 => "panicked",
        /// The guest loaded a crash kernel.
        Crashloaded = 1 => "crashloaded",
    }
}

c_enum! {
    /// A domain's state (`virDomainState`).
    pub enum DomainState {
        /// No state.
        NoState = 0 => "nostate",
        /// Running.
        Running = 1 => "running",
        /// Blocked on a resource.
        Blocked = 2 => "blocked",
        /// Paused; see the reason.
        Paused = 3 => "paused",
        /// Being shut down.
        Shutdown = 4 => "shutdown",
        /// Shut off (inactive).
        Shutoff = 5 => "shutoff",
        /// Crashed.
        Crashed = 6 => "crashed",
        /// Suspended by guest power management.
        PmSuspended = 7 => "pmsuspended",
    }
}

c_enum! {
    /// Why the connection to libvirt closed (`virConnectCloseReason`).
    pub enum CloseReason {
        /// A misc I/O error.
        Error = 0 => "error",
        /// End of file from the server (for example, libvirtd stopped).
        Eof = 1 => "eof",
        /// The keepalive timer ran out.
        Keepalive = 2 => "keepalive",
        /// The client closed the connection.
        Client = 3 => "client",
    }
}

/// `VIR_DOMAIN_PAUSED_WATCHDOG`: the reason of a [`DomainState::Paused`]
/// domain that its watchdog paused.
pub const PAUSED_REASON_WATCHDOG: i32 = 6;

/// A lifecycle event's detail, typed by its event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LifecycleDetail {
    /// Detail of [`Lifecycle::Defined`].
    Defined(Enum<DefinedDetail>),
    /// Detail of [`Lifecycle::Undefined`].
    Undefined(Enum<UndefinedDetail>),
    /// Detail of [`Lifecycle::Started`].
    Started(Enum<StartedDetail>),
    /// Detail of [`Lifecycle::Suspended`].
    Suspended(Enum<SuspendedDetail>),
    /// Detail of [`Lifecycle::Resumed`].
    Resumed(Enum<ResumedDetail>),
    /// Detail of [`Lifecycle::Stopped`].
    Stopped(Enum<StoppedDetail>),
    /// Detail of [`Lifecycle::Shutdown`].
    Shutdown(Enum<ShutdownDetail>),
    /// Detail of [`Lifecycle::PmSuspended`].
    PmSuspended(Enum<PmSuspendedDetail>),
    /// Detail of [`Lifecycle::Crashed`].
    Crashed(Enum<CrashedDetail>),
    /// The raw detail of an event type this crate does not know.
    Unknown(i32),
}

impl LifecycleDetail {
    /// Types a raw detail by the raw event it belongs to.
    pub fn from_raw(event: i32, detail: i32) -> Self {
        use LifecycleDetail as D;
        match Lifecycle::from_raw(event) {
            Some(Lifecycle::Defined) => D::Defined(Enum::from_raw(detail)),
            Some(Lifecycle::Undefined) => D::Undefined(Enum::from_raw(detail)),
            Some(Lifecycle::Started) => D::Started(Enum::from_raw(detail)),
            Some(Lifecycle::Suspended) => D::Suspended(Enum::from_raw(detail)),
            Some(Lifecycle::Resumed) => D::Resumed(Enum::from_raw(detail)),
            Some(Lifecycle::Stopped) => D::Stopped(Enum::from_raw(detail)),
            Some(Lifecycle::Shutdown) => D::Shutdown(Enum::from_raw(detail)),
            Some(Lifecycle::PmSuspended) => D::PmSuspended(Enum::from_raw(detail)),
            Some(Lifecycle::Crashed) => D::Crashed(Enum::from_raw(detail)),
            None => D::Unknown(detail),
        }
    }

    /// The raw detail value.
    pub fn to_raw(self) -> i32 {
        use LifecycleDetail as D;
        match self {
            D::Defined(d) => d.to_raw(),
            D::Undefined(d) => d.to_raw(),
            D::Started(d) => d.to_raw(),
            D::Suspended(d) => d.to_raw(),
            D::Resumed(d) => d.to_raw(),
            D::Stopped(d) => d.to_raw(),
            D::Shutdown(d) => d.to_raw(),
            D::PmSuspended(d) => d.to_raw(),
            D::Crashed(d) => d.to_raw(),
            D::Unknown(raw) => raw,
        }
    }
}

impl fmt::Display for LifecycleDetail {
    /// The detail in libvirt's spelling, or `unknown-N`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use LifecycleDetail as D;
        match self {
            D::Defined(d) => d.fmt(f),
            D::Undefined(d) => d.fmt(f),
            D::Started(d) => d.fmt(f),
            D::Suspended(d) => d.fmt(f),
            D::Resumed(d) => d.fmt(f),
            D::Stopped(d) => d.fmt(f),
            D::Shutdown(d) => d.fmt(f),
            D::PmSuspended(d) => d.fmt(f),
            D::Crashed(d) => d.fmt(f),
            D::Unknown(raw) => write!(f, "unknown-{raw}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(raw: i32, expected: &str) {
        let action = Enum::<WatchdogAction>::from_raw(raw);
        assert_eq!(action.to_string(), expected, "raw {raw}");
        assert_eq!(action.to_raw(), raw);
        assert_eq!(expected.parse::<Enum<WatchdogAction>>().unwrap(), action);
    }

    #[test]
    fn every_watchdog_action_value() {
        check(0, "none");
        check(1, "pause");
        check(2, "reset");
        check(3, "poweroff");
        check(4, "shutdown");
        check(5, "debug");
        check(6, "inject-nmi");
        check(7, "unknown-7");
        check(42, "unknown-42");
        check(-1, "unknown--1");
        check(i32::MAX, "unknown-2147483647");
        check(i32::MIN, "unknown--2147483648");
        assert_eq!(
            Enum::<WatchdogAction>::from_raw(1),
            Enum::Known(WatchdogAction::Pause)
        );
        assert_eq!(Enum::<WatchdogAction>::from_raw(7), Enum::Unknown(7));
    }

    #[test]
    fn text_that_is_not_an_action_is_rejected() {
        for text in ["", "Pause", "dump", "unknown-1", "unknown-x", "inject_nmi"] {
            let err = text.parse::<Enum<WatchdogAction>>().unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "unknown value `{text}`; allowed: none, pause, reset, poweroff, shutdown, debug, inject-nmi, unknown-N for an unlisted N"
                )
            );
        }
    }

    fn check_lifecycle(event: i32, detail: i32, expected: &str) {
        let d = LifecycleDetail::from_raw(event, detail);
        let got = format!("{} {}", Enum::<Lifecycle>::from_raw(event), d);
        assert_eq!(got, expected, "raw ({event}, {detail})");
        assert_eq!(d.to_raw(), detail);
    }

    #[test]
    fn lifecycle_event_and_detail() {
        check_lifecycle(0, 0, "defined added");
        check_lifecycle(0, 3, "defined from-snapshot");
        check_lifecycle(0, 4, "defined unknown-4");
        check_lifecycle(1, 0, "undefined removed");
        check_lifecycle(1, 1, "undefined renamed");
        check_lifecycle(2, 0, "started booted");
        check_lifecycle(2, 5, "started recreated");
        check_lifecycle(3, 0, "suspended paused");
        check_lifecycle(3, 3, "suspended watchdog");
        check_lifecycle(3, 9, "suspended guest-shutdown");
        check_lifecycle(3, 10, "suspended unknown-10");
        check_lifecycle(4, 0, "resumed unpaused");
        check_lifecycle(4, 4, "resumed postcopy-failed");
        check_lifecycle(5, 0, "stopped shutdown");
        check_lifecycle(5, 1, "stopped destroyed");
        check_lifecycle(5, 7, "stopped recreated");
        check_lifecycle(6, 2, "shutdown host");
        check_lifecycle(7, 1, "pmsuspended disk");
        check_lifecycle(8, 0, "crashed panicked");
        check_lifecycle(8, 1, "crashed crashloaded");
        check_lifecycle(9, 0, "unknown-9 unknown-0");
        check_lifecycle(-3, 2, "unknown--3 unknown-2");
        assert_eq!(
            LifecycleDetail::from_raw(3, 3),
            LifecycleDetail::Suspended(Enum::Known(SuspendedDetail::Watchdog))
        );
    }

    #[test]
    fn every_known_value_round_trips() {
        fn all<T: CEnum + std::fmt::Debug + PartialEq>() {
            for (i, v) in T::ALL.iter().copied().enumerate() {
                // The tables are dense and ordered like libvirt's headers.
                assert_eq!(v.to_raw(), i as i32, "{v:?}");
                let e = Enum::Known(v);
                assert_eq!(Enum::<T>::from_raw(v.to_raw()), e);
                assert_eq!(e.to_string().parse::<Enum<T>>().unwrap(), e);
            }
        }
        all::<WatchdogAction>();
        all::<Lifecycle>();
        all::<DefinedDetail>();
        all::<UndefinedDetail>();
        all::<StartedDetail>();
        all::<SuspendedDetail>();
        all::<ResumedDetail>();
        all::<StoppedDetail>();
        all::<ShutdownDetail>();
        all::<PmSuspendedDetail>();
        all::<CrashedDetail>();
        all::<DomainState>();
        all::<CloseReason>();
    }

    #[test]
    fn libvirt_constants_match() {
        use virt::sys;
        assert_eq!(
            WatchdogAction::InjectNmi.to_raw(),
            sys::VIR_DOMAIN_EVENT_WATCHDOG_INJECTNMI as i32
        );
        assert_eq!(
            SuspendedDetail::Watchdog.to_raw(),
            sys::VIR_DOMAIN_EVENT_SUSPENDED_WATCHDOG as i32
        );
        assert_eq!(
            Lifecycle::Crashed.to_raw(),
            sys::VIR_DOMAIN_EVENT_CRASHED as i32
        );
        assert_eq!(
            PAUSED_REASON_WATCHDOG,
            sys::VIR_DOMAIN_PAUSED_WATCHDOG as i32
        );
        assert_eq!(
            CloseReason::Keepalive.to_raw(),
            sys::VIR_CONNECT_CLOSE_REASON_KEEPALIVE as i32
        );
    }
}
