//! `wdctl watch`: the standalone agent that runs beside an unmodified
//! compute service (such as Nova), listens to libvirt's watchdog events and
//! notifies each instance's owner.
//!
//! Secrets never come from the command line, where `ps` would show them: the
//! webhook secret comes from `WD_WEBHOOK_SECRET` or the config file, and a
//! broker password from `WD_AMQP_PASSWORD`, the config file, or the
//! transport URL in Nova's own `nova.conf` (`--nova-config`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;
use wd_compute::{NovaDirectory, Runtime, RuntimeConfig};
use wd_events::ListenerConfig;
use wd_notify::{CoalesceConfig, LogNotifier, Notifier, RetryConfig, SpoolConfig, SyncMode};
use wd_notify_amqp::{AmqpConfig, AmqpNotifier, AmqpUrl, Format, Priority};
use wd_notify_webhook::{Endpoint, Secret, WebhookConfig, WebhookNotifier};

/// The environment variable holding the operator webhook secret(s),
/// `whsec_…`, space- or comma-separated for key rotation.
pub const SECRET_ENV: &str = "WD_WEBHOOK_SECRET";
/// The environment variable holding the broker password.
pub const AMQP_PASSWORD_ENV: &str = "WD_AMQP_PASSWORD";

/// The rest of `wdctl watch --help` (and of its man page).
pub const LONG_HELP: &str = "\
Files:
  /etc/wd/wd.toml     the configuration (see the commented file the package installs)
  /var/lib/wd/spool   the spool and the episode ledger (StateDirectory=wd)

Least privilege: the agent only listens, so it opens libvirt read-only \
(virConnectOpenReadOnly, the libvirt-sock-ro socket) unless --read-write or \
`read_only = false` is given, and runs as the unprivileged user wd under \
the wd.service unit.

A config file that holds a secret (a webhook or project secret, a broker \
password) is refused if others may read it, or if its group may and that \
group is not the agent's own; the packaged root:wd 0640 is allowed.

Under systemd (NOTIFY_SOCKET set) the agent sends READY=1 after its first \
catch-up listing, WATCHDOG=1 from its core loop every half of WatchdogSec, \
and STATUS= lines.

Environment: WD_WEBHOOK_SECRET (operator webhook secrets), WD_AMQP_PASSWORD \
(broker password), RUST_LOG (log level, default info).";

/// Flags of `wdctl watch`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The libvirt URI to listen on [default: qemu:///system].
    #[arg(long, value_name = "URI")]
    connect: Option<String>,
    /// Where to notify: `log`, an http(s) webhook URL (the operator
    /// endpoint), or a broker URL (amqp://, amqps://, or an oslo transport
    /// URL rabbit://host1:5672,host2:5672/vhost). Repeatable.
    #[arg(long = "notify", value_name = "TARGET")]
    notify: Vec<String>,
    /// Nova's configuration file: publish to the bus Nova publishes to, as
    /// its `[oslo_messaging_notifications]` and `[notifications]` say.
    #[arg(long, value_name = "FILE")]
    nova_config: Option<PathBuf>,
    /// The durable spool directory: what is accepted survives a crash.
    #[arg(long, value_name = "DIR")]
    spool: Option<PathBuf>,
    /// A TOML configuration file (see the README).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Keep retrying when libvirt is unreachable at startup, instead of
    /// exiting.
    #[arg(long)]
    wait: bool,
    /// Open libvirt read-write. By default the agent, which only listens,
    /// opens it read-only (`virConnectOpenReadOnly`).
    #[arg(long)]
    read_write: bool,
    /// The log format on stderr [default: text].
    #[arg(long, value_name = "FORMAT")]
    pub(crate) log_format: Option<crate::logging::LogFormat>,
}

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
    /// Keep retrying when libvirt is unreachable at startup.
    pub wait: Option<bool>,
    /// Open libvirt read-only [default true].
    pub read_only: Option<bool>,
    /// The log format on stderr, `text` or `json` [default text].
    pub log_format: Option<crate::logging::LogFormat>,
    /// Nova's configuration file, as `--nova-config`.
    pub nova_config: Option<PathBuf>,
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
    /// Retries per backend.
    #[serde(default)]
    pub retry: RetrySection,
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
}

/// `[amqp]`.
#[derive(Debug, Default, Deserialize)]
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

/// `[coalesce]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoalesceSection {
    /// The folding window in seconds [default 60].
    pub window_secs: Option<f64>,
    /// The most instances tracked at once [default 10000].
    pub max_instances: Option<usize>,
}

/// `[spool-limits]`.
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

