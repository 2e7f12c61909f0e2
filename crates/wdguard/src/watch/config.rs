//! Reading `wdguard watch`'s configuration file: the agent's own format
//! ([`wd_compute::AgentSettings`]), refused when it holds secrets that others
//! may read. Its errors name the file and the line.

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use wd_compute::AgentSettings;

/// Reads and parses the configuration file, and refuses one that holds
/// secrets where others can read them (see `crate::filemode`).
pub fn load_config(path: &Path) -> Result<AgentSettings> {
    let cfg = parse_config(path)?;
    crate::filemode::check(
        path,
        crate::filemode::FileMode::of(path)?,
        &cfg.secret_keys(),
        crate::filemode::Identity::current()?,
    )?;
    Ok(cfg)
}

fn parse_config(path: &Path) -> Result<AgentSettings> {
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
