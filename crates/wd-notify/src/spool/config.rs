//! The spool's settings.

use std::time::Duration;

use super::format::MAX_PAYLOAD;
use crate::error::{Error, Result};

/// When the spool's writer forces accepted entries to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SyncMode {
    /// One `fsync` per entry: simple, and as slow as the disk.
    PerEntry,
    /// Group commit: entries that arrive while an `fsync` runs share the
    /// next one. Each `notify` still returns only after its own entry is
    /// on disk.
    #[default]
    GroupCommit,
}

/// The longest retry delay a spool accepts in its settings.
pub(crate) const MAX_DELAY: Duration = Duration::from_secs(24 * 3600);

/// [`Spool`](super::Spool) settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    /// When entries are forced to disk. Default [`SyncMode::GroupCommit`].
    pub sync: SyncMode,
    /// The most entries waiting for delivery; beyond it the oldest are
    /// dropped (counted and logged). Default 100 000.
    pub max_entries: usize,
    /// The most bytes (of entries' JSON) waiting for delivery; beyond it the
    /// oldest are dropped. Default 64 MiB.
    pub max_bytes: u64,
    /// A segment file is closed and a new one started past this size.
    /// Default 8 MiB.
    pub segment_bytes: u64,
    /// How many deliveries run at once. Default 8.
    pub concurrency: usize,
    /// The first wait before retrying a retryable failure. Default 1 s.
    pub retry_min_delay: Duration,
    /// The longest wait between retries of one entry, and the most a
    /// destination's `Retry-After` is honoured. Default 5 min; at most 1 day.
    pub retry_max_delay: Duration,
    /// The longest one delivery attempt may run; one still running then is
    /// abandoned and counts as a retryable failure. Default 60 s; at most 1
    /// day.
    pub attempt_timeout: Duration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            sync: SyncMode::GroupCommit,
            max_entries: 100_000,
            max_bytes: 64 << 20,
            segment_bytes: 8 << 20,
            concurrency: 8,
            retry_min_delay: Duration::from_secs(1),
            retry_max_delay: Duration::from_secs(300),
            attempt_timeout: Duration::from_secs(60),
        }
    }
}

impl QueueConfig {
    /// Sets [`QueueConfig::sync`].
    #[must_use]
    pub fn sync(mut self, mode: SyncMode) -> Self {
        self.sync = mode;
        self
    }

    /// Sets [`QueueConfig::max_entries`].
    #[must_use]
    pub fn max_entries(mut self, n: usize) -> Self {
        self.max_entries = n;
        self
    }

    /// Sets [`QueueConfig::max_bytes`].
    #[must_use]
    pub fn max_bytes(mut self, n: u64) -> Self {
        self.max_bytes = n;
        self
    }

    /// Sets [`QueueConfig::segment_bytes`].
    #[must_use]
    pub fn segment_bytes(mut self, n: u64) -> Self {
        self.segment_bytes = n;
        self
    }

    /// Sets [`QueueConfig::concurrency`].
    #[must_use]
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }

    /// Sets the retry waits, [`QueueConfig::retry_min_delay`] and
    /// [`QueueConfig::retry_max_delay`].
    #[must_use]
    pub fn retry_delays(mut self, min: Duration, max: Duration) -> Self {
        self.retry_min_delay = min;
        self.retry_max_delay = max;
        self
    }

    /// Sets [`QueueConfig::attempt_timeout`].
    #[must_use]
    pub fn attempt_timeout(mut self, d: Duration) -> Self {
        self.attempt_timeout = d;
        self
    }

    /// Checks every value is in range, as opening a queue does.
    ///
    /// # Errors
    ///
    /// [`Error::QueueConfig`] naming the first value out of range.
    pub fn validate(&self) -> Result<()> {
        let check = |ok: bool, name, value: String, allowed| {
            if ok {
                Ok(())
            } else {
                Err(Error::QueueConfig {
                    name,
                    value,
                    allowed,
                })
            }
        };
        check(
            self.max_entries > 0,
            "max_entries",
            self.max_entries.to_string(),
            "at least 1",
        )?;
        check(
            self.max_bytes >= MAX_PAYLOAD as u64,
            "max_bytes",
            self.max_bytes.to_string(),
            "at least 1048576",
        )?;
        check(
            self.segment_bytes >= 4096,
            "segment_bytes",
            self.segment_bytes.to_string(),
            "at least 4096",
        )?;
        check(
            self.concurrency > 0,
            "concurrency",
            self.concurrency.to_string(),
            "at least 1",
        )?;
        check(
            !self.retry_min_delay.is_zero() && self.retry_min_delay <= MAX_DELAY,
            "retry_min_delay",
            format!("{:?}", self.retry_min_delay),
            "more than 0 and at most 1 day",
        )?;
        check(
            self.retry_max_delay <= MAX_DELAY,
            "retry_max_delay",
            format!("{:?}", self.retry_max_delay),
            "at most 1 day",
        )?;
        check(
            !self.attempt_timeout.is_zero() && self.attempt_timeout <= MAX_DELAY,
            "attempt_timeout",
            format!("{:?}", self.attempt_timeout),
            "more than 0 and at most 1 day",
        )?;
        check(
            self.retry_min_delay <= self.retry_max_delay,
            "retry_min_delay",
            format!("{:?}", self.retry_min_delay),
            "at most retry_max_delay",
        )
    }
}
