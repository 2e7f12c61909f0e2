//! `wdctl watch`'s configuration file: its keys, and the checks of each
//! duration (positive, bounded, the error naming the key).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;
use wd_notify_webhook::Secret;

/// The configuration file. Every key is optional; unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The libvirt URI.
    pub connect: Option<String>,
    /// This compute host's name [default: the machine's hostname].
    pub host: Option<String>,
    /// Notification targets, as for `--notify`.
    #[serde(default)]
    pub notify: Vec<String>,
    /// The spool directory.
    pub spool: Option<PathBuf>,
    /// Nova's configuration file, as `--nova-config`.
    pub nova_config: Option<PathBuf>,
    /// Keep retrying when libvirt is unreachable at startup.
    pub wait: Option<bool>,
    /// Open libvirt read-only [default true].
    pub read_only: Option<bool>,
    /// The log format on stderr, `text` or `json` [default text].
    pub log_format: Option<crate::logging::LogFormat>,
    /// The address serving `/metrics`, `/healthz` and `/status`.
    pub metrics: Option<String>,
    /// The log filter, e.g. `info` or `warn,wd_notify=debug` [default
    /// `info`; `RUST_LOG` wins]. Changes on SIGHUP.
    pub log_level: Option<String>,
    /// Webhook settings.
    #[serde(default)]
    pub webhook: WebhookSection,
    /// Message-bus settings.
    #[serde(default)]
    pub amqp: AmqpSection,
    /// Storm control.
    #[serde(default)]
    pub coalesce: CoalesceSection,
    /// Spool limits.
    #[serde(default, rename = "spool-limits")]
    pub spool_limits: SpoolSection,
    /// Retries per destination.
    #[serde(default)]
    pub retry: RetrySection,
    /// How often the delivery health line (every destination's backlog and
    /// last error) is logged, in seconds [default 300].
    pub health_interval_secs: Option<f64>,
}

/// `[webhook]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSection {
    /// Secrets for the operator endpoints given in `notify`.
    #[serde(default)]
    pub secrets: Vec<Secret>,
    /// Request timeout in seconds [default 15].
    pub timeout_secs: Option<f64>,
    /// The service name in the CloudEvents `source` [default `wd`].
    pub service: Option<String>,
    /// Per-project endpoints: a project's notifications go only there (and
    /// to operator endpoints).
    #[serde(default)]
    pub projects: Vec<ProjectEndpoint>,
    /// A PEM file of extra CAs every webhook trusts, besides the system
    /// trust store.
    pub ca_file: Option<PathBuf>,
    /// A PEM client certificate for mutual TLS (with `client_key`).
    pub client_cert: Option<PathBuf>,
    /// The PEM key of `client_cert`.
    pub client_key: Option<PathBuf>,
}

/// `[[webhook.projects]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectEndpoint {
    /// The project (tenant) id, exactly as in Nova's metadata.
    pub project: String,
    /// The endpoint URL.
    pub url: String,
    /// Its signing secrets.
    pub secrets: Vec<Secret>,
    /// The most entries waiting in this endpoint's own queue [default:
    /// `spool-limits.max_entries`].
    pub max_entries: Option<usize>,
    /// The most bytes waiting in this endpoint's own queue [default:
    /// `spool-limits.max_bytes`].
    pub max_bytes: Option<u64>,
    /// The longest wait between retries for this endpoint, and the most its
    /// `Retry-After` is honoured, in seconds [default:
    /// `spool-limits.retry_max_delay_secs`].
    pub max_delay_secs: Option<f64>,
    /// Extra CAs for this endpoint only (overrides `[webhook] ca_file`).
    pub ca_file: Option<PathBuf>,
    /// This endpoint's client certificate (overrides `[webhook]`'s).
    pub client_cert: Option<PathBuf>,
    /// This endpoint's client key.
    pub client_key: Option<PathBuf>,
}

