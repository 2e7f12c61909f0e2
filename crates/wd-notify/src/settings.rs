//! The configuration-file sections this crate owns, as an agent's config
//! file spells them (`[queue]`, `[coalesce]`), and the checks that turn
//! them into [`QueueConfig`] and [`CoalesceConfig`].
//!
//! Every key is optional and defaults to the config type's default; unknown
//! keys are errors. A [`SettingsError`] names the key (with its section)
//! and what is allowed. The transports' sections live beside their
//! notifiers (`wd_notify_webhook::WebhookSettings`,
//! `wd_notify_amqp::AmqpSettings`) and use [`seconds`] and
//! [`SettingsError`] from here.

use std::time::Duration;

use serde::Deserialize;

use crate::{CoalesceConfig, QueueConfig, SyncMode};

/// A configuration value that is out of range or not allowed. Its message
/// names the key and what is allowed, and never a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SettingsError(pub String);

impl SettingsError {
    /// An error about `key`: "config key `key` …".
    pub fn key(key: &str, what: impl std::fmt::Display) -> Self {
        SettingsError(format!("config key `{key}` {what}"))
    }
}

/// The longest duration a key accepts unless it says otherwise: one day.
pub const MAX_SECS: f64 = 86_400.0;

/// A positive number of seconds, at most `max`, as a [`Duration`]; the error
/// names `key`. NaN, infinities, zero and negatives are refused.
///
/// ```
/// # use std::time::Duration;
/// use wd_notify::settings::seconds;
/// assert_eq!(seconds("queue.retry_min_delay_secs", 0.5, 60.0), Ok(Duration::from_millis(500)));
/// let err = seconds("queue.retry_min_delay_secs", f64::NAN, 60.0).unwrap_err();
/// assert!(err.to_string().contains("`queue.retry_min_delay_secs` must be a positive number of seconds, at most 60"));
/// ```
pub fn seconds(key: &str, v: f64, max: f64) -> Result<Duration, SettingsError> {
    let bad = || {
        SettingsError::key(
            key,
            format!("must be a positive number of seconds, at most {max}, not {v}"),
        )
    };
    if !(v > 0.0 && v <= max) {
        return Err(bad());
    }
    Duration::try_from_secs_f64(v)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(bad)
}

/// `[queue]`: each destination's own queue: its bounds and its one retry
/// loop (a project's endpoint may override some of them).
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSettings {
    /// The most entries waiting [default 100000].
    pub max_entries: Option<usize>,
    /// The most bytes waiting [default 64 MiB].
    pub max_bytes: Option<u64>,
    /// `group-commit` (default) or `per-entry` fsync.
    pub sync: Option<String>,
    /// The first wait before re-offering an undelivered entry, in seconds
    /// [default 1].
    pub retry_min_delay_secs: Option<f64>,
    /// The longest wait between offers of one entry, in seconds [default
    /// 300]: after a long outage, delivery resumes within this.
    pub retry_max_delay_secs: Option<f64>,
    /// The longest one delivery attempt may run, in seconds [default 60];
    /// it is then abandoned and retried later.
    pub attempt_timeout_secs: Option<f64>,
}

impl QueueSettings {
    /// The checked queue configuration.
    ///
    /// # Errors
    ///
    /// A [`SettingsError`] naming the first key out of range.
    pub fn config(&self) -> Result<QueueConfig, SettingsError> {
        let mut c = QueueConfig::default();
        if let Some(n) = self.max_entries {
            c = c.max_entries(n);
        }
        if let Some(n) = self.max_bytes {
            c = c.max_bytes(n);
        }
        match self.sync.as_deref() {
            None | Some("group-commit") => {}
            Some("per-entry") => c = c.sync(SyncMode::PerEntry),
            Some(other) => {
                return Err(SettingsError::key(
                    "queue.sync",
                    format!("is `{other}`; allowed: group-commit, per-entry"),
                ));
            }
        }
        if self.retry_min_delay_secs.is_some() || self.retry_max_delay_secs.is_some() {
            let min = match self.retry_min_delay_secs {
                Some(v) => seconds("queue.retry_min_delay_secs", v, MAX_SECS)?,
                None => c.retry_min_delay,
            };
            let max = match self.retry_max_delay_secs {
                Some(v) => seconds("queue.retry_max_delay_secs", v, MAX_SECS)?,
                None => c.retry_max_delay.max(min),
            };
            if max < min {
                return Err(SettingsError::key(
                    "queue.retry_max_delay_secs",
                    format!("({max:?}) is below `retry_min_delay_secs` ({min:?})"),
                ));
            }
            c = c.retry_delays(min, max);
        }
        if let Some(v) = self.attempt_timeout_secs {
            c = c.attempt_timeout(seconds("queue.attempt_timeout_secs", v, MAX_SECS)?);
        }
        check_queue("queue", &c)?;
        Ok(c)
    }
}

