//! Part 9, the shared trust store: 1,000 webhook endpoints, each loading the
//! system trust store (before) and sharing one (after), each variant in a
//! fresh process of the same run (the criterion-free bench `trust_store` of
//! `wd-notify-webhook`, which writes `target/criterion/trust-store.json`).

use std::time::SystemTime;

use anyhow::{Context, Result};
use serde_json::Value;

use super::criterion;
use super::{Figure, Part, Run, push};
use crate::{cargo, setup, target_dir};

/// This part: its section of docs/performance.md, and how it runs.
pub const PART: Part = Part {
    sections: &[(9, "9. Trust store: 1,000 webhook endpoints")],
    run,
};

fn run(run: &mut Run) -> Result<()> {
    eprintln!("xtask: part 9, the shared trust store (wd-notify-webhook)");
    setup::cmd_ok(cargo().args(["bench", "-p", "wd-notify-webhook", "--bench", "trust_store"]))?;
    figures(&mut run.figures, run.since)
}

fn figures(figures: &mut Vec<Figure>, since: SystemTime) -> Result<()> {
    let path = target_dir().join("criterion").join("trust-store.json");
    criterion::fresh(&path, since)?;
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let rows: Value =
        serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
    let method = "wd-notify-webhook bench `trust_store`: before = one reqwest client per endpoint (+1) loading the system store itself; after = WebhookNotifier::split of the same 1,000 endpoints; reload = build a second set, then drop the first; RSS = VmRSS growth over the process's start";
    for row in rows.as_array().context("trust store: not an array")? {
        let variant = row["variant"].as_str().context("variant")?;
        for (key, unit) in [
            ("start_ms", "ms"),
            ("reload_ms", "ms"),
            ("rss_start_kib", "KiB"),
            ("rss_reload_kib", "KiB"),
        ] {
            let v = row[key].as_f64().with_context(|| key.to_owned())?;
            let name = format!(
                "trust_store_{variant}_{}",
                key.trim_end_matches("_kib").trim_end_matches("_ms")
            );
            push(figures, 9, &name, v, unit, method);
        }
    }
    Ok(())
}
