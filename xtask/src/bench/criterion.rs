//! Criterion's figures, read from `target/criterion/**/new/estimates.json`
//! (never scraped from stdout), and only when this run wrote them.

use std::path::Path;
use std::time::SystemTime;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::target_dir;

/// Fails unless `path` was written since `since` (by this run).
pub fn fresh(path: &Path, since: SystemTime) -> Result<()> {
    let fresh = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .is_ok_and(|t| t >= since);
    if !fresh {
        bail!("{} was not written by this run", path.display());
    }
    Ok(())
}

/// The median point estimate (ns) of a criterion benchmark, from
/// `target/criterion/<id>/new/estimates.json`; it must be from this run.
pub fn median_ns(id: &str, since: SystemTime) -> Result<f64> {
    let path = target_dir()
        .join("criterion")
        .join(id)
        .join("new")
        .join("estimates.json");
    fresh(&path, since)?;
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    median_point_estimate(&text)
        .with_context(|| format!("no median point estimate in {}", path.display()))
}

/// `median.point_estimate` of a criterion `estimates.json`.
pub fn median_point_estimate(text: &str) -> Option<f64> {
    let estimates: Value = serde_json::from_str(text).ok()?;
    estimates["median"]["point_estimate"].as_f64()
}
