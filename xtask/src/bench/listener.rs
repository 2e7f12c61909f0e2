//! Part 10, the listener's hop: from libvirt's callback to the consumer
//! holding the item, quiet and with every core busy (the criterion-free
//! bench `latency` of `wd-events`, which writes
//! `target/criterion/listener-latency.json`). No libvirtd: libvirt's
//! `test:///default` driver in the bench's own process.

use std::time::SystemTime;

use anyhow::{Context, Result};
use serde_json::Value;

use super::criterion;
use super::{Figure, Part, Run, push};
use crate::{cargo, setup, target_dir};

/// This part: its section of docs/performance.md, and how it runs.
pub const PART: Part = Part {
    sections: &[(10, "10. Listener: libvirt's callback to the consumer")],
    run,
};

fn run(run: &mut Run) -> Result<()> {
    eprintln!("xtask: part 10, the listener's hop (wd-events)");
    setup::cmd_ok(cargo().args(["bench", "-p", "wd-events", "--bench", "latency"]))?;
    figures(&mut run.figures, run.since)
}

fn figures(figures: &mut Vec<Figure>, since: SystemTime) -> Result<()> {
    let path = target_dir().join("criterion").join("listener-latency.json");
    criterion::fresh(&path, since)?;
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let rows: Value =
        serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
    for row in rows.as_array().context("listener latency: not an array")? {
        let variant = row["variant"].as_str().context("variant")?;
        let samples = row["samples"].as_f64().context("samples")?;
        let load = match variant {
            "busy" => {
                "with one spinning thread per CPU in the same process (every wake-up waits for a core, as beside TCG guests)"
            }
            _ => "on a quiet machine",
        };
        let method = format!(
            "wd-events bench `latency`: suspend/resume of libvirt's test:///default domain, one event every 2 ms, {samples} events, {load}; from the event's received_at (taken in libvirt's callback) to the consumer holding the item on a current_thread runtime"
        );
        for key in ["p50", "p99", "max"] {
            let v = row[format!("{key}_us")]
                .as_f64()
                .with_context(|| format!("{key}_us"))?;
            push(
                figures,
                10,
                &format!("listener_hop_{variant}_{key}"),
                v,
                "µs",
                &method,
            );
        }
        let direct = row["direct"].as_f64().context("direct")?;
        push(
            figures,
            10,
            &format!("listener_hop_{variant}_direct_share"),
            direct / samples.max(1.0),
            "share",
            &format!(
                "{method}; the share of events that took the direct path (handed to the consumer in libvirt's callback, without waking the listener's thread)"
            ),
        );
    }
    Ok(())
}
