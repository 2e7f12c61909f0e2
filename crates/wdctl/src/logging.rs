//! The agent's log on stderr: human-readable text (the default) or JSON, one
//! object a line, for log shippers.

use serde::Deserialize;
use tracing_subscriber::EnvFilter;

/// The log format (`--log-format`, `log_format` in the config file).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One line of text per event (`RUST_LOG` sets the level).
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `fields` (with
    /// `message`), and `span`/`spans` when inside spans.
    Json,
}

/// Installs the global subscriber writing to stderr in `format`, at the level
/// `RUST_LOG` gives (default `info`).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
}
