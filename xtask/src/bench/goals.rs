//! The goals the brief sets for some figures, and whether a run met them.

use super::Figure;
use super::report::fmt_value;

fn value_of(figures: &[Figure], name: &str) -> Option<f64> {
    figures.iter().find(|f| f.name == name).map(|f| f.value)
}

/// A goal the brief sets for one figure, and whether this run met it.
#[derive(Debug, Clone)]
pub struct Goal {
    pub figure: String,
    what: String,
    pub goal: String,
    shown: String,
    pub met: bool,
}

impl Goal {
    pub fn line(&self) -> String {
        let mark = if self.met { "met" } else { "NOT met" };
        format!(
            "- {}: {} (goal: {}) — {mark}",
            self.what, self.shown, self.goal
        )
    }
}

/// The goal of each figure that has one, met or not.
pub fn goals(figures: &[Figure]) -> Vec<Goal> {
    let mut out = Vec::new();
    let mut check = |figure: &str, what: &str, goal: &str, ok: &dyn Fn(f64) -> bool, unit: &str| {
        if let Some(v) = value_of(figures, figure) {
            out.push(Goal {
                figure: figure.to_owned(),
                what: what.to_owned(),
                goal: goal.to_owned(),
                shown: format!("{} {unit}", fmt_value(v)).trim_end().to_owned(),
                met: ok(v),
            });
        }
    };
    check(
        "latency_vs_virsh_webhook_median",
        "Webhook within 20 ms of virsh, spool on (median)",
        "≤ 20 ms",
        &|v| v <= 20.0,
        "ms",
    );
    check(
        "latency_vs_virsh_webhook_worst",
        "Webhook within 20 ms of virsh, spool on (worst)",
        "≤ 20 ms",
        &|v| v <= 20.0,
        "ms",
    );
    for (figure, what, bound) in [
        (
            "latency_receipt_no_spool_median",
            "Listener's receipt → endpoint's receipt, no spool (median)",
            1.0,
        ),
        (
            "latency_receipt_spool_median",
            "Listener's receipt → endpoint's receipt, spool on (median)",
            2.0,
        ),
        (
            "latency_receipt_no_spool_p99",
            "Listener's receipt → endpoint's receipt, no spool (p99)",
            5.0,
        ),
        (
            "latency_receipt_spool_p99",
            "Listener's receipt → endpoint's receipt, spool on (p99)",
            5.0,
        ),
        (
            "cpu_per_firing_above_idle",
            "CPU per firing above idle, spool on",
            1.0,
        ),
        (
            "cpu_per_firing_above_idle_no_spool",
            "CPU per firing above idle, no spool",
            1.0,
        ),
    ] {
        let unit = if figure.starts_with("cpu") {
            "ms CPU"
        } else {
            "ms"
        };
        check(
            figure,
            what,
            &format!("≤ {bound} ms"),
            &|v| v <= bound,
            unit,
        );
    }
    for (prefix, label) in [
        ("agent_idle", "qemu:///system"),
        ("agent_idle_test_driver", "test driver"),
    ] {
        for n in [0, 10, 100] {
            check(
                &format!("{prefix}_{n}_domains_rss"),
                &format!("Agent RSS, {n} domains ({label})"),
                "< 20 MB",
                &|v| v * 1.048_576 < 20.0,
                "MiB",
            );
            check(
                &format!("{prefix}_{n}_domains_rss_anon"),
                &format!("Agent private memory (RssAnon), {n} domains ({label})"),
                "< 20 MB",
                &|v| v * 1.048_576 < 20.0,
                "MiB",
            );
            check(
                &format!("{prefix}_{n}_domains_cpu"),
                &format!("Idle CPU, {n} domains ({label})"),
                // /proc/PID/stat counts clock ticks of 10 ms; two ticks in
                // 10 s (0.2 % of a core) is the noise floor of this check.
                "no measurable CPU: ≤ 20 ms in 10 s",
                &|v| v <= 20.0,
                "ms CPU in 10 s",
            );
        }
    }
    check(
        "storm_agent_cpu",
        "Reset storm: agent CPU",
        "< 5 % of one core",
        &|v| v < 5.0,
        "% of one core",
    );
    check(
        "patch_scale_ratio_10000_vs_100",
        "Patching is linear in the number of domains (per-domain cost at 10,000 / at 100)",
        "< 2",
        &|v| v < 2.0,
        "",
    );
    check(
        "catchup_1000_domains_ms",
        "Catch-up of 1,000 domains, connect to done",
        "< 1 s",
        &|v| v < 1000.0,
        "ms",
    );
    check(
        "catchup_per_domain_ratio_1000_vs_100",
        "Catch-up cost per domain flat (at 1,000 / at 100)",
        "≤ 1.2",
        &|v| v <= 1.2,
        "",
    );
    check(
        "catchup_5000_domains_rss_anon",
        "RssAnon after the catch-up of 5,000 domains",
        "< 10 MiB",
        &|v| v < 10.0,
        "MiB",
    );
    check(
        "churn_rss_anon_growth",
        "RssAnon after churning 10,000 domains, against its start",
        "within 1 MiB",
        &|v| v.abs() <= 1.0,
        "MiB",
    );
    check(
        "fanout_p99_ms",
        "Fan-out to 1,000 project endpoints: p99 firing → receipt",
        "≤ 1 s",
        &|v| v <= 1000.0,
        "ms",
    );
    check(
        "fanout_notifications_per_s",
        "Fan-out to 1,000 project endpoints: throughput",
        "≥ 100 notifications/s",
        &|v| v >= 100.0,
        "notifications/s",
    );
    for (label, what) in [
        ("latency_median", "latency after `virsh event`, median"),
        ("latency_worst", "latency after `virsh event`, worst"),
        ("rss", "VmRSS"),
        ("rss_anon", "RssAnon"),
        ("idle_cpu", "idle CPU"),
        ("cpu_per_firing", "CPU per firing"),
    ] {
        check(
            &format!("wd_vs_baseline_{label}_ratio"),
            &format!("wd / Python baseline: {what}"),
            "≤ 1 (no costlier than the baseline)",
            &|v| v <= 1.0,
            "×",
        );
    }
    super::reconnect::goals(&mut check);
    super::masakari::goals(&mut check);
    out
}
