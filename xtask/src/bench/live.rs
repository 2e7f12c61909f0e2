//! Parts 3 and 4, live on real guests (not with `--no-live`): the
//! `bench-live` binary of `wd-e2e` (latency against `virsh event`, the
//! agent's RSS and CPU), with libvirtd and RabbitMQ started here if they are
//! not running, and stopped again afterwards.

use anyhow::Result;

use super::examples::{example, run_figures};
use super::{Part, Run};
use crate::setup::{self, ServicesGuard};
use crate::{cargo, target_dir};

/// This part: its sections of docs/performance.md, and how it runs.
pub const PART: Part = Part {
    sections: &[
        (
            3,
            "3. Latency against libvirt's own client, on a real guest",
        ),
        (4, "4. Resource cost of the agent"),
    ],
    run,
};

fn run(run: &mut Run) -> Result<()> {
    if !run.live {
        return Ok(());
    }
    let figures = &mut run.figures;
    eprintln!("xtask: parts 3 and 4, live on real guests");
    setup::ensure_packages()?;
    setup::guest()?;
    setup::cmd_ok(cargo().args(["build", "--release", "-p", "wdguard"]))?;
    setup::cmd_ok(cargo().args(["build", "--release", "-p", "wd-e2e", "--bin", "bench-live"]))?;
    let _services = ServicesGuard(setup::services_up()?);
    let exe = target_dir().join("release").join("bench-live");
    run_figures(figures, example(&exe, &["all"], true), &|name| {
        if name.starts_with("latency") { 3 } else { 4 }
    })
}
