//! `bench-scale baseline`: `wdguard watch` and the Python baseline agent side
//! by side on the system libvirtd, a real guest firing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use wd_e2e::agent::AgentProcess;
use wd_e2e::bench::{clock_ticks, cpu_ms, figure, latencies_ms, median};
use wd_e2e::virsh::{EventWatch, Guest};
use wd_testkit::Libvirtd;
use wd_testkit::guest::{GuestAssets, GuestSpec};

use crate::{
    FIRINGS, IDLE_WINDOW, PROJECT, Receipts, SECRET, agent_config, lock, memory_mib, owner,
    receiver, work_dir,
};

/// The baseline agent as a child process, killed when dropped.
struct Baseline {
    child: Child,
    out: PathBuf,
}

impl Baseline {
    fn start(url: &str, dir: &Path) -> anyhow::Result<Baseline> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures")
            .join("baseline_agent.py");
        let out = dir.join("baseline.log");
        let file = std::fs::File::create(&out)?;
        // Debian's interpreter, where python3-libvirt lives.
        let child = Command::new("/usr/bin/python3")
            .arg(&script)
            .args([Libvirtd::URI, url])
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .context("start the baseline agent (needs python3-libvirt)")?;
        Ok(Baseline { child, out })
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let text = std::fs::read_to_string(&self.out).unwrap_or_default();
            if text.lines().any(|l| l == "ready") {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "the baseline agent did not start: {}",
            std::fs::read_to_string(&self.out).unwrap_or_default()
        )
    }
}

impl Drop for Baseline {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) async fn baseline(assets: &GuestAssets) -> anyhow::Result<()> {
    let dir = work_dir("baseline")?;
    let receipts: Receipts = Arc::default();
    let base = receiver(receipts.clone()).await?;
    let virsh_events = EventWatch::start("watchdog")?;
    let cfg = agent_config(&dir, Libvirtd::URI, &format!("{base}/wd"))?;
    let mut agent = AgentProcess::start(&cfg, SECRET, &dir.join("agent.log"))?;
    let python = Baseline::start(&format!("{base}/baseline"), &dir)?;
    agent.wait_ready(Duration::from_secs(60)).await?;
    python.wait_ready().await?;
    let pids = [("wd", agent.pid()), ("baseline", python.child.id())];
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle0: Vec<f64> = pids
        .iter()
        .map(|(_, p)| cpu_ms(*p))
        .collect::<Result<_, _>>()?;
    tokio::time::sleep(IDLE_WINDOW).await;
    let idle: Vec<f64> = pids
        .iter()
        .zip(&idle0)
        .map(|((_, p), c0)| cpu_ms(*p).map(|c| c - c0))
        .collect::<Result<_, _>>()?;

    let name = wd_testkit::unique_name("wdsc-base");
    let busy0: Vec<f64> = pids
        .iter()
        .map(|(_, p)| cpu_ms(*p))
        .collect::<Result<_, _>>()?;
    let t0 = Instant::now();
    let guest = Guest::define_and_start(
        GuestSpec::new(&name, "reset").with_nova(owner(0, PROJECT)),
        assets,
        None,
    )?;
    eprintln!("bench-scale: waiting for {FIRINGS} firings of {name}");
    let deadline = Instant::now() + Duration::from_secs(180);
    while virsh_events.of(&name).len() < FIRINGS && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop(guest);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let busy_s = t0.elapsed().as_secs_f64();
    let busy: Vec<f64> = pids
        .iter()
        .zip(&busy0)
        .map(|((_, p), c0)| cpu_ms(*p).map(|c| c - c0))
        .collect::<Result<_, _>>()?;
    let (rss, anon) = memory_mib(&pids)?;
    let firings = virsh_events.of(&name);
    if firings.len() < 3 {
        bail!("only {} firings of {name} within 180 s", firings.len());
    }
    let all = lock(&receipts).clone();
    let method = format!(
        "`wdguard watch` (release; spool on, fsync before delivery, signed CloudEvents webhook) and the baseline (tests/fixtures/baseline_agent.py: python3-libvirt, synchronous urllib POST from the watchdog callback) side by side on qemu:///system, one loopback receiver; one reset guest (TCG) fired {} times",
        firings.len()
    );
    // Per agent: latency median and worst, VmRSS, RssAnon, idle CPU, CPU
    // per firing.
    let mut rows = Vec::new();
    for (i, (who, _)) in pids.iter().enumerate() {
        let got: Vec<(f64, &str)> = all
            .iter()
            .filter(|r| r.domain == name && r.who == *who)
            .map(|r| (r.at, r.domain.as_str()))
            .collect();
        let mut l = latencies_ms(&firings, &got);
        let matched = l.len();
        let worst = l.iter().copied().fold(f64::NAN, f64::max);
        let med = median(&mut l);
        let idle_rate = idle[i] / IDLE_WINDOW.as_secs_f64();
        let per_firing = ((busy[i] - idle_rate * busy_s) / firings.len() as f64).max(0.0);
        let m = format!("{method}; agent `{who}`");
        figure(
            &format!("baseline_{who}_latency_median_ms"),
            med,
            "ms",
            &format!(
                "{m}; receipt time - `virsh event` timestamp, median of {matched} matched firings"
            ),
        );
        figure(
            &format!("baseline_{who}_latency_worst_ms"),
            worst,
            "ms",
            &format!("{m}; worst of {matched} matched firings"),
        );
        figure(
            &format!("baseline_{who}_rss"),
            rss[i],
            "MiB",
            &format!("{m}; VmRSS at the end"),
        );
        figure(
            &format!("baseline_{who}_rss_anon"),
            anon[i],
            "MiB",
            &format!("{m}; RssAnon at the end"),
        );
        figure(
            &format!("baseline_{who}_idle_cpu"),
            idle[i],
            "ms CPU per 10 s",
            &format!(
                "{m}; utime+stime over {} s before the guest started",
                IDLE_WINDOW.as_secs()
            ),
        );
        figure(
            &format!("baseline_{who}_cpu_per_firing"),
            per_firing,
            "ms CPU",
            &format!(
                "{m}; utime+stime from the guest's start to 2 s after its last firing ({busy_s:.0} s), minus the idle rate over that time, / firings"
            ),
        );
        rows.push([med, worst, rss[i], anon[i], idle[i], per_firing]);
    }
    // One clock tick: the resolution of the CPU figures.
    let tick = 1000.0 / clock_ticks();
    for (k, label, floor) in [
        (0, "latency_median", 0.0),
        (1, "latency_worst", 0.0),
        (2, "rss", 0.0),
        (3, "rss_anon", 0.0),
        (4, "idle_cpu", tick),
        (5, "cpu_per_firing", tick / FIRINGS as f64),
    ] {
        let (wd, base) = (rows[0][k], rows[1][k]);
        let ratio = if wd == 0.0 && base == 0.0 {
            1.0
        } else {
            wd.max(floor) / base.max(floor)
        };
        figure(
            &format!("wd_vs_baseline_{label}_ratio"),
            ratio,
            "ratio",
            &format!(
                "baseline_wd_{label} / baseline_baseline_{label} from the same run (below 1: wd costs less); a zero CPU figure counts as one clock tick ({tick:.0} ms, per firing: / {FIRINGS})"
            ),
        );
    }
    agent.terminate(Duration::from_secs(10))?;
    drop(python);
    Ok(())
}
