//! The bench binaries of `wd-e2e` (`bench-live`, `bench-scale`): how they
//! run, and the figures they print, one JSON object per line.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::{Figure, push};
use crate::root;

/// A command for an example that uses the shared system libvirtd: under
/// `flock $WD_BENCH_LOCK` when that is set (on a machine where several
/// people share the daemon), so that only those steps hold the lock.
pub fn example(exe: &Path, args: &[&str], shared_libvirtd: bool) -> Command {
    let mut c = match std::env::var_os("WD_BENCH_LOCK") {
        Some(lock) if shared_libvirtd => {
            let mut c = Command::new("flock");
            c.arg(lock).arg(exe);
            c
        }
        _ => Command::new(exe),
    };
    c.args(args).current_dir(root());
    c
}

/// Runs an example that prints one JSON figure per line and adds them.
pub fn run_figures(
    figures: &mut Vec<Figure>,
    mut cmd: Command,
    part_of: &dyn Fn(&str) -> u8,
) -> Result<()> {
    let out = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("run {cmd:?}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    for line in text.lines().filter(|l| l.starts_with('{')) {
        let (name, value, unit, method) = figure_line(line)
            .with_context(|| format!("a figure needs name, value and unit: `{line}`"))?;
        push(figures, part_of(&name), &name, value, &unit, &method);
    }
    if !out.status.success() {
        bail!("{cmd:?} failed with {}", out.status);
    }
    Ok(())
}

/// One figure line of `bench-live`: a JSON object with `name`, `value`,
/// `unit` and optionally `method`.
pub fn figure_line(line: &str) -> Option<(String, f64, String, String)> {
    let v: Value = serde_json::from_str(line).ok()?;
    let text = |k: &str| v[k].as_str().map(str::to_owned);
    Some((
        text("name")?,
        v["value"].as_f64()?,
        text("unit")?,
        text("method").unwrap_or_default(),
    ))
}
