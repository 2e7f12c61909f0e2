//! Part 7's side-by-side with OpenStack's `masakari-instancemonitor`
//! (`bench-scale masakari`; its venv is `setup::masakari_venv`): the goals
//! of its ratios.

use super::reconnect::Check;

/// The goals of the wd / masakari ratios, through `goals`' `check`.
pub(super) fn goals(check: &mut Check<'_>) {
    for (label, what) in [
        ("latency_median", "latency after `virsh event`, median"),
        ("latency_worst", "latency after `virsh event`, worst"),
        ("rss", "VmRSS"),
        ("rss_anon", "RssAnon"),
        ("cpu_per_firing", "CPU per firing"),
    ] {
        check(
            &format!("wd_vs_masakari_{label}_ratio"),
            &format!("wd / masakari-instancemonitor: {what}"),
            "≤ 1 (no costlier than masakari)",
            &|v| v <= 1.0,
            "×",
        );
    }
}
