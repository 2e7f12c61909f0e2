//! Reading `wdguard watch`'s configuration file: the agent's settings
//! ([`wd_compute::AgentSettings`]) plus this program's own keys
//! (`log_format`, `log_level`, `metrics`: the log and the HTTP server are
//! this program's, not the library's), refused when it holds secrets that
//! others may read. Its errors name the file and the line.

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use serde::Deserialize;
use toml::Spanned;
use wd_compute::AgentSettings;

use crate::logging::LogFormat;

/// The whole file: the agent's settings and the keys of the program that
/// hosts it.
#[derive(Debug, Clone, Default)]
pub struct WatchSettings {
    /// Everything the agent reads.
    pub agent: AgentSettings,
    /// `log_format`: the log format on stderr [default text].
    pub log_format: Option<LogFormat>,
    /// `log_level`: the log filter [default `info`].
    pub log_level: Option<String>,
    /// `metrics`: the address serving metrics, health and status.
    pub metrics: Option<String>,
}

/// This program's top-level keys, with where their values are in the text.
/// Unknown keys are left to [`AgentSettings`], which refuses them.
#[derive(Deserialize)]
struct HostKeys {
    log_format: Option<Spanned<LogFormat>>,
    log_level: Option<Spanned<String>>,
    metrics: Option<Spanned<String>>,
}

/// Reads and parses the configuration file, and refuses one that holds
/// secrets where others can read them (see `crate::filemode`).
pub fn load_config(path: &Path) -> Result<WatchSettings> {
    let cfg = parse_config(path)?;
    crate::filemode::check(
        path,
        crate::filemode::FileMode::of(path)?,
        &cfg.agent.secret_keys(),
        crate::filemode::Identity::current()?,
    )?;
    Ok(cfg)
}

fn parse_config(path: &Path) -> Result<WatchSettings> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file `{}`", path.display()))?;
    parse(&text).map_err(|e| anyhow!("config file `{}`{e}", path.display()))
}

/// Parses the text; an error reads ` (line N): what`.
pub(crate) fn parse(text: &str) -> std::result::Result<WatchSettings, String> {
    let located = |e: toml::de::Error| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
            .map_or(String::new(), |l| format!(" (line {l})"));
        format!("{line}: {}", e.message())
    };
    let host: HostKeys = toml::from_str(text).map_err(located)?;
    // The agent reads the same text with this program's keys blanked out
    // (newlines kept), so that its errors keep their line numbers.
    let mut rest = text.to_owned();
    let spans = [
        host.log_format.as_ref().map(Spanned::span),
        host.log_level.as_ref().map(Spanned::span),
        host.metrics.as_ref().map(Spanned::span),
    ];
    for span in spans.into_iter().flatten() {
        blank_key_value(&mut rest, span);
    }
    let agent: AgentSettings = toml::from_str(&rest).map_err(located)?;
    Ok(WatchSettings {
        agent,
        log_format: host.log_format.map(Spanned::into_inner),
        log_level: host.log_level.map(Spanned::into_inner),
        metrics: host.metrics.map(Spanned::into_inner),
    })
}

/// Replaces a top-level `key = value` (from the start of the value's first
/// line to the value's end) with spaces, keeping every newline. A TOML
/// key/value pair starts on the line where its value starts.
fn blank_key_value(text: &mut String, value: std::ops::Range<usize>) {
    let end = value.end.min(text.len());
    let start = text[..value.start.min(end)]
        .rfind('\n')
        .map_or(0, |i| i + 1);
    let blanked: String = text[start..end]
        .chars()
        .map(|c| if c == '\n' || c == '\r' { c } else { ' ' })
        .collect();
    text.replace_range(start..end, &blanked);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_keys_are_read_and_the_rest_goes_to_the_agent() {
        let cfg = parse(
            "log_format = \"json\" # shipped\nnotify = [\"log\"]\n\"metrics\" = \"127.0.0.1:9187\"\nlog_level = \"\"\"\nwarn\"\"\"\n[queue]\nmax_entries = 7\n",
        )
        .unwrap();
        assert_eq!(cfg.log_format, Some(LogFormat::Json));
        assert_eq!(cfg.metrics.as_deref(), Some("127.0.0.1:9187"));
        assert_eq!(cfg.log_level.as_deref(), Some("warn"));
        assert_eq!(cfg.agent.notify, ["log"]);
        assert_eq!(cfg.agent.queue.max_entries, Some(7));
    }

    #[test]
    fn agent_errors_keep_their_line_after_blanked_host_keys() {
        let e = parse("log_format = \"json\"\nmetrics = \"x\"\n\nbogus = 1\n").unwrap_err();
        assert!(e.starts_with(" (line 4)"), "{e}");
        assert!(e.contains("unknown field `bogus`"), "{e}");
        let e = parse("log_level = \"info\"\nlog_format = \"xml\"\n").unwrap_err();
        assert!(e.starts_with(" (line 2)"), "{e}");
        assert!(
            e.contains("text") && e.contains("json"),
            "names the allowed: {e}"
        );
    }

    #[test]
    fn a_host_key_inside_a_section_is_refused_by_that_section() {
        let e = parse("[queue]\nmetrics = \"127.0.0.1:1\"\n").unwrap_err();
        assert!(e.contains("unknown field `metrics`"), "{e}");
    }
}
