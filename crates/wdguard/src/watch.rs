//! `wdguard watch`: the standalone agent beside an unmodified compute service
//! (such as Nova). This is flag parsing, reading the config file, and
//! [`wd_compute::Agent`]: the agent, its checks and its reload live there.
//!
//! Secrets never come from the command line, where `ps` would show them.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use wd_compute::{Agent, Metrics, RunningAgent};

mod config;

pub use config::{WatchSettings, load_config};

/// The rest of `wdguard watch --help` (and of its man page).
pub const LONG_HELP: &str = include_str!("watch/help.txt").trim_ascii_end();

/// Flags of `wdguard watch`. Each wins over its key in the config file.
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
    /// Serve Prometheus metrics (`/metrics`), health (`/healthz`) and status
    /// (`/status`) on this address, e.g. `127.0.0.1:9187` (a bare port is
    /// on loopback). An address off loopback is an explicit choice: it
    /// serves `/metrics` and a bare `/healthz` to anyone who reaches it;
    /// `/status` answers loopback peers only.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
    /// Serve the same endpoints, `/status` included, on this Unix socket
    /// (mode 0660: root and the agent's group), and there only the
    /// requests of `wdguard queue drain|drop` [default:
    /// `$RUNTIME_DIRECTORY/status.sock` when systemd sets
    /// `RUNTIME_DIRECTORY`, as the packaged unit does: /run/wd/status.sock].
    #[arg(long, value_name = "PATH")]
    status_socket: Option<PathBuf>,
}

/// The status socket: `--status-socket`, else in systemd's runtime
/// directory.
fn status_socket(args: &Args) -> Option<PathBuf> {
    args.status_socket.clone().or_else(|| {
        std::env::var_os("RUNTIME_DIRECTORY")
            .filter(|d| !d.is_empty())
            // systemd may list several directories, separated by colons.
            .and_then(|d| {
                d.to_str()
                    .and_then(|d| d.split(':').next())
                    .map(PathBuf::from)
            })
            .map(|d| d.join("status.sock"))
    })
}

/// The config file (if any) with the flags applied on top.
pub fn config(args: &Args) -> Result<WatchSettings> {
    let mut file = match &args.config {
        Some(path) => load_config(path)?,
        None => WatchSettings::default(),
    };
    if let Some(level) = &file.log_level {
        crate::logging::check_log_level(level)?;
    }
    file.metrics = args.metrics.clone().or(file.metrics);
    let cfg = &mut file.agent;
    if let Some(t) = args
        .notify
        .iter()
        .find(|t| wd_compute::target_holds_secret(t))
    {
        let shown = wd_compute::display_target(t);
        bail!(
            "--notify `{shown}` holds a secret (a password, or a webhook URL with user info, a query or a token in its path), which `ps` would show; put it in the config file's `notify` (readable by root and the agent's group only), and a broker password in `[amqp] password` or WD_AMQP_PASSWORD"
        );
    }
    cfg.notify.extend(args.notify.iter().cloned());
    cfg.connect = args.connect.clone().or(cfg.connect.take());
    cfg.nova_config = args.nova_config.clone().or(cfg.nova_config.take());
    cfg.spool = args.spool.clone().or(cfg.spool.take());
    cfg.wait = Some(args.wait || cfg.wait.unwrap_or(false));
    cfg.read_only = Some(!args.read_write && cfg.read_only.unwrap_or(true));
    Ok(file)
}

fn env(key: &str) -> Option<String> {
    std::env::var(key).ok()
}

/// Runs the agent until SIGTERM or SIGINT (SIGHUP reloads the config), or
/// until a core task dies (then it exits non-zero, so that systemd restarts
/// it and the queues replay).
pub fn run(args: Args) -> Result<()> {
    // The log comes first, so that every later line has its format; a
    // config file that cannot be read is reported (one line) right here.
    let cfg = config(&args)?;
    let format = args.log_format.or(cfg.log_format);
    let log = crate::logging::init(format.unwrap_or_default(), cfg.log_level.as_deref());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    rt.block_on(async move {
        let agent = Agent::with_metrics(&cfg.agent, &env, Metrics::new())?
            .named("wdguard watch")
            .pulse(crate::systemd::hook());
        crate::systemd::starting(&agent.config().listener.uri);
        let mut running = agent.start().await?;
        let served = match &cfg.metrics {
            Some(addr) => Some(crate::serve::start(addr, running.metrics().clone()).await?),
            None => None,
        };
        let (control, mut requests) = tokio::sync::mpsc::channel(4);
        let socket = match status_socket(&args) {
            Some(path) => Some(
                crate::serve::start_unix(&path, running.metrics().clone(), control).await?,
            ),
            None => None,
        };
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("install the SIGTERM handler")?;
        let mut hup = signal(SignalKind::hangup()).context("install the SIGHUP handler")?;
        let died = loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break None }
                _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT: shutting down"); break None }
                _ = hup.recv() => reload(&args, &mut running, &log, cfg.metrics.as_deref()),
                Some(request) = requests.recv() => queue(&running, request).await,
                why = running.failed() => break Some(why),
            }
        };
        crate::systemd::stopping();
        running.shutdown().await;
        if let Some((_, task)) = served {
            task.abort();
        }
        if let Some(task) = socket {
            task.abort();
        }
        match died {
            Some(why) => bail!("core task died: {why}"),
            None => Ok(()),
        }
    })
}

/// One `wdguard queue drain|drop` from the local socket.
async fn queue(running: &RunningAgent, request: crate::serve::ControlRequest) {
    use crate::serve::QueueOp;
    let name = request.name;
    let answer = match request.op {
        QueueOp::Drain => running
            .drain(&name)
            .map(|()| serde_json::json!({"draining": name})),
        QueueOp::Drop => running
            .drop_backlog(&name)
            .await
            .map(|dropped| serde_json::json!({"dropped": dropped, "name": name})),
    };
    let answer = answer.map_err(|e| wd_notify::error_chain(&e));
    if let Err(why) = &answer {
        tracing::warn!(error = %why, "queue request refused");
    }
    let _ = request.reply.send(answer);
}

/// One SIGHUP: reads the file again and applies it, or refuses it whole.
/// `metrics` is the address being served: the server is this command's, so
/// it says itself when its address changed (it needs a restart); the log
/// level is applied at once.
fn reload(
    args: &Args,
    running: &mut RunningAgent,
    log: &crate::logging::LogControl,
    metrics: Option<&str>,
) {
    tracing::info!("SIGHUP: reloading the configuration");
    let next = config(args).and_then(|cfg| Ok(running.reload(&cfg.agent, &env).map(|_| cfg)?));
    match next {
        Ok(cfg) => {
            log.set_level(cfg.log_level.as_deref());
            if cfg.metrics.as_deref() != metrics {
                tracing::warn!(settings = ?["metrics"],
                    "these settings changed but take effect only at the next restart");
            }
        }
        Err(e) => tracing::error!(error = %crate::one_line(&e),
            "reload refused: the running configuration stays in effect"),
    }
}

#[cfg(test)]
mod tests;
