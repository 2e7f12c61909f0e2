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
use wd_compute::metrics::Destination;
use wd_compute::{Metrics, NovaDirectory, Runtime, RuntimeConfig};
use wd_events::ListenerConfig;
use wd_notify::{CoalesceConfig, LogNotifier, Notifier, RetryConfig, SpoolConfig, SyncMode};
use wd_notify_amqp::{AmqpConfig, AmqpNotifier, AmqpUrl, Format, Priority};
use wd_notify_webhook::{Endpoint, Secret, TlsConfig, WebhookConfig, WebhookNotifier};

/// The environment variable holding the operator webhook secret(s),
/// `whsec_…`, space- or comma-separated for key rotation.
pub const SECRET_ENV: &str = "WD_WEBHOOK_SECRET";
/// The environment variable holding the broker password.
pub const AMQP_PASSWORD_ENV: &str = "WD_AMQP_PASSWORD";

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
    /// Serve Prometheus metrics (`/metrics`), health (`/healthz`) and status
    /// (`/status`) on this address, e.g. `127.0.0.1:9187`.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
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
    /// The address serving `/metrics`, `/healthz` and `/status`.
    pub metrics: Option<String>,
    /// The log filter, e.g. `info` or `warn,wd_notify=debug` [default
    /// `info`; `RUST_LOG` wins]. Changes on SIGHUP.
    pub log_level: Option<String>,
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
    /// Extra CAs for this endpoint only (overrides `[webhook] ca_file`).
    pub ca_file: Option<PathBuf>,
    /// This endpoint's client certificate (overrides `[webhook]`'s).
    pub client_cert: Option<PathBuf>,
    /// This endpoint's client key.
    pub client_key: Option<PathBuf>,
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

/// Reads and checks the configuration file.
pub fn load_config(path: &Path) -> Result<Config> {
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
    /// Where to serve metrics, health and status, if anywhere.
    pub metrics_addr: Option<String>,
    /// The metrics every backend and the pipeline report to.
    pub metrics: Metrics,
    /// The log filter from the config file.
    pub log_level: Option<String>,
}

/// A webhook backend whose deliveries are counted only for notifications it
/// has an endpoint for, so that `wd_notifications_total{destination=
/// "project"}` counts real deliveries, not owners without an endpoint.
struct Routed {
    webhook: Arc<WebhookNotifier>,
    metered: wd_compute::Metered<Arc<WebhookNotifier>>,
}

#[async_trait::async_trait]
impl Notifier for Routed {
    async fn notify(&self, n: &wd_notify::Notification) -> Result<(), wd_notify::NotifyError> {
        if !self.webhook.routes(n.instance.project_id.as_deref()) {
            return Ok(());
        }
        self.metered.notify(n).await
    }
}

/// Turns flags, file and environment into a [`Plan`]. Needs a Tokio runtime
/// (the HTTP and AMQP clients are created here).
pub fn plan(args: &Args, env: &dyn Fn(&str) -> Option<String>) -> Result<Plan> {
    plan_with(args, env, Metrics::new())
}