fn secs(key: &str, v: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(v)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| anyhow!("config key `{key}` must be a positive number of seconds, not {v}"))
}

impl Config {
    /// Whether the file holds a secret: a webhook or project secret, or a
    /// broker password (in `[amqp] password` or in an AMQP URL).
    pub fn holds_secrets(&self) -> bool {
        !self.webhook.secrets.is_empty()
            || self.webhook.projects.iter().any(|p| !p.secrets.is_empty())
            || self.amqp.password.is_some()
            || self.amqp.url.as_deref().is_some_and(has_password)
            || self.notify.iter().any(|t| has_password(t))
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

/// Redacts credentials in a URL for logs and errors.
fn redact(url: &str) -> String {
    wd_notify::redact_url(url)
}

/// Whether `t` names a message broker.
fn is_broker(t: &str) -> bool {
    let scheme = t.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    matches!(scheme.as_deref(), Some("amqp" | "amqps" | "rabbit"))
}

/// Whether a broker URL carries a password (in any of its nodes).
fn has_password(url: &str) -> bool {
    match AmqpUrl::new(url) {
        Ok(u) => u.has_password(),
        // Unparsable: err on the side of refusing it on the command line.
        Err(_) => match (url.find("://"), url.rfind('@')) {
            (Some(s), Some(at)) if at > s => url[s + 3..at].contains(':'),
            _ => false,
        },
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Everything `watch` will run with, checked before anything starts.
pub struct Plan {
    /// The runtime configuration.
    pub runtime: RuntimeConfig,
    /// The backends, by name.
    pub backends: Vec<(String, Arc<dyn Notifier>)>,
    /// Retry rather than exit when libvirt is unreachable at startup.
    pub wait: bool,
}

/// Turns flags, file and environment into a [`Plan`]. Needs a Tokio runtime
/// (the HTTP and AMQP clients are created here).
pub fn plan(args: &Args, env: &dyn Fn(&str) -> Option<String>) -> Result<Plan> {
    let cfg = match &args.config {
        Some(path) => load_config(path)?,
        None => Config::default(),
    };
    for t in &args.notify {
        if is_broker(t) && has_password(t) {
            bail!(
                "--notify `{}` carries a password, which `ps` would show; put it in the config file (`[amqp] password`) or {AMQP_PASSWORD_ENV}",
                redact(t)
            );
        }
    }
    let uri = args
        .connect
        .clone()
        .or(cfg.connect.clone())
        .unwrap_or_else(|| "qemu:///system".into());
    let nova_path = args.nova_config.as_ref().or(cfg.nova_config.as_ref());
    let nova = nova_path
        .map(|p| crate::nova::load(p).map(|n| (p, n)))
        .transpose()?;
    let host = cfg
        .host
        .clone()
        .or_else(|| nova.as_ref().and_then(|(_, n)| n.host.clone()))
        .unwrap_or_else(hostname);
    let spool = args.spool.clone().or(cfg.spool.clone());

    let mut targets: Vec<String> = cfg.notify.clone();
    targets.extend(args.notify.iter().cloned());
    if let Some(url) = &cfg.amqp.url {
        targets.push(url.clone());
    }
    // The same target from the file and the flags is one backend, not two
    // (two would deliver every notification twice).
    let mut backends: Vec<(String, Arc<dyn Notifier>)> = Vec::new();
    let mut amqp_seen = false;
    if let Some((path, nova)) = nova {
        if nova.log {
            targets.push("log".into());
        }
        match nova.bus {
            Some((name, notifier)) => {
                backends.push((name, Arc::new(notifier)));
                amqp_seen = true;
            }
            None if targets.is_empty() && cfg.webhook.projects.is_empty() => bail!(
                "nowhere to notify: `{}` [oslo_messaging_notifications] driver is unset or noop, so Nova sends no notifications; set it to messagingv2, or give --notify",
                path.display()
            ),
            None => {}
        }
    }
    let mut seen = std::collections::HashSet::new();
    targets.retain(|t| seen.insert(t.clone()));
    if targets.is_empty() && cfg.webhook.projects.is_empty() && backends.is_empty() {
        bail!(
            "nowhere to notify: give --notify log|URL, --nova-config, or `notify`/`[[webhook.projects]]` in the config file"
        );
    }

    let mut webhook = WebhookConfig::default();
    if let Some(t) = cfg.webhook.timeout_secs {
        webhook = webhook.with_timeout(secs("webhook.timeout_secs", t)?);
    }
    if let Some(s) = &cfg.webhook.service {
        webhook = webhook.with_service(s.clone());
    }
    let operator_secrets = || -> Result<Vec<Secret>> {
        if let Some(raw) = env(SECRET_ENV) {
            return raw
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|s| !s.is_empty())
                .map(|s| Secret::parse(s).map_err(|e| anyhow!("{SECRET_ENV}: {e}")))
                .collect();
        }
        if cfg.webhook.secrets.is_empty() {
            bail!(
                "a webhook endpoint needs a signing secret: set {SECRET_ENV} or `[webhook] secrets` in the config file"
            );
        }
        Ok(cfg.webhook.secrets.clone())
    };
    let mut use_webhook = !cfg.webhook.projects.is_empty();
    for p in &cfg.webhook.projects {
        if p.secrets.is_empty() {
            bail!(
                "config key `webhook.projects` entry for project `{}` has no secrets",
                p.project
            );
        }
        webhook = webhook.with_project(
            p.project.clone(),
            Endpoint::new(p.url.clone(), p.secrets.clone()),
        );
    }

    for t in &targets {
        if t == "log" {
            backends.push(("log".into(), Arc::new(LogNotifier::new())));
        } else if t.starts_with("http://") || t.starts_with("https://") {
            webhook = webhook.with_operator(Endpoint::new(t.clone(), operator_secrets()?));
            use_webhook = true;
        } else if is_broker(t) {
            if amqp_seen {
                bail!(
                    "only one AMQP broker may be given; got a second one, `{}`",
                    redact(t)
                );
            }
            amqp_seen = true;
            let password = env(AMQP_PASSWORD_ENV).or(cfg.amqp.password.clone());
            let url = AmqpUrl::new(t.clone()).map_err(|e| anyhow!("AMQP target: {e}"))?;
            let url = match password {
                Some(p) if !url.has_password() => url
                    .with_password(&p)
                    .map_err(|e| anyhow!("AMQP target: {e}"))?,
                _ => url,
            };
            let mut c = AmqpConfig::new(url);
            if let Some(x) = &cfg.amqp.exchange {
                c = c.with_exchange(x.clone());
            }
            if let Some(x) = &cfg.amqp.topic {
                c = c.with_topic(x.clone());
            }
            if let Some(x) = &cfg.amqp.legacy_topic {
                c = c.with_legacy_topics(vec![x.clone()]);
            }
            if let Some(x) = &cfg.amqp.format {
                let f: Format = x
                    .parse()
                    .map_err(|e| anyhow!("config key `amqp.format`: {e}"))?;
                c = c.with_format(f);
            }
            if let Some(x) = &cfg.amqp.legacy_service {
                c = c.with_legacy_service(x.clone());
            }
            if let Some(x) = cfg.amqp.durable {
                c = c.with_durable(x);
            }
            if let Some(x) = cfg.amqp.declare {
                c = c.with_declare(x);
            }
            c = c.with_declare_queue(cfg.amqp.declare_queue.unwrap_or(true));
            if let Some(x) = &cfg.amqp.service {
                c = c.with_service(x.clone());
            }
            if let Some(x) = &cfg.amqp.priority {
                let p: Priority = x
                    .parse()
                    .map_err(|e| anyhow!("config key `amqp.priority`: {e}"))?;
                c = c.with_priority(p);
            }
            let n =
                AmqpNotifier::new(c).map_err(|e| anyhow!("AMQP target `{}`: {e}", redact(t)))?;
            backends.push((format!("amqp {}", redact(t)), Arc::new(n)));
        } else {
            bail!(
                "unknown notify target `{}`; allowed: log, http://…, https://…, amqp://…, amqps://…, rabbit://…",
                redact(t)
            );
        }
    }
    if use_webhook {
        let n = WebhookNotifier::new(webhook).map_err(|e| anyhow!("webhook: {e}"))?;
        backends.push(("webhook".into(), Arc::new(n)));
    }

    let read_only = !args.read_write && cfg.read_only.unwrap_or(true);
    let mut runtime = RuntimeConfig::new(host).listener(ListenerConfig {
        uri: uri.clone(),
        read_only,
        ..ListenerConfig::default()
    });
    runtime.spool_dir = spool;
    runtime.spool = SpoolConfig::default();
    if let Some(n) = cfg.spool_limits.max_entries {
        runtime.spool = runtime.spool.max_entries(n);
    }
    if let Some(n) = cfg.spool_limits.max_bytes {
        runtime.spool = runtime.spool.max_bytes(n);
    }
    match cfg.spool_limits.sync.as_deref() {
        None | Some("group-commit") => {}
        Some("per-entry") => runtime.spool = runtime.spool.sync(SyncMode::PerEntry),
        Some(other) => {
            bail!("config key `spool-limits.sync` is `{other}`; allowed: group-commit, per-entry")
        }
    }
    if cfg.spool_limits.retry_min_delay_secs.is_some()
        || cfg.spool_limits.retry_max_delay_secs.is_some()
    {
        let min = match cfg.spool_limits.retry_min_delay_secs {
            Some(v) => secs("spool-limits.retry_min_delay_secs", v)?,
            None => runtime.spool.retry_min_delay,
        };
        let max = match cfg.spool_limits.retry_max_delay_secs {
            Some(v) => secs("spool-limits.retry_max_delay_secs", v)?,
            None => runtime.spool.retry_max_delay.max(min),
        };
        if max < min {
            bail!(
                "config key `spool-limits.retry_max_delay_secs` ({max:?}) is below `retry_min_delay_secs` ({min:?})"
            );
        }
        runtime.spool = runtime.spool.retry_delays(min, max);
    }
    runtime.coalesce = CoalesceConfig::default();
    if let Some(w) = cfg.coalesce.window_secs {
        runtime.coalesce = runtime.coalesce.window(secs("coalesce.window_secs", w)?);
    }
    if let Some(n) = cfg.coalesce.max_instances {
        runtime.coalesce = runtime.coalesce.max_instances(n);
    }
    runtime.retry = RetryConfig::default();
    if let Some(v) = cfg.retry.min_delay_secs {
        runtime.retry = runtime.retry.min_delay(secs("retry.min_delay_secs", v)?);
    }
    if let Some(v) = cfg.retry.max_delay_secs {
        runtime.retry = runtime.retry.max_delay(secs("retry.max_delay_secs", v)?);
    }
    if let Some(v) = cfg.retry.deadline_secs {
        runtime.retry = runtime.retry.deadline(secs("retry.deadline_secs", v)?);
    }
    Ok(Plan {
        runtime,
        backends,
        wait: args.wait || cfg.wait.unwrap_or(false),
    })
}

/// Runs the agent until SIGTERM or SIGINT.
pub fn run(args: Args) -> Result<()> {
    // The format comes first, so that every later line has it; a config file
    // that cannot be read is reported (on stderr, as one line) right here.
    let file_format = match &args.config {
        Some(path) => load_config(path)?.log_format,
        None => None,
    };
    crate::logging::init(args.log_format.or(file_format).unwrap_or_default());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the async runtime")?;
    rt.block_on(async move {
        let mut plan = plan(&args, &|k| std::env::var(k).ok())?;
        plan.runtime.pulse = crate::systemd::hook();
        let uri = plan.runtime.listener.uri.clone();
        let read_only = plan.runtime.listener.read_only;
        crate::systemd::starting(&uri);
        // libvirt's default handler prints every error to stderr, outside our
        // structured log; the listener reports the ones that matter itself.
        virt::error::clear_error_callback();
        // libvirt's event loop must be registered before any connection.
        wd_events::init_event_loop().map_err(|e| anyhow!("start the libvirt event loop: {e}"))?;
        if !plan.wait {
            let probe = uri.clone();
            // Dropping the connection closes it.
            tokio::task::spawn_blocking(move || {
                if read_only {
                    virt::connect::Connect::open_read_only(Some(&probe)).map(drop)
                } else {
                    virt::connect::Connect::open(Some(&probe)).map(drop)
                }
            })
                .await
                .context("probe libvirt")?
                .map_err(|e| anyhow!("cannot connect to libvirt at {uri}: {e} (use --wait to keep retrying)"))?;
        }
        let backend_names: Vec<String> = plan.backends.iter().map(|(n, _)| n.clone()).collect();
        let spool = plan.runtime.spool_dir.clone();
        let host = plan.runtime.host.clone();
        let runtime = Runtime::start(plan.runtime, Arc::new(NovaDirectory::new()), plan.backends)
            .map_err(|e| anyhow!("{}", crate::one_line(anyhow::Error::new(e).chain())))?;
        tracing::info!(uri = %uri, read_only, host = %host, backends = ?backend_names,
            spool = %spool.as_ref().map_or("none".into(), |p| p.display().to_string()), "wdctl watch started");

        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("install the SIGTERM handler")?;
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        }
        crate::systemd::stopping();
        let report = runtime.shutdown().await;
        tracing::info!(firings = report.pipeline.firings, accepted = report.pipeline.accepted,
            already_notified = report.pipeline.already_notified, unknown_owner = report.pipeline.unknown_owner,
            spool_pending = report.spool.as_ref().map_or(0, |s| s.pending),
            "wdctl watch stopped");
        Ok(())
    })
}

#[cfg(test)]
mod tests;
