//! Part 5, isolation between destinations: the criterion bench `isolation`
//! of `wd-notify`, a healthy destination's delivery latency beside 0, 1 and
//! 10 hung ones.

use std::time::SystemTime;

use anyhow::{Context, Result};
use serde_json::Value;

use super::criterion::{self, median_ns};
use super::{Figure, Part, Run, push};
use crate::{cargo, setup, target_dir};

/// This part: its sections of docs/performance.md, and how it runs.
pub const PART: Part = Part {
    sections: &[(5, "5. Isolation between destinations")],
    run,
};

fn run(run: &mut Run) -> Result<()> {
    eprintln!("xtask: part 5, isolation between destinations (criterion, wd-notify)");
    setup::cmd_ok(cargo().args(["bench", "-p", "wd-notify", "--bench", "isolation"]))?;
    figures(&mut run.figures, run.since)
}

/// Part 5: a healthy destination's delivery latency beside 0, 1 and 10 hung
/// destinations holding 100 pending entries each: criterion's median, and
/// the p50/p99 (with ratios to none hung) that the bench writes to
/// `target/criterion/isolation-quantiles.json`.
fn figures(figures: &mut Vec<Figure>, since: SystemTime) -> Result<()> {
    let method = "Router with one durable queue per destination (group commit) in a temp dir; the healthy destination is a channel; each hung destination never answers and holds 100 pending entries; one sample = Router::notify until the healthy receiver has the notification";
    let path = target_dir()
        .join("criterion")
        .join("isolation-quantiles.json");
    criterion::fresh(&path, since)?;
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let rows: Value =
        serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
    for row in rows
        .as_array()
        .context("isolation quantiles: not an array")?
    {
        let hung = row["hung"].as_u64().context("hung")?;
        let median = median_ns(&format!("isolation/hung/{hung}"), since)? / 1000.0;
        push(
            figures,
            5,
            &format!("isolation_{hung}_hung_median"),
            median,
            "µs",
            &format!("criterion median, 20 samples; {method}"),
        );
        for key in ["p50_us", "p99_us", "p50_ratio", "p99_ratio"] {
            let v = row[key].as_f64().with_context(|| key.to_owned())?;
            let (name, unit) = match key.strip_suffix("_us") {
                Some(q) => (format!("isolation_{hung}_hung_{q}"), "µs"),
                None => (format!("isolation_{hung}_hung_{key}"), "× none hung"),
            };
            push(
                figures,
                5,
                &name,
                v,
                unit,
                &format!("2,000 notifications after criterion; {method}"),
            );
        }
    }
    Ok(())
}