/// [`plan`], reporting to existing `metrics` (a reload keeps its counters).
pub fn plan_with(
    args: &Args,
    env: &dyn Fn(&str) -> Option<String>,
    metrics: Metrics,
) -> Result<Plan> {
    let cfg = match &args.config {
        Some(path) => load_config(path)?,
        None => Config::default(),
    };
    if let Some(level) = &cfg.log_level {
        crate::reload::check_log_level(level)?;
    }
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
                let n = metrics.meter(name.clone(), Destination::Bus, notifier);
                backends.push((name, Arc::new(n)));
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
    webhook = webhook.with_tls(TlsConfig {
        ca_file: cfg.webhook.ca_file.clone(),
        client_cert: cfg.webhook.client_cert.clone(),
        client_key: cfg.webhook.client_key.clone(),
    });
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
            Endpoint::new(p.url.clone(), p.secrets.clone()).with_tls(TlsConfig {
                ca_file: p.ca_file.clone(),
                client_cert: p.client_cert.clone(),
                client_key: p.client_key.clone(),
            }),
        );
    }

    for t in &targets {
        if t == "log" {
            let n = metrics.meter("log", Destination::Log, LogNotifier::new());
            backends.push(("log".into(), Arc::new(n)));
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
            let name = format!("amqp {}", redact(t));
            let n = metrics.meter(name.clone(), Destination::Bus, n);
            backends.push((name, Arc::new(n)));
        } else {
            bail!(
                "unknown notify target `{}`; allowed: log, http://…, https://…, amqp://…, amqps://…, rabbit://…",
                redact(t)
            );
        }
    }
    if use_webhook {
        // Operator and project endpoints are separate backends, so that each
        // kind's deliveries are counted (and retried) on their own.
        let mut operator = webhook.clone();
        operator.projects.clear();
        webhook.operator.clear();
        for (name, kind, config) in [
            ("webhook operator", Destination::Operator, operator),
            ("webhook projects", Destination::Project, webhook),
        ] {
            if config.operator.is_empty() && config.projects.is_empty() {
                continue;
            }
            let n = Arc::new(WebhookNotifier::new(config).map_err(|e| anyhow!("webhook: {e}"))?);
            let metered = metrics.meter(name, kind, n.clone());
            backends.push((
                name.into(),
                Arc::new(Routed {
                    webhook: n,
                    metered,
                }),
            ));
        }
    }

    let mut runtime = RuntimeConfig::new(host).listener(ListenerConfig {
        uri: uri.clone(),
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
    runtime.metrics = Some(metrics.clone());
    Ok(Plan {
        runtime,
        backends,
        wait: args.wait || cfg.wait.unwrap_or(false),
        metrics_addr: args.metrics.clone().or(cfg.metrics.clone()),
        metrics,
        log_level: cfg.log_level.clone(),
    })
}

/// Runs the agent until SIGTERM or SIGINT; SIGHUP reloads the config.
pub fn run(args: Args) -> Result<()> {
    // The file is read again (and checked) by `plan`; here only its log
    // filter matters, so that startup errors are logged at the right level.
    let level = args
        .config
        .as_deref()
        .and_then(|p| load_config(p).ok())
        .and_then(|c| c.log_level);
    let log = crate::reload::init_logging(level.as_deref());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the async runtime")?;
    rt.block_on(async move {
        let plan = plan(&args, &|k| std::env::var(k).ok())?;
        let uri = plan.runtime.listener.uri.clone();
        // libvirt's default handler prints every error to stderr, outside our
        // structured log; the listener reports the ones that matter itself.
        virt::error::clear_error_callback();
        // libvirt's event loop must be registered before any connection.
        wd_events::init_event_loop().map_err(|e| anyhow!("start the libvirt event loop: {e}"))?;
        if !plan.wait {
            let probe = uri.clone();
            // Dropping the connection closes it.
            tokio::task::spawn_blocking(move || virt::connect::Connect::open(Some(&probe)).map(drop))
                .await
                .context("probe libvirt")?
                .map_err(|e| anyhow!("cannot connect to libvirt at {uri}: {e} (use --wait to keep retrying)"))?;
        }
        let served = match &plan.metrics_addr {
            Some(addr) => Some(crate::serve::start(addr, plan.metrics.clone()).await?),
            None => None,
        };
        if let Some((addr, _)) = &served {
            tracing::info!(%addr, "serving /metrics, /healthz and /status");
        }
        let backend_names: Vec<String> = plan.backends.iter().map(|(n, _)| n.clone()).collect();
        let fixed = crate::reload::Fixed::of(&plan);
        let metrics = plan.metrics.clone();
        let spool = plan.runtime.spool_dir.clone();
        let host = plan.runtime.host.clone();
        let runtime = Runtime::start(plan.runtime, Arc::new(NovaDirectory::new()), plan.backends)
            .map_err(|e| anyhow!("{}", crate::one_line(anyhow::Error::new(e).chain())))?;
        tracing::info!(uri = %uri, host = %host, backends = ?backend_names,
            spool = %spool.as_ref().map_or("none".into(), |p| p.display().to_string()), "wdctl watch started");

        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("install the SIGTERM handler")?;
        let mut hup = signal(SignalKind::hangup()).context("install the SIGHUP handler")?;
        loop {
            tokio::select! {
                _ = term.recv() => break tracing::info!("SIGTERM: shutting down"),
                _ = tokio::signal::ctrl_c() => break tracing::info!("SIGINT: shutting down"),
                _ = hup.recv() => crate::reload::reload(
                    &args, &|k| std::env::var(k).ok(), &runtime, &metrics, &log, &fixed),
            }
        }
        let report = runtime.shutdown().await;
        if let Some((_, task)) = served {
            task.abort();
        }
        tracing::info!(firings = report.pipeline.firings, accepted = report.pipeline.accepted,
            already_notified = report.pipeline.already_notified, unknown_owner = report.pipeline.unknown_owner,
            spool_pending = report.spool.as_ref().map_or(0, |s| s.pending),
            "wdctl watch stopped");
        Ok(())
    })
}

#[cfg(test)]
mod tests;