/// Checks the queue configuration `c` that section `section` of the config
/// file gives, as opening the queue would, naming the key that is out of
/// range: so that a bad value is refused when the file is read, at start
/// and at a reload alike.
///
/// # Errors
///
/// A [`SettingsError`] naming `section.key`, the value and what is allowed.
pub fn check_queue(section: &str, c: &QueueConfig) -> Result<(), SettingsError> {
    match c.validate() {
        Ok(()) => Ok(()),
        Err(crate::Error::QueueConfig {
            name,
            value,
            allowed,
        }) => Err(SettingsError::key(
            &format!("{section}.{name}"),
            format!("is {value}; allowed: {allowed}"),
        )),
        Err(e) => Err(SettingsError(format!("[{section}]: {e}"))),
    }
}

/// `[coalesce]`: storm control.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoalesceSettings {
    /// The folding window in seconds [default 60].
    pub window_secs: Option<f64>,
    /// The most instances tracked at once [default 10000].
    pub max_instances: Option<usize>,
}

impl CoalesceSettings {
    /// The checked coalescing configuration.
    ///
    /// # Errors
    ///
    /// A [`SettingsError`] naming the first key out of range.
    pub fn config(&self) -> Result<CoalesceConfig, SettingsError> {
        let mut c = CoalesceConfig::default();
        if let Some(w) = self.window_secs {
            c = c.window(seconds("coalesce.window_secs", w, MAX_SECS)?);
        }
        if let Some(n) = self.max_instances {
            c = c.max_instances(n);
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_section_defaults_to_its_config_defaults() {
        assert_eq!(
            format!("{:?}", QueueSettings::default().config().unwrap()),
            format!("{:?}", QueueConfig::default())
        );
        assert_eq!(
            format!("{:?}", CoalesceSettings::default().config().unwrap()),
            format!("{:?}", CoalesceConfig::default())
        );
    }

    #[test]
    fn values_are_applied_and_bad_ones_named() {
        let q = QueueSettings {
            max_entries: Some(7),
            max_bytes: Some(1 << 20),
            sync: Some("per-entry".into()),
            retry_min_delay_secs: Some(2.0),
            retry_max_delay_secs: None,
            attempt_timeout_secs: Some(5.0),
        }
        .config()
        .unwrap();
        assert_eq!((q.max_entries, q.max_bytes), (7, 1 << 20));
        assert_eq!(q.attempt_timeout, Duration::from_secs(5));
        assert_eq!(q.sync, SyncMode::PerEntry);
        assert_eq!(q.retry_min_delay, Duration::from_secs(2));
        assert!(q.retry_max_delay >= q.retry_min_delay);

        let err = |r: Result<QueueConfig, SettingsError>| r.unwrap_err().to_string();
        let s = err(QueueSettings {
            sync: Some("sometimes".into()),
            ..QueueSettings::default()
        }
        .config());
        assert!(
            s.contains("`queue.sync` is `sometimes`; allowed: group-commit, per-entry"),
            "{s}"
        );
        let s = err(QueueSettings {
            retry_min_delay_secs: Some(10.0),
            retry_max_delay_secs: Some(2.0),
            ..QueueSettings::default()
        }
        .config());
        assert!(
            s.contains("`queue.retry_max_delay_secs` (2s) is below"),
            "{s}"
        );

        let s = err(QueueSettings {
            attempt_timeout_secs: Some(1e30),
            ..QueueSettings::default()
        }
        .config());
        assert!(
            s.contains(
                "`queue.attempt_timeout_secs` must be a positive number of seconds, at most 86400"
            ),
            "{s}"
        );
        let s = err(QueueSettings {
            max_bytes: Some(4096),
            ..QueueSettings::default()
        }
        .config());
        assert!(
            s.contains("`queue.max_bytes` is 4096; allowed: at least 1048576"),
            "{s}"
        );
        let c = CoalesceSettings {
            window_secs: Some(-1.0),
            max_instances: None,
        };
        assert!(
            c.config()
                .unwrap_err()
                .to_string()
                .contains("`coalesce.window_secs`")
        );
        let c = CoalesceSettings {
            window_secs: Some(30.0),
            max_instances: Some(5),
        }
        .config()
        .unwrap();
        assert_eq!((c.window, c.max_instances), (Duration::from_secs(30), 5));
    }

    #[test]
    fn seconds_refuses_what_is_not_a_positive_bounded_number() {
        for v in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e-12, 61.0] {
            assert!(seconds("k", v, 60.0).is_err(), "{v}");
        }
        assert_eq!(seconds("k", 60.0, 60.0), Ok(Duration::from_secs(60)));
    }
}
