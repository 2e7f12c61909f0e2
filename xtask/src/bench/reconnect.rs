//! Part 8: back on libvirt after an outage. The `bench-reconnect` binary
//! of `wd-e2e` stops the system libvirtd for 2 s, 10 s and 60 s (and 10 s
//! again with the socket watch off, the backoff alone) and reports the time
//! from libvirtd's first answer to the listener's catch-up done.

use anyhow::Result;

use super::{Figure, example, run_figures};
use crate::{cargo, setup, target_dir};

/// The part's number and title in the report.
pub(super) const TITLE: (u8, &str) = (8, "8. Back on libvirt after an outage");

/// Runs the part (live only: it restarts the system libvirtd).
pub(super) fn part8(figures: &mut Vec<Figure>) -> Result<()> {
    eprintln!("xtask: part 8, back on libvirt after outages of 2, 10 and 60 s");
    setup::ensure_packages()?;
    setup::cmd_ok(cargo().args([
        "build",
        "--release",
        "-p",
        "wd-e2e",
        "--bin",
        "bench-reconnect",
    ]))?;
    let _services = super::ServicesGuard(setup::services_up()?);
    let exe = target_dir().join("release").join("bench-reconnect");
    run_figures(figures, example(&exe, &[], true), &|_| TITLE.0)
}

/// `goals`' `check`: figure, what, goal, whether met, unit.
pub(super) type Check<'a> = dyn FnMut(&str, &str, &str, &dyn Fn(f64) -> bool, &str) + 'a;

/// The goals of this part's figures, through `goals`' `check`.
pub(super) fn goals(check: &mut Check<'_>) {
    for secs in [2, 10, 60] {
        check(
            &format!("reconnect_after_{secs}s_outage"),
            &format!(
                "Back on libvirt after a {secs} s outage: libvirtd's first answer → catch-up done"
            ),
            "≤ 1 s",
            &|v| v <= 1000.0,
            "ms",
        );
    }
}

/// How to read part 8 and the per-stage figures, appended to the report.
pub(super) const NOTES: &str = "
- **Part 8**: while it waits to reconnect, the listener probes the local \
libvirt socket every 100 ms (one `connect(2)`, or a `stat(2)` while a daemon \
that refuses us still holds the same socket file) and reconnects as soon as \
it accepts again, whatever the backoff had grown to; the catch-up follows at \
once. A connected listener never probes, so idle CPU is unchanged. The \
`_backoff_only` row is the same 10 s outage with the probe off: the \
behaviour before it (the backoff had grown to several seconds).
- **Per-stage latency** (`latency_stage_*`, part 3): `wd_stage_seconds` in \
the agent's `/metrics` times each live first firing from the libvirt \
callback to `queued` (a destination's queue is handed it: listener, \
pipeline, episode ledger, fan-out), `durable` (the queue's fsync), \
`sending` (the delivery worker starts) and `answered`. A stage's own cost is \
the difference between neighbours. `cpu_per_firing` (part 4) is the \
agent's CPU from the scheduler's nanoseconds (`/proc/PID/task/*/schedstat`) \
over 100 announced firings; `cpu_per_firing_ticks` is the 10 ms-tick \
cross-check.
";

/// The heading of the hand-written section that `cargo xtask bench` keeps
/// when it writes `docs/performance.md` again: figures measured once, by
/// hand, before and after a change (the tables above are this run's).
const HISTORY: &str = "\n## Before and after";

/// The hand-written history at the end of the old report, if any.
pub(super) fn history(old: &str) -> &str {
    old.find(HISTORY).map_or("", |i| &old[i..])
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_history_section_is_kept_and_nothing_else() {
        let old = "# Performance\n\n| a | 1 |\n\n## Before and after\n\nissue 19: 10 s -> 18 ms\n";
        assert_eq!(
            super::history(old),
            "\n## Before and after\n\nissue 19: 10 s -> 18 ms\n"
        );
        assert_eq!(super::history("# Performance\n"), "");
    }
}
