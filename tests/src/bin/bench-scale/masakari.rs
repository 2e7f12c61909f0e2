//! `bench-scale masakari`: `wdguard watch` side by side with OpenStack's
//! `masakari-instancemonitor` (PyPI `masakari-monitors`, in the venv
//! `target/wd-venv-masakari` that `cargo xtask bench` creates), both on the
//! system libvirtd, watching the same real guest's firings. Masakari talks
//! to stand-ins for Keystone and the Masakari API on loopback
//! (`tests/fixtures/masakari_standins.py`), which timestamp each
//! notification on receipt. Then libvirtd is stopped for 10 s and started
//! again: what each agent does.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;
use wd_e2e::agent::AgentProcess;
use wd_e2e::bench::{cpu_ns, figure, latencies_ms, median};
use wd_e2e::virsh::{EventWatch, Guest};
use wd_testkit::Libvirtd;
use wd_testkit::guest::{GuestAssets, GuestSpec};

use crate::{
    FIRINGS, PROJECT, Receipts, SECRET, agent_config, lock, memory_mib, owner, receiver, work_dir,
};

/// A child process, killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn venv() -> PathBuf {
    wd_testkit::target_dir().join("wd-venv-masakari")
}

/// Starts the stand-ins (stdout: one JSON line per notification) and
/// `masakari-instancemonitor` with a config pointing at them.
fn start_masakari(dir: &Path) -> anyhow::Result<(Proc, Proc, PathBuf, PathBuf)> {
    let monitor = venv().join("bin").join("masakari-instancemonitor");
    if !monitor.is_file() {
        bail!(
            "{} is missing: `cargo xtask bench` creates it",
            monitor.display()
        );
    }
    let (ks, mk) = (free_port()?, free_port()?);
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join("masakari_standins.py");
    let received = dir.join("masakari-api.jsonl");
    let standins = Command::new("python3")
        .arg(&script)
        .args([ks.to_string(), mk.to_string()])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&received)?)
        .stderr(std::fs::File::create(dir.join("standins.log"))?)
        .spawn()
        .context("start the Keystone and Masakari stand-ins")?;
    let standins = Proc(standins);
    let conf = dir.join("masakarimonitors.conf");
    std::fs::write(
        &conf,
        format!(
            "[DEFAULT]\nhost = bench-host\n[api]\nauth_url = http://127.0.0.1:{ks}/v3\nusername = masakari\npassword = bench-only\nproject_name = service\nuser_domain_id = default\nproject_domain_id = default\nregion = RegionOne\napi_interface = public\napi_retry_max = 0\n[libvirt]\nconnection_uri = {}\n",
            Libvirtd::URI
        ),
    )?;
    let log = dir.join("masakari.log");
    let monitor = Command::new(monitor)
        .arg("--config-file")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log)?)
        .stderr(std::fs::File::create(dir.join("masakari.stderr"))?)
        .spawn()
        .context("start masakari-instancemonitor")?;
    Ok((standins, Proc(monitor), received, log))
}

/// Masakari's watchdog notifications: `(receipt time, instance uuid)`.
fn masakari_receipts(path: &Path) -> Vec<(f64, String)> {
    let Ok(file) = std::fs::File::open(path) else {
        return Vec::new();
    };
    std::io::BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str::<Value>(&l).ok())
        .filter(|v| v["notification"]["payload"]["event"] == "WATCHDOG")
        .filter_map(|v| {
            Some((
                v["at"].as_f64()?,
                v["notification"]["payload"]["instance_uuid"]
                    .as_str()?
                    .to_owned(),
            ))
        })
        .collect()
}

