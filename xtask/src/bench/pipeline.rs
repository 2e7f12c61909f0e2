//! Part 2, pipeline throughput: the criterion bench of `wd-compute` (no
//! spool, fsync per entry, group commit) and this machine's raw fsync rate,
//! in the same run.

use std::time::SystemTime;

use anyhow::Result;

use super::criterion::median_ns;
use super::{Figure, Part, Run, push};
use crate::{cargo, setup};

/// This part: its sections of docs/performance.md, and how it runs.
pub const PART: Part = Part {
    sections: &[(2, "2. Pipeline throughput")],
    run,
};

fn run(run: &mut Run) -> Result<()> {
    eprintln!("xtask: part 2, pipeline throughput (criterion, wd-compute)");
    setup::cmd_ok(cargo().args(["bench", "-p", "wd-compute", "--bench", "pipeline"]))?;
    figures(&mut run.figures, run.since)
}

fn figures(figures: &mut Vec<Figure>, since: SystemTime) -> Result<()> {
    let fsync_ns = median_ns("pipeline_raw_fsync/write_600B_fdatasync", since)?;
    let fsync_rate = 1e9 / fsync_ns;
    push(
        figures,
        2,
        "raw_fsync_rate",
        fsync_rate,
        "fsyncs/s",
        "append 600 bytes to a file in target/ and fdatasync it, repeatedly; 1 / criterion median; same run as the pipeline figures",
    );
    let path = "synthetic watchdog (reset) events of distinct domains, each known to the NovaDirectory, through Pipeline (in-memory Ledger) -> Coalesce -> [Spool] -> ChannelNotifier; a sample ends when the receiver has every notification; 1 / criterion median per event (10 samples, 3 s)";
    for (id, name, how) in [
        ("no_spool", "pipeline_no_spool", "no spool"),
        (
            "spool_per_entry",
            "pipeline_spool_per_entry",
            "spool, one fsync per entry",
        ),
        (
            "spool_group_commit",
            "pipeline_spool_group_commit",
            "spool, group commit",
        ),
        (
            "spool_per_entry_8_pipelines",
            "pipeline_spool_per_entry_8_pipelines",
            "spool, one fsync per entry, 8 pipelines sharing it",
        ),
        (
            "spool_group_commit_8_pipelines",
            "pipeline_spool_group_commit_8_pipelines",
            "spool, group commit, 8 pipelines sharing it",
        ),
        (
            "router_3_queues_8_pipelines",
            "pipeline_router_3_queues_8_pipelines",
            "one durable queue per destination (3: operator, bus, log), group commit each, written in parallel, 8 pipelines",
        ),
    ] {
        let ns = median_ns(&format!("pipeline/{id}"), since)?;
        let rate = 1e9 / ns;
        push(
            figures,
            2,
            name,
            rate,
            "events/s",
            &format!(
                "{how}; each pipeline's run loop takes a stream of ready firings of distinct domains and hands them over concurrently (up to 256 in flight); {path}"
            ),
        );
        if id != "no_spool" {
            push(
                figures,
                2,
                &format!("{name}_vs_raw_fsync"),
                rate / fsync_rate,
                "ratio",
                &format!("{how}: events/s divided by raw_fsync_rate from the same run"),
            );
        }
    }
    Ok(())
}
