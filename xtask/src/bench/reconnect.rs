//! Part 8: back on libvirt after an outage. The `bench-reconnect` binary
//! of `wd-e2e` stops the system libvirtd for 2 s, 10 s and 60 s (and 10 s
//! again with the socket watch off, the backoff alone) and reports the time
//! from libvirtd's first answer to the listener's catch-up done.

use anyhow::Result;

use super::examples::{example, run_figures};
use super::{Part, Run};
use crate::setup::{self, ServicesGuard};
use crate::{cargo, target_dir};

/// This part: its section of docs/performance.md, and how it runs (live
/// only: it restarts the system libvirtd).
pub const PART: Part = Part {
    sections: &[(8, "8. Back on libvirt after an outage")],
    run,
};

fn run(run: &mut Run) -> Result<()> {
    if !run.live {
        return Ok(());
    }
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
    let _services = ServicesGuard(setup::services_up()?);
    let exe = target_dir().join("release").join("bench-reconnect");
    run_figures(&mut run.figures, example(&exe, &[], true), &|_| 8)
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
