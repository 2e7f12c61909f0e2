//! Part 1, policy and XML: the criterion benches of `wd-xml` (resolve and
//! render per guest, patching a ~4 KB Nova domain, and patching 100, 1,000
//! and 10,000 domains to show that the cost per domain stays flat).

use std::time::SystemTime;

use anyhow::Result;

use super::criterion::median_ns;
use super::{Figure, Part, Run, push};
use crate::{cargo, setup};

/// This part: its sections of docs/performance.md, and how it runs.
pub const PART: Part = Part {
    sections: &[(1, "1. Policy and XML")],
    run,
};

fn run(run: &mut Run) -> Result<()> {
    eprintln!("xtask: part 1, policy and XML (criterion, wd-xml)");
    setup::cmd_ok(cargo().args([
        "bench",
        "-p",
        "wd-xml",
        "--bench",
        "xml",
        "--",
        "--warm-up-time",
        "1",
        "--measurement-time",
        "2",
    ]))?;
    figures(&mut run.figures, run.since)
}

fn figures(figures: &mut Vec<Figure>, since: SystemTime) -> Result<()> {
    let crit = "criterion median (wd-xml bench `xml`, 1 s warm-up, 2 s measurement)";
    for (id, name, what) in [
        (
            "resolve+render pc",
            "resolve_render_pc",
            "resolve a flavor (3 extra specs) and an image (3 properties), then render the device for an x86_64 `pc` guest on libvirt 9.0",
        ),
        (
            "resolve+render q35 9.1",
            "resolve_render_q35",
            "as above for a q35 guest on libvirt 9.1 (two devices: i6300esb and itco)",
        ),
        (
            "patch nova 4KB insert",
            "patch_nova_4kb_insert",
            "patch a realistic 3.7 KB Nova domain XML (metadata, 10 devices) that has no watchdog",
        ),
        (
            "patch nova 4KB already patched",
            "patch_nova_4kb_already_patched",
            "patch the same domain when it already has the wanted watchdog (the no-op path)",
        ),
        (
            "patch nova 4KB q35 9.1",
            "patch_nova_4kb_q35",
            "patch the domain as a q35 guest on libvirt 9.1 (two devices)",
        ),
        (
            "read watchdogs 4KB",
            "read_watchdogs_4kb",
            "read the watchdogs back from the patched domain",
        ),
        (
            "nova metadata 4KB",
            "nova_metadata_4kb",
            "parse Nova's owner metadata from the domain (namespace-aware)",
        ),
        (
            "raw reader 4KB",
            "quick_xml_floor_4kb",
            "the floor: quick-xml's reader alone over the same document",
        ),
    ] {
        let ns = median_ns(id, since)?;
        push(
            figures,
            1,
            name,
            ns / 1000.0,
            "µs",
            &format!("{what}; {crit}"),
        );
    }
    let mut per = Vec::new();
    for n in [100u64, 1_000, 10_000] {
        let ns = median_ns(&format!("patch_scale/{n}"), since)?;
        let each = ns / n as f64 / 1000.0;
        per.push(each);
        push(
            figures,
            1,
            &format!("patch_scale_{n}_per_domain"),
            each,
            "µs per domain",
            &format!(
                "patch {n} distinct ~4 KB Nova domains (own UUID and name each) in one iteration; median time / {n}; criterion, 10 samples, 3 s"
            ),
        );
    }
    push(
        figures,
        1,
        "patch_scale_ratio_1000_vs_100",
        per[1] / per[0],
        "ratio",
        "per-domain cost at 1,000 / per-domain cost at 100 (1.0 = linear)",
    );
    push(
        figures,
        1,
        "patch_scale_ratio_10000_vs_100",
        per[2] / per[0],
        "ratio",
        "per-domain cost at 10,000 / per-domain cost at 100 (1.0 = linear; the 10,000 documents take 37 MB, far more than the CPU caches)",
    );
    Ok(())
}
