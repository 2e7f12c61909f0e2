//! The agent's log on stderr: human-readable text (the default) or JSON, one
//! object a line, for log shippers; its level filter can be replaced while
//! running (SIGHUP, `log_level`).

use anyhow::{Context as _, Result};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _, Registry, reload};

/// The default log filter.
pub const DEFAULT_LOG_LEVEL: &str = "info";

/// The log format (`--log-format`, `log_format` in the config file).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One line of text per event (`RUST_LOG` sets the level).
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `fields` (with
    /// `message`), and `span`/`spans` when inside spans.
    Json,
}

/// Parses a log filter as `log_level` would be, for checking a config.
pub fn check_log_level(level: &str) -> Result<()> {
    EnvFilter::try_new(level)
        .map(drop)
        .with_context(|| format!("config key `log_level` is `{level}`, which is not a valid log filter (e.g. `info`, `warn,wd_notify=debug`)"))
}

/// The installed log filter, replaceable while running.
pub struct LogControl {
    handle: reload::Handle<EnvFilter, Registry>,
    /// Whether `RUST_LOG` set the filter (it then wins over `log_level`).
    from_env: bool,
}

impl LogControl {
    /// Replaces the filter with `level` (the config's `log_level`, or
    /// [`DEFAULT_LOG_LEVEL`]), unless `RUST_LOG` set it.
    pub fn set_level(&self, level: Option<&str>) {
        if self.from_env {
            return;
        }
        let level = level.unwrap_or(DEFAULT_LOG_LEVEL);
        match EnvFilter::try_new(level) {
            Ok(filter) => {
                if let Err(e) = self.handle.reload(filter) {
                    tracing::warn!(error = %e, "cannot change the log filter");
                }
            }
            Err(e) => tracing::warn!(error = %e, level, "log_level is not a valid filter"),
        }
    }
}

/// Installs the global subscriber writing to stderr in `format`, with a
/// reloadable filter: `RUST_LOG` if set, else `level` (the config's
/// `log_level`), else [`DEFAULT_LOG_LEVEL`].
pub fn init(format: LogFormat, level: Option<&str>) -> LogControl {
    let (filter, from_env) = match EnvFilter::try_from_default_env() {
        Ok(f) => (f, true),
        Err(_) => (
            level
                .and_then(|l| EnvFilter::try_new(l).ok())
                .unwrap_or_else(|| EnvFilter::new(DEFAULT_LOG_LEVEL)),
            false,
        ),
    };
    let (filter, handle) = reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false);
    let fmt = match format {
        LogFormat::Text => fmt
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed(),
        LogFormat::Json => fmt.json().with_ansi(false).boxed(),
    };
    tracing_subscriber::registry().with(filter).with(fmt).init();
    LogControl { handle, from_env }
}