pub(crate) async fn masakari(assets: &GuestAssets) -> anyhow::Result<()> {
    let dir = work_dir("masakari")?;
    let receipts: Receipts = Arc::default();
    let base = receiver(receipts.clone()).await?;
    let virsh_events = EventWatch::start("watchdog")?;
    let cfg = agent_config(&dir, Libvirtd::URI, &format!("{base}/wd"))?;
    let mut agent = AgentProcess::start(&cfg, SECRET, &dir.join("agent.log"))?;
    let (_standins, mut monitor, received, mk_log) = start_masakari(&dir)?;
    agent.wait_ready(Duration::from_secs(60)).await?;
    // Masakari has no readiness signal; its libvirt connection is up within
    // a few seconds of the start.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let pids = [("wd", agent.pid()), ("masakari", monitor.0.id())];

    let spec =
        GuestSpec::new(&wd_testkit::unique_name("wdsc-mk"), "reset").with_nova(owner(0, PROJECT));
    let (name, uuid) = (spec.name.clone(), spec.uuid.clone());
    let busy0: Vec<u64> = pids
        .iter()
        .map(|(_, p)| cpu_ns(*p))
        .collect::<Result<_, _>>()?;
    let guest = Guest::define_and_start(spec, assets, None)?;
    eprintln!("bench-scale: waiting for {FIRINGS} firings of {name}");
    let deadline = Instant::now() + Duration::from_secs(60 + 60 * FIRINGS as u64);
    while virsh_events.of(&name).len() < FIRINGS && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop(guest);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let busy: Vec<u64> = pids
        .iter()
        .zip(&busy0)
        .map(|((_, p), c0)| cpu_ns(*p).map(|c| c.saturating_sub(*c0)))
        .collect::<Result<_, _>>()?;
    let (rss, anon) = memory_mib(&pids)?;
    let firings = virsh_events.of(&name);
    if firings.len() < 3 {
        bail!("only {} firings of {name}", firings.len());
    }
    let wd_got: Vec<(f64, String)> = lock(&receipts)
        .iter()
        .filter(|r| r.domain == name && r.who == "wd")
        .map(|r| (r.at, r.domain.clone()))
        .collect();
    let mk_got: Vec<(f64, String)> = masakari_receipts(&received)
        .into_iter()
        .filter(|(_, u)| *u == uuid)
        .map(|(at, _)| (at, name.clone()))
        .collect();
    let method = format!(
        "`wdguard watch` (release; spool on, fsync before delivery, signed CloudEvents webhook to a loopback receiver) and masakari-instancemonitor (PyPI masakari-monitors, Keystone and Masakari API stand-ins on loopback) side by side on qemu:///system; one reset guest (TCG) fired {} times",
        firings.len()
    );
    let mut rows = Vec::new();
    for (i, (who, got)) in [("wd", &wd_got), ("masakari", &mk_got)]
        .into_iter()
        .enumerate()
    {
        let got: Vec<(f64, &str)> = got.iter().map(|(at, d)| (*at, d.as_str())).collect();
        let mut l = latencies_ms(&firings, &got);
        let matched = l.len();
        let worst = l.iter().copied().fold(f64::NAN, f64::max);
        let med = median(&mut l);
        let per_firing = busy[i] as f64 / 1e6 / firings.len() as f64;
        let m = format!("{method}; agent `{who}`");
        figure(
            &format!("masakari_side_{who}_latency_median_ms"),
            med,
            "ms",
            &format!(
                "{m}; receipt time - `virsh event` timestamp, median of {matched} matched firings"
            ),
        );
        figure(
            &format!("masakari_side_{who}_latency_worst_ms"),
            worst,
            "ms",
            &format!("{m}; worst of {matched} matched firings"),
        );
        figure(
            &format!("masakari_side_{who}_rss"),
            rss[i],
            "MiB",
            &format!("{m}; VmRSS at the end"),
        );
        figure(
            &format!("masakari_side_{who}_rss_anon"),
            anon[i],
            "MiB",
            &format!("{m}; RssAnon at the end"),
        );
        figure(
            &format!("masakari_side_{who}_cpu_per_firing"),
            per_firing,
            "ms CPU",
            &format!(
                "{m}; /proc/PID/task/*/schedstat (ns) from the guest's start to 2 s after its last firing, / firings (includes the guest's boot and lifecycle events)"
            ),
        );
        rows.push([med, worst, rss[i], anon[i], per_firing]);
    }
    for (k, label) in [
        "latency_median",
        "latency_worst",
        "rss",
        "rss_anon",
        "cpu_per_firing",
    ]
    .iter()
    .enumerate()
    {
        figure(
            &format!("wd_vs_masakari_{label}_ratio"),
            rows[0][k] / rows[1][k],
            "ratio",
            &format!(
                "masakari_side_wd_{label} / masakari_side_masakari_{label} from the same run (below 1: wd costs less)"
            ),
        );
    }

    // Across a libvirtd restart: down for 10 s, then up again.
    Libvirtd.stop();
    tokio::time::sleep(Duration::from_secs(10)).await;
    Libvirtd::start().map_err(anyhow::Error::msg)?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let exited = monitor.0.try_wait()?;
    let agent_log = std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default();
    let wd_back = agent_log.contains("libvirt connected generation=2");
    eprintln!(
        "bench-scale: after the restart, masakari {}; wd {}",
        exited.map_or("still runs".to_owned(), |s| format!("exited ({s})")),
        if wd_back {
            "reconnected"
        } else {
            "did not reconnect"
        }
    );
    let restart = "libvirtd stopped for 10 s and started again; checked 5 s after it answered";
    figure(
        "masakari_side_wd_back_after_libvirtd_restart",
        f64::from(u8::from(wd_back)),
        "yes=1",
        &format!("{restart}; the agent logged `libvirt connected generation=2`"),
    );
    figure(
        "masakari_side_masakari_alive_after_libvirtd_restart",
        f64::from(u8::from(exited.is_none())),
        "yes=1",
        &format!(
            "{restart}; the monitor process still runs (exit status if not: {}; its log: {})",
            exited.map_or("-".to_owned(), |s| s.to_string()),
            mk_log.display()
        ),
    );
    agent.terminate(Duration::from_secs(10))?;
    Ok(())
}