/// `[amqp]`. Its `Debug` hides the password and the URL's credentials.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSection {
    /// The broker URL (may also be given in `notify`).
    pub url: Option<String>,
    /// The broker password, if not in `url` or `WD_AMQP_PASSWORD`.
    pub password: Option<String>,
    /// The topic exchange [default `nova`].
    pub exchange: Option<String>,
    /// Which of Nova's forms: `unversioned`, `versioned` or `both`
    /// [default `both`].
    pub format: Option<String>,
    /// The versioned form's topic [default `versioned_notifications`].
    pub topic: Option<String>,
    /// The legacy form's topic [default `notifications`].
    pub legacy_topic: Option<String>,
    /// The exchange's durability; must match the deployment [default false].
    pub durable: Option<bool>,
    /// Declare the exchange (true) or only publish to an existing one.
    pub declare: Option<bool>,
    /// Declare a queue named like the routing key and bind it, as
    /// oslo.messaging's notifier does, so notifications wait for listeners
    /// [default true]. With false, a notification no queue takes is a failed
    /// delivery that the spool retries.
    pub declare_queue: Option<bool>,
    /// The priority [default `INFO`].
    pub priority: Option<String>,
    /// The service half of the versioned `publisher_id` [default `wd`].
    pub service: Option<String>,
    /// The service half of the legacy `publisher_id` [default `compute`].
    pub legacy_service: Option<String>,
}

impl std::fmt::Debug for AmqpSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpSection")
            .field("url", &self.url.as_deref().map(wd_notify::redact_url))
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("exchange", &self.exchange)
            .finish_non_exhaustive()
    }
}

/// `[coalesce]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoalesceSection {
    /// The folding window in seconds [default 60].
    pub window_secs: Option<f64>,
    /// The most instances tracked at once [default 10000].
    pub max_instances: Option<usize>,
}

/// `[spool-limits]`: the bounds of each destination's own queue (every
/// destination has one; a project endpoint may override them).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolSection {
    /// The most entries waiting [default 100000].
    pub max_entries: Option<usize>,
    /// The most bytes waiting [default 64 MiB].
    pub max_bytes: Option<u64>,
    /// `group-commit` (default) or `per-entry` fsync.
    pub sync: Option<String>,
    /// The spool's first wait before re-offering an undelivered entry, in
    /// seconds [default 1].
    pub retry_min_delay_secs: Option<f64>,
    /// The spool's longest wait between offers of one entry, in seconds
    /// [default 300]: after a long outage, delivery resumes within this.
    pub retry_max_delay_secs: Option<f64>,
}

/// `[retry]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySection {
    /// The first wait in seconds [default 0.5].
    pub min_delay_secs: Option<f64>,
    /// The longest wait in seconds [default 30].
    pub max_delay_secs: Option<f64>,
    /// Give up on one attempt series after this many seconds [default 60];
    /// the spool tries again later.
    pub deadline_secs: Option<f64>,
}

/// The longest duration any config key accepts: one day.
const MAX_SECS: f64 = 86_400.0;

/// A positive number of seconds, at most one day, naming `key` if not.
pub(crate) fn secs(key: &str, v: f64) -> Result<Duration> {
    secs_max(key, v, MAX_SECS)
}

/// A positive number of seconds, at most `max`, naming `key` if not.
pub(crate) fn secs_max(key: &str, v: f64, max: f64) -> Result<Duration> {
    if !(v > 0.0 && v <= max) {
        bail!("config key `{key}` must be a positive number of seconds, at most {max}, not {v}");
    }
    Duration::try_from_secs_f64(v)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            anyhow!(
                "config key `{key}` must be a positive number of seconds, at most {max}, not {v}"
            )
        })
}

impl Config {
    /// Whether the file holds a secret: a webhook or project secret, or a
    /// broker password (in `[amqp] password` or in an AMQP URL).
    pub fn holds_secrets(&self) -> bool {
        !self.webhook.secrets.is_empty()
            || self.webhook.projects.iter().any(|p| !p.secrets.is_empty())
            || self.amqp.password.is_some()
            || self.amqp.url.as_deref().is_some_and(super::has_password)
            || self.notify.iter().any(|t| super::has_password(t))
    }
}

/// Reads and checks the configuration file, and refuses one that holds
/// secrets where others can read them (see `crate::filemode`).
pub fn load_config(path: &Path) -> Result<Config> {
    let cfg = parse_config(path)?;
    crate::filemode::check(
        path,
        crate::filemode::FileMode::of(path)?,
        cfg.holds_secrets(),
        crate::filemode::Identity::current()?,
    )?;
    Ok(cfg)
}

fn parse_config(path: &Path) -> Result<Config> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file `{}`", path.display()))?;
    toml::from_str(&text).map_err(|e| {
        let msg = e.message().to_owned();
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].lines().count().max(1))
            .map_or(String::new(), |l| format!(" (line {l})"));
        anyhow!("config file `{}`{line}: {msg}", path.display())
    })
}
