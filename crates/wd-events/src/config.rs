//! The listener's configuration.

use std::time::Duration;

use wd_backoff::Backoff;

use crate::credentials::Credentials;

/// How the listener connects and reconnects.
///
/// ```
/// use std::time::Duration;
/// use wd_events::ListenerConfig;
///
/// let config = ListenerConfig::default()
///     .uri("qemu:///system")
///     .keepalive(Duration::from_secs(5), 3);
/// assert_eq!(config.keepalive_count, 3);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    /// The libvirt connection URI.
    pub uri: String,
    /// Open the connection read-only (`virConnectOpenReadOnly`; for
    /// `qemu:///system`, the `libvirt-sock-ro` socket). Everything the
    /// listener does (events, domain listing, state and reason, XML without
    /// secrets, liveness) is allowed on such a connection, and any process
    /// may open one where the socket's policy allows it, so it needs no
    /// membership of the `libvirt` group. Off by default here, because
    /// [`EventStream::connection`](crate::EventStream::connection) hands the
    /// connection to callers who may want to act on it; `wdguard watch` turns
    /// it on.
    pub read_only: bool,
    /// The SASL user name and password for a URI whose server asks for
    /// them (`qemu+tcp://`, `qemu+tls://`), for what libvirt's own
    /// `auth.conf` does not give. Without them, a server that asks fails
    /// with [`Error::Credentials`](crate::Error::Credentials); the listener
    /// never prompts.
    pub credentials: Option<Credentials>,
    /// How often keepalive messages are sent on an idle connection (remote
    /// connections only). Zero turns keepalive off.
    pub keepalive_interval: Duration,
    /// How many keepalive messages may go unanswered before the connection
    /// is closed with reason `keepalive`.
    pub keepalive_count: u32,
    /// How often the listener also asks `virConnectIsAlive`, as a backstop
    /// for a drop the close callback does not report.
    pub alive_check_interval: Duration,
    /// How often the listener lists the domains again while connected, to
    /// recover a watchdog pause that no event reported (zero: never). See
    /// the crate docs, "What cannot be recovered".
    pub recheck_interval: Duration,
    /// After each catch-up, the listener lists the domains again, with the
    /// catch-up's markers, 1, 4 and 12 times this later (250 ms, 1 s and
    /// 3 s by default), and then every 4 times this while libvirt reports
    /// an active domain busy (a job holds it, as while libvirtd reattaches
    /// to its QEMU), up to 120 times this after the catch-up. A listener
    /// back within milliseconds of libvirtd's restart may list a guest
    /// whose pause happened during the outage as `running`, because
    /// libvirtd has not read its state from QEMU yet (and it sends no event
    /// when it does); a settle listing finds the pause then. Zero: none.
    pub settle_interval: Duration,
    /// The reconnect backoff: 0.8 s doubling to 30 s, with jitter, by
    /// default (like kube-runtime's watcher).
    pub backoff: Backoff,
    /// A connection that stayed up at least this long starts the backoff
    /// over; one that flaps sooner keeps it growing.
    pub backoff_reset_after: Duration,
    /// How often, while waiting to reconnect, the listener checks whether
    /// the local libvirt socket accepts connections again (a bare
    /// `connect(2)`, no libvirt call); when it starts to, the wait ends
    /// and the listener reconnects at once, however long the backoff had
    /// grown. Only for local URIs (`qemu:///system`, `...?socket=PATH`),
    /// only while disconnected, and only when the socket did not accept as
    /// the wait began (a daemon that accepts but refuses is retried on the
    /// backoff's schedule). Zero turns it off.
    pub socket_probe_interval: Duration,
    /// How many items may wait for the consumer before the listener waits
    /// for it. The libvirt event loop itself never waits, and neither do
    /// the listener's liveness checks and re-checks.
    pub channel_capacity: usize,
    /// How many events may wait in the listener's inbox before lifecycle
    /// repeats of a domain are folded (watchdog firings never are). See
    /// [`ListenerStats`](crate::ListenerStats).
    pub inbox_capacity: usize,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            uri: "qemu:///system".to_owned(),
            read_only: false,
            credentials: None,
            keepalive_interval: Duration::from_secs(5),
            keepalive_count: 3,
            alive_check_interval: Duration::from_secs(5),
            recheck_interval: Duration::from_secs(60),
            settle_interval: Duration::from_millis(250),
            backoff: Backoff::new(Duration::from_millis(800), Duration::from_secs(30)),
            backoff_reset_after: Duration::from_secs(120),
            socket_probe_interval: Duration::from_millis(100),
            channel_capacity: 1024,
            inbox_capacity: 4096,
        }
    }
}

impl ListenerConfig {
    /// Sets the connection URI.
    #[must_use]
    pub fn uri(mut self, uri: impl Into<String>) -> Self {
        self.uri = uri.into();
        self
    }

    /// Opens the connection read-only (or read-write).
    #[must_use]
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// Sets the credentials for what `auth.conf` does not give.
    #[must_use]
    pub fn credentials(mut self, credentials: Option<Credentials>) -> Self {
        self.credentials = credentials;
        self
    }

    /// Sets the keepalive interval and count.
    #[must_use]
    pub fn keepalive(mut self, interval: Duration, count: u32) -> Self {
        self.keepalive_interval = interval;
        self.keepalive_count = count;
        self
    }

    /// Sets how often the connection's liveness is polled.
    #[must_use]
    pub fn alive_check_interval(mut self, interval: Duration) -> Self {
        self.alive_check_interval = interval;
        self
    }

    /// Sets how often the domains are re-checked (zero: never).
    #[must_use]
    pub fn recheck_interval(mut self, interval: Duration) -> Self {
        self.recheck_interval = interval;
        self
    }

    /// Sets the settle listings' interval (zero: none); see
    /// [`ListenerConfig::settle_interval`].
    #[must_use]
    pub fn settle_interval(mut self, interval: Duration) -> Self {
        self.settle_interval = interval;
        self
    }

    /// Sets the inbox's folding threshold (at least 1).
    #[must_use]
    pub fn inbox_capacity(mut self, capacity: usize) -> Self {
        self.inbox_capacity = capacity.max(1);
        self
    }

    /// Sets the reconnect backoff.
    #[must_use]
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Sets how long a connection must stay up to start the backoff over.
    #[must_use]
    pub fn backoff_reset_after(mut self, reset_after: Duration) -> Self {
        self.backoff_reset_after = reset_after;
        self
    }

    /// Sets how often the socket is probed while disconnected (zero: never).
    #[must_use]
    pub fn socket_probe_interval(mut self, interval: Duration) -> Self {
        self.socket_probe_interval = interval;
        self
    }

    /// Sets the consumer channel's capacity (at least 1).
    #[must_use]
    pub fn channel_capacity(mut self, capacity: usize) -> Self {
        self.channel_capacity = capacity.max(1);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_clamps() {
        assert_eq!(
            ListenerConfig::default()
                .channel_capacity(0)
                .channel_capacity,
            1
        );
    }

    #[test]
    fn default_backoff_is_valid_and_kube_like() {
        let c = ListenerConfig::default();
        c.backoff.check("listener.backoff").unwrap();
        assert_eq!(c.backoff.initial, Duration::from_millis(800));
        assert_eq!(c.backoff.max, Duration::from_secs(30));
        assert!(c.backoff.jitter);
        assert_eq!(c.backoff_reset_after, Duration::from_secs(120));
    }
}
