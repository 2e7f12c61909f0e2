//! Parts 6 and 7, fleet scale: the `bench-scale` binary of `wd-e2e`. Churn
//! of 10,000 domains on the test driver and fan-out to 1,000 project
//! endpoints always; with the live parts also the catch-up of 100, 1,000
//! and 5,000 domains on the system libvirtd and `wdguard watch` side by side
//! with a Python baseline agent (`tests/fixtures/baseline_agent.py`) and
//! with OpenStack's `masakari-instancemonitor` (`bench-scale masakari`).

use anyhow::Result;

use super::examples::{example, run_figures};
use super::{Part, Run};
use crate::setup::{self, ServicesGuard};
use crate::{cargo, target_dir};

/// This part: its sections of docs/performance.md, and how it runs.
pub const PART: Part = Part {
    sections: &[
        (6, "6. Fleet scale: catch-up, churn, fan-out"),
        (7, "7. Side by side with a baseline agent"),
    ],
    run,
};

/// Parts 6 and 7: the `bench-scale` binary of `wd-e2e`. Churn (test driver) and
/// fan-out (loopback) always; the catch-up and the baseline comparison
/// only with `live`, since they need the system libvirtd and real guests.
fn run(run: &mut Run) -> Result<()> {
    let (figures, live) = (&mut run.figures, run.live);
    eprintln!("xtask: parts 6 and 7, fleet scale and the baseline agent");
    setup::cmd_ok(cargo().args(["build", "--release", "-p", "wdguard"]))?;
    setup::cmd_ok(cargo().args(["build", "--release", "-p", "wd-e2e", "--bin", "bench-scale"]))?;
    let exe = target_dir().join("release").join("bench-scale");
    let part_of = |name: &str| {
        if name.contains("baseline") || name.contains("masakari") {
            7
        } else {
            6
        }
    };
    let mut result = Ok(());
    for (what, shared) in [("churn", false), ("fanout", false)] {
        eprintln!("xtask: bench-scale {what}");
        if let Err(e) = run_figures(figures, example(&exe, &[what], shared), &part_of) {
            eprintln!("xtask: bench-scale {what}: {e:#}");
            result = Err(e);
        }
    }
    if live {
        setup::ensure_packages()?;
        setup::guest()?;
        setup::masakari_venv()?;
        let _services = ServicesGuard(setup::services_up()?);
        for what in ["catchup", "baseline", "masakari"] {
            eprintln!("xtask: bench-scale {what}");
            if let Err(e) = run_figures(figures, example(&exe, &[what], true), &part_of) {
                eprintln!("xtask: bench-scale {what}: {e:#}");
                result = Err(e);
            }
        }
    }
    result
}
