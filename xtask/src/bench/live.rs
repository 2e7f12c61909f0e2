//! Parts 3 and 4, live on real guests (not with `--no-live`): the
//! `bench-live` binary of `wd-e2e` (latency against `virsh event`, the
//! agent's RSS and CPU), with libvirtd and RabbitMQ started here if they are
//! not running, and stopped again afterwards.

use anyhow::Result;

use super::examples::{example, run_figures};
use super::{Figure, Part, Run, push};
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
    let result = run_figures(figures, example(&exe, &["all"], true), &|name| {
        if name.starts_with("latency") || name.starts_with("floor") {
            3
        } else {
            4
        }
    });
    floor_ratios(figures);
    result
}

/// The receipt latencies as ratios to their floors, from figures of this
/// run: a bare loopback HTTP round trip (`floor_http_round_trip`), plus one
/// `fdatasync` with the spool on, from part 2's `raw_fsync_rate` (a quiet
/// machine) and from `floor_fsync_loaded` (the same guests firing).
fn floor_ratios(figures: &mut Vec<Figure>) {
    let get = |figures: &[Figure], name: &str| {
        figures
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.value)
            .filter(|v| v.is_finite() && *v > 0.0)
    };
    let http = get(figures, "floor_http_round_trip");
    let raw_fsync_ms = get(figures, "raw_fsync_rate").map(|r| 1000.0 / r);
    let (http_loaded, fsync_loaded) = (
        get(figures, "floor_http_round_trip_loaded"),
        get(figures, "floor_fsync_loaded"),
    );
    let (http_loaded_p99, fsync_loaded_p99) = (
        get(figures, "floor_http_round_trip_loaded_p99"),
        get(figures, "floor_fsync_loaded_p99"),
    );
    let sum = |a: Option<f64>, b: Option<f64>| Some(a? + b?);
    let ratios = [
        (
            "latency_receipt_no_spool_median",
            "vs_floor",
            http,
            "the bare loopback HTTP round trip (floor_http_round_trip)",
        ),
        (
            "latency_receipt_spool_median",
            "vs_floor",
            sum(http, raw_fsync_ms),
            "one fdatasync (1 / raw_fsync_rate, part 2) plus the bare loopback HTTP round trip (floor_http_round_trip)",
        ),
        (
            "latency_receipt_no_spool_median",
            "vs_loaded_floor",
            http_loaded,
            "the bare loopback HTTP round trip with the guests firing (floor_http_round_trip_loaded)",
        ),
        (
            "latency_receipt_spool_median",
            "vs_loaded_floor",
            sum(http_loaded, fsync_loaded),
            "one fdatasync plus the bare HTTP round trip, both with the guests firing (floor_fsync_loaded + floor_http_round_trip_loaded)",
        ),
        (
            "latency_receipt_no_spool_p99",
            "vs_loaded_floor",
            http_loaded_p99,
            "the p99 of the bare HTTP round trip with the guests firing",
        ),
        (
            "latency_receipt_spool_p99",
            "vs_loaded_floor",
            sum(http_loaded_p99, fsync_loaded_p99),
            "the p99 of one fdatasync plus the p99 of the bare HTTP round trip, both with the guests firing",
        ),
    ];
    for (name, suffix, floor, what) in ratios {
        let (Some(value), Some(floor)) = (get(figures, name), floor) else {
            continue;
        };
        push(
            figures,
            3,
            &format!("{name}_{suffix}"),
            value / floor,
            "× floor",
            &format!("{name} ({value:.3} ms) / {what} ({floor:.3} ms), all of this run"),
        );
    }
}
