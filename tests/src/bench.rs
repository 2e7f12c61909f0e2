//! Measurement helpers shared by the `bench-live` and `bench-scale`
//! binaries: a figure's output line, the latency from each firing to its
//! notification, a process's CPU time and memory from `/proc`, the median.

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;

use crate::virsh::SeenEvent;

/// Now, as seconds since the Unix epoch.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Prints one figure as a JSON line on stdout (what `cargo xtask bench`
/// collects).
pub fn figure(name: &str, value: f64, unit: &str, method: &str) {
    println!(
        "{}",
        serde_json::json!({"name": name, "value": value, "unit": unit, "method": method})
    );
}

/// Latencies in ms from each firing to the nearest unused receipt
/// (`(unix seconds, domain)`) for the same domain within 2 s after it
/// (or 50 ms before, for clock jitter); a firing without one is left out.
pub fn latencies_ms(firings: &[SeenEvent], receipts: &[(f64, &str)]) -> Vec<f64> {
    let mut used = vec![false; receipts.len()];
    let mut out = Vec::new();
    for f in firings {
        let at = f.unix_secs();
        let best = receipts
            .iter()
            .enumerate()
            .filter(|(i, r)| !used[*i] && r.1 == f.domain)
            .filter(|(_, r)| r.0 >= at - 0.05 && r.0 < at + 2.0)
            .min_by(|a, b| a.1.0.total_cmp(&b.1.0));
        if let Some((i, r)) = best {
            used[i] = true;
            out.push((r.0 - at) * 1000.0);
        }
    }
    out
}

/// Clock ticks per second (`getconf CLK_TCK`), 100 if that fails.
pub fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of `pid`, in clock ticks.
pub fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')').context("stat format")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    Ok(f.get(11).context("utime")?.parse::<u64>()? + f.get(12).context("stime")?.parse::<u64>()?)
}

/// The CPU time of `pid` in nanoseconds, from the scheduler's own
/// accounting: the first field of `/proc/PID/task/TID/schedstat`, summed
/// over the process's threads (utime + stime counts 10 ms clock ticks, too
/// coarse for a millisecond per firing). Threads that exited meanwhile are
/// no longer counted: compare with [`cpu_ticks`] over long windows.
pub fn cpu_ns(pid: u32) -> anyhow::Result<u64> {
    let mut total = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = task?.path().join("schedstat");
        // A thread that ended since the listing has no file any more.
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let ns: u64 = text
            .split_whitespace()
            .next()
            .with_context(|| format!("{} is empty", path.display()))?
            .parse()
            .with_context(|| format!("{} does not start with a number", path.display()))?;
        total = total.saturating_add(ns);
    }
    Ok(total)
}

/// The CPU time of each live thread of `pid` in nanoseconds (as
/// [`cpu_ns`]), by thread id, with the thread's name.
pub fn cpu_ns_by_thread(
    pid: u32,
) -> anyhow::Result<std::collections::BTreeMap<u64, (String, u64)>> {
    let mut out = std::collections::BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let task = task?;
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        let (Ok(stat), Ok(comm)) = (
            std::fs::read_to_string(task.path().join("schedstat")),
            std::fs::read_to_string(task.path().join("comm")),
        ) else {
            continue;
        };
        let ns = stat
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        out.insert(tid, (comm.trim().to_owned(), ns));
    }
    Ok(out)
}

/// Where the CPU between two [`cpu_ns_by_thread`] snapshots went, by
/// thread name (threads that ended meanwhile are not seen), in ns.
pub fn cpu_ns_delta_by_name(
    before: &std::collections::BTreeMap<u64, (String, u64)>,
    after: &std::collections::BTreeMap<u64, (String, u64)>,
) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    for (tid, (name, ns)) in after {
        let was = before.get(tid).map_or(0, |(_, n)| *n);
        *out.entry(name.clone()).or_insert(0) += ns.saturating_sub(was);
    }
    out
}

/// utime + stime of `pid`, in ms.
pub fn cpu_ms(pid: u32) -> anyhow::Result<f64> {
    Ok(cpu_ticks(pid)? as f64 * 1000.0 / clock_ticks())
}

/// A `Key: value kB` line of `/proc/PID/status` (`key` with its colon,
/// e.g. `VmRSS:`), in KiB.
pub fn status_kib(pid: u32, key: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(key))
        .with_context(|| format!("{key} of {pid}"))?;
    Ok(line.split_whitespace().nth(1).context("value")?.parse()?)
}

/// The median of `v` (sorting it), NaN if it is empty.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The p99 of `v` by nearest rank (the smallest value with at least 99 %
/// of `v` at or below it), sorting it; NaN if it is empty.
pub fn p99(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n => v[(n * 99).div_ceil(100) - 1],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p99_by_nearest_rank() {
        let mut hundred: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(p99(&mut hundred), 99.0);
        let mut ten: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(p99(&mut ten), 10.0);
        assert_eq!(p99(&mut [7.0]), 7.0);
        assert!(p99(&mut []).is_nan());
    }

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&mut []).is_nan());
    }

    #[test]
    fn latencies_pair_each_firing_with_its_own_receipt() {
        let fired = |line: &str| crate::virsh::parse_event_line(line).unwrap();
        let firings = [
            fired("1970-01-01 00:00:10.000+0000: event 'watchdog' for domain 'a': reset"),
            fired("1970-01-01 00:00:20.000+0000: event 'watchdog' for domain 'a': reset"),
            fired("1970-01-01 00:00:30.000+0000: event 'watchdog' for domain 'a': reset"),
        ];
        // One receipt per firing, one for another domain, one too late.
        let receipts = [(10.25, "a"), (10.1, "b"), (20.5, "a"), (32.5, "a")];
        let l = latencies_ms(&firings, &receipts);
        assert_eq!(l.len(), 2);
        assert!((l[0] - 250.0).abs() < 1e-6 && (l[1] - 500.0).abs() < 1e-6);
    }

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        assert!(status_kib(pid, "VmRSS:").unwrap() > 0);
        assert!(cpu_ticks(pid).is_ok());
        // Spinning for a while shows up in the scheduler's nanoseconds.
        let before = cpu_ns(pid).unwrap();
        let spin = std::time::Instant::now();
        while spin.elapsed() < std::time::Duration::from_millis(20) {
            std::hint::black_box(0);
        }
        assert!(cpu_ns(pid).unwrap() > before);
        assert!(status_kib(pid, "NoSuchKey:").is_err());
    }
}
