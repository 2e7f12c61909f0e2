//! `wdctl watch`: the standalone agent that runs beside an unmodified
//! compute service (such as Nova), listens to libvirt's watchdog events and
//! notifies each instance's owner.
//!
//! Secrets never come from the command line, where `ps` would show them: the
//! webhook secret comes from `WD_WEBHOOK_SECRET` or the config file, and a
//! broker password from `WD_AMQP_PASSWORD`, the config file, or the
//! transport URL in Nova's own `nova.conf` (`--nova-config`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use wd_compute::{NovaDirectory, Runtime, RuntimeConfig};
use wd_events::ListenerConfig;
use wd_notify::{
    CoalesceConfig, Destination, DestinationKind, LogNotifier, RetryConfig, Route, SpoolConfig,
    SyncMode,
};
use wd_notify_amqp::{AmqpConfig, AmqpNotifier, AmqpUrl, Format, Priority};
use wd_notify_webhook::{Endpoint, Secret, WebhookConfig, WebhookNotifier};

/// The environment variable of the test-only fault hook, read only by debug
/// builds: `pipeline-panic-after-ms=N` makes the pipeline task panic after
/// N ms, to show that a core task's death ends the process non-zero.
pub const FAULT_ENV: &str = "WD_TEST_FAULT";

mod config;

pub use config::{Config, load_config};
use config::{secs, secs_max};

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
    /// The destinations, each with its own queue.
    pub destinations: Vec<Destination>,
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
    let mut destinations: Vec<Destination> = Vec::new();
    let mut amqp_seen = false;
    if let Some((path, nova)) = nova {
        if nova.log {
            targets.push("log".into());
        }
        match nova.bus {
            Some((name, notifier)) => {
                destinations.push(
                    Destination::new(name, DestinationKind::Bus, Route::All, Arc::new(notifier))
                        .key("bus"),
                );
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
    if targets.is_empty() && cfg.webhook.projects.is_empty() && destinations.is_empty() {
        bail!(
            "nowhere to notify: give --notify log|URL, --nova-config, or `notify`/`[[webhook.projects]]` in the config file"
        );
    }

    let mut webhook = WebhookConfig::default();
    if let Some(t) = cfg.webhook.timeout_secs {
        webhook = webhook.with_timeout(secs_max("webhook.timeout_secs", t, 300.0)?);
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
            destinations.push(
                Destination::new(
                    "log",
                    DestinationKind::Log,
                    Route::All,
                    Arc::new(LogNotifier::new()),
                )
                .key("log"),
            );
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
            // One broker: its queue keeps its name (and backlog) when the
            // URL changes.
            destinations.push(
                Destination::new(
                    format!("amqp {}", redact(t)),
                    DestinationKind::Bus,
                    Route::All,
                    Arc::new(n),
                )
                .key("bus"),
            );
        } else {
            bail!(
                "unknown notify target `{}`; allowed: log, http://…, https://…, amqp://…, amqps://…, rabbit://…",
                redact(t)
            );
        }
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
    if use_webhook {
        // Each endpoint is its own destination, with its own queue and worker.
        for e in WebhookNotifier::split(webhook).map_err(|e| anyhow!("webhook: {e}"))? {
            let (name, kind, route) = match &e.project {
                None => (
                    format!("webhook operator {}", e.shown),
                    DestinationKind::Operator,
                    Route::All,
                ),
                Some(p) => (
                    format!("webhook project {p} {}", e.shown),
                    DestinationKind::Project,
                    Route::Project(p.clone()),
                ),
            };
            let mut d =
                Destination::new(name, kind, route, Arc::new(e.notifier)).key(e.fingerprint);
            if let Some(p) = &e.project {
                d = project_limits(d, &cfg, p, &runtime.spool)?;
            }
            destinations.push(d);
        }
    }
    if let Some(v) = cfg.health_interval_secs {
        runtime.health_interval = secs("health_interval_secs", v)?.max(Duration::from_secs(1));
    }
    if cfg!(debug_assertions)
        && let Some(fault) = env(FAULT_ENV)
    {
        let ms = fault
            .strip_prefix("pipeline-panic-after-ms=")
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| anyhow!("{FAULT_ENV} `{fault}`; allowed: pipeline-panic-after-ms=N"))?;
        runtime.fault_pipeline_panic_after = Some(Duration::from_millis(ms));
    }
    Ok(Plan {
        runtime,
        destinations,
        wait: args.wait || cfg.wait.unwrap_or(false),
    })
}

/// A project endpoint's own queue limits, from its `[[webhook.projects]]`
/// entry (every entry for project `p` with limits applies to all of `p`'s
/// endpoints' queues; the last one wins).
fn project_limits(
    mut d: Destination,
    cfg: &Config,
    p: &str,
    base: &SpoolConfig,
) -> Result<Destination> {
    let mut queue = base.clone();
    let mut custom = false;
    for e in cfg.webhook.projects.iter().filter(|e| e.project == p) {
        if let Some(n) = e.max_entries {
            queue = queue.max_entries(n);
            custom = true;
        }
        if let Some(n) = e.max_bytes {
            queue = queue.max_bytes(n);
            custom = true;
        }
        if let Some(v) = e.max_delay_secs {
            let max = secs("webhook.projects.max_delay_secs", v)?;
            let min = queue.retry_min_delay.min(max);
            queue = queue.retry_delays(min, max);
            custom = true;
        }
    }
    if custom {
        d = d.queue(queue);
    }
    Ok(d)
}

/// Runs the agent until SIGTERM or SIGINT, or until a core task dies (then
/// it logs one line and exits non-zero, so that systemd restarts it).
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
        let backend_names: Vec<String> = plan.destinations.iter().map(|d| d.name.clone()).collect();
        let spool = plan.runtime.spool_dir.clone();
        let host = plan.runtime.host.clone();
        let mut runtime = Runtime::start(plan.runtime, Arc::new(NovaDirectory::new()), plan.destinations)
            .map_err(|e| anyhow!("{}", crate::one_line(anyhow::Error::new(e).chain())))?;
        tracing::info!(uri = %uri, read_only, host = %host, backends = ?backend_names,
            spool = %spool.as_ref().map_or("none".into(), |p| p.display().to_string()), "wdctl watch started");

        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("install the SIGTERM handler")?;
        let died = tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); None }
            _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT: shutting down"); None }
            why = runtime.failed() => {
                tracing::error!("core task died: {why}; exiting non-zero so that the service manager restarts the agent and the queues replay");
                Some(why)
            }
        };
        crate::systemd::stopping();
        let report = runtime.shutdown().await;
        if let Some(why) = died {
            bail!("core task died: {why}");
        }
        tracing::info!(firings = report.pipeline.firings, accepted = report.pipeline.accepted,
            already_notified = report.pipeline.already_notified, unknown_owner = report.pipeline.unknown_owner,
            queued = report.pending(),
            "wdctl watch stopped");
        Ok(())
    })
}

#[cfg(test)]
mod tests;
